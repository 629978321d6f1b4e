//! DTLS interop of our agents' ECDSA P-256 certificate (agent-core/src/dtls_certificate.rs):
//! a third-party stack that offers ECDSA suites only (aiortc from PyPI, in the tools venv,
//! driven by tests/tools/aiortc_viewer.py over the v1 protocol) watches a producer-agent and a
//! pipeline relay; a stock webrtcsink, with GStreamer's own RSA certificate, still feeds our
//! agents (the relay and a consumer-agent).

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use cluster_tests::agent::Agent;
use cluster_tests::consumer::frames_of;
use cluster_tests::{k8s, manifest_dir, media, Node, Peer, Topo};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(90);

/// aiortc watching the producer named `name` on `url` until it decoded `frames` video frames.
fn aiortc_viewer(url: &str, name: &str, frames: u32) -> Result<Agent> {
    let mut cmd = Command::new(k8s::tool("venv/bin/python"));
    cmd.arg(manifest_dir().join("tools/aiortc_viewer.py"))
        .args(["--server", url, "--producer-name", name])
        .args(["--frames", &frames.to_string(), "--timeout", "60"]);
    Agent::spawn_command(cmd, "aiortc-viewer")
}

/// The viewer's exit code and its last "done" line, with its output when it failed.
async fn watched(viewer: &mut Agent) -> Result<Value> {
    let code = viewer.exit_within(LONG).await?;
    let lines = viewer.stdout();
    assert_eq!(
        code,
        Some(0),
        "aiortc did not get its frames:\n{}\n{}",
        lines.join("\n"),
        viewer.stderr()
    );
    let done = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["event"] == "done")
        .context("no done line")?;
    Ok(done)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ecdsa_only_client_watches_a_producer_agent() -> Result<()> {
    let _one = media::exclusive().await;
    let node = Node::start(&[]).await?;
    let _producer = Agent::producer(&["--server", &node.url(), "--name", "ecdsa-cam"])?;
    let mut viewer = aiortc_viewer(&node.url(), "ecdsa-cam", 30)?;
    let done = watched(&mut viewer).await?;
    assert!(done["frames"].as_u64() >= Some(30), "{done}");
    Ok(())
}

/// The relay receives a stock webrtcsink (GStreamer's RSA certificate) with our webrtcsrc
/// and serves it with our webrtcsink (our ECDSA certificate) to aiortc.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ecdsa_only_client_watches_a_pipeline_relay_of_a_stock_rsa_origin() -> Result<()> {
    let _one = media::exclusive().await;
    let node = Node::start(&[]).await?;
    let _origin = media::stock_producer(&node.url(), "rsa-origin")?;
    let url = node.url();
    let _relay = Agent::spawn(
        "relay-agent",
        &[
            "--server",
            &url,
            "--source-name",
            "rsa-origin",
            "--name",
            "ecdsa-relay",
        ],
    )?;
    let mut lister = Peer::connect(&url).await?;
    Topo::list_until(&mut lister, false, |l| {
        l["producers"].as_array().map(Vec::len) == Some(2)
    })
    .await?;
    let mut viewer = aiortc_viewer(&url, "ecdsa-relay", 30)?;
    let done = watched(&mut viewer).await?;
    assert!(done["frames"].as_u64() >= Some(30), "{done}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_rsa_webrtcsink_feeds_a_consumer_agent() -> Result<()> {
    let _one = media::exclusive().await;
    let node = Node::start(&[]).await?;
    let _origin = media::stock_producer(&node.url(), "rsa-cam")?;
    let mut consumer = Agent::consumer(&[
        "--server",
        &node.url(),
        "--producer-name",
        "rsa-cam",
        "--frames",
        "30",
    ])?;
    assert_eq!(
        consumer.exit_within(LONG).await?,
        Some(0),
        "{}",
        consumer.stderr()
    );
    assert!(frames_of(&consumer.report()?) >= 30);
    Ok(())
}
