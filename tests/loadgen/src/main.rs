//! Load generator and benchmark driver: runs the same scenarios against the upstream
//! `gst-webrtc-signalling-server`, our single node and our clusters (2, 3 nodes on one
//! redis-server, every session across nodes), prints a table, and writes the figures as JSON
//! and Markdown (`BENCHMARKS.md`). `./dev bench` builds everything and runs it; the test
//! suite runs a tiny version (`--smoke`) so it cannot rot.
//!
//! | file | behaviour |
//! |---|---|
//! | `main.rs` | the flags; the order of the runs (every target takes its turn each round); `--render` |
//! | `plan.rs` | the sizes of each scenario, from the flags |
//! | `jobs.rs` | one scenario against one target; several runs merged into medians |
//! | `scenarios.rs` | the signalling scenarios: relay, idle, presence, session setup |
//! | `client.rs` | the generator's WebSocket peer (source addresses spread over 127.0.0.x) |
//! | `procs.rs` | the servers of a target (upstream, single node, cluster on redis-server), CPU and RSS, first frame |
//! | `fanout.rs` | the fanout benchmark (encoding per consumer or shared) and its report section |
//! | `relays.rs` | the relay-tree benchmark and its report section |
//! | `sfu.rs` | the SFU benchmark: relay engines and Janus under K light viewers |
//! | `adaptive.rs` | the adaptive benchmark: viewers behind shaped links, ladder against one layer and per-consumer |
//! | `adaptive_report.rs` | its report section |
//! | `../src/shaping.rs`, `../src/watched.rs` | (the tests' files, included) viewers' namespaces and token buckets; a viewer's window figures |
//! | `sfu_report.rs` | its report section |
//! | `ladder.rs` | the cost of an encoding ladder: producer CPU with 3 layers against 1 |
//! | `light_viewer.rs` | the light viewer: a str0m WebRTC peer per viewer, many in this process |
//! | `frames.rs` | what a light viewer counts: VP8 frames, keyframes, losses, arrival times, hashes |
//! | `hmac.rs` | the viewers' HMAC-SHA1 (SRTP tags) on OpenSSL's plain SHA-1 |
//! | `janus.rs` | Janus (streaming plugin, RTP mountpoint, its feed) and its HTTP API for viewers |
//! | `watch.rs` | `--watch`: light viewers of one producer, their figures as JSON lines |
//! | `ratios.rs` | the targets as ratios of the figures, each with its bound |
//! | `report.rs` | the table, the Markdown report, the date and machine it names |

mod adaptive;
mod adaptive_report;
mod client;
mod fanout;
mod frames;
mod janus;
mod jobs;
mod ladder;
mod light_viewer;
mod plan;
mod procs;
mod ratios;
mod relays;
mod report;
mod scenarios;
mod sfu;
mod sfu_report;
#[path = "../../src/shaping.rs"]
mod shaping;
mod watch;
#[path = "../../src/watched.rs"]
mod watched;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use serde_json::{json, Map, Value};

use jobs::{median_of_runs, run_job, Job};
use plan::{counts, pairs, Plan};
use procs::{Binaries, Target};
use ratios::ratios;
use report::{date, machine, markdown, table};

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
    /// Only this scenario, its figures put into the report `--json` already holds (which is
    /// then written again, and `--md` rendered from it): `sfu`, `adaptive`; or `ladder`,
    /// whose figures are printed as JSON only.
    #[arg(long)]
    only: Option<String>,
    /// Ladder runs: seconds of measurement with each of `--layers 1` and `--layers 3`.
    #[arg(long, default_value_t = 20)]
    ladder_seconds: u64,
    /// SFU runs (needs --agents-dir): the viewer counts K, tried in turn while every viewer
    /// holds 28 fps and < 0.5 % loss.
    #[arg(long, default_value = "10,25,50,100,200,400,800,1600")]
    sfu: String,
    /// SFU runs: the relay engines (`relay-agent --engine`), each run if the relay-agent
    /// accepts it (reported as not available otherwise).
    #[arg(long, default_value = "pipeline,forward")]
    sfu_engines: String,
    /// SFU runs: also Janus' streaming plugin, the anchor (needs `janus`, `gst-launch-1.0`).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    sfu_janus: bool,
    /// SFU runs: a note printed in bold above the figures (e.g. that the machine was busy).
    #[arg(long)]
    sfu_note: Option<String>,
    /// Adaptive runs: the setups, any of `forward,pipeline,per-consumer` (default all), and
    /// `ladder` for the ladder's producer CPU.
    #[arg(long, default_value = "forward,pipeline,per-consumer,ladder")]
    adaptive_setups: String,
    /// Adaptive runs: a note printed in bold above the figures (e.g. that the machine was busy).
    #[arg(long)]
    adaptive_note: Option<String>,
    /// Light viewers of the producer named NAME on the node on 127.0.0.1:PORT (`NAME@PORT`),
    /// figures printed as JSON lines; nothing else runs.
    #[arg(long)]
    watch: Option<String>,
    /// With --watch: how many viewers.
    #[arg(long, default_value_t = 1)]
    watch_viewers: usize,
    /// With --watch: for how long, seconds.
    #[arg(long, default_value_t = 10.0)]
    watch_seconds: f64,
    /// With --watch: seconds between stats lines.
    #[arg(long, default_value_t = 0.5)]
    watch_interval: f64,
    /// With --watch: write each viewer's frames (`HASH UNIX_MICROS`) to DIR/viewer-I.log.
    #[arg(long)]
    frame_log_dir: Option<PathBuf>,
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

fn main() -> Result<()> {
    let args = Args::parse();
    ::sfu::hmac::install();
    procs::raise_fd_limit(200_000);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    if let Some(target) = &args.watch {
        return watch::run(watch::WatchArgs {
            target: target.clone(),
            viewers: args.watch_viewers,
            seconds: args.watch_seconds,
            interval: args.watch_interval,
            frame_log_dir: args.frame_log_dir.clone(),
        })
        .await;
    }
    match args.only.as_deref() {
        None => {}
        Some("sfu") => return only_sfu(&args).await,
        Some("adaptive") => return only_adaptive(&args).await,
        Some("ladder") => {
            let dir = args
                .agents_dir
                .as_ref()
                .context("--only ladder needs --agents-dir")?;
            let figures = ladder::run(&binaries(&args)?, dir, args.ladder_seconds).await?;
            println!("{}", serde_json::to_string_pretty(&figures)?);
            return Ok(());
        }
        Some(other) => anyhow::bail!("--only {other}: unknown scenario (sfu, adaptive, ladder)"),
    }
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
        sfu::resummarize(&mut report["sfu"]);
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
    let mut report = report;
    // The SFU and adaptive figures are measured by `--only sfu` / `--only adaptive`
    // (`./dev bench sfu`, `./dev bench adaptive`): an earlier run's are kept, with their dates.
    if let Some(old) = args
        .json
        .as_ref()
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
    {
        for section in ["sfu", "adaptive"] {
            for key in ["", "_date", "_command", "_machine", "_note"] {
                let key = format!("{section}{key}");
                if let Some(v) = old.get(&key) {
                    report[key] = v.clone();
                }
            }
        }
    }
    let table = table(&report);
    println!("{table}");
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")?;
    }
    write_md(&args, &report, &table)
}
/// `--only sfu`: the SFU benchmark, put into the report `--json` holds (or a new one).
async fn only_sfu(args: &Args) -> Result<()> {
    let dir = args
        .agents_dir
        .as_ref()
        .context("--only sfu needs --agents-dir")?;
    let spec = sfu::Spec {
        engines: args
            .sfu_engines
            .split(',')
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect(),
        ks: sfu::parse_ks(&args.sfu)?,
        janus: args.sfu_janus,
    };
    let bins = binaries(args)?;
    let mut report = match args.json.as_ref().filter(|p| p.exists()) {
        Some(p) => serde_json::from_slice(&std::fs::read(p)?)
            .with_context(|| format!("{}", p.display()))?,
        None => json!({"date": date(), "machine": machine(), "command": args.command}),
    };
    report["sfu"] = sfu::run(&bins, dir, &spec).await?;
    report["sfu_date"] = json!(date());
    report["sfu_command"] = json!(args.command);
    report["sfu_machine"] = machine();
    report["sfu_note"] = json!(args.sfu_note);
    if let Some(json_out) = &args.json {
        std::fs::write(json_out, serde_json::to_string_pretty(&report)? + "\n")?;
    }
    println!("{}", sfu_report::markdown(&report));
    if report.get("results").is_some() {
        let table = table(&report);
        write_md(args, &report, &table)
    } else {
        if let Some(path) = &args.md {
            std::fs::write(path, sfu_report::markdown(&report))?;
        }
        Ok(())
    }
}

/// `--only adaptive`: the adaptive benchmark, put into the report `--json` holds (or a new
/// one).
async fn only_adaptive(args: &Args) -> Result<()> {
    let dir = args
        .agents_dir
        .as_ref()
        .context("--only adaptive needs --agents-dir")?;
    let mut report = match args.json.as_ref().filter(|p| p.exists()) {
        Some(p) => serde_json::from_slice(&std::fs::read(p)?)
            .with_context(|| format!("{}", p.display()))?,
        None => json!({"date": date(), "machine": machine(), "command": args.command}),
    };
    let setups: Vec<&str> = args.adaptive_setups.split(',').map(str::trim).collect();
    report["adaptive"] = adaptive::run(&binaries(args)?, dir, &setups).await?;
    report["adaptive_date"] = json!(date());
    report["adaptive_command"] = json!(args.command);
    report["adaptive_machine"] = machine();
    report["adaptive_note"] = json!(args.adaptive_note);
    if let Some(json_out) = &args.json {
        std::fs::write(json_out, serde_json::to_string_pretty(&report)? + "\n")?;
    }
    println!("{}", adaptive_report::markdown(&report));
    if report.get("results").is_some() {
        let table = table(&report);
        write_md(args, &report, &table)
    } else {
        if let Some(path) = &args.md {
            std::fs::write(path, adaptive_report::markdown(&report))?;
        }
        Ok(())
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
