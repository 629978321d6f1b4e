//! Stock `webrtcsink` and `webrtcsrc`, with their default signaller, exchange real media
//! through our node: decoded video frames must arrive.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use cluster_tests::{media, Peer, Topo};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_webrtcsink_to_stock_webrtcsrc_through_our_node() -> Result<()> {
    let _one_at_a_time = media::exclusive().await;
    let topo = Topo::single(&[]).await?;
    let _running = stock_elements_exchange_media(&topo).await?;
    // both sides went through a session on our node
    let (_, health) = topo.nodes[0].get("/healthz").await?;
    let health: Value = serde_json::from_str(&health)?;
    assert_eq!(health["sessions"], 1, "{health}");
    Ok(())
}

/// The producer's webrtcsink talks to node A, the consumer's webrtcsrc to node B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_elements_across_two_nodes_of_a_cluster() -> Result<()> {
    let _one_at_a_time = media::exclusive().await;
    let topo = Topo::cluster(2, &[]).await?;
    let _running = stock_elements_exchange_media(&topo).await?;
    for node in &topo.nodes {
        let (_, health) = node.get("/healthz").await?;
        let health: Value = serde_json::from_str(&health)?;
        assert_eq!(health["sessions"], 1, "each node holds its side: {health}");
    }
    Ok(())
}

/// Stock producer on `url(0)`, stock consumer on `url(1)`: 30 decoded frames must arrive.
/// Returns both pipelines, still running.
async fn stock_elements_exchange_media(topo: &Topo) -> Result<(media::Running, media::Running)> {
    let mut listener = Peer::connect(&topo.url(1)).await?;
    listener.set_status(&["listener"], Value::Null).await?;

    let producer = media::stock_producer(&topo.url(0), "stock-test")?;
    let announced = listener
        .wait_until(|v| {
            v["type"] == "peerStatusChanged"
                && v["meta"]["name"] == "stock-test"
                && v["roles"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|r| r == "producer"))
        })
        .await?;
    let producer_id = announced["peerId"].as_str().unwrap().to_string();

    let (consumer, frames) = media::stock_consumer(&topo.url(1), &producer_id)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while frames.count() < 30 {
        if let Some(e) = producer.error().or_else(|| consumer.error()) {
            bail!("pipeline error: {e}");
        }
        if Instant::now() > deadline {
            bail!("only {} decoded frames within 60 s", frames.count());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // decoded raw video at the producer's size, not RTP packets
    let caps = frames
        .caps
        .lock()
        .unwrap()
        .clone()
        .expect("caps of the first frame");
    let s = caps.structure(0).unwrap();
    assert_eq!(s.name(), "video/x-raw", "{caps}");
    assert_eq!(s.get::<i32>("width").ok(), Some(320), "{caps}");
    assert_eq!(s.get::<i32>("height").ok(), Some(240), "{caps}");
    Ok((producer, consumer))
}
