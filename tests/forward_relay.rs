//! relay-agent `--engine forward` (issue 25): the sfu forward engine behind the cluster
//! signaller, with real nodes, real agents, stock webrtcsink/webrtcsrc. Viewers ask by
//! stream unless the test is about something else; the engine's flags are validated.

use std::time::Duration;

use anyhow::{Context, Result};
use cluster_tests::agent::{quick, Agent};
use cluster_tests::consumer::{frames_now, sessions_of};
use cluster_tests::relaying::{forward, latest, listed, member, origin, viewer};
use cluster_tests::{free_port, media, Node, Redis};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(90);

/// Waits until the forward relay's stats list `n` viewers, each sent packets.
async fn serving(relay: &Agent, n: usize) -> Result<Value> {
    let sent = |s: &Value| {
        s["viewers"]
            .as_array()
            .is_some_and(|v| v.len() == n && v.iter().all(|v| v["packets"].as_u64() > Some(0)))
    };
    relay
        .wait(LONG, &format!("{n} viewers sent packets"), |r| {
            r.json_lines("relay-stats").last().is_some_and(sent)
        })
        .await?;
    latest(relay, "relay-stats")
}

/// Origin (`codec` video, Opus audio) → forward relay on a fixed UDP port → a decoding
/// consumer-agent asking by stream: decoded frames, both streams' packets, the relay's port
/// taken, its meta and stats say `forward`, the origin serves the relay only.
async fn decoding_viewer_through_forward(codec: &str, rtp_codec: &str) -> Result<()> {
    let _one = media::exclusive().await;
    let node = Node::start(&[]).await?;
    let stream = format!("fw-{codec}");
    let origin = origin(&node, &stream, &["--audio", "--video-codec", codec])?;
    let (port, metrics) = (free_port(), free_port());
    let relay = forward(
        &node,
        &stream,
        &format!("{stream}-relay"),
        &[
            "--udp-port",
            &port.to_string(),
            "--threads",
            "1",
            "--metrics-addr",
            &format!("127.0.0.1:{metrics}"),
        ],
    )?;
    let list = listed(&node, 2).await?;
    let (_, meta) = member(&list, &format!("{stream}-relay"))?;
    assert_eq!(meta["engine"], "forward", "{list}");
    assert_eq!(meta["stream"], stream.as_str(), "{list}");
    let viewer = viewer(&node, &["--stream", &stream], "null")?;
    viewer
        .wait(LONG, "30 decoded frames through the relay", |v| {
            frames_now(v) >= 30
        })
        .await?;
    let streams_of = |l: &Value| -> Vec<(String, u64)> {
        l["streams"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                let codec = s["codec"].as_str().unwrap_or_default().to_string();
                (codec, s["packets_received"].as_u64().unwrap_or(0))
            })
            .collect()
    };
    let want = ["audio/OPUS".to_string(), format!("video/{rtp_codec}")];
    viewer
        .wait(LONG, "audio and video packets arriving", |v| {
            v.json_lines("consumer-stats").last().is_some_and(|l| {
                let mut got = streams_of(l);
                got.sort();
                got.len() == 2 && got.iter().zip(&want).all(|((c, n), w)| c == w && *n > 0)
            })
        })
        .await?;
    let stats = serving(&relay, 1).await?;
    assert_eq!(stats["engine"], "forward", "{stats}");
    assert!(stats["origin_packets"].as_u64() > Some(0), "{stats}");
    assert_eq!(stats["consumers"], 1, "{stats}");
    // The engine listens on the fixed port: nobody else can take it.
    assert!(
        std::net::UdpSocket::bind(("0.0.0.0", port)).is_err(),
        "UDP {port} is free: the relay does not listen on --udp-port"
    );
    // Per viewer in the metrics, labelled by its session.
    let session = stats["viewers"][0]["session"].as_str().context("session")?;
    let (_, text) = cluster_tests::http_get(metrics, "/metrics").await?;
    let sample = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name) && l.contains(session))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    assert!(sample("relay_viewer_packets_total") > Some(0.0), "{text}");
    for name in [
        "relay_viewer_nacks_served_total",
        "relay_viewer_keyframe_requests_total",
    ] {
        assert!(sample(name).is_some(), "{name}: {text}");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decoding_consumer_gets_vp8_and_opus_through_a_forward_relay() -> Result<()> {
    decoding_viewer_through_forward("vp8", "VP8").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decoding_consumer_gets_h264_and_opus_through_a_forward_relay() -> Result<()> {
    decoding_viewer_through_forward("h264", "H264").await
}

/// The stock webrtcsrc, placed on the stream as the web app is (`GET /place`), decodes the
/// relay's `codec` frames (its origin also sends Opus).
async fn stock_webrtcsrc_through_forward(codec: &str) -> Result<()> {
    let _one = media::exclusive().await;
    let node = Node::start(&[]).await?;
    let stream = format!("fw-stock-{codec}");
    let _origin = origin(&node, &stream, &["--audio", "--video-codec", codec])?;
    let relay = forward(&node, &stream, &format!("{stream}-relay"), &[])?;
    let list = listed(&node, 2).await?;
    let (relay_id, _) = member(&list, &format!("{stream}-relay"))?;
    let (status, body) = node.get(&format!("/place?stream={stream}")).await?;
    assert_eq!(status, 200, "{body}");
    let placed: Value = serde_json::from_str(&body)?;
    assert_eq!(placed["peerId"], relay_id, "placed on the relay: {body}");
    let peer = placed["peerId"].as_str().context("peerId")?;
    let (consumer, frames) = media::stock_consumer(&node.url(), peer)?;
    let deadline = std::time::Instant::now() + LONG;
    while frames.count() < 30 {
        if let Some(e) = consumer.error() {
            anyhow::bail!("webrtcsrc: {e}");
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("only {} decoded frames within {LONG:?}", frames.count());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    serving(&relay, 1).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stock_webrtcsrc_placed_by_stream_decodes_a_forward_relays_vp8() -> Result<()> {
    stock_webrtcsrc_through_forward("vp8").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stock_webrtcsrc_placed_by_stream_decodes_a_forward_relays_h264() -> Result<()> {
    stock_webrtcsrc_through_forward("h264").await
}

/// A user's own gst-launch style origin (stock webrtcsink, its default signaller, an RSA
/// DTLS certificate) relayed by a forward relay to a consumer-agent asking by stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_webrtcsink_origin_is_relayed_by_a_forward_relay_to_a_consumer_agent() -> Result<()>
{
    let _one = media::exclusive().await;
    let node = Node::start(&[]).await?;
    let origin = media::stock_producer(&node.url(), "fw-gst")?;
    let relay = forward(&node, "fw-gst", "fw-gst-relay", &[])?;
    listed(&node, 2).await?;
    let viewer = viewer(&node, &["--stream", "fw-gst"], "null")?;
    viewer
        .wait(LONG, "30 decoded frames from the stock origin", |v| {
            frames_now(v) >= 30 || origin.error().is_some()
        })
        .await?;
    assert_eq!(origin.error(), None, "the stock origin failed");
    serving(&relay, 1).await?;
    Ok(())
}

/// The origin freezes (SIGSTOP): its node keeps it, but the engine sees its media stop, so
/// the relay ends that session and asks again; when the origin wakes it answers the new
/// session and the relay's viewer, in its one session, gets frames again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_relay_whose_origin_went_silent_asks_again_and_its_viewer_resumes() -> Result<()>
{
    let _one = media::exclusive().await;
    let node = Node::start(&[]).await?;
    let origin = origin(&node, "fw-frozen", &[])?;
    let relay = forward(&node, "fw-frozen", "fw-frozen-relay", &[])?;
    let mut viewer = viewer(&node, &["--producer-name", "fw-frozen-relay"], "encoded")?;
    viewer
        .wait(LONG, "30 frames through the relay", |v| frames_now(v) >= 30)
        .await?;
    origin.signal(libc::SIGSTOP);
    relay.wait_stderr("lost the origin's media", LONG).await?;
    relay
        .wait(LONG, "a second session with the origin", |r| {
            r.json_lines("relay-stats")
                .last()
                .is_some_and(|s| s["reattachments"].as_u64() >= Some(1))
        })
        .await?;
    origin.signal(libc::SIGCONT);
    let before = frames_now(&viewer);
    viewer
        .wait(LONG, "30 frames after the origin woke", |v| {
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
        sessions_of(&report),
        Some(1),
        "one session throughout: {report}"
    );
    Ok(())
}

/// A viewer killed without a word: its node keeps its session for a resume (for long here),
/// but the engine finds it silent and the relay ends the session in signalling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_viewers_session_is_ended_by_the_forward_relay() -> Result<()> {
    let _one = media::exclusive().await;
    let node = Node::start(&["--resume-grace", "600"]).await?;
    let _origin = origin(&node, "fw-gone", &[])?;
    let relay = forward(&node, "fw-gone", "fw-gone-relay", &[])?;
    let viewer = viewer(&node, &["--producer-name", "fw-gone-relay"], "encoded")?;
    viewer
        .wait(LONG, "30 frames through the relay", |v| frames_now(v) >= 30)
        .await?;
    let sessions = || async {
        let (_, health) = node.get("/healthz").await?;
        let health: Value = serde_json::from_str(&health)?;
        anyhow::Ok(health["sessions"].as_u64())
    };
    assert_eq!(sessions().await?, Some(2), "origin-relay and relay-viewer");
    viewer.signal(libc::SIGKILL);
    let deadline = std::time::Instant::now() + LONG;
    while sessions().await? != Some(1) {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the dead viewer's session is still open: {}",
            relay.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(relay.stderr().contains("lost viewer"), "{}", relay.stderr());
    Ok(())
}

/// Two forward relays on two nodes, one viewer each; one relay is killed: its viewer is
/// placed on the other and receives again, its report naming both sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_forward_relays_viewer_is_placed_again_and_receives() -> Result<()> {
    let _one = media::exclusive().await;
    let redis = Redis::start().await?;
    let a = Node::join(&redis, "node-a", &[]).await?;
    let b = Node::join(&redis, "node-b", &[]).await?;
    let _origin = origin(&a, "fw-live", &["--encoding", "shared"])?;
    let relays = [
        forward(&a, "fw-live", "fw-live-1", &["--max-consumers", "4"])?,
        forward(&b, "fw-live", "fw-live-2", &["--max-consumers", "4"])?,
    ];
    listed(&b, 3).await?;
    let viewers: Vec<Agent> = (0..2)
        .map(|_| viewer(&b, &["--stream", "fw-live"], "encoded"))
        .collect::<Result<_>>()?;
    for v in &viewers {
        v.wait(LONG, "30 frames of the stream", |v| frames_now(v) >= 30)
            .await?;
    }
    for r in &relays {
        serving(r, 1).await?;
    }
    relays[0].signal(libc::SIGKILL);
    let before: Vec<u64> = viewers.iter().map(frames_now).collect();
    for (v, n) in viewers.iter().zip(before) {
        v.wait(LONG, "30 more frames after the relay's death", |v| {
            frames_now(v) >= n + 30
        })
        .await?;
    }
    serving(&relays[1], 2).await?;
    let mut sessions = Vec::new();
    for mut v in viewers {
        v.signal(libc::SIGINT);
        assert_eq!(v.exit_within(LONG).await?, Some(0), "{}", v.stderr());
        sessions.push(sessions_of(&v.report()?));
    }
    sessions.sort();
    assert_eq!(
        sessions,
        [Some(1), Some(2)],
        "the moved viewer has two sessions"
    );
    Ok(())
}

/// A forward relay whose source is a forward relay (depth 2) delivers frames, and its meta
/// names its source, its depth and the origin's stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_relay_under_a_forward_relay_delivers_frames() -> Result<()> {
    let _one = media::exclusive().await;
    let node = Node::start(&[]).await?;
    let _origin = origin(&node, "fw-tree", &[])?;
    let _first = forward(&node, "fw-tree", "fw-tree-1", &["--max-consumers", "10"])?;
    let mut second = forward(&node, "fw-tree-1", "fw-tree-2", &["--max-consumers", "10"])?;
    let viewer = viewer(&node, &["--producer-name", "fw-tree-2"], "encoded")?;
    viewer
        .wait(LONG, "30 frames two forward relays down", |v| {
            frames_now(v) >= 30
        })
        .await?;
    let list = listed(&node, 3).await?;
    let (first_id, first) = member(&list, "fw-tree-1")?;
    let (_, meta) = member(&list, "fw-tree-2")?;
    assert_eq!(first["depth"], "1", "{list}");
    assert_eq!(meta["relay-of"], first_id, "{list}");
    assert_eq!(meta["depth"], "2", "{list}");
    assert_eq!(meta["stream"], "fw-tree", "{list}");
    assert_eq!(meta["engine"], "forward", "{list}");
    // SIGTERM: a clean stop, exit 0.
    second.signal(libc::SIGTERM);
    assert_eq!(
        second.exit_within(LONG).await?,
        Some(0),
        "{}",
        second.stderr()
    );
    Ok(())
}

/// Mixed trees: a forward relay under a pipeline relay, and a pipeline relay under a forward
/// relay, each delivering frames to its viewer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_and_pipeline_relays_stack_either_way() -> Result<()> {
    let _one = media::exclusive().await;
    let node = Node::start(&[]).await?;
    let _origin = origin(&node, "fw-mix", &[])?;
    let url = node.url();
    let pipeline = |source: &str, name: &str| {
        let args = [
            "--engine",
            "pipeline",
            "--server",
            &url,
            "--source-name",
            source,
            "--name",
            name,
        ];
        Agent::spawn("relay-agent", &args)
    };
    let _p1 = pipeline("fw-mix", "mix-pipeline-1")?;
    let _f2 = forward(&node, "mix-pipeline-1", "mix-forward-2", &[])?;
    let _f1 = forward(&node, "fw-mix", "mix-forward-1", &[])?;
    let _p2 = pipeline("mix-forward-1", "mix-pipeline-2")?;
    let viewers = [
        viewer(&node, &["--producer-name", "mix-forward-2"], "encoded")?,
        viewer(&node, &["--producer-name", "mix-pipeline-2"], "encoded")?,
    ];
    for v in &viewers {
        v.wait(LONG, "30 frames two relays down", |v| frames_now(v) >= 30)
            .await?;
    }
    let list = listed(&node, 5).await?;
    for (name, engine) in [("mix-forward-2", "forward"), ("mix-pipeline-2", "pipeline")] {
        let (_, meta) = member(&list, name)?;
        assert_eq!(meta["depth"], "2", "{list}");
        assert_eq!(meta["engine"], engine, "{list}");
        assert_eq!(meta["stream"], "fw-mix", "{list}");
    }
    Ok(())
}

/// The forward engine's flags mean nothing to the pipeline engine (and `--fec` nothing to the
/// forward one): exit 2 naming them, from the command line or the environment; bad values are
/// refused by name.
#[tokio::test]
async fn engine_flags_are_checked_against_the_engine() -> Result<()> {
    let base = ["--server", "ws://127.0.0.1:9", "--source-name", "x"];
    let with = |extra: &[&'static str]| {
        let mut a = base.to_vec();
        a.extend_from_slice(extra);
        a
    };
    for (args, says) in [
        (
            with(&["--engine", "pipeline", "--udp-port", "5000"]),
            "--udp-port only apply to --engine forward",
        ),
        (
            with(&[
                "--engine",
                "pipeline",
                "--threads",
                "2",
                "--public-ip",
                "192.0.2.1",
            ]),
            "--public-ip, --threads only apply to --engine forward",
        ),
        (
            with(&["--engine", "pipeline", "--ice-address", "127.0.0.1"]),
            "--ice-address only apply",
        ),
        (
            with(&["--engine", "forward", "--fec"]),
            "--fec only applies to --engine pipeline",
        ),
        (
            with(&["--engine", "forward", "--udp-port", "70000"]),
            "from 0 to 65535",
        ),
        (
            with(&["--engine", "forward", "--ice-address", "nope"]),
            "--ice-address",
        ),
        (with(&["--engine", "sideways"]), "sideways"),
    ] {
        let (code, stderr) = quick("relay-agent", &args).await?;
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    // A fixed port someone else holds: the engine cannot start, a runtime failure (exit 1).
    let held = std::net::UdpSocket::bind(("0.0.0.0", 0))?;
    let port = held.local_addr()?.port().to_string();
    let mut args = base.to_vec();
    args.extend_from_slice(&["--engine", "forward", "--udp-port", &port, "--threads", "1"]);
    let (code, stderr) = quick("relay-agent", &args).await?;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot start the forward engine"),
        "{stderr}"
    );
    assert!(stderr.contains(&port), "names the port: {stderr}");
    // The same refusal from the environment (one ConfigMap may carry the flags).
    let mut cmd = std::process::Command::new(cluster_tests::bin("relay-agent"));
    cmd.args(base)
        .env("RELAY_ENGINE", "pipeline")
        .env("RELAY_THREADS", "2");
    let mut agent = Agent::spawn_command(cmd, "relay-agent")?;
    assert_eq!(
        agent.exit_within(LONG).await?,
        Some(2),
        "{}",
        agent.stderr()
    );
    assert!(
        agent.stderr().contains("--threads only apply"),
        "{}",
        agent.stderr()
    );
    Ok(())
}
