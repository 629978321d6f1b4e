//! The `sfu` scenario (issue 25): one origin (producer-agent, 1280x720, 30 fps, 2 Mbit/s VP8,
//! shared encoding) on one node, one relay-agent per engine serving it, and K light viewers
//! (`light_viewer.rs`, all in this process) on the relay, K growing while the machine holds
//! (every viewer ≥ 28 fps and < 0.5 % of its packets lost over the window). Per engine: the
//! relay's CPU and RSS at each K (`/proc`), their slopes over the Ks held (per added viewer),
//! the largest K held, the latency a hop adds (a light viewer of the origin and one of the
//! relay hash every frame, as consumer-agent's `--frame-log` does; matched frames'
//! difference), a joiner's first frame (session asked → first complete keyframe). The anchor,
//! in the same run: Janus' streaming plugin (`janus.rs`) with the same viewers.
//! Its report section is `sfu_report.rs`.

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::fanout::{slope, HELD_FPS};
use crate::janus::{self, Janus};
use crate::light_viewer::{host_address, Via, Viewer};
use crate::procs::{cpu_us, machine_jiffies, percentile, rss_kb, Binaries, Proc, Target, Topo};

const STREAM: &str = "sfu";
const RELAY: &str = "sfu-relay";
/// Loss above this share of a viewer's packets over the window: not held.
pub const HELD_LOSS_PCT: f64 = 0.5;
const WINDOW: Duration = Duration::from_secs(8);
const SETTLE: Duration = Duration::from_secs(3);
const JOINERS: usize = 5;
/// Viewers started at once; the next batch after a short pause (ICE and DTLS of hundreds of
/// peers at once would measure the handshakes, not the forwarding).
const BATCH: usize = 25;

pub struct Spec {
    pub engines: Vec<String>,
    pub ks: Vec<usize>,
    pub janus: bool,
}

/// `--sfu 10,25,50`: the Ks.
pub fn parse_ks(spec: &str) -> Result<Vec<usize>> {
    let mut ks: Vec<usize> = spec
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|k| Ok(k.trim().parse::<usize>()?))
        .collect::<Result<_>>()?;
    ks.sort_unstable();
    ks.dedup();
    anyhow::ensure!(!ks.is_empty() && ks[0] > 0, "--sfu: viewer counts above 0");
    Ok(ks)
}

/// Every engine, then Janus.
pub async fn run(bins: &Binaries, agents: &Path, spec: &Spec) -> Result<Value> {
    let host = host_address()?;
    let started = Instant::now();
    let mut engines = serde_json::Map::new();
    for engine in &spec.engines {
        eprintln!("loadgen: sfu engine {engine} ...");
        let v = match engine_args(agents, engine) {
            Err(why) => json!({"available": false, "why": why}),
            Ok(args) => match relay_run(bins, agents, &args, host, &spec.ks).await {
                Ok(v) => v,
                Err(e) => json!({"available": true, "error": format!("{e:#}")}),
            },
        };
        eprintln!("loadgen: sfu engine {engine}: {}", brief(&v));
        engines.insert(engine.clone(), v);
    }
    let janus = if spec.janus {
        eprintln!("loadgen: sfu janus ...");
        let v = janus_run(bins, host, &spec.ks)
            .await
            .unwrap_or_else(|e| json!({"error": format!("{e:#}")}));
        eprintln!("loadgen: sfu janus: {}", brief(&v));
        v
    } else {
        Value::Null
    };
    Ok(json!({
        "host_address": host.to_string(),
        "ks": spec.ks,
        "engine_order": spec.engines,
        "engines": engines,
        "janus": janus,
        "seconds": started.elapsed().as_secs(),
    }))
}

/// The figures without the runs, for the progress line.
fn brief(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("runs");
    }
    v
}

/// The relay-agent flags for `engine`, or why this relay-agent cannot run it: a relay-agent
/// without `--engine` has today's pipeline only.
pub fn engine_args(agents: &Path, engine: &str) -> std::result::Result<Vec<String>, String> {
    let help = Command::new(agents.join("relay-agent"))
        .arg("--help")
        .output()
        .map_err(|e| format!("relay-agent --help: {e}"))?;
    let help = String::from_utf8_lossy(&help.stdout);
    let Some(at) = help.find("--engine <") else {
        return match engine {
            "pipeline" => Ok(Vec::new()),
            _ => Err(format!(
                "this relay-agent has no --engine flag (only the pipeline engine): `{engine}` not available"
            )),
        };
    };
    let values = help[at..]
        .split_once("[possible values:")
        .and_then(|(_, r)| r.split_once(']'))
        .map(|(v, _)| v.to_string())
        .unwrap_or_default();
    if !values.split(',').any(|v| v.trim() == engine) {
        return Err(format!(
            "relay-agent --engine takes [{}], not `{engine}`",
            values.trim()
        ));
    }
    Ok(vec!["--engine".into(), engine.into()])
}

fn origin(agents: &Path, port: u16) -> Command {
    let mut cmd = Command::new(agents.join("producer-agent"));
    cmd.args(["--server", &format!("ws://127.0.0.1:{port}")])
        .args(["--name", STREAM, "--source", "test"])
        .args(["--width", "1280", "--height", "720", "--fps", "30"])
        .args(["--video-codec", "vp8", "--encoding", "shared"])
        .args(["--bitrate", "2000000"])
        .args(["--congestion-control", "disabled", "--fec", "false"])
        .env("PRODUCER_LOG", "warn");
    cmd
}

fn relay(agents: &Path, port: u16, engine: &[String]) -> Command {
    let mut cmd = Command::new(agents.join("relay-agent"));
    cmd.args(["--server", &format!("ws://127.0.0.1:{port}")])
        .args(["--source-name", STREAM, "--name", RELAY])
        .args(["--max-consumers", "100000"])
        .args(engine)
        .env("RELAY_LOG", "warn");
    cmd
}

/// Waits for `pred`, failing with `what` after `limit`.
async fn until(limit: Duration, what: &str, mut pred: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !pred() {
        if Instant::now() > deadline {
            bail!("no {what} within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

async fn relay_run(
    bins: &Binaries,
    agents: &Path,
    engine: &[String],
    host: IpAddr,
    ks: &[usize],
) -> Result<Value> {
    let topo = Topo::start(Target::Single, bins).await?;
    let port = topo.port(0);
    let _origin = Proc::spawn(origin(agents, port), bins.log.as_ref())?;
    let mut relay = Proc::spawn(relay(agents, port, engine), bins.log.as_ref())?;
    let on = |producer: &str| Via::Node {
        port,
        producer: producer.into(),
    };
    let hop = hop(on(STREAM), on(RELAY), host).await?;
    if let Some(status) = relay.0.try_wait()? {
        bail!("the relay exited: {status}");
    }
    // a viewer of the origin all along: the source's own frame rate in each window, to tell
    // a relay that cannot keep up from an origin the machine slowed down
    let reference = Viewer::spawn(on(STREAM), host, false);
    let mut out = ladder(relay.pid(), on(RELAY), host, ks, Some(&reference)).await?;
    out["available"] = json!(true);
    out["hop"] = hop;
    drop(topo);
    Ok(out)
}

async fn janus_run(bins: &Binaries, host: IpAddr, ks: &[usize]) -> Result<Value> {
    janus::available()?;
    let j = Janus::start(host, bins.log.as_ref()).await?;
    let via = Via::Janus {
        port: j.http_port,
        mountpoint: janus::MOUNTPOINT,
    };
    let out = ladder(j.janus.pid(), via, host, ks, None).await?;
    drop(j);
    Ok(out)
}

/// A viewer of the origin and one of the relay, both hashing frames: the latency the hop adds
/// (p50/p95 over ~10 s of matched frames). Also the wait until the relay serves.
async fn hop(direct: Via, relayed: Via, host: IpAddr) -> Result<Value> {
    let (a, b) = (
        Viewer::spawn(direct, host, true),
        Viewer::spawn(relayed, host, true),
    );
    until(
        Duration::from_secs(60),
        "frames at both hop viewers",
        || a.frames() > 0 && b.frames() > 0,
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e} ({})", ended(&[&a, &b])))?;
    // the first seconds of a new session (jitter buffers filling, the relay's pipeline
    // starting) are not what a hop adds: frames from 3 s on are matched, for 10 s
    tokio::time::sleep(Duration::from_secs(3)).await;
    let len = |v: &Viewer| {
        v.stats
            .lock()
            .unwrap()
            .tally
            .log
            .as_ref()
            .map_or(0, Vec::len)
    };
    let from = len(&b);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let log = |v: &Viewer| {
        v.stats
            .lock()
            .unwrap()
            .tally
            .log
            .clone()
            .unwrap_or_default()
    };
    let direct: std::collections::HashMap<u64, u64> = log(&a).into_iter().collect();
    let mut added: Vec<f64> = log(&b)
        .into_iter()
        .skip(from)
        .filter_map(|(h, at)| Some((at as f64 - *direct.get(&h)? as f64) / 1000.0))
        .collect();
    added.sort_by(|x, y| x.total_cmp(y));
    Ok(json!({
        "frames_relayed": len(&b) - from,
        "frames_matched": added.len(),
        "hop_added_ms_p50": percentile(&added, 0.5),
        "hop_added_ms_p95": percentile(&added, 0.95),
    }))
}

fn ended(viewers: &[&Viewer]) -> String {
    let why: Vec<String> = viewers
        .iter()
        .filter_map(|v| v.stats.lock().unwrap().ended.clone())
        .collect();
    if why.is_empty() {
        "every viewer still running".into()
    } else {
        format!("ended: {}", why.join("; "))
    }
}

/// K = 0, then each K of `ks` (viewers added to those running), until one is not held; the
/// joiners after the first K. The server's (`pid`) CPU and RSS per viewer from the Ks held.
async fn ladder(
    pid: u32,
    via: Via,
    host: IpAddr,
    ks: &[usize],
    reference: Option<&Viewer>,
) -> Result<Value> {
    let mut viewers: Vec<Viewer> = Vec::new();
    let mut runs = vec![window(pid, &viewers, 0, reference).await];
    let mut joiners = Vec::new();
    for (i, &k) in ks.iter().enumerate() {
        eprintln!("loadgen: sfu K={k} ...");
        let t = Instant::now();
        while viewers.len() < k {
            let n = (k - viewers.len()).min(BATCH);
            viewers.extend((0..n).map(|_| Viewer::spawn(via.clone(), host, false)));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let limit = Duration::from_secs(30 + k as u64 / 5);
        let got = until(limit, "frames at every viewer", || {
            viewers.iter().all(|v| v.frames() > 0)
        })
        .await;
        let r = match got {
            Err(e) => {
                let without = viewers.iter().filter(|v| v.frames() == 0).count();
                let refs: Vec<&Viewer> = viewers.iter().collect();
                json!({"k": k, "held": false,
                    "error": format!("{e}: {without} of {k} without frames ({})", ended(&refs))})
            }
            Ok(()) => {
                let joined_s = t.elapsed().as_secs_f64();
                tokio::time::sleep(SETTLE).await;
                let mut r = window(pid, &viewers, k, reference).await;
                // The cores are shared (other work may take them for a while): a K not held
                // gets a second window, and a third when the second still points outside the
                // server (the origin slowed, the machine saturated); the last counts, the
                // earlier ones are kept.
                let mut earlier = Vec::new();
                while r["held"] != true
                    && earlier.len() < 2
                    && (earlier.is_empty() || r["limited_by"] != "server")
                {
                    tokio::time::sleep(SETTLE).await;
                    earlier.push(short(&r));
                    r = window(pid, &viewers, k, reference).await;
                }
                if !earlier.is_empty() {
                    r["earlier_windows"] = json!(earlier);
                }
                r["all_joined_s"] = json!((joined_s * 10.0).round() / 10.0);
                r
            }
        };
        eprintln!("loadgen: sfu K={k}: {}", short(&r));
        let held = r["held"].as_bool() == Some(true);
        runs.push(r);
        if i == 0 && held {
            for _ in 0..JOINERS {
                joiners.push(joiner(via.clone(), host).await?);
            }
        }
        if !held {
            break;
        }
    }
    drop(viewers);
    Ok(summary(runs, joiners))
}

fn short(r: &Value) -> Value {
    let mut r = r.clone();
    if let Some(o) = r.as_object_mut() {
        o.remove("viewer_fps");
        o.remove("viewer_loss_pct");
    }
    r
}

/// One viewer joining the running stream: session asked → first complete keyframe, ms.
async fn joiner(via: Via, host: IpAddr) -> Result<u64> {
    let v = Viewer::spawn(via, host, false);
    until(Duration::from_secs(30), "first frame at a joiner", || {
        v.frames() > 0
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e} ({})", ended(&[&v])))?;
    let ms = v.stats.lock().unwrap().first_frame_ms();
    ms.context("a joiner with frames but no first-frame time")
}

/// The server's CPU and RSS and each viewer's frame rate and loss over the window; the
/// reference viewer's frame rate; what a K not held was limited by.
async fn window(pid: u32, viewers: &[Viewer], k: usize, reference: Option<&Viewer>) -> Value {
    let snap = |v: &Viewer| {
        let s = v.stats.lock().unwrap();
        (s.tally.frames, s.tally.expected(), s.tally.packets)
    };
    let before: Vec<_> = viewers.iter().map(snap).collect();
    let ref0 = reference.map(snap);
    let (cpu0, gen0, m0) = (cpu_us(pid), cpu_us(std::process::id()), machine_jiffies());
    let t0 = Instant::now();
    tokio::time::sleep(WINDOW).await;
    let dt = t0.elapsed().as_secs_f64();
    let (cpu1, gen1, m1) = (cpu_us(pid), cpu_us(std::process::id()), machine_jiffies());
    let after: Vec<_> = viewers.iter().map(snap).collect();
    let source_fps = ref0
        .zip(reference.map(snap))
        .map(|(b, a)| ((a.0 - b.0) as f64 / dt * 10.0).round() / 10.0);
    let pct = |a: u64, b: u64| ((b - a) as f64 / 1e6 / dt * 1000.0).round() / 10.0;
    let fps: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| ((a.0 - b.0) as f64 / dt * 10.0).round() / 10.0)
        .collect();
    let loss: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| {
            let expected = a.1.saturating_sub(b.1).max(1) as f64;
            let got = a.2.saturating_sub(b.2) as f64;
            (((expected - got) / expected * 100.0).max(0.0) * 100.0).round() / 100.0
        })
        .collect();
    let ended = viewers
        .iter()
        .filter(|v| v.stats.lock().unwrap().ended.is_some())
        .count();
    let min_fps = fps.iter().copied().fold(f64::INFINITY, f64::min);
    let max_loss = loss.iter().copied().fold(0.0, f64::max);
    let mut sorted = fps.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let machine = (m1.0 - m0.0) as f64 / (m1.1 - m0.1).max(1) as f64 * 100.0;
    let held = k == 0 || (min_fps >= HELD_FPS && max_loss < HELD_LOSS_PCT && ended == 0);
    // (a reading, not a measurement: what the figures of a K not held point at)
    let limited_by = match () {
        _ if held => Value::Null,
        _ if source_fps.is_some_and(|f| f < HELD_FPS) => {
            json!("origin slowed (its own viewer too)")
        }
        _ if machine >= 95.0 => json!("machine saturated"),
        _ => json!("server"),
    };
    json!({
        "k": k,
        "server_cpu_pct": pct(cpu0, cpu1),
        "server_rss_kb": rss_kb(pid),
        "generator_cpu_pct": pct(gen0, gen1),
        "machine_busy_pct": (machine * 10.0).round() / 10.0,
        "origin_viewer_fps": source_fps,
        "limited_by": limited_by,
        "min_fps": if k == 0 { Value::Null } else { json!(min_fps) },
        "median_fps": percentile(&sorted, 0.5),
        "max_loss_pct": max_loss,
        "viewers_ended": ended,
        "held": held,
        "viewer_fps": fps,
        "viewer_loss_pct": loss,
    })
}

/// Per added viewer: the server's CPU (% of a core) and RSS (KB), least squares over the Ks
/// held (K = 0 included); viewers per core is the CPU slope's inverse.
pub fn summary(runs: Vec<Value>, mut joiners: Vec<u64>) -> Value {
    let held: Vec<&Value> = runs
        .iter()
        .filter(|r| r["held"].as_bool() == Some(true))
        .collect();
    let fit = |key: &str| {
        let pts: Vec<(f64, f64)> = held
            .iter()
            .filter_map(|r| Some((r["k"].as_f64()?, r[key].as_f64()?)))
            .collect();
        slope(&pts)
    };
    let cpu = fit("server_cpu_pct");
    let rss = fit("server_rss_kb");
    joiners.sort_unstable();
    let largest = held.iter().filter_map(|r| r["k"].as_u64()).max();
    let stopped_by = runs
        .iter()
        .find(|r| r["held"].as_bool() == Some(false))
        .map(|r| r["k"].clone());
    json!({
        "cpu_pct_per_viewer": cpu.map(|v| (v * 1000.0).round() / 1000.0),
        "viewers_per_core": cpu.filter(|v| *v > 0.0).map(|v| (100.0 / v).round()),
        "rss_kb_per_viewer": rss.map(|v| v.round()),
        "largest_k_held": largest.filter(|&k| k > 0),
        "first_k_not_held": stopped_by,
        "joiners_first_frame_ms": joiners,
        "joiner_first_frame_ms_median": joiners.get(joiners.len() / 2),
        "runs": runs,
    })
}

/// The figures of an earlier run's `sfu` again from its runs (their rules may have changed).
pub fn resummarize(sfu: &mut Value) {
    let mut again = |v: &mut Value| {
        let Some(runs) = v["runs"].as_array().cloned() else {
            return;
        };
        let joiners = v["joiners_first_frame_ms"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        let mut s = summary(runs, joiners);
        for keep in ["available", "hop"] {
            if let Some(x) = v.get(keep) {
                s[keep] = x.clone();
            }
        }
        *v = s;
    };
    if let Some(engines) = sfu["engines"].as_object_mut() {
        engines.values_mut().for_each(&mut again);
    }
    again(&mut sfu["janus"]);
}
