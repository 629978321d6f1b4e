//! DTLS interop of our agents' ECDSA P-256 certificate (agent-core/src/dtls_certificate.rs):
//! a third-party stack that offers ECDSA suites only (aiortc from PyPI, in the tools venv,
//! driven by tests/tools/aiortc_viewer.py over the v1 protocol) watches a producer-agent and a
//! pipeline relay; a stock webrtcsink, with GStreamer's own RSA certificate, still feeds our
//! agents (the relay and a consumer-agent).

use anyhow::Result;
use cluster_tests::agent::Agent;
use cluster_tests::clients::{aiortc_viewer, aiortc_watched as watched, LONG};
use cluster_tests::consumer::frames_of;
use cluster_tests::{media, Node, Peer, Topo};

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
            "--engine",
            "pipeline",
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
