//! The media relay scenario (relay-agent; not the signalling message relay of
//! `scenarios.rs`): one origin (producer-agent, 1280x720, 30 fps, 2 Mbit/s VP8, shared
//! encoding) on node 0 of a 3-node cluster, R relays on the other nodes, V viewers per relay
//! (`consumer-agent --stream --sink encoded`, placed by the cluster). Per run: the origin's
//! and each relay's CPU (`/proc`) over a window, every viewer's frame rate. Then, once:
//! first frame through a relay and from the origin (joiners), the latency a hop adds (a viewer
//! of the origin and one of a relay on this machine log each frame's hash and arrival time;
//! matched frames' difference), and how long a killed relay's viewers go without frames.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::fanout::{first_frame, Piped, HELD_FPS};
use crate::procs::{cpu_us, machine_jiffies, percentile, Binaries, Target, Topo};

const WINDOW: Duration = Duration::from_secs(8);
const STREAM: &str = "tree";
/// Each relay's --max-consumers: room for the largest V, so that the origin is not chosen.
const CAPACITY: usize = 8;
const JOINERS: usize = 5;

/// `1:0,4,8;2:0,8`: viewers per relay, per relay count.
pub fn parse(spec: &str) -> Result<Vec<(usize, Vec<usize>)>> {
    spec.split(';')
        .filter(|s| !s.trim().is_empty())
        .map(|part| {
            let (r, vs) = part.split_once(':').context("expected RELAYS:V,V,…")?;
            let vs = vs
                .split(',')
                .map(|v| Ok(v.trim().parse::<usize>()?))
                .collect::<Result<Vec<_>>>()?;
            Ok((r.trim().parse()?, vs))
        })
        .collect()
}

/// The runs of `spec`, then the one-off measurements, and the targets' figures.
pub async fn run(bins: &Binaries, agents: &Path, spec: &[(usize, Vec<usize>)]) -> Result<Value> {
    let mut runs = Vec::new();
    for (relays, vs) in spec {
        for &v in vs {
            eprintln!("loadgen: relays R={relays} V={v} ...");
            let r = one(bins, agents, *relays, v).await.unwrap_or_else(
                |e| json!({"relays": relays, "viewers_per_relay": v, "error": format!("{e:#}")}),
            );
            eprintln!("loadgen: relays R={relays} V={v}: {r}");
            runs.push(r);
        }
    }
    eprintln!("loadgen: relays: first frame and hop latency ...");
    let hop = hop(bins, agents)
        .await
        .unwrap_or_else(|e| json!({"error": format!("{e:#}")}));
    eprintln!("loadgen: relays: {hop}");
    eprintln!("loadgen: relays: a relay killed ...");
    let kill = killed(bins, agents)
        .await
        .unwrap_or_else(|e| json!({"error": format!("{e:#}")}));
    eprintln!("loadgen: relays: {kill}");
    eprintln!("loadgen: relays: a signalling node killed ...");
    let node_kill = node_killed(bins, agents)
        .await
        .unwrap_or_else(|e| json!({"error": format!("{e:#}")}));
    eprintln!("loadgen: relays: {node_kill}");
    Ok(json!({"runs": runs, "hop": hop, "killed": kill, "node_killed": node_kill}))
}

fn origin(agents: &Path, port: u16) -> Command {
    origin_on(agents, &format!("ws://127.0.0.1:{port}"))
}

/// The origin, on the first of `servers` that answers (a comma-separated list).
fn origin_on(agents: &Path, servers: &str) -> Command {
    let mut cmd = Command::new(agents.join("producer-agent"));
    cmd.args(["--server", servers])
        .args(["--name", STREAM, "--source", "test"])
        .args(["--width", "1280", "--height", "720", "--fps", "30"])
        .args([
            "--video-codec",
            "vp8",
            "--encoding",
            "shared",
            "--bitrate",
            "2000000",
        ])
        .args(["--congestion-control", "disabled", "--fec", "false"])
        .args(["--stats-interval", "0.5"])
        .env("PRODUCER_LOG", "warn");
    cmd
}

fn relay(agents: &Path, port: u16, i: usize) -> Command {
    let mut cmd = Command::new(agents.join("relay-agent"));
    cmd.args(["--server", &format!("ws://127.0.0.1:{port}")])
        .args([
            "--source-name",
            STREAM,
            "--name",
            &format!("{STREAM}-relay-{i}"),
        ])
        .args(["--max-consumers", &CAPACITY.to_string()])
        // This scenario's figures (BENCHMARKS.md "Relays") are the pipeline engine's; the
        // forward engine has its own scenario, `sfu`.
        .args(["--engine", "pipeline"])
        .args(["--stats-interval", "0.2"])
        .env("RELAY_LOG", "warn");
    cmd
}

/// A viewer: `target` is `--stream X` or `--producer-name X`.
fn viewer(agents: &Path, port: u16, target: &[&str], extra: &[&str]) -> Command {
    let mut cmd = Command::new(agents.join("consumer-agent"));
    cmd.args(["--server", &format!("ws://127.0.0.1:{port}")])
        .args(target)
        .args(["--sink", "encoded"])
        .args(extra)
        .env("CONSUMER_LOG", "warn");
    cmd
}

/// Waits until `pred` holds, or fails with `what` after `limit`.
async fn until(limit: Duration, what: &str, pred: impl Fn() -> bool) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !pred() {
        if Instant::now() > deadline {
            bail!("no {what} within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// The origin's shared encoder: keyframes it was asked for and encoded, so far.
fn origin_keyframes(origin: &Piped) -> u64 {
    origin
        .latest("producer-stats")
        .and_then(|s| s["shared_encoder"]["keyframes_forced"].as_u64())
        .unwrap_or(0)
}

/// A cluster with the origin and `n` relays serving it.
async fn tree(bins: &Binaries, agents: &Path, n: usize) -> Result<(Topo, Piped, Vec<Piped>)> {
    let topo = Topo::start(Target::Cluster(3), bins).await?;
    let origin = Piped::spawn(origin(agents, topo.port(0)))?;
    let relays: Vec<Piped> = (0..n)
        .map(|i| Piped::spawn(relay(agents, topo.port(1 + i % 2), i)))
        .collect::<Result<_>>()?;
    until(Duration::from_secs(60), "relay serving the origin", || {
        relays.iter().all(|r| {
            r.latest("relay-stats")
                .is_some_and(|s| s["frames_in"].as_u64() > Some(0))
        })
    })
    .await?;
    Ok((topo, origin, relays))
}

/// One run: the origin, `relays` relays, `v` viewers each; CPU and frame rates over the window.
async fn one(bins: &Binaries, agents: &Path, relays: usize, v: usize) -> Result<Value> {
    let (topo, origin, relay_procs) = tree(bins, agents, relays).await?;
    let viewers: Vec<Piped> = (0..relays * v)
        .map(|i| {
            let cmd = viewer(
                agents,
                topo.port(i),
                &["--stream", STREAM],
                &["--stats-interval", "0.5"],
            );
            Piped::spawn(cmd)
        })
        .collect::<Result<_>>()?;
    until(Duration::from_secs(60), "frames at every viewer", || {
        viewers.iter().all(|c| c.frames() > 0)
    })
    .await?;
    // Sixteen agents starting saturate two cores for a few seconds, and everyone catches up
    // after (viewers then count 40 fps): the window starts once that is over.
    let settle = if viewers.is_empty() { 1 } else { 8 };
    tokio::time::sleep(Duration::from_secs(settle)).await;
    let pids: Vec<u32> = std::iter::once(origin.pid())
        .chain(relay_procs.iter().map(Piped::pid))
        .collect();
    let cpu0: Vec<u64> = pids.iter().map(|&p| cpu_us(p)).collect();
    let frames0: Vec<u64> = viewers.iter().map(Piped::frames).collect();
    let (keyframes0, machine0) = (origin_keyframes(&origin), machine_jiffies());
    let t0 = Instant::now();
    tokio::time::sleep(WINDOW).await;
    let dt = t0.elapsed().as_secs_f64();
    let machine1 = machine_jiffies();
    let machine_busy = (machine1.0 - machine0.0) as f64 / (machine1.1 - machine0.1).max(1) as f64;
    let keyframes = origin_keyframes(&origin).saturating_sub(keyframes0);
    let pct: Vec<f64> = pids
        .iter()
        .zip(&cpu0)
        .map(|(&p, c0)| ((cpu_us(p) - c0) as f64 / 1e6 / dt * 1000.0).round() / 10.0)
        .collect();
    let fps: Vec<f64> = viewers
        .iter()
        .zip(&frames0)
        .map(|(c, f0)| ((c.frames() - f0) as f64 / dt * 10.0).round() / 10.0)
        .collect();
    let served: Vec<u64> = relay_procs
        .iter()
        .map(|r| {
            r.latest("relay-stats")
                .and_then(|s| s["consumers"].as_u64())
                .unwrap_or(0)
        })
        .collect();
    let out_kbps: Vec<f64> = relay_procs
        .iter()
        .map(|r| {
            r.latest("relay-stats")
                .and_then(|s| s["bitrate_out_bps"].as_f64())
                .map_or(0.0, |b| (b / 1000.0).round())
        })
        .collect();
    let min_fps = fps.iter().copied().fold(f64::INFINITY, f64::min);
    drop(viewers);
    drop(relay_procs);
    drop(origin);
    drop(topo);
    Ok(json!({
        "relays": relays,
        "viewers_per_relay": v,
        "origin_cpu_pct": pct[0],
        "origin_keyframes_forced_in_window": keyframes,
        "machine_busy_pct": (machine_busy * 1000.0).round() / 10.0,
        "relay_cpu_pct": &pct[1..],
        "relay_consumers": served,
        "relay_out_kbps": out_kbps,
        "viewer_fps": fps,
        "min_fps": if min_fps.is_finite() { json!(min_fps) } else { Value::Null },
        "held": !min_fps.is_finite() || min_fps >= HELD_FPS,
    }))
}

/// `HASH MICROS` lines of a frame log.
fn frame_log(path: &Path) -> HashMap<String, u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (hash, at) = l.split_once(' ')?;
            Some((hash.to_string(), at.parse().ok()?))
        })
        .collect()
}

/// First frame through the relay and from the origin; the latency of one hop.
async fn hop(bins: &Binaries, agents: &Path) -> Result<Value> {
    let (topo, _origin, _relays) = tree(bins, agents, 1).await?;
    let mut through_relay = Vec::new();
    let mut from_origin = Vec::new();
    for _ in 0..JOINERS {
        let by_stream = viewer(
            agents,
            topo.port(2),
            &["--stream", STREAM],
            &["--frames", "1", "--timeout", "30"],
        );
        through_relay.push(first_frame(by_stream).await?);
        let direct = viewer(
            agents,
            topo.port(2),
            &["--producer-name", STREAM],
            &["--frames", "1", "--timeout", "30"],
        );
        from_origin.push(first_frame(direct).await?);
    }
    through_relay.sort_unstable();
    from_origin.sort_unstable();
    // Two viewers side by side, one on the origin, one on the relay, logging every frame.
    let dir = std::env::temp_dir().join(format!("loadgen-hop-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (direct_log, relayed_log) = (dir.join("direct.log"), dir.join("relayed.log"));
    let relay_name = format!("{STREAM}-relay-0");
    let logs = [
        (&direct_log, STREAM.to_string()),
        (&relayed_log, relay_name),
    ];
    let watchers: Vec<Piped> = logs
        .iter()
        .map(|(log, producer)| {
            let log = log.to_string_lossy().to_string();
            let extra = ["--frame-log", log.as_str(), "--stats-interval", "0.5"];
            Piped::spawn(viewer(
                agents,
                topo.port(2),
                &["--producer-name", producer],
                &extra,
            ))
        })
        .collect::<Result<_>>()?;
    until(Duration::from_secs(60), "frames at both watchers", || {
        watchers.iter().all(|c| c.frames() > 0)
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    drop(watchers);
    let (direct, relayed) = (frame_log(&direct_log), frame_log(&relayed_log));
    let _ = std::fs::remove_dir_all(&dir);
    let mut added_ms: Vec<f64> = relayed
        .iter()
        .filter_map(|(hash, at)| Some((*at as f64 - *direct.get(hash)? as f64) / 1000.0))
        .collect();
    added_ms.sort_by(|a, b| a.total_cmp(b));
    Ok(json!({
        "joiners": JOINERS,
        "first_frame_through_relay_ms": through_relay,
        "first_frame_from_origin_ms": from_origin,
        "first_frame_through_relay_median_ms": through_relay.get(through_relay.len() / 2),
        "first_frame_from_origin_median_ms": from_origin.get(from_origin.len() / 2),
        "frames_matched": added_ms.len(),
        "frames_direct": direct.len(),
        "frames_relayed": relayed.len(),
        "hop_added_ms_median": percentile(&added_ms, 0.5),
        "hop_added_ms_p95": percentile(&added_ms, 0.95),
    }))
}

/// The origin on node 0 of two (both in its server list), a viewer on node 1; SIGKILL node 0:
/// the origin resumes its signalling on node 1, and the media, peer to peer, goes on. The
/// viewer's longest time without a new frame from the kill, over 10 s, polled every 100 ms.
/// (`tests/agents.rs` checks the session survives; the figure is this benchmark's.)
async fn node_killed(bins: &Binaries, agents: &Path) -> Result<Value> {
    let topo = Topo::start(Target::Cluster(2), bins).await?;
    let servers = format!(
        "ws://127.0.0.1:{},ws://127.0.0.1:{}",
        topo.port(0),
        topo.port(1)
    );
    let _origin = Piped::spawn(origin_on(agents, &servers))?;
    let target = ["--producer-name", STREAM];
    let watcher = Piped::spawn(viewer(
        agents,
        topo.port(1),
        &target,
        &["--stats-interval", "0.1"],
    ))?;
    until(Duration::from_secs(60), "frames at the viewer", || {
        watcher.frames() > 30
    })
    .await?;
    let kill_at = Instant::now();
    // SAFETY: a plain kill(2) of our own child.
    if unsafe { libc::kill(topo.server_pid(0) as i32, libc::SIGKILL) } != 0 {
        bail!("cannot kill node 0: {}", std::io::Error::last_os_error());
    }
    let (mut last, mut last_at, mut gap) = (watcher.frames(), kill_at, Duration::ZERO);
    while kill_at.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let n = watcher.frames();
        if n > last {
            gap = gap.max(last_at.elapsed());
            (last, last_at) = (n, Instant::now());
        }
    }
    gap = gap.max(last_at.elapsed());
    // (one session all along: the origin resumed, nobody was placed again)
    let sessions = watcher.stats().and_then(|s| s["sessions"].as_u64());
    Ok(json!({
        "stall_ms": gap.as_millis() as u64,
        "viewer_sessions": sessions,
    }))
}

/// Two relays, four viewers by stream; SIGKILL one relay: how long its viewers go without
/// frames (from the kill to their next frame), polled every 100 ms.
async fn killed(bins: &Binaries, agents: &Path) -> Result<Value> {
    let (topo, _origin, mut relays) = tree(bins, agents, 2).await?;
    let viewers: Vec<Piped> = (0..4)
        .map(|i| {
            let cmd = viewer(
                agents,
                topo.port(i),
                &["--stream", STREAM],
                &["--stats-interval", "0.1"],
            );
            Piped::spawn(cmd)
        })
        .collect::<Result<_>>()?;
    until(Duration::from_secs(60), "frames at every viewer", || {
        viewers.iter().all(|c| c.frames() > 30)
    })
    .await?;
    let on_victim = relays[0]
        .latest("relay-stats")
        .and_then(|s| s["consumers"].as_u64())
        .unwrap_or(0);
    let victim = relays.remove(0);
    let kill_at = Instant::now();
    // SAFETY: a plain kill(2) of our own child.
    unsafe { libc::kill(victim.pid() as i32, libc::SIGKILL) };
    // Each viewer's longest time without a new frame, from the kill, over 12 s.
    let mut last: Vec<(u64, Instant)> = viewers.iter().map(|v| (v.frames(), kill_at)).collect();
    let mut gaps = vec![Duration::ZERO; viewers.len()];
    while kill_at.elapsed() < Duration::from_secs(12) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        for (i, v) in viewers.iter().enumerate() {
            let n = v.frames();
            if n > last[i].0 {
                gaps[i] = gaps[i].max(last[i].1.elapsed());
                last[i] = (n, Instant::now());
            }
        }
    }
    let recovered = last
        .iter()
        .filter(|(_, at)| at.elapsed() < Duration::from_millis(800))
        .count();
    drop(victim);
    // The killed relay's viewers are the ones with a gap (the others' frames never stopped).
    let mut affected: Vec<u64> = gaps
        .iter()
        .filter(|g| **g > Duration::from_millis(800))
        .map(|g| g.as_millis() as u64)
        .collect();
    affected.sort_unstable();
    Ok(json!({
        "viewers": viewers.len(),
        "viewers_with_frames_at_the_end": recovered,
        "on_killed_relay": on_victim,
        "gaps_ms": affected,
        "worst_gap_ms": affected.last(),
        "stall_timeout_s": 3,
    }))
}

/// The relay-tree section: origin and relay CPU and the viewers' worst frame rate per run,
/// first frame, a hop's latency, a killed relay; then the targets.
pub fn markdown(report: &Value) -> String {
    let tree = &report["relay_tree"];
    let mut s = String::from("\n## Relays: one origin, relays, viewers\n\n");
    s += &format!(
        "A 3-node cluster on one Redis; the origin (producer-agent, test pattern 1280x720, 30 fps, \
         VP8 at 2 Mbit/s, shared encoding, no congestion control or FEC) on node 0; R relay-agents \
         (`--max-consumers {}`) on nodes 1 and 2; R×V viewers (`consumer-agent --stream --sink \
         encoded`) spread over the nodes, placed by the cluster. CPU: each process from `/proc` \
         over an 8 s window once every viewer has frames; everything runs on this machine's \
         cores. Measured {}.\n\n\
         | relays | viewers per relay | origin CPU % | origin keyframes forced | relay CPU % | relay consumers | relay out kbit/s | min viewer fps | machine busy % |\n\
         |---:|---:|---:|---:|---|---|---|---:|---:|\n",
        8,
        report["relay_tree_date"].as_str().unwrap_or(report["date"].as_str().unwrap_or("")),
    );
    let runs = tree["runs"].as_array().cloned().unwrap_or_default();
    for r in &runs {
        if let Some(e) = r.get("error") {
            s += &format!(
                "| {} | {} | failed: {} | | | | | | |\n",
                r["relays"], r["viewers_per_relay"], e
            );
            continue;
        }
        let list = |k: &str| {
            r[k].as_array()
                .map(|a| {
                    a.iter()
                        .map(|v| v.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default()
        };
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r["relays"],
            r["viewers_per_relay"],
            r["origin_cpu_pct"],
            r["origin_keyframes_forced_in_window"],
            list("relay_cpu_pct"),
            list("relay_consumers"),
            list("relay_out_kbps"),
            r["min_fps"]
                .as_f64()
                .map_or("–".to_string(), |f| f.to_string()),
            r["machine_busy_pct"],
        );
    }
    let find = |relays: u64, v: u64| {
        runs.iter().find(|r| {
            r["relays"].as_u64() == Some(relays)
                && r["viewers_per_relay"].as_u64() == Some(v)
                && r.get("error").is_none()
        })
    };
    // Relay CPU per added viewer: least squares over the one-relay runs.
    let points: Vec<(f64, f64)> = runs
        .iter()
        .filter(|r| r["relays"].as_u64() == Some(1) && r.get("error").is_none())
        .filter_map(|r| {
            Some((
                r["viewers_per_relay"].as_f64()?,
                r["relay_cpu_pct"][0].as_f64()?,
            ))
        })
        .collect();
    let per_viewer = crate::fanout::slope(&points);
    let hop = &tree["hop"];
    let kill = &tree["killed"];
    s += &format!(
        "\n| | |\n|---|---:|\n\
         | relay CPU % per added viewer (fit over the one-relay runs) | {} |\n\
         | first frame through a relay, session start → frame, median of {} (ms) | {} |\n\
         | first frame from the origin, the same way (ms) | {} |\n\
         | latency a hop adds, median / p95 of {} matched frames (ms) | {} / {} |\n\
         | killed relay: its viewers' longest time without frames (ms) | {} |\n\
         | killed signalling node (the origin's): its viewer's longest time without frames (ms) | {} |\n\n",
        per_viewer.map_or("–".into(), |v| format!("{:.2}", v)),
        hop["joiners"],
        hop["first_frame_through_relay_median_ms"],
        hop["first_frame_from_origin_median_ms"],
        hop["frames_matched"],
        hop["hop_added_ms_median"],
        hop["hop_added_ms_p95"],
        kill["gaps_ms"],
        // (not measured by runs older than that figure)
        tree["node_killed"]["stall_ms"]
            .as_f64()
            .map_or("not measured".into(), |v| v.to_string()),
    );
    s += "Hop latency: a viewer of the origin and a viewer of the relay, side by side on this \
          machine, log each encoded frame's hash and arrival time (`consumer-agent --frame-log`); \
          the relay forwards the frames unchanged, so equal hashes are the same frame, and the \
          difference is what the hop (relay receive, jitter buffer, depayload, payload, \
          encrypt, send) adds. A killed relay's viewers notice by their media stopping \
          (`--stall-timeout`, 3 s) and are placed again. A killed signalling node: the origin \
          (on node 0 of two, both in its `--server` list) resumes on node 1 while its viewer \
          there keeps its session; the media, peer to peer, should not notice.\n\n";
    let mut targets = Vec::new();
    if let (Some(idle), Some(full)) = (find(2, 0), find(2, 8)) {
        if let (Some(a), Some(b)) = (
            idle["origin_cpu_pct"].as_f64(),
            full["origin_cpu_pct"].as_f64(),
        ) {
            let change = (b - a) / a * 100.0;
            targets.push(format!(
                "| origin CPU, 2 relays × 8 viewers vs 2 relays and none | {a} % → {b} % ({change:+.1} %) | within ±20 % | {} |",
                if change.abs() <= 20.0 { "yes" } else { "**no**" }
            ));
        }
        if let Some(f) = full["min_fps"].as_f64() {
            targets.push(format!(
                "| every viewer's frame rate, 2 relays × 8 viewers (min fps) | {f} | ≥ {HELD} | {} |",
                if f >= HELD_FPS { "yes" } else { "**no**" },
                HELD = HELD_FPS
            ));
        }
    }
    if let Some(ms) = hop["hop_added_ms_median"].as_f64() {
        targets.push(format!(
            "| latency one relay hop adds (median ms) | {ms} | ≤ 50 | {} |",
            if ms <= 50.0 { "yes" } else { "**no**" }
        ));
    }
    if let Some(ms) = kill["worst_gap_ms"].as_f64() {
        targets.push(format!(
            "| a killed relay's viewer: frames again after (ms) | {ms} | ≤ 5000 | {} |",
            if ms <= 5000.0 { "yes" } else { "**no**" }
        ));
    }
    // Media is peer to peer: replacing the signalling connection must not stop it.
    if let Some(ms) = tree["node_killed"]["stall_ms"].as_f64() {
        targets.push(format!(
            "| a killed signalling node's viewer: longest time without frames (ms) | {ms} | < 3000 | {} |",
            if ms < 3000.0 { "yes" } else { "**no**" }
        ));
    }
    if !targets.is_empty() {
        s += "### Relay targets\n\n| what | value | target | met |\n|---|---:|---|---|\n";
        s += &targets.join("\n");
        s += "\n";
    }
    s
}
