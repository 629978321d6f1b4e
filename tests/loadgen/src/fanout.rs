//! The fanout scenario: one producer-agent (1280x720, 30 fps, 2 Mbit/s) and K consumer-agents
//! with `--sink encoded` on one node, once per encoding mode (`per-consumer`, `shared`) and
//! codec: the producer's CPU (`/proc`), each consumer's frame rate and bitrate over a window,
//! and the time from session start to first frame of consumers joining the running stream.
//! Its section of the report is [`markdown`].
//! Both modes run without congestion control and without FEC at the same fixed bitrate, so
//! that they send the same stream and only the number of encoders differs (webrtcsink without
//! congestion control encodes at `--max-bitrate` and adds 50 % FEC, per consumer).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::procs::{cpu_us, Binaries, Proc, Target, Topo};

/// Frame rate every consumer must get for a K to count as held.
pub const HELD_FPS: f64 = 28.0;
/// Measurement window once every consumer has frames.
const WINDOW: Duration = Duration::from_secs(8);
/// Consumers that join the running stream, one after the other, for time to first frame.
const JOINERS: usize = 5;
const BITRATE: &str = "2000000";

/// `vp8:1,2,4;h264:1,4`: the consumer counts per codec.
pub fn parse(spec: &str) -> Result<Vec<(String, Vec<usize>)>> {
    spec.split(';')
        .filter(|s| !s.trim().is_empty())
        .map(|part| {
            let (codec, ks) = part.split_once(':').context("expected CODEC:K,K,…")?;
            let ks = ks
                .split(',')
                .map(|k| Ok(k.trim().parse::<usize>()?))
                .collect::<Result<Vec<_>>>()?;
            Ok((codec.trim().to_string(), ks))
        })
        .collect()
}

/// Every codec, mode and K of `spec`.
pub async fn run(bins: &Binaries, agents: &Path, spec: &[(String, Vec<usize>)]) -> Result<Value> {
    let mut out = serde_json::Map::new();
    for (codec, ks) in spec {
        let mut modes = serde_json::Map::new();
        for mode in ["per-consumer", "shared"] {
            let mut runs = Vec::new();
            for (i, &k) in ks.iter().enumerate() {
                eprintln!("loadgen: fanout {codec} {mode} K={k} ...");
                // Joiners once per mode, on the second K (a running stream, a light load).
                let joiners = if i == 1.min(ks.len() - 1) { JOINERS } else { 0 };
                let r = match one(bins, agents, codec, mode, k, joiners).await {
                    Ok(r) => r,
                    Err(e) => json!({"k": k, "error": format!("{e:#}")}),
                };
                eprintln!("loadgen: fanout {codec} {mode} K={k}: {r}");
                let held = r["held"].as_bool() == Some(true);
                runs.push(r);
                // Past the first K the machine cannot hold, more only measures the overload.
                if !held && i > 0 {
                    break;
                }
            }
            modes.insert(mode.to_string(), summary(runs));
        }
        out.insert(codec.clone(), Value::Object(modes));
    }
    Ok(Value::Object(out))
}

/// The summaries again from the runs of an earlier report (their rules may have changed).
pub fn resummarize(fanout: &mut Value) {
    for modes in fanout
        .as_object_mut()
        .into_iter()
        .flat_map(|m| m.values_mut())
    {
        for mode in modes
            .as_object_mut()
            .into_iter()
            .flat_map(|m| m.values_mut())
        {
            let runs = mode["runs"].as_array().cloned().unwrap_or_default();
            *mode = summary(runs);
        }
    }
}

/// Producer CPU per added consumer (least squares over the Ks the machine held: past them the
/// CPU is saturated, not proportional), the largest K held, the joiners' median time to first
/// frame.
fn summary(runs: Vec<Value>) -> Value {
    let points: Vec<(f64, f64)> = runs
        .iter()
        .filter(|r| r["held"].as_bool() == Some(true))
        .filter_map(|r| Some((r["k"].as_f64()?, r["producer_cpu_pct"].as_f64()?)))
        .collect();
    let per_added = slope(&points);
    let largest_held = runs
        .iter()
        .filter(|r| r["held"].as_bool() == Some(true))
        .filter_map(|r| r["k"].as_u64())
        .max();
    let mut ttff: Vec<u64> = runs
        .iter()
        .flat_map(|r| {
            r["joiners_first_frame_ms"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|v| v.as_u64())
        .collect();
    ttff.sort_unstable();
    json!({
        "runs": runs,
        "producer_cpu_pct_per_added_consumer": per_added.map(|v| (v * 10.0).round() / 10.0),
        "largest_k_held": largest_held,
        "joiner_first_frame_ms_median": ttff.get(ttff.len() / 2),
    })
}

/// Least-squares slope of `points`.
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let n = points.len() as f64;
    let (mx, my) = (
        points.iter().map(|p| p.0).sum::<f64>() / n,
        points.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let var: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    (var > 0.0).then(|| points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum::<f64>() / var)
}

/// A child whose stdout lines are kept (an agent printing stats lines).
pub struct Piped {
    // (kept for its drop, which kills the agent)
    proc: Proc,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Piped {
    pub fn spawn(mut cmd: Command) -> Result<Piped> {
        cmd.stdout(Stdio::piped());
        let mut proc = Proc::spawn_piped(cmd)?;
        let stdout = proc.0.stdout.take().context("no stdout")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let keep = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                keep.lock().unwrap().push(line);
            }
        });
        Ok(Piped { proc, lines })
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// The latest stats line of `kind` (`relay-stats`, …).
    pub fn latest(&self, kind: &str) -> Option<Value> {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .rev()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["type"] == kind)
    }

    /// Every stats line of `kind` so far.
    pub fn all(&self, kind: &str) -> Vec<Value> {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["type"] == kind)
            .collect()
    }

    /// The latest `consumer-stats`.
    pub fn stats(&self) -> Option<Value> {
        self.latest("consumer-stats")
    }

    pub fn frames(&self) -> u64 {
        self.stats().and_then(|s| s["frames"].as_u64()).unwrap_or(0)
    }
}

fn consumer(agents: &Path, port: u16, extra: &[&str]) -> Command {
    let mut cmd = Command::new(agents.join("consumer-agent"));
    cmd.args(["--server", &format!("ws://127.0.0.1:{port}")])
        .args(["--producer-name", "fanout", "--sink", "encoded"])
        .args(extra)
        .env("CONSUMER_LOG", "warn");
    cmd
}

/// Runs `cmd` (a consumer with `--frames 1`): its session-to-first-frame time.
pub async fn first_frame(mut cmd: Command) -> Result<u64> {
    let res = tokio::task::spawn_blocking(move || {
        cmd.stdin(Stdio::null()).stderr(Stdio::null()).output()
    })
    .await??;
    let stdout = String::from_utf8_lossy(&res.stdout);
    let report: Value = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .with_context(|| format!("a joiner printed no report ({})", res.status))?;
    report["session_to_first_frame_ms"]
        .as_u64()
        .with_context(|| format!("no session_to_first_frame_ms in {report}"))
}

/// One run: a node, a producer in `mode`, `k` consumers measured over the window, then
/// `joiners` more consumers one after the other.
async fn one(
    bins: &Binaries,
    agents: &Path,
    codec: &str,
    mode: &str,
    k: usize,
    joiners: usize,
) -> Result<Value> {
    let topo = Topo::start(Target::Single, bins).await?;
    let port = topo.port(0);
    let mut cmd = Command::new(agents.join("producer-agent"));
    cmd.args(["--server", &format!("ws://127.0.0.1:{port}")])
        .args(["--name", "fanout", "--source", "test"])
        .args(["--width", "1280", "--height", "720", "--fps", "30"])
        .args(["--video-codec", codec, "--encoding", mode])
        .args(["--congestion-control", "disabled", "--fec", "false"])
        .env("PRODUCER_LOG", "warn");
    if mode == "shared" {
        cmd.args(["--bitrate", BITRATE]);
    } else {
        cmd.args(["--max-bitrate", BITRATE]);
    }
    let producer = Proc::spawn(cmd, bins.log.as_ref())?;
    let consumers: Vec<Piped> = (0..k)
        .map(|_| Piped::spawn(consumer(agents, port, &["--stats-interval", "0.5"])))
        .collect::<Result<_>>()?;
    // Every consumer has frames (and a second more to settle), or the run failed.
    let deadline = Instant::now() + Duration::from_secs(60);
    while consumers.iter().any(|c| c.frames() == 0) {
        if Instant::now() > deadline {
            let got = consumers.iter().filter(|c| c.frames() > 0).count();
            bail!("only {got} of {k} consumers got a frame within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (cpu0, frames0, t0) = (
        cpu_us(producer.pid()),
        consumers.iter().map(Piped::frames).collect::<Vec<_>>(),
        Instant::now(),
    );
    tokio::time::sleep(WINDOW).await;
    let dt = t0.elapsed().as_secs_f64();
    let cpu_pct = (cpu_us(producer.pid()) - cpu0) as f64 / 1e6 / dt * 100.0;
    let fps: Vec<f64> = consumers
        .iter()
        .zip(&frames0)
        .map(|(c, f0)| ((c.frames() - f0) as f64 / dt * 10.0).round() / 10.0)
        .collect();
    let bitrate_kbps: Vec<f64> = consumers
        .iter()
        .filter_map(|c| {
            // (the test source has no audio: the one stream is the video)
            let s = c.stats()?;
            let bps = s["streams"]
                .as_array()?
                .iter()
                .filter_map(|st| st["bitrate_bps"].as_f64())
                .fold(0.0, f64::max);
            Some((bps / 1000.0).round())
        })
        .collect();
    let min_fps = fps.iter().copied().fold(f64::INFINITY, f64::min);
    let mut joined = Vec::new();
    for _ in 0..joiners {
        let cmd = consumer(agents, port, &["--frames", "1", "--timeout", "30"]);
        joined.push(first_frame(cmd).await?);
    }
    drop(consumers);
    drop(producer);
    Ok(json!({
        "k": k,
        "producer_cpu_pct": (cpu_pct * 10.0).round() / 10.0,
        "consumer_fps": fps,
        "min_fps": min_fps,
        "held": min_fps >= HELD_FPS,
        "consumer_video_kbps": bitrate_kbps,
        "joiners_first_frame_ms": joined,
    }))
}

/// The fanout section: per codec, producer CPU and the consumers' worst frame rate per K, for
/// both modes side by side, then the targets.
pub fn markdown(report: &Value) -> String {
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
        HELD_FPS,
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
            HELD_FPS,
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
