//! What an operator does through the operations API sticks with the agents: a kicked agent
//! says why and exits 5 instead of coming back as a new peer (unless started with
//! `--reconnect-after-kick`), and a consumer whose session an operator ended exits 5 instead of
//! starting a new one. A real node with `--admin-api`, real agents.

use std::time::Duration;

use anyhow::{Context, Result};
use cluster_tests::agent::Agent;
use cluster_tests::{media, Node};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LONG: Duration = Duration::from_secs(90);

/// `POST path` on the node (the operations API): its status.
async fn post(node: &Node, path: &str) -> Result<u16> {
    let mut s = tokio::net::TcpStream::connect((node.host.as_str(), node.port)).await?;
    let request = format!("POST {path} HTTP/1.0\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n");
    s.write_all(request.as_bytes()).await?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).await?;
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no HTTP status in {answer:?}"))
}

/// Kicks peer `id` with `reason` through the operations API.
async fn kick(node: &Node, id: &str, reason: &str) -> Result<()> {
    let status = post(node, &format!("/api/v1/peers/{id}/kick?reason={reason}")).await?;
    anyhow::ensure!((200..300).contains(&status), "kick {id}: HTTP {status}");
    Ok(())
}

/// The sessions the node lists (`GET /api/v1/sessions`).
async fn sessions(node: &Node) -> Result<Vec<Value>> {
    let (status, body) = node.get("/api/v1/sessions").await?;
    anyhow::ensure!(status == 200, "sessions: HTTP {status} {body}");
    let v: Value = serde_json::from_str(&body)?;
    Ok(v["sessions"].as_array().cloned().unwrap_or_default())
}

/// Waits until the node lists exactly one session; its id.
async fn the_session(node: &Node) -> Result<String> {
    cluster_tests::eventually(LONG, "one session", || async {
        sessions(node).await.is_ok_and(|s| s.len() == 1)
    })
    .await?;
    let all = sessions(node).await?;
    all[0]["sessionId"]
        .as_str()
        .map(String::from)
        .with_context(|| format!("{all:?}"))
}

/// Ends session `id` through the operations API.
async fn end_session(node: &Node, id: &str) -> Result<()> {
    let status = post(node, &format!("/api/v1/sessions/{id}/end")).await?;
    anyhow::ensure!((200..300).contains(&status), "end {id}: HTTP {status}");
    Ok(())
}

/// `agent` exits with `code` within [`LONG`], its stderr saying `says`.
async fn exits_with(agent: &mut Agent, code: i32, says: &str) -> Result<()> {
    let got = agent.exit_within(LONG).await?;
    let stderr = agent.stderr();
    assert_eq!(got, Some(code), "{}: {stderr}", agent.proc.name);
    assert!(stderr.contains(says), "no '{says}' in: {stderr}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kicked_producer_or_consumer_exits_5_with_the_reason_unless_told_to_come_back(
) -> Result<()> {
    let _one = media::exclusive().await;
    let node = Node::start(&["--admin-api"]).await?;
    let url = node.url();
    let mut producer = Agent::producer(&["--server", &url, "--name", "cam"])?;
    let id = producer
        .wait_word_after("registered 'cam' as ", LONG)
        .await?;
    let mut consumer = Agent::consumer(&[
        "--server",
        &url,
        "--producer-name",
        "cam",
        "--sink",
        "encoded",
    ])?;
    consumer.wait_stderr("first frame", LONG).await?;
    let viewer = consumer.word_after("registered as ").context("no id")?;

    kick(&node, &viewer, "policy-test").await?;
    exits_with(
        &mut consumer,
        5,
        "consumer-agent: disconnected by an operator: policy-test",
    )
    .await?;
    kick(&node, &id, "maintenance").await?;
    exits_with(
        &mut producer,
        5,
        "producer-agent: disconnected by an operator: maintenance",
    )
    .await?;
    assert!(
        !producer.stderr().contains("reconnecting"),
        "{}",
        producer.stderr()
    );

    // Told to come back: it registers again, as a new peer, and stays.
    let comeback = Agent::producer(&["--server", &url, "--name", "cam", "--reconnect-after-kick"])?;
    let first = comeback
        .wait_word_after("registered 'cam' as ", LONG)
        .await?;
    kick(&node, &first, "once-more").await?;
    comeback
        .wait_stderr("registering again (--reconnect-after-kick)", LONG)
        .await?;
    comeback
        .wait(LONG, "a second registration", |a| {
            a.stderr().matches("registered 'cam' as ").count() == 2
        })
        .await?;
    let second = comeback
        .stderr()
        .rsplit("registered 'cam' as ")
        .next()
        .and_then(|rest| rest.split_whitespace().next())
        .map(String::from)
        .context("no second id")?;
    assert_ne!(first, second, "a new peer: {}", comeback.stderr());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ended_by_an_operator_ends_the_consumer_with_5_and_no_new_session() -> Result<()>
{
    let _one = media::exclusive().await;
    let node = Node::start(&["--admin-api"]).await?;
    let url = node.url();
    let producer = Agent::producer(&["--server", &url, "--name", "cam"])?;
    let mut consumer = Agent::consumer(&[
        "--server",
        &url,
        "--producer-name",
        "cam",
        "--sink",
        "encoded",
    ])?;
    consumer.wait_stderr("first frame", LONG).await?;
    let session = the_session(&node).await?;

    end_session(&node, &session).await?;
    exits_with(
        &mut consumer,
        5,
        &format!("consumer-agent: session {session} was ended by an operator"),
    )
    .await?;
    let stderr = consumer.stderr();
    assert!(!stderr.contains("looking for it again"), "{stderr}");
    // Plain words, no Rust debug formatting (`Some(434) ms`).
    assert!(
        stderr.contains(" ms after the session started)") && !stderr.contains("Some("),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("requesting a session").count(),
        1,
        "{stderr}"
    );
    producer
        .wait_stderr(&format!("(session {session}, ended by an operator)"), LONG)
        .await?;
    assert!(sessions(&node).await?.is_empty(), "no new session");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_exits_5_when_its_source_session_is_ended_or_it_is_kicked() -> Result<()> {
    let _one = media::exclusive().await;
    let node = Node::start(&["--admin-api"]).await?;
    let url = node.url();
    let _origin = Agent::producer(&["--server", &url, "--name", "cam"])?;
    let relay_args = ["--server", &url, "--source-name", "cam", "--name", "cam-r"];

    // Its source's session ended by an operator: the relay does not take it again.
    let mut relay = Agent::spawn("relay-agent", &relay_args)?;
    relay.wait_stderr("serving as", LONG).await?;
    let session = the_session(&node).await?;
    end_session(&node, &session).await?;
    exits_with(
        &mut relay,
        5,
        &format!("relay-agent: the source session {session} was ended by an operator"),
    )
    .await?;
    assert!(
        !relay.stderr().contains("waiting for it to return"),
        "{}",
        relay.stderr()
    );

    // Its serving side kicked.
    let mut relay = Agent::spawn("relay-agent", &relay_args)?;
    let serving = relay.wait_word_after("serving as ", LONG).await?;
    kick(&node, &serving, "relay-retired").await?;
    exits_with(
        &mut relay,
        5,
        "relay-agent: disconnected by an operator: relay-retired",
    )
    .await?;
    Ok(())
}
