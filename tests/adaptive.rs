//! Every viewer at the quality its link carries (issue 26): a 3-layer 720p origin (one capture,
//! three encoders, with audio), one forward relay, and four consumer-agents, each in a network
//! namespace of its own behind a token-bucket link (`shaping.rs`): unlimited, 800 kbit/s,
//! 250 kbit/s, and unlimited but capped at 360 lines (`--max-height 360`, counting frames
//! without decoding them). One topology for the criteria, in its bounds:
//!
//! - each viewer settles on the top, middle and bottom layer (the relay's stats say the layer
//!   and its height, the decoding viewer's the height it decodes), the capped one on the
//!   middle layer; then, for 20 s, each stays there at ≥ 25 fps, frozen ≤ 1 s, with audio;
//! - then the 800 kbit/s limit is lifted (the viewer goes back to the top layer) and the
//!   unlimited viewer's link cut to 800 kbit/s (it steps down, and decodes again);
//! - both switching viewers decode without an error (vp8dec's, logged by GstVideoDecoder) and
//!   their sequence numbers stay contiguous apart from real loss: what they count lost is no
//!   more than their link's token bucket dropped.
//!
//! The timing targets (settled 10 s into a session, a step down within 3 s of a cut and
//! a step up within 15 s of a lift, no freeze over 1 s after a cut) are measured by
//! `./dev bench adaptive` (BENCHMARKS.md "Adaptive"), on a quiet machine: timed assertions
//! flake on a loaded 2-core one. This test prints them (`{"adaptive": …}`) and bounds them only
//! loosely enough to say each thing happened (`*_LIMIT`).
//!
//! About 60 s through. The figures need the cores: the viewers' bandwidth estimates are
//! delay-based, and a machine so busy that the processes wait for a core shows them queueing
//! that no link has (on this machine with four builds beside it, an unlimited viewer's
//! estimate fell to 0.6-1.5 Mbit/s).

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cluster_tests::agent::Agent;
use cluster_tests::consumer::stop_cleanly;
use cluster_tests::relaying::{latest, listed, relay, shared_720p_origin};
use cluster_tests::shaping::ShapedLink;
use cluster_tests::watched::{frozen_between, height_of, watched};
use cluster_tests::{bin, free_port, media, Node};
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(90);
const STREAM: &str = "ladder";
/// The heights of `--layers 3` from 720p: halves.
const HEIGHTS: [u64; 3] = [720, 360, 180];
/// Settled, held: the quality bounds over a window of this long.
const HELD: Duration = Duration::from_secs(20);
const MIN_FPS: f64 = 25.0;
const MAX_FROZEN_MS: u64 = 1_000;
/// Loose bounds on what the bench measures (see the module doc): settling on the layer (the
/// issue's target: 10 s), a step down after a cut (3 s), a step up after a lift (15 s), the
/// longest freeze after the cut (1 s).
const SETTLE_LIMIT: Duration = Duration::from_secs(40);
const STEP_DOWN_LIMIT: Duration = Duration::from_secs(10);
const STEP_UP_LIMIT: Duration = Duration::from_secs(40);
const FREEZE_LIMIT_MS: u64 = 4_000;
/// After a cut, how long the test watches for a freeze.
const AFTER_CUT: Duration = Duration::from_secs(8);

/// GstVideoDecoder logs each decode error as a warning naming this function (vp8dec,
/// avdec_h264 alike); the viewers run with `GST_DEBUG=videodecoder:2` so it reaches stderr.
const DECODE_ERROR: &str = "_gst_video_decoder_error";

/// The origin: 1280x720, 30 fps, VP8, a 3-layer ladder in one shared encoding, with audio.
fn origin(node: &Node) -> Result<Agent> {
    shared_720p_origin(node, STREAM, &["--layers", "3", "--audio"])
}

/// One viewer: a decoding consumer-agent of the stream in `link`'s namespace.
struct Viewer {
    name: &'static str,
    sink: String,
    link: ShapedLink,
    agent: Agent,
}

impl Viewer {
    /// `sink`: `null` decodes (height, frozen time, decoder errors), `encoded` counts frames.
    fn start(
        node: &Node,
        name: &'static str,
        link: ShapedLink,
        sink: &str,
        extra: &[&str],
    ) -> Result<Self> {
        let mut cmd = link.command(&bin("consumer-agent"));
        cmd.args(["--server", &node.url(), "--stream", STREAM])
            .args(["--sink", sink, "--stats-interval", "0.2"])
            .args(["--timeout", "60", "--stall-timeout", "30"])
            .args(extra)
            .env("GST_DEBUG", "videodecoder:2");
        let agent = Agent::spawn_command(cmd, &format!("consumer-agent ({name})"))?;
        let sink = sink.to_string();
        Ok(Viewer {
            name,
            sink,
            link,
            agent,
        })
    }

    fn decodes(&self) -> bool {
        self.sink == "null"
    }

    fn lines(&self) -> Vec<Value> {
        self.agent.json_lines("consumer-stats")
    }

    /// The session id and the viewer's `elapsed_ms` when it started.
    fn session(&self) -> Option<(String, u64)> {
        self.lines().iter().find_map(|l| {
            Some((
                l["session_id"].as_str()?.to_string(),
                l["elapsed_ms"].as_u64()?,
            ))
        })
    }

    fn elapsed_ms(&self) -> u64 {
        self.lines()
            .last()
            .and_then(|l| l["elapsed_ms"].as_u64())
            .unwrap_or(0)
    }

    /// The height of what it decodes now.
    fn height(&self) -> Option<u64> {
        self.lines().last().and_then(height_of)
    }

    /// Its entry in the relay's latest stats line.
    fn at_relay(&self, relay: &Agent) -> Result<Value> {
        let (session, _) = self.session().context("no session")?;
        let stats = latest(relay, "relay-stats")?;
        stats["viewers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["session"] == session)
            .cloned()
            .with_context(|| format!("{}: session {session} not in {stats}", self.name))
    }

    fn layer(&self, relay: &Agent) -> Option<u64> {
        self.at_relay(relay).ok()?["layer"].as_u64()
    }

    /// Received packets of the stream whose codec starts with `kind` (`audio`, `video`), and
    /// how many of them its sequence numbers say were lost.
    fn packets(&self, kind: &str) -> (i64, i64) {
        let last = self.lines().pop().unwrap_or_default();
        let streams = last["streams"].as_array().cloned().unwrap_or_default();
        streams
            .iter()
            .filter(|s| s["codec"].as_str().is_some_and(|c| c.starts_with(kind)))
            .fold((0, 0), |(r, l), s| {
                (
                    r + s["packets_received"].as_i64().unwrap_or(0),
                    l + s["packets_lost"].as_i64().unwrap_or(0),
                )
            })
    }

    fn decode_errors(&self) -> usize {
        self.agent.stderr().matches(DECODE_ERROR).count()
    }
}

/// Waits until `pred` holds, polling; the time it took.
async fn within(limit: Duration, what: &str, pred: impl Fn() -> bool) -> Result<Duration> {
    let start = Instant::now();
    while !pred() {
        anyhow::ensure!(start.elapsed() <= limit, "no '{what}' within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_viewer_gets_the_layer_its_link_carries_and_follows_a_cut_and_a_lift() -> Result<()> {
    let _one = media::exclusive().await;
    let links = [
        ShapedLink::create()?,
        ShapedLink::limited(800)?,
        ShapedLink::limited(250)?,
        ShapedLink::create()?,
    ];
    let hosts: Vec<String> = links.iter().map(ShapedLink::host_address).collect();
    let cmd = Command::new(bin("signalling-cluster"));
    let node = Node::spawn(cmd, &hosts[0], free_port(), &[], &[], false).await?;
    let _origin = origin(&node)?;
    let mut relay_args = vec!["--engine", "forward"];
    for h in &hosts {
        relay_args.extend_from_slice(&["--ice-address", h]);
    }
    let relay = relay(&node, STREAM, &format!("{STREAM}-relay"), &relay_args)?;
    listed(&node, 2).await?;
    let [fast, mid, slow, capped] = links;
    // One viewer a second, as an audience arrives: four GStreamer pipelines starting at once
    // beside the origin's three encoders hold both cores for a moment, and the delay-based
    // estimates of all of them read that as queueing.
    let pause = || tokio::time::sleep(Duration::from_secs(1));
    let unlimited = Viewer::start(&node, "unlimited", fast, "null", &[])?;
    pause().await;
    let narrow = Viewer::start(&node, "800 kbit/s", mid, "null", &[])?;
    pause().await;
    let narrowest = Viewer::start(&node, "250 kbit/s", slow, "null", &[])?;
    pause().await;
    // The cap is the relay's to honour (its layer and height say it): this one counts frames
    // without decoding, to spare the two cores a fourth decoder.
    let capped = Viewer::start(
        &node,
        "capped at 360",
        capped,
        "encoded",
        &["--max-height", "360"],
    )?;
    let mut viewers = [unlimited, narrow, narrowest, capped];
    let expected = [0, 1, 2, 1];

    // Settled: each on its layer (and the decoding ones decoding its height).
    let mut settled_ms = Vec::new();
    for (v, &k) in viewers.iter().zip(&expected) {
        let on_layer = || {
            v.layer(&relay) == Some(k) && (!v.decodes() || v.height() == Some(HEIGHTS[k as usize]))
        };
        if within(SETTLE_LIMIT, "settled", on_layer).await.is_err() {
            // All four first (the failure then shows where every viewer was).
            for v in &viewers {
                let last = v.lines().pop().unwrap_or_default();
                eprintln!(
                    "{}: relay {:?}, decodes {last}",
                    v.name,
                    v.at_relay(&relay).ok()
                );
            }
            panic!(
                "{} not on layer {k} ({} lines) within {SETTLE_LIMIT:?}",
                v.name, HEIGHTS[k as usize]
            );
        }
        let (_, s) = v.session().context("no session")?;
        settled_ms.push(v.elapsed_ms().saturating_sub(s));
        let at_relay = v.at_relay(&relay)?;
        assert_eq!(
            at_relay["layer_height"].as_u64(),
            Some(HEIGHTS[k as usize]),
            "{}: layer {k} is {} lines high: {at_relay}",
            v.name,
            HEIGHTS[k as usize],
        );
    }
    // Held for HELD from when the last one settled: the layer, the frame rate, at most 1 s
    // frozen, audio.
    let from: Vec<u64> = viewers.iter().map(Viewer::elapsed_ms).collect();
    for (v, from) in viewers.iter().zip(&from) {
        v.agent
            .wait(LONG, "the held window", |_| {
                v.elapsed_ms() >= from + HELD.as_millis() as u64
            })
            .await?;
    }
    for ((v, &k), from) in viewers.iter().zip(&expected).zip(&from) {
        let to = from + HELD.as_millis() as u64;
        let lines = v.lines();
        let seen = watched(&lines, *from, to);
        let frozen = frozen_between(&lines, *from, to);
        let (audio, _) = v.packets("audio");
        let f = json!({"viewer": v.name, "layer": v.layer(&relay), "window": seen.to_json(),
                       "frozen_ms": frozen, "audio_packets": audio});
        eprintln!("{f}");
        assert_eq!(v.layer(&relay), Some(k), "{} held: {f}", v.name);
        assert!(seen.fps >= MIN_FPS, "{} below {MIN_FPS} fps: {f}", v.name);
        assert!(frozen <= MAX_FROZEN_MS, "{} frozen too long: {f}", v.name);
        assert!(audio > 0, "{} got no audio: {f}", v.name);
    }

    // The 800 kbit/s limit lifted, the unlimited link cut to 800 kbit/s, at once.
    let (cut, lifted) = (&viewers[0], &viewers[1]);
    let cut_at_ms = cut.elapsed_ms();
    cut.link.limit(800)?;
    lifted.link.lift()?;
    let down = within(STEP_DOWN_LIMIT, "the cut viewer stepping down", || {
        cut.layer(&relay).is_some_and(|l| l > 0)
    })
    .await?;
    // (From the cut, which was the lift too.)
    let up = down
        + within(
            STEP_UP_LIMIT,
            "the lifted viewer back on the top layer",
            || lifted.layer(&relay) == Some(0),
        )
        .await?;
    // What they decode follows (at the switched-to layer's first keyframe).
    let cut_height = cut
        .agent
        .wait(LONG, "the cut viewer decoding a lower layer", |_| {
            cut.height().is_some_and(|h| h < HEIGHTS[0])
        });
    cut_height.await?;
    lifted
        .agent
        .wait(LONG, "the lifted viewer decoding 720 lines", |_| {
            lifted.height() == Some(HEIGHTS[0])
        })
        .await?;
    cut.agent
        .wait(LONG, "8 s after the cut", |_| {
            cut.elapsed_ms() >= cut_at_ms + AFTER_CUT.as_millis() as u64
        })
        .await?;
    let after_cut = watched(
        &cut.lines(),
        cut_at_ms,
        cut_at_ms + AFTER_CUT.as_millis() as u64,
    );
    // The figures the bench measures, for the record.
    eprintln!(
        "{}",
        json!({"adaptive": {"settled_ms": settled_ms, "step_down_ms": down.as_millis(),
               "step_up_ms": up.as_millis(), "cut_longest_freeze_ms": after_cut.longest_freeze_ms}})
    );
    assert!(
        after_cut.longest_freeze_ms <= FREEZE_LIMIT_MS,
        "the cut viewer froze for {} ms: {after_cut:?}",
        after_cut.longest_freeze_ms
    );

    // Continuity across the switches.
    for v in &mut viewers[..2] {
        let (received, lost) = v.packets("video");
        let dropped = v.link.dropped()?;
        // (a loaded machine may also drop at the viewer's socket: seen once in CI, 2 lost
        // against 1 link drop)
        let socket = v.link.socket_drops()?;
        let f = json!({"viewer": v.name, "received": received, "lost": lost,
                       "link_dropped": dropped, "socket_dropped": socket,
                       "decode_errors": v.decode_errors()});
        eprintln!("{f}");
        assert_eq!(v.decode_errors(), 0, "{} decoder errors: {f}", v.name);
        assert!(
            (0..=(dropped + socket) as i64).contains(&lost),
            "{}: sequence numbers jumped (lost {lost}, the link dropped {dropped}, the socket {socket}): {f}",
            v.name
        );
        stop_cleanly(&mut v.agent).await?;
        let report = v.agent.report()?;
        assert!(
            report["switches"].as_u64() >= Some(1),
            "{} reports its switch: {report}",
            v.name
        );
    }
    Ok(())
}
