//! A viewer's cap honoured end to end (issue 26): a layered origin (`--layers 3`, 640x360 →
//! 640x360, 320x180, 160x90), a forward relay, and viewers placed on it by stream. A
//! consumer-agent with `--max-height 180` receives the 320x180 layer; the web app's small
//! tile receives a lower layer than its fullscreen tile, and never one above its cap
//! (Chromium).

use std::time::Duration;

use anyhow::Result;
use cluster_tests::agent::Agent;
use cluster_tests::clients::{browser, event};
use cluster_tests::relaying::{forward, listed, viewer};
use cluster_tests::{media, Node};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(90);

/// A 640x360 test picture encoded as a 3-layer ladder, and a forward relay of it, listed.
async fn layered_stream(node: &Node, name: &str) -> Result<(Agent, Agent)> {
    let url = node.url();
    let origin = Agent::spawn(
        "producer-agent",
        &[
            "--server",
            &url,
            "--name",
            name,
            "--width",
            "640",
            "--height",
            "360",
            "--encoding",
            "shared",
            "--layers",
            "3",
        ],
    )?;
    let relay = forward(node, name, &format!("{name} relay"), &[])?;
    listed(node, 2).await?;
    Ok((origin, relay))
}

fn height_now(c: &Agent) -> Option<u64> {
    c.json_lines("consumer-stats")
        .last()
        .and_then(|l| l["height"].as_u64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_capped_at_180_lines_receives_the_180_line_layer_through_a_relay() -> Result<()>
{
    let _one = media::exclusive().await;
    let node = Node::start(&[]).await?;
    let (_origin, relay) = layered_stream(&node, "capped-layers").await?;
    let capped = viewer(
        &node,
        &["--stream", "capped-layers", "--max-height", "180"],
        "null",
    )?;
    capped
        .wait(LONG, "decoded frames", |c| height_now(c).is_some())
        .await?;
    // Several seconds of lines, all at most 180 lines once the first frame came.
    capped
        .wait(LONG, "5 s of frames", |c| {
            c.json_lines("consumer-stats")
                .iter()
                .filter(|l| l["height"].as_u64().is_some())
                .count()
                >= 25
        })
        .await?;
    let heights: Vec<Option<u64>> = capped
        .json_lines("consumer-stats")
        .iter()
        .map(|l| l["height"].as_u64())
        .filter(Option::is_some)
        .collect();
    // It joins on the lowest layer (90 lines) and climbs to its cap, never above it.
    let relay_line = relay.json_lines("relay-stats").pop();
    assert!(
        heights.iter().all(|h| *h <= Some(180)),
        "a viewer capped at 180 lines got {heights:?}; relay: {relay_line:?}"
    );
    capped
        .wait(LONG, "the 180-line layer", |c| height_now(c) == Some(180))
        .await?;
    Ok(())
}

/// The page's tile, small then fullscreen: the layer it received in each (`browser.mjs
/// layers`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_small_tile_receives_a_lower_layer_than_its_fullscreen_tile() -> Result<()> {
    let _one = media::exclusive().await;
    let node = Node::start(&[]).await?;
    let (_origin, relay) = layered_stream(&node, "tile-layers").await?;
    let url = format!("http://127.0.0.1:{}/", node.port);
    let page = browser(&["layers", &url, "tile-layers"])?;
    let small: Value = event(&page, "small").await?;
    let full: Value = event(&page, "fullscreen").await?;
    let relay_line = relay.json_lines("relay-stats").pop();
    eprintln!("small tile: {small}\nfullscreen: {full}\nrelay: {relay_line:?}");
    // Device pixels: 336 CSS px × 0.25 = 84 → cap 90, the bottom layer (where a relay starts
    // a viewer; the page watches 12 s, past the step up an uncapped loopback viewer makes):
    // never anything taller. The 720-line screen × 0.25 = 180 → cap 180, the middle layer.
    assert_eq!(small["member"], "relay", "{small}");
    assert_eq!(small["cap"].as_u64(), Some(90), "{small}");
    assert_eq!(
        (small["height"].as_u64(), small["tallest"].as_u64()),
        (Some(90), Some(90)),
        "{small}"
    );
    assert_eq!(full["cap"].as_u64(), Some(180), "{full}");
    assert!(full["tallest"].as_u64() <= Some(180), "{full}");
    assert!(
        full["height"].as_u64() > small["height"].as_u64(),
        "fullscreen {full}, small {small}; relay: {relay_line:?}"
    );
    Ok(())
}
