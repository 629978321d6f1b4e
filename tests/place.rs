//! `GET /place?stream=NAME` (the web app's placement) tells an unknown stream (404) from a
//! stream whose members have no room (503), and otherwise names the member. Real node.

use anyhow::Result;
use cluster_tests::{Node, Peer};
use serde_json::{json, Value};

#[tokio::test]
async fn an_unknown_stream_is_404_a_full_one_503_and_a_stream_with_room_its_member() -> Result<()> {
    let node = Node::start(&[]).await?;
    let mut full = Peer::connect(&node.url()).await?;
    full.set_status(&["producer"], json!({"name": "full", "capacity": "0"}))
        .await?;
    full.sync().await?;
    let mut open = Peer::connect(&node.url()).await?;
    open.set_status(&["producer"], json!({"name": "open"}))
        .await?;
    open.sync().await?;

    let (status, body) = node.get("/place?stream=nobody").await?;
    assert_eq!(status, 404, "{body}");
    let v: Value = serde_json::from_str(&body)?;
    assert_eq!(
        v["error"],
        "unknown stream 'nobody': no producer of it is connected"
    );

    let (status, body) = node.get("/place?stream=full").await?;
    assert_eq!(status, 503, "{body}");
    let v: Value = serde_json::from_str(&body)?;
    assert_eq!(v["error"], "no producer of stream 'full' has room");

    let (status, body) = node.get("/place?stream=open").await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body)?["peerId"],
        open.id.as_str()
    );
    Ok(())
}
