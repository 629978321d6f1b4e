//! Issue 29, the WHIP half: any WHIP encoder publishes into the cluster through `POST
//! /whip/{stream}` on any node, handed to a free ingest member (`relay-agent --whip`). The
//! publisher is the stock `whipclientsink` of gst-plugin-webrtc (feature `whip`, in
//! `libgstgwc.so`) run by Debian's gst-launch-1.0; viewers are consumer-agents asking by
//! stream; tokens are PyJWT's.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cluster_tests::agent::Agent;
use cluster_tests::clients::{event, whip_whep_page};
use cluster_tests::consumer::frames_now;
use cluster_tests::gst_tools::launch;
use cluster_tests::http::request;
use cluster_tests::jwt::Keys;
use cluster_tests::{eventually, media, Node, Redis};
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(60);

/// A publisher's offer (sendonly video), its DTLS fingerprint made up: for the refusals,
/// which happen before any member sees it.
const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
    m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=ice-ufrag:whip\r\n\
    a=ice-pwd:whipwhipwhipwhipwhipwhip\r\na=setup:actpass\r\na=mid:0\r\na=sendonly\r\n\
    a=rtcp-mux\r\na=rtpmap:96 VP8/90000\r\n";

/// A refused request: (what, authorization, body, status, text in the body).
type Case<'a> = (&'a str, Option<&'a str>, &'a [u8], u16, &'a str);

/// An ingest member on `node`: a forward relay waiting for a WHIP publication.
fn ingest(node: &Node, extra: &[&str]) -> Result<Agent> {
    let url = node.url();
    let mut args = vec!["--server", url.as_str(), "--whip", "--engine", "forward"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--stats-interval", "0.2"]);
    Agent::spawn("relay-agent", &args)
}

/// The cluster's producers (`/api/v1/producers`) whose meta names `stream`.
async fn members_of(node: &Node, stream: &str, query: &str) -> Result<Vec<Value>> {
    let (status, body) = node.get(&format!("/api/v1/producers{query}")).await?;
    anyhow::ensure!(status == 200, "/api/v1/producers: {status} {body}");
    let list: Value = serde_json::from_str(&body)?;
    let all = list["producers"].as_array().cloned().unwrap_or_default();
    let named = |p: &Value, key: &str| p["meta"][key].as_str() == Some(stream);
    Ok(all
        .into_iter()
        .filter(|p| named(p, "name") || named(p, "stream"))
        .collect())
}

/// The stock whipclientsink publishes to node a (handed to the ingest member there); a
/// consumer-agent asking for the stream on node b decodes it; a second publisher of the same
/// stream gets 409; `DELETE` of the resource on node b ends the publication: the stream
/// leaves the lists and the ingest member exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stock_whipclientsink_publishes_and_a_viewer_on_another_node_decodes() -> Result<()> {
    let _one = media::exclusive().await;
    let redis = Redis::start().await?;
    let a = Node::join(&redis, "whip-a", &[]).await?;
    let b = Node::join(&redis, "whip-b", &[]).await?;
    let mut member = ingest(&a, &[])?;
    member.wait_stderr("upstream: registered", LONG).await?;
    let endpoint = format!(
        "signaller::whip-endpoint=http://{}:{}/whip/cam",
        a.host, a.port
    );
    let started = Instant::now();
    let _publisher = launch(&[
        "videotestsrc",
        "is-live=true",
        "!",
        "video/x-raw,width=320,height=240,framerate=30/1",
        "!",
        "whipclientsink",
        &endpoint,
        "stun-server=\"\"",
    ])?;
    let (_viewer, whip_ms) = decoded_on(&b, "cam", started).await?;

    let members = members_of(&b, "cam", "").await?;
    let stand_in = members
        .iter()
        .find(|p| p["meta"]["ingest"] == "whip")
        .with_context(|| format!("no WHIP stand-in listed: {members:?}"))?;
    let id = stand_in["id"].as_str().context("no id")?.to_string();
    assert!(id.starts_with("whip-"), "{stand_in}");
    let relayed = members.iter().any(|p| p["meta"]["relay-of"] == id.as_str());
    assert!(
        relayed,
        "the ingest member relays the stand-in: {members:?}"
    );

    let sdp = [("Content-Type", "application/sdp")];
    let second = request(&b.host, b.port, "POST", "/whip/cam", &sdp, OFFER.as_bytes()).await?;
    assert_eq!(second.status, 409, "{second:?}");
    assert!(
        second.body.contains("already has a publisher"),
        "{second:?}"
    );

    let delete = request(
        &b.host,
        b.port,
        "DELETE",
        &format!("/whip/cam/{id}"),
        &[],
        b"",
    )
    .await?;
    assert_eq!(delete.status, 200, "{delete:?}");
    assert_eq!(
        member.exit_within(LONG).await?,
        Some(0),
        "{}",
        member.stderr()
    );
    eventually(LONG, "cam gone from the lists", || async {
        members_of(&b, "cam", "").await.is_ok_and(|m| m.is_empty())
    })
    .await?;

    // Our own publisher, same run, same path (a forward relay on node a, the viewer on b).
    let started = Instant::now();
    let _origin = Agent::producer(&["--server", &a.url(), "--name", "ours"])?;
    let _relay = cluster_tests::relaying::forward(&a, "ours", "ours relay", &[])?;
    let (_viewer, ours_ms) = decoded_on(&b, "ours", started).await?;
    // (the publisher's start to the first decoded frame: the viewer starts once the stream
    // is placeable, plus its own first_frame_ms)
    let figures = json!({"whip_publish_to_first_frame_ms": whip_ms,
        "producer_agent_publish_to_first_frame_ms": ours_ms});
    println!("{figures}");
    Ok(())
}

/// A consumer-agent asking `node` for `stream` once it is placeable, decoding 30 frames; and
/// the time from `published` (the publisher's start) to its first frame: when the viewer
/// started, plus its own `first_frame_ms`.
async fn decoded_on(node: &Node, stream: &str, published: Instant) -> Result<(Agent, u64)> {
    let place = format!("/place?stream={stream}");
    eventually(LONG, "the stream placeable", || async {
        node.get(&place).await.is_ok_and(|(s, _)| s == 200)
    })
    .await?;
    let viewer_after = published.elapsed();
    let url = node.url();
    let args = [
        "--server",
        &url,
        "--stream",
        stream,
        "--stats-interval",
        "0.2",
    ];
    let viewer = Agent::consumer(&args)?;
    viewer
        .wait(LONG, "30 decoded frames", |c| frames_now(c) >= 30)
        .await?;
    let stats = viewer.json_lines("consumer-stats");
    let first = stats.iter().find_map(|s| s["first_frame_ms"].as_u64());
    let first = first.context("no first_frame_ms in the consumer's stats")?;
    Ok((viewer, viewer_after.as_millis() as u64 + first))
}

/// Chromium publishes its fake camera with the npm whip-whep WHIPClient (through the node's
/// whip-whep.html), and another Chromium page plays it with WHEPClient: the picture's size,
/// frames rising.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_publishes_with_the_npm_whip_client_and_plays_with_its_whep_client() -> Result<()>
{
    let _one = media::exclusive().await;
    let node = Node::start(&[]).await?;
    let member = ingest(&node, &[])?;
    member.wait_stderr("upstream: registered", LONG).await?;
    let url = format!("http://127.0.0.1:{}", node.port);
    let publisher = whip_whep_page(&["publish", &url, "cam"])?;
    event(&publisher, "published").await?;
    eventually(LONG, "cam placeable", || async {
        node.get("/place?stream=cam")
            .await
            .is_ok_and(|(s, _)| s == 200)
    })
    .await?;
    let player = whip_whep_page(&["play", &url, "cam"])?;
    let playing = event(&player, "playing").await?;
    assert_eq!(playing["width"], 640, "{playing}");
    assert_eq!(playing["height"], 480, "{playing}");
    event(&player, "frames").await?;
    // Our own web app on the same stream, same run: a click on it to its first frame.
    let app = cluster_tests::clients::browser(&["first-frame", &url, "cam", "ours"])?;
    let app = event(&app, "first-frame").await?;
    let figures = json!({"whep_page_to_first_frame_ms": playing["firstFrameMs"],
        "web_app_click_to_first_frame_ms": app["ms"]});
    println!("{figures}");
    Ok(())
}

/// Refusals, each with its status and text (and `DELETE` of an unknown resource 404), and
/// nothing left registered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_whip_requests_get_their_errors() -> Result<()> {
    let keys = Keys::new("whip-refusals")?;
    let node = Node::start(&["--auth-jwt-secret-file", &keys.path("secret")]).await?;
    let publish = format!("Bearer {}", keys.token("enc", json!({"produce": ["cam"]}))?);
    let watch = format!(
        "Bearer {}",
        keys.token("viewer", json!({"consume": ["cam"]}))?
    );
    let receive = OFFER.replace("a=sendonly", "a=recvonly");
    let sdp = "application/sdp";
    let big = vec![b'v'; 2 * 1024 * 1024];
    let cases: [Case; 6] = [
        ("no token", None, OFFER.as_bytes(), 401, "token"),
        (
            "a consume grant",
            Some(&watch),
            OFFER.as_bytes(),
            403,
            "publishing 'cam'",
        ),
        (
            "a player's offer",
            Some(&publish),
            receive.as_bytes(),
            400,
            "nothing to publish",
        ),
        ("garbage", Some(&publish), b"hello", 400, "not an SDP offer"),
        (
            "no ingest member",
            Some(&publish),
            OFFER.as_bytes(),
            503,
            "no ingest member",
        ),
        ("2 MiB", Some(&publish), &big, 413, ""),
    ];
    for (what, auth, body, status, text) in cases {
        let mut headers = vec![("Content-Type", sdp)];
        headers.extend(auth.map(|a| ("Authorization", a)));
        let reply = request(&node.host, node.port, "POST", "/whip/cam", &headers, body).await?;
        assert_eq!(reply.status, status, "{what}: {reply:?}");
        assert!(
            reply.body.contains(text),
            "{what}: no '{text}' in {reply:?}"
        );
    }
    let auth = [("Authorization", publish.as_str())];
    let unknown = "/whip/cam/whip-00000000-0000-0000-0000-000000000000";
    let gone = request(&node.host, node.port, "DELETE", unknown, &auth, b"").await?;
    assert_eq!(gone.status, 404, "{gone:?}");
    let admin = keys.token("ops", json!({"admin": true}))?;
    let (_, peers) = node.get(&format!("/api/v1/peers?token={admin}")).await?;
    assert!(
        !peers.contains("whip-"),
        "a refused publisher stayed: {peers}"
    );
    Ok(())
}
