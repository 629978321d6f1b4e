//! Load generator and benchmark driver: runs the same scenarios against the upstream
//! `gst-webrtc-signalling-server`, our single node and our clusters (2, 3 nodes on one
//! redis-server, every session across nodes), prints a table, and writes the figures as JSON
//! and Markdown (`BENCHMARKS.md`). `./dev bench` builds everything and runs it; the test
//! suite runs a tiny version (`--smoke`) so it cannot rot.

mod client;
mod fanout;
mod procs;
mod relays;
mod scenarios;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use serde_json::{json, Map, Value};

use procs::{Binaries, Target, Topo};

#[derive(Parser, Debug)]
#[command(about = "Signalling benchmarks: our node and clusters side by side with upstream")]
struct Args {
    /// Directory holding our `signalling-cluster` (default: next to this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Upstream server command line, `{port}` replaced by a free port, e.g.
    /// `gst-webrtc-signalling-server --host 127.0.0.1 --port {port}`.
    #[arg(long, default_value = "")]
    upstream: String,
    /// Label for the upstream server in the report (version).
    #[arg(long, default_value = "gst-webrtc-signalling-server")]
    upstream_label: String,
    #[arg(long, default_value = "redis-server")]
    redis_server: String,
    /// Directory with `producer-agent` and `consumer-agent` for time to first frame
    /// (omitted: not measured).
    #[arg(long)]
    agents_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 3)]
    ttff_runs: usize,
    /// Fanout runs (needs --agents-dir): consumer counts per codec, `vp8:1,2,4;h264:1,4`.
    /// Default (unless --smoke): `vp8:1,2,4,8,12;h264:1,4,8`. With --render: measured now
    /// and put into the earlier report.
    #[arg(long)]
    fanout: Option<String>,
    /// Relay-tree runs (relay-agent; needs --agents-dir): viewers per relay, per relay count,
    /// `1:0,4,8;2:0,4,8` (the default unless --smoke), then first frame, hop latency, a
    /// killed relay and a killed node. With --render: measured now and put into the report.
    #[arg(long)]
    relay_tree: Option<String>,
    /// Comma-separated: upstream, single, cluster2, cluster3, ...
    #[arg(long, default_value = "upstream,single,cluster2,cluster3")]
    targets: String,
    /// Tiny counts (seconds in all): the CI smoke run.
    #[arg(long)]
    smoke: bool,
    /// Relay runs, PAIRSxROUNDS, comma-separated.
    #[arg(long)]
    relay: Option<String>,
    /// Idle-connection runs, peer counts, comma-separated.
    #[arg(long)]
    idle: Option<String>,
    /// Presence fan-out runs, LISTENERSxPRODUCERS, comma-separated.
    #[arg(long)]
    presence: Option<String>,
    /// Session setup runs, PAIRSxSESSIONS, comma-separated.
    #[arg(long)]
    setup: Option<String>,
    /// Per-peer message rate limit given to our nodes (raised for load).
    #[arg(long, default_value_t = 1_000_000)]
    max_messages_per_sec: u32,
    /// Per-peer queue given to our nodes.
    #[arg(long, default_value_t = 65_536)]
    peer_queue: usize,
    /// Runs of each relay, presence and setup scenario per target (interleaved over the
    /// targets, median reported): the machine's background load drifts, and a ratio of two
    /// runs minutes apart measures the drift. Idle and first-frame runs are run once.
    #[arg(long)]
    rounds: Option<usize>,
    /// Time limit of one scenario against one target, seconds.
    #[arg(long, default_value_t = 240)]
    scenario_timeout: u64,
    /// Write every figure here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the Markdown report here.
    #[arg(long)]
    md: Option<PathBuf>,
    /// Markdown appended to the report as its analysis section.
    #[arg(long)]
    notes: Option<PathBuf>,
    /// The command that produced this run, for the report.
    #[arg(long, default_value = "loadgen")]
    command: String,
    /// Servers' stderr goes here (default: discarded).
    #[arg(long)]
    server_log: Option<PathBuf>,
    /// Measure nothing: re-render `--md` (with `--notes`) from this JSON of an earlier run.
    #[arg(long)]
    render: Option<PathBuf>,
}

fn pairs(spec: &str) -> Result<Vec<(usize, usize)>> {
    spec.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            let (a, b) = s.split_once('x').context("expected AxB")?;
            Ok((a.trim().parse()?, b.trim().parse()?))
        })
        .collect()
}

fn counts(spec: &str) -> Result<Vec<usize>> {
    spec.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| Ok(s.trim().parse()?))
        .collect()
}

struct Plan {
    relay: Vec<(usize, usize)>,
    idle: Vec<usize>,
    presence: Vec<(usize, usize)>,
    setup: Vec<(usize, usize)>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    procs::raise_fd_limit(200_000);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    if let Some(json) = &args.render {
        let mut report: Value = serde_json::from_slice(&std::fs::read(json)?)?;
        // ratios again from the figures (their rules may have changed since the run)
        let results = report["results"].as_object().cloned().unwrap_or_default();
        let keys: Vec<&String> = results
            .values()
            .filter_map(|v| v.as_object())
            .flat_map(|o| o.keys())
            .collect();
        let plan = Plan {
            relay: keys
                .iter()
                .filter_map(|k| pairs(k.strip_prefix("relay_")?).ok()?.first().copied())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect(),
            idle: keys
                .iter()
                .filter_map(|k| k.strip_prefix("idle_")?.parse().ok())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect(),
            presence: keys
                .iter()
                .filter_map(|k| pairs(k.strip_prefix("presence_")?).ok()?.first().copied())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect(),
            setup: Vec::new(),
        };
        report["ratios"] = ratios(&results, &plan);
        if let (Some(spec), Some(dir)) = (&args.fanout, &args.agents_dir) {
            let bins = binaries(&args)?;
            report["fanout"] = fanout::run(&bins, dir, &fanout::parse(spec)?).await?;
            report["fanout_date"] = json!(date());
        } else {
            fanout::resummarize(&mut report["fanout"]);
        }
        if let (Some(spec), Some(dir)) = (&args.relay_tree, &args.agents_dir) {
            let bins = binaries(&args)?;
            report["relay_tree"] = relays::run(&bins, dir, &relays::parse(spec)?).await?;
            report["relay_tree_date"] = json!(date());
        }
        if let Some(json_out) = &args.json {
            std::fs::write(json_out, serde_json::to_string_pretty(&report)? + "\n")?;
        }
        let table = table(&report);
        println!("{table}");
        return write_md(&args, &report, &table);
    }
    anyhow::ensure!(!args.upstream.is_empty(), "--upstream is required");
    let (d_relay, d_idle, d_presence, d_setup) = if args.smoke {
        ("4x10", "40", "8x4", "4x3")
    } else {
        (
            "1x1000,100x1000,1000x100",
            "5000,20000",
            "1000x200",
            "100x10",
        )
    };
    // One process (a single server, this generator) holds one fd per peer: above the fd
    // limit, the idle runs are capped (recorded in the report).
    let fd_cap = (procs::fd_limit() as usize).saturating_sub(500);
    let idle_asked = counts(args.idle.as_deref().unwrap_or(d_idle))?;
    let plan = Plan {
        relay: pairs(args.relay.as_deref().unwrap_or(d_relay))?,
        idle: idle_asked.iter().map(|&n| n.min(fd_cap)).collect(),
        presence: pairs(args.presence.as_deref().unwrap_or(d_presence))?,
        setup: pairs(args.setup.as_deref().unwrap_or(d_setup))?,
    };
    let bins = binaries(&args)?;
    let targets: Vec<Target> = args
        .targets
        .split(',')
        .map(Target::parse)
        .collect::<Result<_>>()?;

    let mut jobs: Vec<(String, Job)> = Vec::new();
    for &(p, r) in &plan.relay {
        jobs.push((format!("relay_{p}x{r}"), Job::Relay(p, r)));
    }
    for &n in &plan.idle {
        jobs.push((format!("idle_{n}"), Job::Idle(n)));
    }
    for &(l, k) in &plan.presence {
        jobs.push((format!("presence_{l}x{k}"), Job::Presence(l, k)));
    }
    for &(p, s) in &plan.setup {
        jobs.push((format!("setup_{p}x{s}"), Job::Setup(p, s)));
    }
    if let Some(dir) = &args.agents_dir {
        jobs.push(("first_frame".into(), Job::FirstFrame(dir.clone())));
    }
    let rounds = args.rounds.unwrap_or(if args.smoke { 1 } else { 3 }).max(1);
    // Every target runs a scenario before any runs it again: slow drifts of the machine's
    // load then touch every target alike.
    let mut runs: std::collections::BTreeMap<(String, String), Vec<Value>> = Default::default();
    for (key, job) in &jobs {
        let n = match job {
            Job::Relay(..) | Job::Presence(..) | Job::Setup(..) => rounds,
            Job::Idle(_) | Job::FirstFrame(_) => 1,
        };
        for round in 1..=n {
            for &target in &targets {
                eprintln!("loadgen: {} {key} (round {round}/{n}) ...", target.name());
                let started = std::time::Instant::now();
                let res = tokio::time::timeout(
                    Duration::from_secs(args.scenario_timeout),
                    run_job(target, &bins, job, args.ttff_runs, args.server_log.as_ref()),
                )
                .await
                .unwrap_or_else(|_| {
                    Err(anyhow::anyhow!(
                        "timed out after {} s",
                        args.scenario_timeout
                    ))
                });
                let v = match res {
                    Ok(v) => v,
                    Err(e) => {
                        eprintln!("loadgen: {} {key} failed: {e:#}", target.name());
                        json!({"error": format!("{e:#}")})
                    }
                };
                eprintln!(
                    "loadgen: {} {key} ({:.1} s) {v}",
                    target.name(),
                    started.elapsed().as_secs_f64()
                );
                runs.entry((target.name(), key.clone()))
                    .or_default()
                    .push(v);
                // let sockets in TIME_WAIT and the servers' exits settle
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
    let mut results = Map::new();
    for ((target, key), values) in runs {
        let entry = results
            .entry(target)
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(figures) = entry {
            figures.insert(key, median_of_runs(values));
        }
    }

    let fanout_spec = match (&args.fanout, args.smoke) {
        (Some(spec), _) => Some(spec.clone()),
        (None, false) => Some("vp8:1,2,4,8,12;h264:1,4,8".to_string()),
        (None, true) => None,
    };
    let fanout = match (&fanout_spec, &args.agents_dir) {
        (Some(spec), Some(dir)) => fanout::run(&bins, dir, &fanout::parse(spec)?).await?,
        _ => Value::Null,
    };

    let tree_spec = match (&args.relay_tree, args.smoke) {
        (Some(spec), _) => Some(spec.clone()),
        (None, false) => Some("1:0,4,8;2:0,4,8".to_string()),
        (None, true) => None,
    };
    let relay_tree = match (&tree_spec, &args.agents_dir) {
        (Some(spec), Some(dir)) => relays::run(&bins, dir, &relays::parse(spec)?).await?,
        _ => Value::Null,
    };

    let ratios = ratios(&results, &plan);
    let report = json!({
        "date": date(),
        "machine": machine(),
        "command": args.command,
        "upstream": args.upstream_label,
        "settings": {
            "our_node_flags": bins.node_args,
            "fd_limit": procs::fd_limit(),
            "client_source_addresses": "127.0.0.2-127.0.0.33",
            "smoke": args.smoke,
            "idle_requested": idle_asked,
            "idle_run": plan.idle,
            "rounds": rounds,
        },
        "results": results,
        "ratios": ratios,
        "fanout": fanout,
        "relay_tree": relay_tree,
    });
    let table = table(&report);
    println!("{table}");
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")?;
    }
    write_md(&args, &report, &table)
}

/// One result from several runs of a scenario: each number is the median of its runs (the
/// runs that failed left out), and the runs themselves are kept under `runs`.
fn median_of_runs(values: Vec<Value>) -> Value {
    let ok: Vec<Value> = values
        .iter()
        .filter(|v| v.get("error").is_none())
        .cloned()
        .collect();
    if values.len() == 1 || ok.is_empty() {
        return values.into_iter().next().unwrap_or(Value::Null);
    }
    let mut merged = median_value(&ok.iter().collect::<Vec<_>>());
    if let Value::Object(o) = &mut merged {
        o.insert("runs".into(), Value::Array(values));
    }
    merged
}

fn median_value(values: &[&Value]) -> Value {
    match values.first() {
        Some(Value::Number(_)) => {
            let mut nums: Vec<&Value> = values.iter().copied().filter(|v| v.is_number()).collect();
            nums.sort_by(|a, b| {
                a.as_f64()
                    .unwrap_or(0.0)
                    .total_cmp(&b.as_f64().unwrap_or(0.0))
            });
            // the lower middle for an even count: a figure that was measured, as it was written
            nums.get((nums.len().max(1) - 1) / 2)
                .map_or(Value::Null, |v| (*v).clone())
        }
        Some(Value::Object(first)) => {
            let mut out = Map::new();
            for key in first.keys() {
                let all: Vec<&Value> = values.iter().filter_map(|v| v.get(key)).collect();
                out.insert(key.clone(), median_value(&all));
            }
            Value::Object(out)
        }
        // every run must agree for a yes
        Some(Value::Bool(_)) => json!(values.iter().all(|v| v.as_bool() == Some(true))),
        Some(v) => (*v).clone(),
        None => Value::Null,
    }
}

/// Our node's binary and flags, the upstream command, from the arguments.
fn binaries(args: &Args) -> Result<Binaries> {
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("exe dir")?
            .to_path_buf(),
    };
    Ok(Binaries {
        node: bin_dir.join("signalling-cluster"),
        upstream: args.upstream.clone(),
        redis_server: args.redis_server.clone(),
        node_args: vec![
            "--max-messages-per-sec".into(),
            args.max_messages_per_sec.to_string(),
            "--peer-queue".into(),
            args.peer_queue.to_string(),
        ],
        log: args.server_log.clone(),
    })
}

fn write_md(args: &Args, report: &Value, table: &str) -> Result<()> {
    if let Some(path) = &args.md {
        let notes = match &args.notes {
            Some(p) => std::fs::read_to_string(p).with_context(|| format!("{}", p.display()))?,
            None => String::new(),
        };
        std::fs::write(path, markdown(report, table, &notes))?;
    }
    Ok(())
}

enum Job {
    Relay(usize, usize),
    Idle(usize),
    Presence(usize, usize),
    Setup(usize, usize),
    FirstFrame(PathBuf),
}

async fn run_job(
    target: Target,
    bins: &Binaries,
    job: &Job,
    ttff_runs: usize,
    log: Option<&PathBuf>,
) -> Result<Value> {
    let mut topo = Topo::start(target, bins).await?;
    let res = match job {
        Job::Relay(p, r) => scenarios::relay(&topo, *p, *r).await,
        Job::Idle(n) => scenarios::idle(&topo, *n).await,
        Job::Presence(l, k) => scenarios::presence(&topo, *l, *k).await,
        Job::Setup(p, s) => scenarios::setup(&topo, *p, *s).await,
        Job::FirstFrame(dir) => {
            let mut runs = procs::first_frame_ms(&topo, dir, ttff_runs, log).await?;
            let raw = runs.clone();
            runs.sort_unstable();
            Ok(json!({"runs_ms": raw, "median_ms": runs[runs.len() / 2]}))
        }
    };
    topo.check_alive()?;
    res
}

fn date() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string());
    let mem_kb: Option<u64> = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    json!({
        "cpu": model,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory_gib": mem_kb.map(|k| (k as f64 / 1048576.0 * 10.0).round() / 10.0),
        "kernel": kernel,
    })
}

fn get<'a>(
    results: &'a Map<String, Value>,
    target: &str,
    key: &str,
    path: &[&str],
) -> Option<&'a Value> {
    let mut v = results.get(target)?.get(key)?;
    for p in path {
        v = v.get(*p)?;
    }
    (!v.is_null()).then_some(v)
}

fn num(results: &Map<String, Value>, target: &str, key: &str, path: &[&str]) -> Option<f64> {
    get(results, target, key, path)?.as_f64()
}

/// The targets as ratios of this run's figures.
/// A target: at most or at least a limit (with a unit for the report).
enum Bound {
    AtMost(f64, &'static str),
    AtLeast(f64),
}

fn ratios(results: &Map<String, Value>, plan: &Plan) -> Value {
    let mut out = Vec::new();
    // Each target is written once: its text and its check come from the same bound.
    let mut add = |what: String, value: Option<f64>, bound: Bound| {
        let (target, met) = match bound {
            Bound::AtMost(limit, unit) => (format!("≤ {limit:?}{unit}"), value.map(|v| v <= limit)),
            Bound::AtLeast(limit) => (format!("≥ {limit:?}"), value.map(|v| v >= limit)),
        };
        out.push(json!({"what": what, "value": value.map(|v| (v * 1000.0).round() / 1000.0), "target": target, "met": met}));
    };
    let ratio =
        |a: Option<f64>, b: Option<f64>| a.zip(b).filter(|(_, b)| *b != 0.0).map(|(a, b)| a / b);
    let largest_relay = plan.relay.iter().max_by_key(|(p, _)| *p).copied();
    // One pair alone measures the added latency of the Redis hop without queueing; the
    // throughput and CPU targets are about loaded runs (its CPU is a few 10 ms ticks).
    let unloaded = plan.relay.iter().any(|(p, _)| *p == 1);
    for &(p, r) in &plan.relay {
        let key = format!("relay_{p}x{r}");
        let p50 = |t: &str| num(results, t, &key, &["rtt_us", "p50"]);
        if p == 1 {
            for c in results.keys().filter(|k| k.starts_with("cluster")) {
                let v = p50(c).zip(p50("single")).map(|(a, b)| (a - b) / 1000.0);
                add(
                    format!("{key}: {c} RTT p50 − single (ms)"),
                    v,
                    Bound::AtMost(1.0, " ms"),
                );
            }
            continue;
        }
        let cpu = |t: &str| num(results, t, &key, &["server_cpu_us_per_msg"]);
        let tput = |t: &str| num(results, t, &key, &["msgs_per_sec"]);
        let v = ratio(cpu("single"), cpu("upstream"));
        add(
            format!("{key}: single CPU/msg ÷ upstream"),
            v,
            Bound::AtMost(0.5, ""),
        );
        let v = ratio(tput("single"), tput("upstream"));
        add(
            format!("{key}: single msgs/s ÷ upstream"),
            v,
            Bound::AtLeast(1.3),
        );
        if Some((p, r)) == largest_relay {
            let p99 = |t: &str| num(results, t, &key, &["rtt_us", "p99"]);
            let v = ratio(p99("single"), p99("upstream"));
            add(
                format!("{key}: single RTT p99 ÷ upstream"),
                v,
                Bound::AtMost(1.0, ""),
            );
        }
        for c in results.keys().filter(|k| k.starts_with("cluster")) {
            let v = ratio(tput(c), tput("upstream"));
            add(
                format!("{key}: {c} msgs/s ÷ upstream"),
                v,
                Bound::AtLeast(1.0),
            );
            let v = ratio(cpu(c), cpu("single"));
            add(
                format!("{key}: {c} node CPU/msg (sum) ÷ single"),
                v,
                Bound::AtMost(2.0, ""),
            );
            if !unloaded {
                let v = p50(c).zip(p50("single")).map(|(a, b)| (a - b) / 1000.0);
                add(
                    format!("{key}: {c} RTT p50 − single (ms)"),
                    v,
                    Bound::AtMost(1.0, " ms"),
                );
            }
        }
    }
    for &n in &plan.idle {
        let key = format!("idle_{n}");
        let mem = |t: &str| num(results, t, &key, &["rss_bytes_per_peer"]);
        let v = ratio(mem("single"), mem("upstream"));
        add(
            format!("{key}: single RSS/peer ÷ upstream"),
            v,
            Bound::AtMost(0.125, ""),
        );
    }
    for &(l, k) in &plan.presence {
        let key = format!("presence_{l}x{k}");
        let d = |t: &str| num(results, t, &key, &["deliveries_per_sec"]);
        let v = ratio(d("single"), d("upstream"));
        add(
            format!("{key}: single deliveries/s ÷ upstream"),
            v,
            Bound::AtLeast(2.0),
        );
    }
    Value::Array(out)
}

/// One row per figure, one column per target.
fn table(report: &Value) -> String {
    let results = report["results"].as_object().cloned().unwrap_or_default();
    let targets: Vec<String> = results.keys().cloned().collect();
    // keep the order targets were run in: upstream, single, clusters
    let mut order: Vec<String> = ["upstream", "single"]
        .iter()
        .map(|s| s.to_string())
        .filter(|t| targets.contains(t))
        .collect();
    let mut clusters: Vec<String> = targets
        .iter()
        .filter(|t| t.starts_with("cluster"))
        .cloned()
        .collect();
    clusters.sort();
    order.extend(clusters);

    let mut keys: Vec<String> = Vec::new();
    for t in &order {
        for k in results[t].as_object().into_iter().flat_map(|o| o.keys()) {
            if !keys.contains(k) {
                keys.push(k.clone());
            }
        }
    }
    let rank = |k: &str| {
        ["relay", "idle", "presence", "setup", "first_frame"]
            .iter()
            .position(|p| k.starts_with(p))
            .unwrap_or(9)
    };
    // relay runs in the order given, then the other scenarios
    let size = |k: &str| {
        k.split(['_', 'x'])
            .nth(1)
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0)
    };
    keys.sort_by_key(|k| (rank(k), size(k)));
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let fmt = |v: Option<&Value>| match v {
        None | Some(Value::Null) => "–".to_string(),
        Some(Value::Number(n)) => {
            let f = n.as_f64().unwrap_or(0.0);
            if f.fract() == 0.0 {
                format!("{}", f as i64)
            } else {
                format!("{f:.2}")
            }
        }
        Some(Value::Bool(b)) => if *b { "yes" } else { "NO" }.to_string(),
        Some(v) => v.to_string(),
    };
    for key in &keys {
        let fields: &[(&str, &[&str])] = if key.starts_with("relay") {
            &[
                ("msgs/s", &["msgs_per_sec"]),
                ("RTT p50 µs", &["rtt_us", "p50"]),
                ("RTT p99 µs", &["rtt_us", "p99"]),
                ("RTT p99.9 µs", &["rtt_us", "p999"]),
                ("server CPU µs/msg", &["server_cpu_us_per_msg"]),
                ("redis CPU µs/msg", &["redis_cpu_us_per_msg"]),
                ("generator CPU µs/msg", &["generator_cpu_us_per_msg"]),
            ]
        } else if key.starts_with("idle") {
            &[
                ("RSS bytes/peer", &["rss_bytes_per_peer"]),
                ("connections/s", &["connections_per_sec"]),
                ("listConsumers sees all", &["list_consumers_all"]),
                ("server CPU µs/peer", &["server_cpu_us_per_peer"]),
            ]
        } else if key.starts_with("presence") {
            &[
                ("deliveries/s", &["deliveries_per_sec"]),
                ("all seen, s", &["seconds_all_seen"]),
                ("server CPU µs/delivery", &["server_cpu_us_per_delivery"]),
            ]
        } else if key.starts_with("setup") {
            &[
                ("p50 µs", &["setup_us", "p50"]),
                ("p99 µs", &["setup_us", "p99"]),
            ]
        } else {
            &[("median ms", &["median_ms"])]
        };
        for (label, path) in fields {
            let cells = order
                .iter()
                .map(|t| {
                    if let Some(e) = results[t].get(key).and_then(|v| v.get("error")) {
                        let _ = e;
                        return "error".to_string();
                    }
                    let mut v = results[t].get(key);
                    for p in *path {
                        v = v.and_then(|v| v.get(*p));
                    }
                    fmt(v)
                })
                .collect();
            rows.push((format!("{key} {label}"), cells));
        }
    }
    let mut s = format!(
        "| figure | {} |\n|---|{}\n",
        order.join(" | "),
        "---:|".repeat(order.len())
    );
    for (label, cells) in rows {
        s += &format!("| {label} | {} |\n", cells.join(" | "));
    }
    s
}

fn markdown(report: &Value, table: &str, notes: &str) -> String {
    let m = &report["machine"];
    let mut s = String::new();
    s += "# Benchmarks\n\n";
    s += "Our signalling node and clusters side by side with the stock `gst-webrtc-signalling-server`, \
          measured the same way in one run by `tests/loadgen` (issue 5). Generated by the run itself; \
          the analysis at the end is written by hand.\n\n";
    s += &format!(
        "* **Date**: {}\n* **Machine**: {} ({} cores), {} GiB RAM, Linux {}; client, servers and Redis share the cores\n* **Command**: `{}`\n* **Upstream**: {}\n* **Our nodes ran with**: `{}` (the per-peer rate limit and queue are raised so the benchmark measures the relay, not the guards), log level warn for every server\n* **Client**: loopback only, sources spread over {}, fd limit {} per process (idle runs asked: {}, run: {})\n* **Rounds**: relay, presence and setup ran {} times per target, the targets taking turns; each figure is the median of its runs (all runs are in the JSON)\n\n",
        report["date"].as_str().unwrap_or(""),
        m["cpu"].as_str().unwrap_or("?"),
        m["cores"],
        m["memory_gib"],
        m["kernel"].as_str().unwrap_or("?"),
        report["command"].as_str().unwrap_or(""),
        report["upstream"].as_str().unwrap_or(""),
        report["settings"]["our_node_flags"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>().join(" "))
            .unwrap_or_default(),
        report["settings"]["client_source_addresses"].as_str().unwrap_or(""),
        report["settings"]["fd_limit"],
        report["settings"]["idle_requested"],
        report["settings"]["idle_run"],
        report["settings"]["rounds"],
    );
    s += "## Scenarios\n\n\
* **relay_PxR**: P producer/consumer pairs, each in a session (in a cluster the consumer sits on the next node, so every session crosses nodes), ping-pong of a ~150-byte ICE `peer` message for R rounds, all pairs from a common start. msgs/s = 2·P·R ÷ wall time; RTT per round; CPU from `/proc/PID/stat` (user + system) over the relay phase, summed over nodes; Redis and the generator reported apart.\n\
* **idle_N**: N peers connect and register as consumers (256 connects in flight): connections/s, server RSS growth ÷ N (`/proc/PID/status` VmRSS, summed over nodes), and whether `listConsumers` on every node lists all N.\n\
* **presence_LxK**: L listeners registered (spread over the nodes), then K producers register at once: L·K `peerStatusChanged` deliveries ÷ time until every listener saw every producer.\n\
* **setup_PxS**: P pairs, each starting and ending S sessions in turn: startSession → `sessionStarted` at the consumer and `startSession` at the producer.\n\
* **first_frame**: producer-agent (test pattern) on the first node, consumer-agent `--frames 1` on the last node; its reported `first_frame_ms`, median of the runs.\n\n";
    s += "## Results\n\n";
    s += table;
    s += "\n## Targets (ratios in this run)\n\n| what | value | target | met |\n|---|---:|---|---|\n";
    for r in report["ratios"].as_array().into_iter().flatten() {
        let value = r["value"]
            .as_f64()
            .map_or("–".into(), |v| format!("{v:.3}"));
        let met = match r["met"].as_bool() {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "–",
        };
        s += &format!(
            "| {} | {value} | {} | {met} |\n",
            r["what"].as_str().unwrap_or(""),
            r["target"].as_str().unwrap_or("")
        );
    }
    let errors: Vec<String> = report["results"]
        .as_object()
        .into_iter()
        .flatten()
        .flat_map(|(t, v)| {
            v.as_object()
                .into_iter()
                .flatten()
                .filter_map(move |(k, v)| {
                    v.get("error")
                        .map(|e| format!("* {t} {k}: {}", e.as_str().unwrap_or("")))
                })
        })
        .collect();
    if !errors.is_empty() {
        s += "\n## Failed scenarios\n\n";
        s += &errors.join("\n");
        s += "\n";
    }
    if report["fanout"].is_object() {
        s += &fanout_markdown(report);
    }
    if report["relay_tree"].is_object() {
        s += &relays::markdown(report);
    }
    if !notes.is_empty() {
        s += "\n";
        s += notes;
    }
    s
}

/// The fanout section: per codec, producer CPU and the consumers' worst frame rate per K, for
/// both modes side by side, then the targets.
fn fanout_markdown(report: &Value) -> String {
    let mut s = String::from("\n## Fanout: encoding per consumer or shared\n\n");
    s += &format!(
        "One producer-agent (test pattern, 1280x720, 30 fps, 2 Mbit/s, no congestion control and \
         no FEC in either mode, so both send the same stream) and K consumer-agents `--sink encoded` on \
         one node, all on this machine's cores. CPU: the producer process, from `/proc`, over \
         an 8 s window once every consumer has frames; fps: each consumer's frames over the \
         same window; a K is held when every consumer gets at least {} fps (the runs stop at \
         the first K not held). First frame: {} consumers joining the running stream one after \
         another at the second K, session start to first frame (the agent polls every 20 ms). \
         Measured {}.\n\n",
        fanout::HELD_FPS,
        5,
        report["fanout_date"].as_str().unwrap_or(report["date"].as_str().unwrap_or("")),
    );
    let mut targets = Vec::new();
    for (codec, modes) in report["fanout"].as_object().into_iter().flatten() {
        s += &format!("### {}\n\n| K | per-consumer CPU % | min fps | shared CPU % | min fps |\n|---:|---:|---:|---:|---:|\n", codec.to_uppercase());
        let runs = |mode: &str| modes[mode]["runs"].as_array().cloned().unwrap_or_default();
        let (per, shared) = (runs("per-consumer"), runs("shared"));
        let mut ks: Vec<u64> = per
            .iter()
            .chain(&shared)
            .filter_map(|r| r["k"].as_u64())
            .collect();
        ks.sort_unstable();
        ks.dedup();
        let cell = |runs: &[Value], k: u64| -> (String, String) {
            match runs.iter().find(|r| r["k"].as_u64() == Some(k)) {
                Some(r) if r.get("error").is_some() => ("failed".into(), "–".into()),
                Some(r) => (
                    format!("{}", r["producer_cpu_pct"]),
                    format!("{}", r["min_fps"]),
                ),
                None => ("–".into(), "–".into()),
            }
        };
        for k in ks {
            let (pc, pf) = cell(&per, k);
            let (sc, sf) = cell(&shared, k);
            s += &format!("| {k} | {pc} | {pf} | {sc} | {sf} |\n");
        }
        let f = |mode: &str, key: &str| modes[mode][key].clone();
        s += &format!(
            "\n| | per-consumer | shared |\n|---|---:|---:|\n\
             | producer CPU % per added consumer (fit over the Ks held) | {} | {} |\n\
             | largest K with every consumer at {}+ fps | {} | {} |\n\
             | joining consumer: session start → first frame, median ms | {} | {} |\n\n",
            f("per-consumer", "producer_cpu_pct_per_added_consumer"),
            f("shared", "producer_cpu_pct_per_added_consumer"),
            fanout::HELD_FPS,
            f("per-consumer", "largest_k_held"),
            f("shared", "largest_k_held"),
            f("per-consumer", "joiner_first_frame_ms_median"),
            f("shared", "joiner_first_frame_ms_median"),
        );
        let per_added = |mode: &str| f(mode, "producer_cpu_pct_per_added_consumer").as_f64();
        if let (Some(p), Some(sh)) = (per_added("per-consumer"), per_added("shared")) {
            let ratio = sh / p;
            targets.push(format!(
                "| {codec}: shared CPU per added consumer ÷ per-consumer's | {ratio:.3} | ≤ 0.1 | {} |",
                if ratio <= 0.1 { "yes" } else { "**no**" }
            ));
        }
        if let Some(ms) = f("shared", "joiner_first_frame_ms_median").as_f64() {
            targets.push(format!(
                "| {codec}: joining a shared stream, first frame (median ms) | {ms} | ≤ 300 | {} |",
                if ms <= 300.0 { "yes" } else { "**no**" }
            ));
        }
    }
    if !targets.is_empty() {
        s += "### Fanout targets\n\n| what | value | target | met |\n|---|---:|---|---|\n";
        s += &targets.join("\n");
        s += "\n";
    }
    s
}
