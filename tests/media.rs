//! Stock `webrtcsink` and `webrtcsrc`, with their default signaller, exchange real media
//! through our node: decoded video frames must arrive.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use cluster_tests::{media, Node, Peer};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_webrtcsink_to_stock_webrtcsrc_through_our_node() -> Result<()> {
    let node = Node::start(&[]).await?;
    let mut listener = Peer::connect(&node.url()).await?;
    listener.set_status(&["listener"], Value::Null).await?;

    let producer = media::stock_producer(&node.url(), "stock-test")?;
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

    let (consumer, frames) = media::stock_consumer(&node.url(), &producer_id)?;
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
    // both sides went through a session on our node
    let (_, health) = node.get("/healthz").await?;
    let health: Value = serde_json::from_str(&health)?;
    assert_eq!(health["sessions"], 1, "{health}");
    drop(consumer);
    drop(producer);
    Ok(())
}
