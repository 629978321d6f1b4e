//! The `adaptive` scenario (issue 26): three viewers behind shaped links (unlimited,
//! 800 kbit/s, 250 kbit/s: each a consumer-agent decoding in a network namespace of its own,
//! a token bucket on its link, `tests/src/shaping.rs`), in three setups of one 1280x720 30 fps
//! VP8 test pattern with audio:
//!
//! - `forward`: a 3-layer ladder (`--encoding shared --layers 3`) through the forward relay,
//!   which picks each viewer's layer;
//! - `pipeline`: one shared 2 Mbit/s layer through the pipeline relay (what every viewer got
//!   before the ladder);
//! - `per-consumer`: viewers direct on a per-consumer origin (webrtcsink encodes for each,
//!   its congestion control following that viewer's link, scaling resolution with bitrate).
//!
//! Per setup and viewer, over seconds 10-30 of its session: frame rate, frozen time
//! (`watched.rs`: consumer-agent's own figure or its frame counter's, the larger),
//! video bitrate received, the height it decodes (and the relay's layer). Then the unlimited
//! link is cut to 800 kbit/s and the 800 kbit/s limit lifted, at once: the time until the cut
//! viewer decodes a lower layer (the forward relay's switch too), and until the lifted one is
//! back at 720 lines. Last, the ladder's cost: the producer's CPU with `--layers 3` against 1
//! (`ladder.rs`). Its report section is `adaptive_report.rs`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::fanout::Piped;
use crate::ladder;
use crate::procs::{free_port, machine_jiffies, Binaries};
use crate::shaping::ShapedLink;
use crate::watched::{frozen_between, height_of, watched};

const STREAM: &str = "adaptive";
/// The before first, then webrtcsink's own answer, then the ladder.
pub const SETUPS: [&str; 3] = ["pipeline", "per-consumer", "forward"];
/// The links, in the viewers' order: label, kbit/s (None: unlimited).
pub const LINKS: [(&str, Option<u32>); 3] = [
    ("unlimited", None),
    ("800k", Some(800)),
    ("250k", Some(250)),
];
const SETTLED_MS: u64 = 10_000;
const HELD_UNTIL_MS: u64 = 30_000;
/// How long a cut or a lift is watched for the step.
const AFTER_CHANGE: Duration = Duration::from_secs(20);
const TOP_HEIGHT: u64 = 720;
/// Seconds of measurement of each of the ladder's runs.
const LADDER_SECONDS: u64 = 10;

/// The setups asked for (of [`SETUPS`]), then the ladder's cost (`ladder`).
pub async fn run(bins: &Binaries, agents: &Path, asked: &[&str]) -> Result<Value> {
    for a in asked {
        anyhow::ensure!(
            SETUPS.contains(a) || *a == "ladder",
            "--adaptive-setups: unknown `{a}` (forward, pipeline, per-consumer, ladder)"
        );
    }
    let started = Instant::now();
    let mut setups = serde_json::Map::new();
    for setup in SETUPS.into_iter().filter(|s| asked.contains(s)) {
        eprintln!("loadgen: adaptive {setup} ...");
        let v = one(agents, setup)
            .await
            .unwrap_or_else(|e| json!({"error": format!("{e:#}")}));
        eprintln!("loadgen: adaptive {setup}: {v}");
        setups.insert(setup.into(), v);
    }
    // The ladder's cost: the `ladder` scenario's measurement, as `./dev bench ladder` runs it.
    let ladder = if asked.contains(&"ladder") {
        eprintln!("loadgen: adaptive ladder cost ...");
        ladder::run(bins, agents, LADDER_SECONDS)
            .await
            .unwrap_or_else(|e| json!({"error": format!("{e:#}")}))
    } else {
        Value::Null
    };
    Ok(json!({
        "setups": setups,
        "order": SETUPS.into_iter().filter(|s| asked.contains(s)).collect::<Vec<_>>(),
        "ladder": ladder,
        "seconds": started.elapsed().as_secs(),
    }))
}

/// The agent binary `name` with `args` (its stderr is discarded by [`Piped`]).
fn agent(agents: &Path, name: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(agents.join(name));
    cmd.args(args);
    cmd
}

/// The origin on `url`: `per-consumer` (webrtcsink encodes for each viewer, at most
/// 2 Mbit/s), else one shared encoding of `layers` layers (one: 2 Mbit/s) with the bitrate
/// fixed (its consumer is a relay on this host: nothing to follow). One layer is today's
/// origin, without `--layers`.
fn origin(agents: &Path, url: &str, setup: &str, layers: usize) -> Command {
    let mut args = vec!["--server", url, "--name", STREAM, "--source", "test"];
    args.extend(["--width", "1280", "--height", "720", "--fps", "30"]);
    args.extend(["--video-codec", "vp8", "--audio", "--stats-interval", "0.5"]);
    let layers = layers.to_string();
    if setup == "per-consumer" {
        args.extend(["--encoding", "per-consumer", "--max-bitrate", "2000000"]);
    } else {
        args.extend(["--encoding", "shared", "--bitrate", "2000000"]);
        args.extend(["--congestion-control", "disabled"]);
        if layers != "1" {
            args.extend(["--layers", &layers]);
        }
    }
    agent(agents, "producer-agent", &args)
}

/// Waits until `pred` holds, or fails with `what` after `limit`; the time it took.
async fn until(limit: Duration, what: &str, pred: impl Fn() -> bool) -> Result<Duration> {
    let start = Instant::now();
    while !pred() {
        if start.elapsed() > limit {
            bail!("no {what} within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(start.elapsed())
}

/// The session start (`elapsed_ms`) in a viewer's lines.
fn session_start(v: &Piped) -> Option<u64> {
    v.all("consumer-stats")
        .iter()
        .find(|l| l["session_id"].is_string())
        .and_then(|l| l["elapsed_ms"].as_u64())
}

fn elapsed_ms(v: &Piped) -> u64 {
    v.stats()
        .and_then(|l| l["elapsed_ms"].as_u64())
        .unwrap_or(0)
}

/// The layer the relay's latest stats line gives the viewer whose session is `v`'s.
fn layer(relay: Option<&Piped>, v: &Piped) -> Option<u64> {
    let session = v.stats()?["session_id"].as_str()?.to_string();
    let stats = relay?.latest("relay-stats")?;
    let viewers = stats["viewers"].as_array()?;
    viewers.iter().find(|x| x["session"] == session.as_str())?["layer"].as_u64()
}

/// Mean video bitrate received (kbit/s) over the lines between `from` and `to` ms.
fn video_kbps(lines: &[Value], from: u64, to: u64) -> Option<f64> {
    let rates: Vec<f64> = lines
        .iter()
        .filter(|l| (from..=to).contains(&l["elapsed_ms"].as_u64().unwrap_or(0)))
        .filter_map(|l| {
            let streams = l["streams"].as_array()?;
            let video = streams
                .iter()
                .filter(|s| s["codec"].as_str().is_some_and(|c| c.starts_with("video")));
            Some(
                video
                    .filter_map(|s| s["bitrate_bps"].as_f64())
                    .sum::<f64>()
                    .max(0.0),
            )
        })
        .collect();
    (!rates.is_empty())
        // (+ 0.0: no "-0" for a viewer that received nothing)
        .then(|| (rates.iter().sum::<f64>() / rates.len() as f64 / 100.0).round() / 10.0 + 0.0)
}

/// One setup: its processes, the settled window, then the cut and the lift.
async fn one(agents: &Path, setup: &str) -> Result<Value> {
    let links: Vec<ShapedLink> = LINKS
        .iter()
        .map(|(_, kbit)| match kbit {
            Some(k) => ShapedLink::limited(*k),
            None => ShapedLink::create(),
        })
        .collect::<Result<_>>()?;
    let hosts: Vec<String> = links.iter().map(ShapedLink::host_address).collect();
    let port = free_port();
    // The node on the first link's host end: the host's agents and every namespace (each has
    // a default route to the host) reach it there.
    let mut node = Command::new(agents.join("signalling-cluster"));
    node.args(["--host", &hosts[0], "--port", &port.to_string()]);
    let _node = Piped::spawn(node)?;
    let url = format!("ws://{}:{port}", hosts[0]);
    until(Duration::from_secs(10), "node listening", || {
        std::net::TcpStream::connect((hosts[0].as_str(), port)).is_ok()
    })
    .await?;
    let layers = if setup == "forward" { 3 } else { 1 };
    let _origin = Piped::spawn(origin(agents, &url, setup, layers))?;
    let relay = match setup {
        "per-consumer" => None,
        engine => {
            let mut args = vec!["--server", &url, "--source-name", STREAM];
            args.extend(["--name", "adaptive-relay", "--engine", engine]);
            args.extend(["--stats-interval", "0.2"]);
            if engine == "forward" {
                for h in &hosts {
                    args.extend(["--ice-address", h.as_str()]);
                }
            }
            let relay = Piped::spawn(agent(agents, "relay-agent", &args))?;
            until(
                Duration::from_secs(60),
                "relay attached to the origin",
                || {
                    relay.latest("relay-stats").is_some_and(|s| {
                        s["origin_id"].is_string()
                            && (s["frames_in"].as_u64() > Some(0)
                                || s["origin_packets"].as_u64() > Some(0))
                    })
                },
            )
            .await?;
            Some(relay)
        }
    };
    let target = if relay.is_some() {
        "--stream"
    } else {
        "--producer-name"
    };
    let viewers: Vec<Piped> = links
        .iter()
        .map(|link| {
            let mut cmd = link.command(&agents.join("consumer-agent"));
            cmd.args(["--server", &url, target, STREAM])
                .args(["--sink", "null", "--stats-interval", "0.2"])
                .args(["--timeout", "90", "--stall-timeout", "90"]);
            Piped::spawn(cmd)
        })
        .collect::<Result<_>>()?;
    let held = |v: &Piped| session_start(v).is_some_and(|s| elapsed_ms(v) >= s + HELD_UNTIL_MS);
    until(Duration::from_secs(90), "30 s of every session", || {
        viewers.iter().all(held)
    })
    .await?;
    let machine0 = machine_jiffies();
    let mut settled = Vec::new();
    for (((label, _), v), link) in LINKS.iter().zip(&viewers).zip(&links) {
        let s = session_start(v).context("no session")?;
        let lines = v.all("consumer-stats");
        let (from, to) = (s + SETTLED_MS, s + HELD_UNTIL_MS);
        let seen = watched(&lines, from, to);
        let frozen = frozen_between(&lines, from, to);
        settled.push(json!({
            "link": label,
            "fps": (seen.fps * 10.0).round() / 10.0,
            "frozen_ms": frozen,
            "frozen_pct": (frozen as f64 / seen.window_ms.max(1) as f64 * 1000.0).round() / 10.0,
            "longest_freeze_ms": seen.longest_freeze_ms,
            "video_kbps": video_kbps(&lines, from, to),
            "height": lines.last().and_then(height_of),
            "layer": layer(relay.as_ref(), v),
            "link_dropped_packets": link.dropped()?,
            // (a loaded machine's other loss: the viewer's socket not read in time)
            "socket_dropped_packets": link.socket_drops()?,
        }));
    }

    // The unlimited link cut to 800 kbit/s, the 800 kbit/s limit lifted. A step is timed only
    // from where it can happen: the cut viewer on the top layer, the lifted one below it.
    let (cut, lifted) = (&viewers[0], &viewers[1]);
    let cut_at = elapsed_ms(cut);
    let height_at = |v: &Piped| v.stats().as_ref().and_then(height_of);
    let (cut_from, lift_from) = (height_at(cut), height_at(lifted));
    let (cut_layer, lift_layer) = (layer(relay.as_ref(), cut), layer(relay.as_ref(), lifted));
    links[0].limit(800)?;
    links[1].lift()?;
    let t0 = Instant::now();
    let (mut down, mut down_layer, mut up, mut up_layer) = (None, None, None, None);
    let ms = |t: Instant| Some(t.duration_since(t0).as_millis() as u64);
    let can_step_down = cut_from == Some(TOP_HEIGHT);
    let can_step_up = lift_from.is_some_and(|h| h < TOP_HEIGHT);
    while t0.elapsed() < AFTER_CHANGE {
        let now = Instant::now();
        if can_step_down && down.is_none() && height_at(cut).is_some_and(|h| h < TOP_HEIGHT) {
            down = ms(now);
        }
        if can_step_down
            && down_layer.is_none()
            && layer(relay.as_ref(), cut).is_some_and(|l| l > 0)
        {
            down_layer = ms(now);
        }
        if can_step_up && up.is_none() && height_at(lifted) == Some(TOP_HEIGHT) {
            up = ms(now);
        }
        if lift_layer.is_some_and(|l| l > 0)
            && up_layer.is_none()
            && layer(relay.as_ref(), lifted) == Some(0)
        {
            up_layer = ms(now);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cut_lines = cut.all("consumer-stats");
    let after_cut = watched(&cut_lines, cut_at, cut_at + AFTER_CHANGE.as_millis() as u64);
    let machine1 = machine_jiffies();
    let busy = (machine1.0 - machine0.0) as f64 / (machine1.1 - machine0.1).max(1) as f64;
    Ok(json!({
        "settled": settled,
        "cut": {
            "height_before": cut_from,
            "layer_before": cut_layer,
            "step_down_ms": down,
            "relay_layer_down_ms": down_layer,
            "longest_freeze_ms": after_cut.longest_freeze_ms,
            "window": after_cut.to_json(),
        },
        "lift": {
            "height_before": lift_from,
            "layer_before": lift_layer,
            "step_up_ms": up,
            "relay_layer_up_ms": up_layer,
        },
        "watched_ms": AFTER_CHANGE.as_millis() as u64,
        "machine_busy_pct": (busy * 1000.0).round() / 10.0,
    }))
}
