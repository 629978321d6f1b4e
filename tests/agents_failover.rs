//! The agents through signalling failures: the producer's node killed (resume keeps the
//! session; v1 finds the producer again), a node drained, a rolling restart of three nodes
//! under a live stream, the stock upstream server and its restart. Real nodes, Redis, agents.
//!
//! Media tests run one at a time (`media::exclusive`).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cluster_tests::agent::Agent;
use cluster_tests::consumer::{frames_now, longest_stall_ms, sessions_of, stop_cleanly, watching};
use cluster_tests::{bin, free_port, media, Node, Proc, Redis};

const LONG: Duration = Duration::from_secs(90);

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
