//! The web app every node serves, in Debian's Chromium (headless, driven by playwright-core
//! through `web/tests/browser.mjs`), with the stock gstwebrtc-api, against real agents, nodes
//! and Redis.

use anyhow::{Context, Result};
use cluster_tests::agent::Agent;
use cluster_tests::clients::{browser, event, web_dir, LONG};
use cluster_tests::coturn::Coturn;
use cluster_tests::netns::Namespace;
use cluster_tests::{media, Node, Redis};
use serde_json::Value;

fn nav_events(p: &Agent) -> u64 {
    p.json_lines("producer-stats")
        .last()
        .and_then(|s| s["navigation_events"].as_u64())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_plays_a_producer_and_its_clicks_reach_the_producer() -> Result<()> {
    let _one = media::exclusive().await;
    let node = Node::start(&[]).await?;
    let producer = Agent::producer(&[
        "--server",
        &node.url(),
        "--name",
        "pattern",
        "--navigation",
        "--stats-interval",
        "0.5",
    ])?;
    let artifacts = web_dir().join("test-artifacts");
    std::fs::create_dir_all(&artifacts)?;
    let shot = artifacts.join("producer-in-page.png");
    let _ = std::fs::remove_file(&shot);
    let url = format!("http://127.0.0.1:{}/", node.port);
    let page = browser(&["watch", &url, "pattern", shot.to_str().unwrap(), "3"])?;

    let connected = event(&page, "connected").await?;
    assert_eq!(
        connected["node"],
        node_id(&node).await?.as_str(),
        "the page shows its node"
    );
    let playing = event(&page, "playing").await?;
    // The producer's resolution, decoded frames still rising, a picture (not one colour).
    assert_eq!(
        (playing["width"].as_u64(), playing["height"].as_u64()),
        (Some(320), Some(240)),
        "{playing}"
    );
    assert!(
        playing["frames"].as_u64() > playing["framesBefore"].as_u64(),
        "{playing}"
    );
    assert!(playing["distinctColours"].as_u64() > Some(4), "{playing}");
    assert!(
        playing["overlay"]
            .as_str()
            .is_some_and(|o| o.contains("320×240")),
        "{playing}"
    );
    let png =
        std::fs::read(&shot).with_context(|| format!("no screenshot at {}", shot.display()))?;
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");

    // Clicks in the tile travel through gstwebrtc-api's remote controller to webrtcsink.
    event(&page, "clicked").await?;
    producer
        .wait(LONG, "navigation events counted", |p| nav_events(p) >= 3)
        .await?;
    assert!(
        producer.stderr().contains("navigation event"),
        "{}",
        producer.stderr()
    );
    Ok(())
}

/// A shared-mode producer (one encoder for every viewer) plays in the page, beside a
/// consumer-agent served by the same encoder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_plays_a_shared_encoding_producer() -> Result<()> {
    let _one = media::exclusive().await;
    let node = Node::start(&[]).await?;
    let producer = Agent::producer(&[
        "--server",
        &node.url(),
        "--name",
        "stage",
        "--encoding",
        "shared",
        "--stats-interval",
        "0.5",
    ])?;
    let agent = Agent::consumer(&[
        "--server",
        &node.url(),
        "--producer-name",
        "stage",
        "--sink",
        "encoded",
        "--stats-interval",
        "0.5",
    ])?;
    let url = format!("http://127.0.0.1:{}/", node.port);
    let page = browser(&["watch", &url, "stage", "", "0"])?;
    let playing = event(&page, "playing").await?;
    assert_eq!(playing["width"].as_u64(), Some(320), "{playing}");
    assert!(
        playing["frames"].as_u64() > playing["framesBefore"].as_u64(),
        "{playing}"
    );
    assert!(playing["distinctColours"].as_u64() > Some(4), "{playing}");
    eprintln!(
        "shared stream: click to first frame {} ms",
        playing["clickToFirstFrameMs"]
    );
    agent
        .wait(LONG, "the agent's frames", |a| {
            a.json_lines("consumer-stats")
                .last()
                .and_then(|l| l["frames"].as_u64())
                > Some(10)
        })
        .await?;
    producer
        .wait(LONG, "two consumers of one shared encoder", |p| {
            p.json_lines("producer-stats").last().is_some_and(|s| {
                s["consumers"].as_array().map(Vec::len) == Some(2)
                    && s["pipeline_encoders"] == serde_json::json!(["vp8enc"])
            })
        })
        .await?;
    Ok(())
}

/// The node id, as /healthz names it.
async fn node_id(node: &Node) -> Result<String> {
    let (_, body) = node.get("/healthz").await?;
    let v: Value = serde_json::from_str(&body)?;
    Ok(v["nodeId"].as_str().unwrap_or_default().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_publishes_its_camera_to_a_consumer_agent() -> Result<()> {
    let _one = media::exclusive().await;
    let node = Node::start(&[]).await?;
    let url = format!("http://127.0.0.1:{}/", node.port);
    let page = browser(&["publish", &url, "browser-cam", "60"])?;
    event(&page, "publishing").await?;
    let mut consumer = Agent::consumer(&[
        "--server",
        &node.url(),
        "--producer-name",
        "browser-cam",
        "--frames",
        "60",
    ])?;
    assert_eq!(
        consumer.exit_within(LONG).await?,
        Some(0),
        "{}\n{}",
        consumer.stderr(),
        page.stderr()
    );
    let report = consumer.report()?;
    assert!(report["frames"].as_u64() >= Some(60), "{report}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_two_nodes_the_page_watches_a_producer_of_the_other_node_and_sees_it_leave(
) -> Result<()> {
    let _one = media::exclusive().await;
    let redis = Redis::start().await?;
    let a = Node::join(&redis, "node-a", &[]).await?;
    let b = Node::join(&redis, "node-b", &[]).await?;
    let producer = Agent::producer(&["--server", &b.url(), "--name", "far"])?;
    let url = format!("http://127.0.0.1:{}/", a.port);
    let page = browser(&["watch", &url, "far", "", "0", "resume"])?;
    assert_eq!(event(&page, "connected").await?["node"], "node-a");
    let playing = event(&page, "playing").await?;
    assert_eq!(playing["width"].as_u64(), Some(320), "{playing}");
    // The producer stops: the list on node A loses it, the tile says so.
    producer.signal(libc::SIGTERM);
    let removed = event(&page, "removed").await?;
    assert_eq!(removed["tileState"], "producer left", "{removed}");
    // A producer of the same name comes back (new peer id): the tile resumes it.
    let again = Agent::producer(&["--server", &b.url(), "--name", "far"])?;
    again.wait_stderr("registered 'far' as", LONG).await?;
    let resumed = event(&page, "resumed").await?;
    assert!(
        again
            .stderr()
            .contains(resumed["producerId"].as_str().unwrap_or("?")),
        "{resumed}"
    );
    assert!(
        resumed["frames"].as_u64() > resumed["framesBefore"].as_u64(),
        "{resumed}"
    );
    Ok(())
}

/// The page lists a stream once (not its relay), plays it through the relay the node places
/// it on, and, when that relay is killed, is placed again (on the origin) and plays on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_plays_a_stream_through_a_relay_and_is_placed_again_when_the_relay_dies(
) -> Result<()> {
    let _one = media::exclusive().await;
    let redis = Redis::start().await?;
    let a = Node::join(&redis, "node-a", &[]).await?;
    let b = Node::join(&redis, "node-b", &[]).await?;
    let (origin, relay) = cluster_tests::relaying::hall(&a, &b).await?;
    let url = format!("http://127.0.0.1:{}/", b.port);
    let page = browser(&["stream", &url, "hall"])?;
    let playing = event(&page, "playing").await?;
    assert_eq!(playing["member"], "relay", "{playing}");
    assert_eq!(
        playing["listed"],
        serde_json::json!(["hall · 1 relay"]),
        "one entry for the stream: {playing}"
    );
    assert!(
        playing["frames"].as_u64() > playing["framesBefore"].as_u64(),
        "{playing}"
    );
    relay
        .wait(LONG, "the page as the relay's consumer", |r| {
            r.json_lines("relay-stats")
                .last()
                .is_some_and(|s| s["consumers"].as_u64() == Some(1))
        })
        .await?;
    let killed = std::time::Instant::now();
    relay.signal(libc::SIGKILL);
    let again = event(&page, "placed-again").await?;
    assert_eq!(again["member"], "origin", "{again}");
    assert!(
        again["frames"].as_u64() > again["framesBefore"].as_u64(),
        "{again}"
    );
    eprintln!(
        "browser placed again and playing {} ms after the relay's SIGKILL ({} ms from noticing)",
        killed.elapsed().as_millis(),
        again["replacedToPlayingMs"]
    );
    origin
        .wait(LONG, "the page as the origin's second consumer", |p| {
            p.json_lines("producer-stats")
                .last()
                .is_some_and(|s| s["consumers"].as_array().map(Vec::len) == Some(1))
        })
        .await?;
    Ok(())
}

/// On a node with auth on, the page passes the `?token=` of its own URL to the WebSocket (and
/// to `/place`), and plays what the token lets it watch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_plays_a_producer_on_a_node_with_auth_using_the_token_in_its_url() -> Result<()> {
    let _one = media::exclusive().await;
    let keys = cluster_tests::jwt::Keys::new("web")?;
    let secret = keys.path("secret");
    let node = Node::start(&["--auth-jwt-secret-file", &secret]).await?;
    let producer_token = keys.token("cam", serde_json::json!({"produce": ["cam-*"]}))?;
    let _producer = Agent::producer(&[
        "--server",
        &node.url(),
        "--name",
        "cam-1",
        "--token",
        &producer_token,
    ])?;
    let viewer = keys.token(
        "browser",
        serde_json::json!({"consume": ["cam-*"], "listen": true}),
    )?;
    let url = format!("http://127.0.0.1:{}/?token={viewer}", node.port);
    let page = browser(&["watch", &url, "cam-1", "", "0"])?;
    let playing = event(&page, "playing").await?;
    assert!(
        playing["frames"].as_u64() > playing["framesBefore"].as_u64(),
        "{playing}"
    );
    Ok(())
}

/// Issue 27, the page's side: it asks its node for ICE servers (`/api/v1/ice-servers`), and
/// with `?relay=1` plays through a real coturn only, on the credential the node minted for it
/// (the page's end of the selected candidate pair is `relay`, and coturn logged the page's
/// `EXPIRY:http-…` username allocating); without `?relay=1` the same page plays directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_plays_through_the_nodes_turn_server_when_relay_only_and_directly_without(
) -> Result<()> {
    let _one = media::exclusive().await;
    // In a namespace of its own, not on loopback: libnice cannot reach 127.0.0.1
    // (`tests/src/coturn.rs`).
    let ns = Namespace::create()?;
    let coturn = Coturn::start_in(&ns, TURN_SECRET).await?;
    let secret = cluster_tests::coturn::secret_file("web", TURN_SECRET)?;
    let turn = format!("turn:{}:{}?transport=udp", coturn.host, coturn.port);
    let node = Node::start(&[
        "--turn-url",
        &turn,
        "--turn-secret-file",
        secret.to_str().context("a path")?,
    ])
    .await?;
    let _far = Agent::producer(&["--server", &node.url(), "--name", "far"])?;
    // Its own producer for the direct check, not one whose last session just went.
    let _near = Agent::producer(&["--server", &node.url(), "--name", "near"])?;

    let url = format!("http://127.0.0.1:{}/?relay=1", node.port);
    let page = browser(&["watch", &url, "far", "", "0"])?;
    let playing = event(&page, "playing").await?;
    assert!(playing["width"].as_u64() > Some(0), "{playing}");
    assert!(
        playing["frames"].as_u64() > playing["framesBefore"].as_u64(),
        "{playing}"
    );
    assert!(playing["distinctColours"].as_u64() > Some(4), "{playing}");
    // The overlay names the page's end of the selected candidate pair (getStats()).
    let overlay = playing["overlay"].as_str().unwrap_or_default();
    assert!(overlay.contains("via relay (udp)"), "{playing}");
    eprintln!("relay only: {overlay:?}");
    // The page logs the TURN username it was given; coturn logged that one allocating.
    let users = turn_users(&page.stderr());
    assert!(
        !users.is_empty() && users.iter().all(|u| u.contains(":http-")),
        "the node's credential for the page: {users:?}\n{}",
        page.stderr()
    );
    let allocated = |u: &String| {
        coturn.logged(&format!(
            "user <{u}>: incoming packet ALLOCATE processed, success"
        ))
    };
    assert!(
        users.iter().any(allocated),
        "coturn allocated for none of {users:?}"
    );
    drop(page);

    // Without ?relay=1: host candidates, no TURN needed.
    let url = format!("http://127.0.0.1:{}/", node.port);
    let page = browser(&["watch", &url, "near", "", "0"])?;
    let playing = event(&page, "playing").await?;
    assert!(
        playing["frames"].as_u64() > playing["framesBefore"].as_u64(),
        "{playing}"
    );
    let overlay = playing["overlay"].as_str().unwrap_or_default();
    assert!(overlay.contains("via host"), "{playing}");
    eprintln!("direct: {overlay:?}");
    if let Some(dir) = secret.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(())
}

const TURN_SECRET: &str = "web-turn";

/// The TURN usernames the page logged (`TURN user <EXPIRY:ID>`, forwarded to the driver's
/// stderr).
fn turn_users(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter_map(|l| l.split_once("TURN user <")?.1.split_once('>'))
        .map(|(user, _)| user.to_string())
        .collect()
}

#[tokio::test]
async fn browsers_get_the_app_and_stock_clients_the_websocket_on_the_same_port() -> Result<()> {
    let node = Node::start(&[]).await?;
    let (status, body) = node.get("/").await?;
    assert_eq!(status, 200);
    assert!(
        body.contains("gst-webrtc-cluster") && body.contains("app.js"),
        "{body}"
    );
    let (status, js) = node.get("/gstwebrtc-api.js").await?;
    assert_eq!(status, 200);
    assert!(js.contains("GstWebRTCAPI"), "the stock library is served");
    assert_eq!(node.get("/nope.js").await?.0, 404);
    assert_eq!(node.get("/../Cargo.toml").await?.0, 404);
    // The WebSocket still answers on `/`.
    let mut peer = cluster_tests::Peer::connect(&node.url()).await?;
    peer.send(serde_json::json!({"type": "list"})).await?;
    peer.expect("list").await?;
    Ok(())
}
