//! Issue 26's "before", for the record: a viewer behind an 800 kbit/s link (a token bucket in
//! a network namespace of its own, `shaping.rs`) watching a single-layer 720p origin at
//! 2 Mbit/s through a relay, on either engine. Nothing adapts here: a relay sends what it
//! receives. Each test prints the viewer's frame rate and frozen time as one JSON line
//! (`{"adaptive_before": …}`) and asserts only what it honestly can: the relay served the
//! viewer, media arrived, and the link was the bottleneck (its token bucket dropped packets).
//! The comparison with the ladder is the `adaptive` bench's (BENCHMARKS.md "Adaptive").
//! About 45 s each.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use cluster_tests::agent::Agent;
use cluster_tests::consumer::{stop_cleanly, watched};
use cluster_tests::relaying::{latest, listed, relay, shared_720p_origin};
use cluster_tests::shaping::ShapedLink;
use cluster_tests::{bin, free_port, media, Node};
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(90);
/// Media settles for this long after the session starts; then the window is measured.
const SETTLE_MS: u64 = 5_000;
const WINDOW_MS: u64 = 20_000;
const STREAM: &str = "before";

/// The origin: the relays bench's (1280x720, 30 fps, 2 Mbit/s VP8, one shared encoder, no
/// congestion control: the relay is its only consumer and would not pace it anyway).
fn origin(node: &Node) -> Result<Agent> {
    shared_720p_origin(
        node,
        STREAM,
        &["--bitrate", "2000000", "--congestion-control", "disabled"],
    )
}

/// A consumer-agent of the stream inside `link`'s namespace, decoding (`--sink null`), with
/// stalls and slow first frames tolerated: at this rate both are what is being measured.
fn viewer(node: &Node, link: &ShapedLink, name: &str) -> Result<Agent> {
    let mut cmd = link.command(&bin("consumer-agent"));
    cmd.args(["--server", &node.url(), "--stream", STREAM])
        .args(["--sink", "null", "--stats-interval", "0.2"])
        .args(["--timeout", "90", "--stall-timeout", "90"]);
    Agent::spawn_command(cmd, name)
}

/// One run on `engine`: the viewer's figures over the window.
async fn before(engine: &str) -> Result<Value> {
    let _one = media::exclusive().await;
    let link = ShapedLink::limited(800)?;
    // The node listens on the link's host end: the host's agents and the namespace (whose
    // default route leads to the host) both reach it there.
    let cmd = Command::new(bin("signalling-cluster"));
    let node = Node::spawn(cmd, &link.host_address(), free_port(), &[], &[], false).await?;
    let _origin = origin(&node)?;
    let host = link.host_address();
    let mut extra = vec!["--engine", engine];
    if engine == "forward" {
        extra.extend_from_slice(&["--ice-address", &host]);
    }
    let relay = relay(&node, STREAM, &format!("{STREAM}-relay"), &extra)?;
    // Both listed: the viewer is then placed on the relay (relays before the origin).
    listed(&node, 2).await?;
    let mut viewer = viewer(&node, &link, "consumer-agent (800 kbit/s)")?;
    viewer
        .wait(LONG, "a session", |v| {
            v.json_lines("consumer-stats")
                .iter()
                .any(|l| l["session_id"].is_string())
        })
        .await?;
    let lines = viewer.json_lines("consumer-stats");
    let start = lines
        .iter()
        .find(|l| l["session_id"].is_string())
        .and_then(|l| l["elapsed_ms"].as_u64())
        .context("no session start")?;
    let (from, to) = (start + SETTLE_MS, start + SETTLE_MS + WINDOW_MS);
    viewer
        .wait(LONG, "the end of the window", |v| {
            v.json_lines("consumer-stats")
                .last()
                .and_then(|l| l["elapsed_ms"].as_u64())
                >= Some(to)
        })
        .await?;
    let served = latest(&relay, "relay-stats")?;
    assert_eq!(
        served["consumers"], 1,
        "the relay serves the viewer: {served}"
    );
    stop_cleanly(&mut viewer).await?;
    let lines = viewer.json_lines("consumer-stats");
    let seen = watched(&lines, from, to);
    let last = lines.last().context("no stats")?;
    let video = |k: &str| -> i64 {
        last["streams"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["codec"].as_str().is_some_and(|c| c.starts_with("video")))
            .filter_map(|s| s[k].as_i64())
            .sum()
    };
    let dropped = link.dropped()?;
    let figures = json!({
        "engine": engine,
        "link_kbit": 800,
        "window": seen.to_json(),
        "video_packets_received": video("packets_received"),
        "video_packets_lost": video("packets_lost"),
        "link_dropped_packets": dropped,
        "report": viewer.report()?,
    });
    eprintln!("{}", json!({ "adaptive_before": figures }));
    assert!(
        video("packets_received") > 0,
        "no video reached the viewer: {figures}"
    );
    assert!(
        dropped > 0,
        "a 2 Mbit/s stream through an 800 kbit/s link dropped nothing: the link is not \
         the bottleneck: {figures}"
    );
    Ok(figures)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_800k_viewer_of_a_pipeline_relay_is_measured() -> Result<()> {
    before("pipeline").await.map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_800k_viewer_of_a_forward_relay_of_one_layer_is_measured() -> Result<()> {
    before("forward").await.map(drop)
}
