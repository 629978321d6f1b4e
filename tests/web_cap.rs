//! The web app's cap on the video height it asks for (issue 26), in Debian's Chromium: the
//! `startSession` its tile sends carries a `maxHeight` from the tile's size, as the producer
//! side receives it (a v2 raw peer registered as the producer, not the page's own word); a
//! fullscreen tile asks again with a higher one.

use std::time::Duration;

use anyhow::Result;
use cluster_tests::clients::{browser, event};
use cluster_tests::{Node, Peer};
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(60);

/// The producer's next `startSession`, skipping the rest.
async fn start_session(p: &mut Peer) -> Result<Value> {
    tokio::time::timeout(LONG, p.wait_for("startSession")).await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_tile_asks_for_a_lower_layer_than_a_fullscreen_one() -> Result<()> {
    let node = Node::start(&[]).await?;
    // A layered source, as its meta says: the page rounds its tile up to one of these.
    let mut p = Peer::connect_with(&node.url(), Some("gstwebrtc-cluster.v2")).await?;
    p.set_status(
        &["producer"],
        json!({"name": "capped-web", "layers": "1280x720@2000,640x360@600,320x180@150"}),
    )
    .await?;
    let page = browser(&[
        "cap",
        &format!("http://127.0.0.1:{}/", node.port),
        "capped-web",
    ])?;

    // 480×360 window: a one-column tile 448 px wide, its 4:3 video 336 px high → 360
    let small = start_session(&mut p).await?;
    let tile = event(&page, "tile").await?;
    assert_eq!(small["maxHeight"], 360, "{small} {tile}");
    assert_eq!(small["maxHeight"], tile["cap"], "{small} {tile}");

    // fullscreen on a 720-line screen: a new session, capped at the top layer
    let full = start_session(&mut p).await?;
    let shown = event(&page, "fullscreen").await?;
    assert_eq!(full["maxHeight"], 720, "{full} {shown}");
    assert_ne!(full["sessionId"], small["sessionId"]);
    Ok(())
}
