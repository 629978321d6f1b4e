//! relay-agent: a stream received once and served again without re-encoding, across nodes of
//! a real cluster (real Redis, real agents).
//!
//! The relays run the engine `RELAY_ENGINE` names (inherited from the test's environment;
//! relay-agent's default, `forward`, when unset): `RELAY_ENGINE=pipeline cargo test -p
//! cluster-tests --test relays` runs every test here on the pipeline engine
//! (tests/forward_relay.rs has the forward engine's own). Where the
//! engines' stats differ, [`received_from_origin`] reads each one's figures.

use std::time::Duration;

use anyhow::Result;
use cluster_tests::agent::Agent;
use cluster_tests::relaying::{self, latest, origin, relay};
use cluster_tests::{media, Node, Peer, Redis, Topo};
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(90);

fn frames_now(c: &Agent) -> u64 {
    c.json_lines("consumer-stats")
        .last()
        .and_then(|l| l["frames"].as_u64())
        .unwrap_or(0)
}

/// Whether a relay-stats line shows media received from the source: the pipeline engine
/// counts encoded frames and bytes, the forward engine RTP packets (it has no frames).
fn received_from_origin(stats: &Value, at_least: u64) -> bool {
    match stats["engine"].as_str() {
        Some("forward") => stats["origin_packets"].as_u64() > Some(at_least),
        _ => {
            stats["frames_in"].as_u64() > Some(at_least)
                && stats["bitrate_in_bps"].as_f64() > Some(0.0)
        }
    }
}

/// Three nodes on `redis`.
async fn three_nodes(redis: &Redis) -> Result<(Node, Node, Node)> {
    Ok((
        Node::join(redis, "node-a", &[]).await?,
        Node::join(redis, "node-b", &[]).await?,
        Node::join(redis, "node-c", &[]).await?,
    ))
}

/// A consumer-agent on `node` finding its producer by `target` (`--producer-name X`,
/// `--stream X`), counting encoded frames, stats every 0.2 s.
fn viewer(node: &Node, target: &[&str]) -> Result<Agent> {
    relaying::viewer(node, target, "encoded")
}

/// Two relays of `stream` of capacity `cap`, on nodes `b` and `c`, once a lister on `c` sees
/// the origin and both.
async fn two_relays(b: &Node, c: &Node, stream: &str, cap: &str) -> Result<[Agent; 2]> {
    let relays = [
        relay(b, stream, &format!("{stream}-1"), &["--max-consumers", cap])?,
        relay(c, stream, &format!("{stream}-2"), &["--max-consumers", cap])?,
    ];
    let mut lister = Peer::connect(&c.url()).await?;
    Topo::list_until(&mut lister, false, |l| {
        l["producers"].as_array().map(Vec::len) == Some(3)
    })
    .await?;
    Ok(relays)
}

/// Waits until the relay's stats say it serves `n` consumers.
async fn serving(relay: &Agent, n: u64) -> Result<()> {
    relay
        .wait(LONG, &format!("{n} consumers of the relay"), |r| {
            r.json_lines("relay-stats")
                .last()
                .is_some_and(|s| s["consumers"].as_u64() == Some(n))
        })
        .await
}

/// The origin on node A, a relay on node B, four viewers of the relay on node C: every viewer
/// gets frames, the origin serves one session (the relay's), the relay decodes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_on_another_node_serves_four_viewers_from_one_origin_session() -> Result<()> {
    let _one = media::exclusive().await;
    let redis = Redis::start().await?;
    let (a, b, c) = three_nodes(&redis).await?;
    let origin = origin(&a, "stage", &[])?;
    let relay = relay(&b, "stage", "stage-relay", &[])?;
    let viewers: Vec<Agent> = (0..4)
        .map(|_| viewer(&c, &["--producer-name", "stage-relay"]))
        .collect::<Result<_>>()?;
    for v in &viewers {
        v.wait(LONG, "30 frames through the relay", |v| frames_now(v) >= 30)
            .await?;
    }
    serving(&relay, 4).await?;
    let stats = latest(&relay, "relay-stats")?;
    assert!(received_from_origin(&stats, 30), "{stats}");
    // Served to four without decoding or re-encoding: no codec element anywhere in the relay.
    assert_eq!(stats["decoders"], json!([]), "the relay decodes: {stats}");
    assert_eq!(stats["encoders"], json!([]), "the relay encodes: {stats}");
    if stats["engine"] == "pipeline" {
        // webrtcsink asks for a keyframe for each joining viewer; the forward engine starts a
        // joiner from its keyframe cache without asking.
        assert!(stats["keyframe_requests"].as_u64() >= Some(1), "{stats}");
    }
    let served = latest(&origin, "producer-stats")?;
    assert_eq!(
        served["consumers"].as_array().map(Vec::len),
        Some(1),
        "the origin serves the relay only: {served}"
    );
    assert_eq!(stats["origin_id"], served["peer_id"], "{stats} {served}");
    Ok(())
}

/// A relay of a relay (depth 2) delivers frames, and says in its meta what it relays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_of_a_relay_delivers_frames_and_names_its_depth() -> Result<()> {
    let _one = media::exclusive().await;
    let redis = Redis::start().await?;
    let a = Node::join(&redis, "node-a", &[]).await?;
    let b = Node::join(&redis, "node-b", &[]).await?;
    let _origin = origin(&a, "tree", &[])?;
    let _first = relay(&b, "tree", "tree-1", &["--max-consumers", "10"])?;
    let _second = relay(&a, "tree-1", "tree-2", &["--max-consumers", "10"])?;
    let viewer = viewer(&b, &["--producer-name", "tree-2"])?;
    viewer
        .wait(LONG, "30 frames two relays down", |v| frames_now(v) >= 30)
        .await?;
    // What a stock client listing producers sees.
    let mut lister = Peer::connect(&a.url()).await?;
    let list = Topo::list_until(&mut lister, false, |l| {
        l["producers"].as_array().map(Vec::len) == Some(3)
    })
    .await?;
    let meta_of = |name: &str| relaying::member(&list, name);
    let (origin_id, _) = meta_of("tree")?;
    let (first_id, first_meta) = meta_of("tree-1")?;
    let (_, second_meta) = meta_of("tree-2")?;
    assert_eq!(first_meta["relay-of"], origin_id, "{list}");
    assert_eq!(first_meta["depth"], "1", "{list}");
    assert_eq!(second_meta["relay-of"], first_id, "{list}");
    assert_eq!(second_meta["depth"], "2", "{list}");
    assert_eq!(
        second_meta["stream"], "tree",
        "the stream is the origin's: {list}"
    );
    assert_eq!(second_meta["capacity"], "10", "{list}");
    Ok(())
}

/// Viewers asking for a stream by name (`consumer-agent --stream`) are spread over two relays
/// of capacity 2 on other nodes; the origin serves the relays only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_asking_for_a_stream_are_spread_over_its_relays_not_the_origin() -> Result<()> {
    let _one = media::exclusive().await;
    let redis = Redis::start().await?;
    let (a, b, c) = three_nodes(&redis).await?;
    let origin = origin(&a, "show", &["--encoding", "shared"])?;
    let relays = two_relays(&b, &c, "show", "2").await?;
    let viewers: Vec<Agent> = (0..4)
        .map(|_| viewer(&c, &["--stream", "show"]))
        .collect::<Result<_>>()?;
    for v in &viewers {
        v.wait(LONG, "30 frames of the stream", |v| frames_now(v) >= 30)
            .await?;
    }
    for r in &relays {
        serving(r, 2).await?;
    }
    let served = latest(&origin, "producer-stats")?;
    assert_eq!(
        served["consumers"].as_array().map(Vec::len),
        Some(2),
        "the origin serves the two relays only: {served}"
    );
    Ok(())
}

/// A relay killed with SIGKILL: its node keeps it for a resume but passes it over, so its
/// viewer, whose media stopped, is placed on the other relay and gets frames again; the
/// report names both sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_relays_viewers_are_placed_again_and_get_frames() -> Result<()> {
    let _one = media::exclusive().await;
    let redis = Redis::start().await?;
    let (a, b, c) = three_nodes(&redis).await?;
    let _origin = origin(&a, "live", &["--encoding", "shared"])?;
    let relays = two_relays(&b, &c, "live", "4").await?;
    let viewers: Vec<Agent> = (0..2)
        .map(|_| viewer(&c, &["--stream", "live"]))
        .collect::<Result<_>>()?;
    for v in &viewers {
        v.wait(LONG, "30 frames of the stream", |v| frames_now(v) >= 30)
            .await?;
    }
    // One viewer each (the least loaded relay first).
    for r in &relays {
        serving(r, 1).await?;
    }
    let killed = std::time::Instant::now();
    relays[0].signal(libc::SIGKILL);
    let before: Vec<u64> = viewers.iter().map(frames_now).collect();
    for (v, n) in viewers.iter().zip(before) {
        v.wait(LONG, "30 more frames after the relay's death", |v| {
            frames_now(v) >= n + 30
        })
        .await?;
        eprintln!(
            "a viewer had 30 more frames {} ms after the SIGKILL",
            killed.elapsed().as_millis()
        );
    }
    serving(&relays[1], 2).await?;
    let mut sessions = Vec::new();
    for mut v in viewers {
        v.signal(libc::SIGINT);
        assert_eq!(v.exit_within(LONG).await?, Some(0), "{}", v.stderr());
        let report = v.report()?;
        sessions.push(report["session_ids"].as_array().map(Vec::len));
    }
    sessions.sort();
    assert_eq!(
        sessions,
        [Some(1), Some(2)],
        "the moved viewer's report has its old and new session"
    );
    Ok(())
}

/// The origin stops and a producer of the same name comes back: the relay keeps its
/// registration and its viewer, reattaches, and the viewer's one session gets frames again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_reattaches_to_a_returning_origin_and_its_viewer_keeps_its_session() -> Result<()> {
    let _one = media::exclusive().await;
    let redis = Redis::start().await?;
    let a = Node::join(&redis, "node-a", &[]).await?;
    let b = Node::join(&redis, "node-b", &[]).await?;
    let mut first = origin(&a, "back", &[])?;
    let relay = relay(&b, "back", "back-relay", &[])?;
    let mut viewer = viewer(&b, &["--producer-name", "back-relay"])?;
    viewer
        .wait(LONG, "30 frames through the relay", |v| frames_now(v) >= 30)
        .await?;
    let first_id = latest(&relay, "relay-stats")?["origin_id"].clone();
    first.signal(libc::SIGTERM);
    assert_eq!(
        first.exit_within(LONG).await?,
        Some(0),
        "{}",
        first.stderr()
    );
    relay
        .wait(LONG, "the relay without an upstream session", |r| {
            r.json_lines("relay-stats")
                .last()
                .is_some_and(|s| s["upstream_session"].is_null())
        })
        .await?;
    let _second = origin(&a, "back", &[])?;
    let before = frames_now(&viewer);
    viewer
        .wait(LONG, "30 frames from the returned origin", |v| {
            frames_now(v) >= before + 30
        })
        .await?;
    let stats = latest(&relay, "relay-stats")?;
    assert_eq!(stats["reattachments"], 1, "{stats}");
    assert_ne!(stats["origin_id"], first_id, "a new origin: {stats}");
    assert!(received_from_origin(&stats, 0), "{stats}");
    assert!(stats["bitrate_out_bps"].as_f64() > Some(0.0), "{stats}");
    viewer.signal(libc::SIGINT);
    assert_eq!(
        viewer.exit_within(LONG).await?,
        Some(0),
        "{}",
        viewer.stderr()
    );
    let report = viewer.report()?;
    assert_eq!(
        report["session_ids"].as_array().map(Vec::len),
        Some(1),
        "one session throughout: {report}"
    );
    Ok(())
}

/// The origin comes back with another codec: the relay's viewers negotiated the old one, so
/// the relay exits 1; its viewer's session ends and it is placed again (on the origin).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_origin_with_another_codec_ends_the_relay_and_its_viewer_is_placed_again(
) -> Result<()> {
    let _one = media::exclusive().await;
    let redis = Redis::start().await?;
    let a = Node::join(&redis, "node-a", &[]).await?;
    let b = Node::join(&redis, "node-b", &[]).await?;
    let mut first = origin(&a, "switch", &["--video-codec", "vp8"])?;
    let mut relay = relay(&b, "switch", "switch-relay", &[])?;
    let mut lister = Peer::connect(&b.url()).await?;
    Topo::list_until(&mut lister, false, |l| {
        l["producers"].as_array().map(Vec::len) == Some(2)
    })
    .await?;
    // (a long stall timeout: the viewer moves because its session ends, not because it stalls)
    let mut viewer = viewer(&b, &["--stream", "switch", "--stall-timeout", "60"])?;
    viewer
        .wait(LONG, "30 frames through the relay", |v| frames_now(v) >= 30)
        .await?;
    serving(&relay, 1).await?;
    first.signal(libc::SIGTERM);
    assert_eq!(
        first.exit_within(LONG).await?,
        Some(0),
        "{}",
        first.stderr()
    );
    let _second = origin(&a, "switch", &["--video-codec", "h264"])?;
    assert_eq!(
        relay.exit_within(LONG).await?,
        Some(1),
        "{}",
        relay.stderr()
    );
    assert!(
        relay.stderr().contains("codec changed"),
        "{}",
        relay.stderr()
    );
    let before = frames_now(&viewer);
    viewer
        .wait(LONG, "30 frames from the new origin", |v| {
            frames_now(v) >= before + 30
        })
        .await?;
    viewer.signal(libc::SIGINT);
    assert_eq!(
        viewer.exit_within(LONG).await?,
        Some(0),
        "{}",
        viewer.stderr()
    );
    let report = viewer.report()?;
    assert_eq!(
        report["session_ids"].as_array().map(Vec::len),
        Some(2),
        "placed again: {report}"
    );
    Ok(())
}
