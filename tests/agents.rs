//! producer-agent and consumer-agent end to end: real nodes, real Redis, real webrtcsink and
//! webrtcsrc in the agent processes, the stock upstream server for the v1 fallback.
//!
//! Media tests take one core each for encoding and decoding; they run one at a time
//! (`media::exclusive`) so that a loaded machine does not starve them.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cluster_tests::agent::{decoded_frames, Agent};
use cluster_tests::{bin, free_port, media, Node, Peer, Proc, Redis};
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(90);

/// How many sessions a consumer report lists.
fn sessions_of(report: &Value) -> Option<usize> {
    report["session_ids"].as_array().map(Vec::len)
}

fn frames_of(v: &Value) -> u64 {
    v["frames"].as_u64().unwrap_or(0)
}

/// Latest frame count a consumer printed in its stats lines.
fn frames_now(c: &Agent) -> u64 {
    c.json_lines("consumer-stats")
        .last()
        .map(frames_of)
        .unwrap_or(0)
}

/// A consumer-agent finding producer `name` through `servers`, with stats every 0.2 s.
fn watching(servers: &str, name: &str) -> Result<Agent> {
    Agent::consumer(&[
        "--server",
        servers,
        "--producer-name",
        name,
        "--stats-interval",
        "0.2",
    ])
}

/// Stops a consumer with SIGINT; it must exit 0 (with its report last on stdout).
async fn stop_cleanly(consumer: &mut Agent) -> Result<()> {
    consumer.signal(libc::SIGINT);
    assert_eq!(
        consumer.exit_within(Duration::from_secs(30)).await?,
        Some(0),
        "{}",
        consumer.stderr()
    );
    Ok(())
}

/// Longest time (ms) the consumer's frame counter stood still after `from_ms` (from its
/// stats lines, `elapsed_ms` since the consumer started).
fn longest_stall_ms(c: &Agent, from_ms: u64) -> u64 {
    let lines = c.json_lines("consumer-stats");
    let mut longest = 0;
    let mut last_change: Option<(u64, u64)> = None; // (elapsed_ms, frames)
    for l in lines {
        let (t, f) = (l["elapsed_ms"].as_u64().unwrap_or(0), frames_of(&l));
        match last_change {
            Some((t0, f0)) if f == f0 => {
                if t >= from_ms {
                    longest = longest.max(t - t0.max(from_ms));
                }
            }
            _ => last_change = Some((t, f)),
        }
    }
    longest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_and_consumer_report_stats_and_metrics_and_stop_cleanly() -> Result<()> {
    let _one = media::exclusive().await;
    let node = Node::start(&[]).await?;
    let (pm, cm) = (free_port(), free_port());
    let producer = Agent::producer(&[
        "--server",
        &node.url(),
        "--name",
        "stats-e2e",
        "--audio",
        "--stats-interval",
        "0.5",
        "--metrics-addr",
        &format!("127.0.0.1:{pm}"),
    ])?;
    let mut consumer = Agent::consumer(&[
        "--server",
        &node.url(),
        "--producer-name",
        "stats-e2e",
        "--frames",
        "90",
        "--stats-interval",
        "0.5",
        "--metrics-addr",
        &format!("127.0.0.1:{cm}"),
    ])?;
    consumer
        .wait(LONG, "60 frames", |c| frames_now(c) >= 60)
        .await?;

    // Consumer: per-stream figures and Prometheus text while it runs.
    let last = consumer
        .json_lines("consumer-stats")
        .pop()
        .context("no stats")?;
    assert!(last["fps"].as_f64().unwrap_or(0.0) > 0.0, "{last}");
    let streams = last["streams"].as_array().context("streams")?;
    assert_eq!(streams.len(), 2, "video and audio: {last}");
    assert!(
        streams
            .iter()
            .all(|s| s["packets_received"].as_u64() > Some(0)),
        "{last}"
    );
    assert!(
        streams
            .iter()
            .any(|s| s["bitrate_bps"].as_f64() > Some(0.0)),
        "{last}"
    );
    let (_, metrics) = cluster_tests::http_get(cm, "/metrics").await?;
    let frames_metric = metrics
        .lines()
        .find(|l| l.starts_with("consumer_frames_total{"))
        .context("no consumer_frames_total")?;
    let value: f64 = frames_metric.rsplit(' ').next().unwrap_or("0").parse()?;
    assert!(value > 0.0, "{metrics}");

    // Producer: one consumer, its bitrate, encoder and congestion-control target.
    // (Any line while the consumer was there: it may have left since.)
    let sending = |s: &Value| s["consumers"][0]["bitrate_bps"].as_f64() > Some(0.0);
    producer
        .wait(LONG, "producer stats with a consumer", |p| {
            p.json_lines("producer-stats").iter().any(sending)
        })
        .await?;
    let pstats = producer
        .json_lines("producer-stats")
        .into_iter()
        .rfind(sending)
        .context("no stats")?;
    let c0 = &pstats["consumers"][0];
    assert!(c0["target_bitrate_bps"].as_u64() > Some(0), "{pstats}");
    assert!(
        !c0["encoders"].as_array().context("encoders")?.is_empty(),
        "{pstats}"
    );
    assert!(c0["consumer_id"].is_string(), "{pstats}");
    let (_, pmetrics) = cluster_tests::http_get(pm, "/metrics").await?;
    assert!(
        pmetrics.contains("producer_consumer_bitrate_bps{"),
        "{pmetrics}"
    );
    assert!(
        pmetrics.contains("producer_sessions_started_total{name=\"stats-e2e\"} 1"),
        "{pmetrics}"
    );

    assert_eq!(
        consumer.exit_within(LONG).await?,
        Some(0),
        "{}",
        consumer.stderr()
    );
    let report = consumer.report()?;
    assert!(frames_of(&report) >= 90, "{report}");
    assert!(report["first_frame_ms"].as_u64() > Some(0), "{report}");
    let stderr = consumer.stderr();
    for step in [
        "looking for producer named 'stats-e2e'",
        "registered as",
        "session",
        "first frame after",
    ] {
        assert!(stderr.contains(step), "no '{step}' in:\n{stderr}");
    }

    // SIGTERM: the producer ends its sessions, closes the connection and exits 0. A session
    // open then (a plain peer's, offered to by webrtcsink) ends at the other side, ended by
    // the producer itself: the node counts its endSession (closing alone would end it too).
    let mut watcher = Peer::connect(&node.url()).await?;
    let producer_id = pstats["peer_id"].as_str().context("producer id")?;
    watcher
        .send(json!({"type": "startSession", "peerId": producer_id}))
        .await?;
    let session = watcher.expect("sessionStarted").await?["sessionId"].clone();
    let offer = watcher.wait_for("peer").await?;
    assert_eq!(offer["sdp"]["type"], "offer", "{offer}");
    let ended_before = ends_received(&node).await?;
    let mut producer = producer;
    producer.signal(libc::SIGTERM);
    assert_eq!(
        producer.exit_within(Duration::from_secs(20)).await?,
        Some(0),
        "{}",
        producer.stderr()
    );
    let end = watcher.wait_for("endSession").await?;
    assert_eq!(end["sessionId"], session, "{end}");
    assert!(
        ends_received(&node).await? > ended_before,
        "the producer closed without ending its session"
    );
    Ok(())
}

/// `endSession` messages the node received from its clients (`gwc_client_messages_total`).
async fn ends_received(node: &Node) -> Result<u64> {
    let (_, text) = node.get("/metrics").await?;
    let line = text
        .lines()
        .find(|l| l.starts_with(r#"gwc_client_messages_total{type="endSession"}"#))
        .with_context(|| format!("no endSession count in:\n{text}"))?;
    Ok(line.rsplit(' ').next().unwrap_or_default().parse()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_on_one_node_consumer_on_another() -> Result<()> {
    let _one = media::exclusive().await;
    let redis = Redis::start().await?;
    let a = Node::join(&redis, "node-a", &[]).await?;
    let b = Node::join(&redis, "node-b", &[]).await?;
    let _producer = Agent::producer(&["--server", &a.url(), "--name", "across"])?;
    let mut consumer = Agent::consumer(&[
        "--server",
        &b.url(),
        "--producer-name",
        "across",
        "--frames",
        "60",
    ])?;
    assert_eq!(
        consumer.exit_within(LONG).await?,
        Some(0),
        "{}",
        consumer.stderr()
    );
    assert!(frames_of(&consumer.report()?) >= 60);
    assert!(
        consumer.stderr().contains("node node-b"),
        "{}",
        consumer.stderr()
    );
    Ok(())
}

/// Kills (SIGKILL) the node the producer is connected to while a consumer on the other node
/// receives. Returns the consumer (stopped, with its report) and the producer.
async fn kill_the_producers_node(protocol: &str) -> Result<(Agent, Agent)> {
    let redis = Redis::start().await?;
    let opts = ["--node-ttl", "1", "--resume-grace", "20"];
    let a = Node::join(&redis, "node-a", &opts).await?;
    let b = Node::join(&redis, "node-b", &opts).await?;
    let servers = format!("{},{}", a.url(), b.url());
    let producer = Agent::producer(&[
        "--server",
        &servers,
        "--name",
        "survivor",
        "--protocol",
        protocol,
    ])?;
    producer.wait_stderr("on ws://127.0.0.1", LONG).await?;
    let mut consumer = watching(&b.url(), "survivor")?;
    consumer
        .wait(LONG, "30 frames", |c| frames_now(c) >= 30)
        .await?;
    let before = frames_now(&consumer);
    let killed_at_ms = consumer
        .json_lines("consumer-stats")
        .last()
        .map(|l| l["elapsed_ms"].as_u64().unwrap_or(0))
        .unwrap_or(0);
    let killed = Instant::now();
    a.proc.signal(libc::SIGKILL);
    // The producer gets back through its list (a second registration without resume);
    // frames keep (or start again) rising.
    let back = if protocol == "auto" {
        "resumed as"
    } else {
        "registered 'survivor'"
    };
    let times = if protocol == "auto" { 1 } else { 2 };
    producer
        .wait(LONG, back, |p| p.stderr().matches(back).count() >= times)
        .await?;
    let back_after = killed.elapsed();
    consumer
        .wait(LONG, "60 more frames", |c| frames_now(c) >= before + 60)
        .await?;
    let stall = Duration::from_millis(longest_stall_ms(&consumer, killed_at_ms));
    eprintln!(
        "protocol {protocol}: producer back on node B {back_after:?} after the kill; \
         consumer frames stood still at most {stall:?}; 60 more frames after {:?}",
        killed.elapsed()
    );
    stop_cleanly(&mut consumer).await?;
    drop(b);
    Ok((consumer, producer))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_producers_node_keeps_the_session_when_the_producer_resumes() -> Result<()> {
    let _one = media::exclusive().await;
    let (consumer, producer) = kill_the_producers_node("auto").await?;
    let report = consumer.report()?;
    // Same session all along: the producer resumed its identity on node B.
    assert_eq!(sessions_of(&report), Some(1), "{report}");
    assert!(
        producer.stderr().contains("lost ws://"),
        "{}",
        producer.stderr()
    );
    // (Media is peer to peer: how long it stood still, if at all, is the benchmark's figure,
    // `tests/loadgen` relay tree, "a killed signalling node"; here the session is kept and the
    // frames go on.)
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_resume_the_consumer_finds_the_reregistered_producer() -> Result<()> {
    let _one = media::exclusive().await;
    let (consumer, producer) = kill_the_producers_node("v1").await?;
    let report = consumer.report()?;
    // A new producer identity, so a second session, found again by name.
    assert_eq!(sessions_of(&report), Some(2), "{report}");
    assert!(
        consumer.stderr().contains("looking for it again"),
        "{}",
        consumer.stderr()
    );
    assert!(
        producer.stderr().contains("protocol v1"),
        "{}",
        producer.stderr()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_moves_the_producer_without_a_new_session() -> Result<()> {
    let _one = media::exclusive().await;
    let redis = Redis::start().await?;
    let a = Node::join(&redis, "node-a", &[]).await?;
    let b = Node::join(&redis, "node-b", &[]).await?;
    let servers = format!("{},{}", a.url(), b.url());
    let producer = Agent::producer(&["--server", &servers, "--name", "mover"])?;
    let mut consumer = watching(&b.url(), "mover")?;
    consumer
        .wait(LONG, "30 frames", |c| frames_now(c) >= 30)
        .await?;
    let before = frames_now(&consumer);
    a.proc.signal(libc::SIGTERM); // drain: goAway to v2 peers
    producer.wait_stderr("resumed as", LONG).await?;
    consumer
        .wait(LONG, "60 more frames", |c| frames_now(c) >= before + 60)
        .await?;
    consumer.signal(libc::SIGINT);
    assert_eq!(
        consumer.exit_within(Duration::from_secs(30)).await?,
        Some(0)
    );
    let report = consumer.report()?;
    assert_eq!(sessions_of(&report), Some(1), "{report}");
    assert!(
        producer.stderr().contains("goAway"),
        "{}",
        producer.stderr()
    );
    Ok(())
}

/// A rolling restart (what `helm upgrade` does) of a 3-node cluster under a live stream: each
/// node in turn is drained (SIGTERM) and started again on its port, with the producer
/// (servers a,b,c) and the consumer (c,a,b) moving at every drain. The stream must never be
/// cut: one producer identity, one session, frames rising after every restart.
/// `ROLLING_ROUNDS=N` repeats the whole rolling restart N times and prints the figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_three_nodes_keeps_the_stream() -> Result<()> {
    let _one = media::exclusive().await;
    let rounds: usize = std::env::var("ROLLING_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1);
    let redis = Redis::start().await?;
    let opts = ["--drain-timeout", "5"];
    let ids = ["node-a", "node-b", "node-c"];
    let mut nodes = Vec::new();
    for id in ids {
        nodes.push(Node::join(&redis, id, &opts).await?);
    }
    let url = |n: &Node| n.url();
    let producers = format!("{},{},{}", url(&nodes[0]), url(&nodes[1]), url(&nodes[2]));
    let consumers = format!("{},{},{}", url(&nodes[2]), url(&nodes[0]), url(&nodes[1]));
    let producer = Agent::producer(&["--server", &producers, "--name", "rolling"])?;
    let mut consumer = watching(&consumers, "rolling")?;
    consumer
        .wait(LONG, "30 frames", |c| frames_now(c) >= 30)
        .await?;
    let started_ms = consumer
        .json_lines("consumer-stats")
        .last()
        .map(|l| l["elapsed_ms"].as_u64().unwrap_or(0))
        .unwrap_or(0);
    for round in 0..rounds {
        for (i, id) in ids.iter().enumerate() {
            let port = nodes[i].port;
            nodes[i].proc.signal(libc::SIGTERM);
            let stopped = Instant::now();
            while nodes[i].proc.child.try_wait()?.is_none() {
                anyhow::ensure!(
                    stopped.elapsed() < Duration::from_secs(20),
                    "{id} did not stop after its drain"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            nodes[i] = Node::join_on(&redis, id, port, &opts).await?;
            let before = frames_now(&consumer);
            consumer
                .wait(LONG, "30 more frames", |c| frames_now(c) >= before + 30)
                .await
                .with_context(|| format!("round {round}, after restarting {id}"))?;
        }
    }
    let stall = longest_stall_ms(&consumer, started_ms);
    stop_cleanly(&mut consumer).await?;
    let report = consumer.report()?;
    let registrations = producer.stderr().matches("registered 'rolling'").count();
    eprintln!(
        "rolling restarts: {rounds} round(s) of 3 drains; producer registrations {registrations}; \
         consumer sessions {:?}; longest frame stall {stall} ms",
        sessions_of(&report)
    );
    // Same producer identity all along: registered once, resumed at every drain.
    assert_eq!(registrations, 1, "{}", producer.stderr());
    assert!(
        producer.stderr().matches("resumed as").count() >= 3 * rounds,
        "{}",
        producer.stderr()
    );
    // One session for the whole run.
    assert_eq!(sessions_of(&report), Some(1), "{report}");
    Ok(())
}

/// The stock gst-webrtc-signalling-server, on `port`.
fn upstream_server(port: u16) -> Result<Proc> {
    let mut cmd = std::process::Command::new(bin("upstream-signalling-server"));
    cmd.arg(port.to_string())
        .stderr(std::process::Stdio::null());
    Proc::spawn(cmd, "upstream-signalling-server")
}

async fn until_accepting(port: u16) -> Result<()> {
    cluster_tests::eventually(Duration::from_secs(10), "server accepting", || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_work_with_the_stock_server_and_survive_its_restart() -> Result<()> {
    let _one = media::exclusive().await;
    let port = free_port();
    let url = format!("ws://127.0.0.1:{port}");
    let server = upstream_server(port)?;
    until_accepting(port).await?;
    let producer = Agent::producer(&["--server", &url, "--name", "stock"])?;
    let mut consumer = watching(&url, "stock")?;
    consumer
        .wait(LONG, "30 frames", |c| frames_now(c) >= 30)
        .await?;
    assert!(
        producer.stderr().contains("protocol v1"),
        "{}",
        producer.stderr()
    );

    // The stock server has no resume: both re-register and find each other again.
    drop(server);
    let before = frames_now(&consumer);
    let _server = upstream_server(port)?;
    consumer
        .wait(LONG, "frames after the restart", |c| {
            frames_now(c) >= before + 60
        })
        .await?;
    stop_cleanly(&mut consumer).await?;
    let report = consumer.report()?;
    assert_eq!(sessions_of(&report), Some(2), "{report}");
    Ok(())
}

/// Decodes a recording in a worker thread; at least `min` video frames.
async fn assert_plays(path: &std::path::Path, min: u64) -> Result<()> {
    let p = path.to_path_buf();
    let decoded = tokio::task::spawn_blocking(move || decoded_frames(&p)).await??;
    assert!(
        decoded >= min,
        "{decoded} frames decoded from {}",
        path.display()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_plays_back() -> Result<()> {
    let _one = media::exclusive().await;
    let node = Node::start(&[]).await?;
    let dir = std::env::temp_dir().join(format!("gwc-rec-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _producer = Agent::producer(&["--server", &node.url(), "--name", "recorded", "--audio"])?;

    // .mkv keeps the producer's codec, stopped by --frames.
    let mkv = dir.join("a.mkv");
    let mut c = Agent::consumer(&[
        "--server",
        &node.url(),
        "--producer-name",
        "recorded",
        "--sink",
        &format!("file:{}", mkv.display()),
        "--frames",
        "90",
    ])?;
    assert_eq!(c.exit_within(LONG).await?, Some(0), "{}", c.stderr());
    // Both streams made it into the file (the muxer takes no stream after its header).
    for stream in ["recording video/x-vp8", "recording audio/x-opus"] {
        assert!(
            c.stderr().contains(stream),
            "no '{stream}' in:\n{}",
            c.stderr()
        );
    }
    assert_plays(&mkv, 80).await?;

    // .mp4 (H.264, negotiated so nothing is re-encoded) stopped by SIGINT: finalized, plays.
    let mp4 = dir.join("b.mp4");
    let mut c = Agent::consumer(&[
        "--server",
        &node.url(),
        "--producer-name",
        "recorded",
        "--sink",
        &format!("file:{}", mp4.display()),
        "--stats-interval",
        "0.2",
    ])?;
    c.wait(LONG, "60 frames", |c| frames_now(c) >= 60).await?;
    stop_cleanly(&mut c).await?;
    assert!(
        c.stderr().contains("recording video/x-h264"),
        "{}",
        c.stderr()
    );
    assert_plays(&mp4, 50).await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_consumers_refuses_the_extra_consumer_not_the_first() -> Result<()> {
    let _one = media::exclusive().await;
    let node = Node::start(&[]).await?;
    let producer = Agent::producer(&[
        "--server",
        &node.url(),
        "--name",
        "limited",
        "--max-consumers",
        "1",
    ])?;
    let first = watching(&node.url(), "limited")?;
    first
        .wait(LONG, "30 frames", |c| frames_now(c) >= 30)
        .await?;
    let mut second = Agent::consumer(&[
        "--server",
        &node.url(),
        "--producer-name",
        "limited",
        "--frames",
        "10",
        "--timeout",
        "10",
    ])?;
    assert_eq!(
        second.exit_within(LONG).await?,
        Some(1),
        "{}",
        second.stderr()
    );
    assert!(
        second.stderr().contains("before any media"),
        "{}",
        second.stderr()
    );
    assert!(
        producer.stderr().contains("refused consumer"),
        "{}",
        producer.stderr()
    );
    let now = frames_now(&first);
    first
        .wait(LONG, "the first consumer still receiving", |c| {
            frames_now(c) >= now + 30
        })
        .await?;
    Ok(())
}

/// Runs an agent that must exit quickly; returns its code and stderr.
async fn quick(name: &str, args: &[&str]) -> Result<(Option<i32>, String)> {
    let mut a = Agent::spawn(name, args)?;
    let code = a.exit_within(Duration::from_secs(40)).await?;
    Ok((code, a.stderr()))
}

#[tokio::test]
async fn bad_arguments_unreachable_servers_and_missing_producers_give_documented_exit_codes(
) -> Result<()> {
    let node = Node::start(&[]).await?;
    let url = node.url();
    let dead = format!("ws://127.0.0.1:{}", free_port());
    let cases: Vec<(&str, Vec<&str>, i32, &str)> = vec![
        (
            "producer-agent",
            vec![
                "--server",
                &url,
                "--name",
                "x",
                "--source",
                "pipeline:nosuchelement ! videoconvert",
            ],
            2,
            "cannot parse the pipeline fragment",
        ),
        (
            "producer-agent",
            vec![
                "--server",
                &url,
                "--name",
                "x",
                "--source",
                "uri:file:///nonexistent/clip.mp4",
            ],
            2,
            "cannot open",
        ),
        (
            "producer-agent",
            vec!["--server", &url, "--name", "x", "--source", "camera"],
            2,
            "unknown source",
        ),
        (
            "producer-agent",
            vec!["--server", "http://127.0.0.1:1", "--name", "x"],
            2,
            "scheme must be ws or wss",
        ),
        (
            "producer-agent",
            vec!["--server", &dead, "--name", "x", "--retry-for", "1"],
            1,
            "cannot connect to",
        ),
        (
            "relay-agent",
            vec!["--server", &url],
            2,
            "--source-name or --source-id",
        ),
        (
            "relay-agent",
            vec!["--server", &dead, "--source-name", "x", "--retry-for", "1"],
            1,
            "cannot connect to",
        ),
        (
            "relay-agent",
            vec![
                "--server",
                &url,
                "--source-name",
                "nobody",
                "--timeout",
                "2",
            ],
            1,
            "no origin appeared within 2 s",
        ),
        (
            "consumer-agent",
            vec!["--server", &url],
            2,
            "--producer-name, --producer-id, --first or --stream",
        ),
        (
            "consumer-agent",
            vec!["--server", &url, "--first", "--sink", "file:/tmp/x.avi"],
            2,
            "container",
        ),
        (
            "consumer-agent",
            vec!["--server", &dead, "--first", "--retry-for", "1"],
            1,
            "cannot connect to",
        ),
        (
            "consumer-agent",
            vec![
                "--server",
                &url,
                "--producer-name",
                "nobody",
                "--timeout",
                "2",
            ],
            3,
            "no producer named 'nobody' appeared",
        ),
        (
            "consumer-agent",
            vec![
                "--server",
                &url,
                "--producer-id",
                "no-such-id",
                "--timeout",
                "5",
            ],
            3,
            "no producer no-such-id",
        ),
    ];
    for (name, args, code, message) in cases {
        let (got, stderr) = quick(name, &args).await?;
        assert_eq!(got, Some(code), "{name} {args:?}:\n{stderr}");
        assert!(
            stderr.contains(message),
            "{name} {args:?}: no '{message}' in:\n{stderr}"
        );
    }
    Ok(())
}

/// Writes a 1.5 s VP8/WebM clip (45 frames) for `--source uri:`.
fn make_clip(path: &std::path::Path) -> Result<()> {
    use gst::prelude::*;
    media::init();
    let pipeline = gst::parse::launch(&format!(
        "videotestsrc num-buffers=45 pattern=ball ! video/x-raw,width=160,height=120,framerate=30/1 \
         ! vp8enc deadline=1 ! webmmux ! filesink location=\"{}\"",
        path.display()
    ))?;
    pipeline.set_state(gst::State::Playing)?;
    let msg = pipeline.bus().context("no bus")?.timed_pop_filtered(
        gst::ClockTime::from_seconds(30),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    );
    pipeline.set_state(gst::State::Null)?;
    anyhow::ensure!(
        msg.is_some_and(|m| m.type_() == gst::MessageType::Eos),
        "cannot write the clip"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uri_and_pipeline_sources_with_webrtcsink_options() -> Result<()> {
    let _one = media::exclusive().await;
    let node = Node::start(&[]).await?;
    let dir = std::env::temp_dir().join(format!("gwc-src-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let clip = dir.join("clip.webm");
    make_clip(&clip)?;

    // A 45-frame file, looped, re-encoded to H.264 under the options given.
    let producer = Agent::producer(&[
        "--server",
        &node.url(),
        "--name",
        "clip",
        "--source",
        &format!("uri:file://{}", clip.display()),
        "--video-codec",
        "h264",
        "--congestion-control",
        "homegrown",
        "--min-bitrate",
        "100000",
        "--max-bitrate",
        "600000",
        "--fec",
        "false",
        "--rtx",
        "false",
        "--meta",
        "room=lobby",
        "--stats-interval",
        "0.5",
    ])?;
    let mut consumer = Agent::consumer(&[
        "--server",
        &node.url(),
        "--producer-name",
        "clip",
        "--frames",
        "120",
        "--sink",
        "pipeline:fakesink sync=false",
    ])?;
    assert_eq!(
        consumer.exit_within(LONG).await?,
        Some(0),
        "{}",
        consumer.stderr()
    );
    assert!(
        frames_of(&consumer.report()?) >= 120,
        "more frames than the file has: it loops"
    );
    assert!(
        producer.stderr().contains("looping"),
        "{}",
        producer.stderr()
    );
    let encoders: Vec<Value> = producer
        .json_lines("producer-stats")
        .iter()
        .flat_map(|s| s["consumers"].as_array().cloned().unwrap_or_default())
        .flat_map(|c| c["encoders"].as_array().cloned().unwrap_or_default())
        .collect();
    assert!(
        encoders
            .iter()
            .any(|e| e.as_str().is_some_and(|e| e.contains("h264"))),
        "{encoders:?}"
    );
    let mut lister = cluster_tests::Peer::connect(&node.url()).await?;
    lister.send(serde_json::json!({"type": "list"})).await?;
    let list = lister.expect("list").await?;
    assert_eq!(list["producers"][0]["meta"]["room"], "lobby", "{list}");
    assert_eq!(list["producers"][0]["meta"]["name"], "clip", "{list}");

    // A gst-launch fragment ending in caps; received by peer id for a fixed duration.
    let frag = Agent::producer(&[
        "--server",
        &node.url(),
        "--name",
        "frag",
        "--source",
        "pipeline:videotestsrc is-live=true pattern=ball ! video/x-raw,width=160,height=120",
    ])?;
    frag.wait_stderr("registered 'frag' as", LONG).await?;
    let id = frag
        .stderr()
        .split("registered 'frag' as ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .context("no peer id")?
        .to_string();
    let mut by_id = Agent::consumer(&[
        "--server",
        &node.url(),
        "--producer-id",
        &id,
        "--duration",
        "3",
    ])?;
    assert_eq!(
        by_id.exit_within(LONG).await?,
        Some(0),
        "{}",
        by_id.stderr()
    );
    let report = by_id.report()?;
    assert!(frames_of(&report) > 0, "{report}");
    assert_eq!(report["producer_id"], id.as_str());
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[tokio::test]
async fn headers_token_and_protocol_offer_reach_the_server() -> Result<()> {
    // A plain TCP server that records each upgrade request and hangs up.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = requests.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            use std::io::Read;
            let mut conn = conn;
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = vec![0u8; 8192];
            let n = conn.read(&mut buf).unwrap_or(0);
            seen.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&buf[..n]).to_lowercase());
        }
    });
    let url = format!("ws://127.0.0.1:{port}");
    let (code, stderr) = quick(
        "consumer-agent",
        &[
            "--server",
            &url,
            "--first",
            "--retry-for",
            "1",
            "--header",
            "X-Tenant=acme",
            "--header",
            "Cookie=gwc-node=node-b",
            "--token",
            "sekrit",
        ],
    )
    .await?;
    assert_eq!(code, Some(1), "{stderr}");
    let (code, _) = quick(
        "consumer-agent",
        &[
            "--server",
            &url,
            "--first",
            "--retry-for",
            "1",
            "--protocol",
            "v1",
        ],
    )
    .await?;
    assert_eq!(code, Some(1));
    let requests = requests.lock().unwrap().clone();
    let first = requests.first().context("no request")?;
    for line in [
        "x-tenant: acme",
        "cookie: gwc-node=node-b",
        "authorization: bearer sekrit",
        "sec-websocket-protocol: gstwebrtc-cluster.v2, gstwebrtc-cluster.v1",
    ] {
        assert!(first.contains(line), "no '{line}' in:\n{first}");
    }
    let v1 = requests.last().context("no v1 request")?;
    assert!(!v1.contains("sec-websocket-protocol"), "{v1}");
    Ok(())
}

#[tokio::test]
async fn wss_with_a_ca_file_or_insecure_tls() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("gwc-agent-tls-{}", std::process::id()));
    let (cert, key, _) = cluster_tests::self_signed(&dir)?;
    let node =
        Node::start_tls(&["-c", cert.to_str().unwrap(), "-k", key.to_str().unwrap()]).await?;
    let url = format!("wss://localhost:{}", node.port);
    let cafile = cert.to_str().unwrap();
    let wait = [
        "--producer-name",
        "nobody",
        "--timeout",
        "2",
        "--retry-for",
        "2",
    ];
    // Trusted through --cafile, or not checked at all: registered, then not found (3).
    for extra in [vec!["--cafile", cafile], vec!["--insecure-tls"]] {
        let mut args = vec!["--server", url.as_str()];
        args.extend(extra.iter().copied());
        args.extend(wait);
        let (code, stderr) = quick("consumer-agent", &args).await?;
        assert_eq!(code, Some(3), "{args:?}: {stderr}");
        assert!(stderr.contains("registered as"), "{stderr}");
    }
    // Not trusted: the connection fails (1).
    let mut args = vec!["--server", url.as_str()];
    args.extend(wait);
    let (code, stderr) = quick("consumer-agent", &args).await?;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("cannot connect to"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() -> Result<()> {
    let dead = format!("ws://127.0.0.1:{}", free_port());
    let mut a = Agent::spawn(
        "consumer-agent",
        &[
            "--server",
            &dead,
            "--first",
            "--retry-for",
            "1",
            "--log-format",
            "json",
        ],
    )?;
    assert_eq!(a.exit_within(Duration::from_secs(30)).await?, Some(1));
    // Every line, the last (the error it exits with) included.
    let stderr = a.stderr();
    let logs: Vec<&str> = stderr.lines().collect();
    assert!(logs.len() > 1, "{stderr}");
    for line in &logs {
        let v: Value = serde_json::from_str(line).with_context(|| format!("not JSON: {line}"))?;
        assert!(v["level"].is_string() && v["fields"].is_object(), "{v}");
    }
    assert!(
        logs.last()
            .is_some_and(|l| l.contains(r#""level":"ERROR""#)),
        "{stderr}"
    );
    Ok(())
}
