//! Issue 29, the WHEP half: any WHEP player watches any stream of the cluster through
//! `POST /whep/{stream}` on any node. The player is the stock `whepclientsrc` of
//! gst-plugin-webrtc (feature `whep`, in `libgstgwc.so`) run by Debian's gst-launch-1.0; tokens
//! are PyJWT's.

use std::time::Duration;

use anyhow::{Context, Result};
use cluster_tests::agent::Agent;
use cluster_tests::consumer::frames_now;
use cluster_tests::gst_tools::{buffers, launch};
use cluster_tests::http::{request, Reply};
use cluster_tests::jwt::Keys;
use cluster_tests::{eventually, media, relaying, Node, Redis};
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(60);

/// An offer a WHEP player could send (recvonly audio and video, as a browser's, its DTLS
/// fingerprint made up: the media never connects).
const OFFER: &str = "v=0\r\n\
    o=- 4611731400430051336 2 IN IP4 127.0.0.1\r\n\
    s=-\r\n\
    t=0 0\r\n\
    a=group:BUNDLE 0 1\r\n\
    a=msid-semantic: WMS\r\n\
    m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
    c=IN IP4 0.0.0.0\r\n\
    a=rtcp:9 IN IP4 0.0.0.0\r\n\
    a=ice-ufrag:whep\r\n\
    a=ice-pwd:whepwhepwhepwhepwhepwhep\r\n\
    a=fingerprint:sha-256 AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB\r\n\
    a=setup:actpass\r\n\
    a=mid:0\r\n\
    a=recvonly\r\n\
    a=rtcp-mux\r\n\
    a=rtpmap:111 opus/48000/2\r\n\
    m=video 9 UDP/TLS/RTP/SAVPF 96\r\n\
    c=IN IP4 0.0.0.0\r\n\
    a=rtcp:9 IN IP4 0.0.0.0\r\n\
    a=ice-ufrag:whep\r\n\
    a=ice-pwd:whepwhepwhepwhepwhepwhep\r\n\
    a=fingerprint:sha-256 AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB\r\n\
    a=setup:actpass\r\n\
    a=mid:1\r\n\
    a=recvonly\r\n\
    a=rtcp-mux\r\n\
    a=rtpmap:96 VP8/90000\r\n\
    a=rtcp-fb:96 nack\r\n\
    a=rtcp-fb:96 nack pli\r\n";

/// A refused request: (what, stream, authorization, content type, body, status, text in the
/// body).
type Case<'a> = (
    &'a str,
    &'a str,
    Option<&'a str>,
    &'a str,
    &'a [u8],
    u16,
    &'a str,
);

async fn post(node: &Node, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<Reply> {
    request(&node.host, node.port, "POST", path, headers, body).await
}

/// The WHEP peers the cluster lists (`/api/v1/peers`, auth off).
async fn whep_peers(node: &Node) -> Result<Vec<String>> {
    let (status, body) = node.get("/api/v1/peers").await?;
    anyhow::ensure!(status == 200, "/api/v1/peers: {status} {body}");
    let peers: Value = serde_json::from_str(&body)?;
    let ids = peers["peers"].as_array().context("no peers")?.iter();
    let ids = ids.filter_map(|p| p["id"].as_str().map(str::to_string));
    Ok(ids.filter(|id| id.starts_with("whep-")).collect())
}

/// The stock whepclientsrc (gst-launch) playing `stream` through `node`'s WHEP endpoint;
/// returns once 30 video buffers came. Each stream goes to its own sink: gst-launch would
/// link whichever pad comes first to videoconvert, and the unlinked one stops the source.
async fn whepclientsrc_plays(node: &Node, stream: &str) -> Result<Agent> {
    let endpoint = format!(
        "signaller::whep-endpoint=http://{}:{}/whep/{stream}",
        node.host, node.port
    );
    let player = launch(&[
        "-v",
        "whepclientsrc",
        "name=w",
        &endpoint,
        "w.video_0",
        "!",
        "videoconvert",
        "!",
        "fakesink",
        "silent=false",
        "w.audio_0",
        "!",
        "fakesink",
    ])?;
    player
        .wait(LONG, "30 buffers from whepclientsrc", |p| buffers(p) >= 30)
        .await?;
    Ok(player)
}

/// The one WHEP peer `node` lists.
async fn the_whep_peer(node: &Node) -> Result<String> {
    let peers = whep_peers(node).await?;
    match peers.as_slice() {
        [peer] => Ok(peer.clone()),
        _ => anyhow::bail!("one WHEP peer expected, got {peers:?}"),
    }
}

/// The sessions the cluster lists whose consumer is `peer`.
async fn sessions_of(node: &Node, peer: &str) -> Result<usize> {
    let (_, body) = node.get("/api/v1/sessions").await?;
    let sessions: Value = serde_json::from_str(&body)?;
    let rows = sessions["sessions"].as_array().context("no sessions")?;
    Ok(rows.iter().filter(|s| s.to_string().contains(peer)).count())
}

/// The stock whepclientsrc plays a stream published on node a, through node b's WHEP
/// endpoint (placement crosses nodes); the viewer is a session like any other; `DELETE` of
/// its resource on node a (not the one it came through) ends that session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stock_whepclientsrc_plays_a_stream_and_delete_ends_its_session() -> Result<()> {
    let _one = media::exclusive().await;
    let redis = Redis::start().await?;
    let a = Node::join(&redis, "whep-a", &[]).await?;
    let b = Node::join(&redis, "whep-b", &[]).await?;
    let _producer = Agent::producer(&["--server", &a.url(), "--name", "cam", "--audio"])?;
    eventually(LONG, "cam listed on b", || async {
        b.get("/place?stream=cam")
            .await
            .is_ok_and(|(s, _)| s == 200)
    })
    .await?;

    let _player = whepclientsrc_plays(&b, "cam").await?;
    let peer = &the_whep_peer(&a).await?;
    assert_eq!(sessions_of(&a, peer).await?, 1, "the viewer is a session");

    let delete = request(
        &a.host,
        a.port,
        "DELETE",
        &format!("/whep/cam/{peer}"),
        &[],
        b"",
    )
    .await?;
    assert_eq!(delete.status, 200, "{delete:?}");
    eventually(LONG, "the WHEP session ended", || async {
        sessions_of(&a, peer).await.is_ok_and(|n| n == 0)
            && whep_peers(&a).await.is_ok_and(|p| p.is_empty())
    })
    .await?;
    let again = request(
        &b.host,
        b.port,
        "DELETE",
        &format!("/whep/cam/{peer}"),
        &[],
        b"",
    )
    .await?;
    assert_eq!(again.status, 404, "a deleted resource is gone: {again:?}");
    Ok(())
}

/// Each bad request gets its status and a short text; nothing stays joined; a viewer of the
/// same stream keeps playing through all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_whep_requests_get_their_errors_and_the_other_viewers_play_on() -> Result<()> {
    let _one = media::exclusive().await;
    let keys = Keys::new("whep-refusals")?;
    let node = Node::start(&["--auth-jwt-secret-file", &keys.path("secret")]).await?;
    let url = node.url();
    let producing = keys.token("cam", json!({"produce": ["cam"]}))?;
    let _producer = Agent::producer(&["--server", &url, "--name", "cam", "--token", &producing])?;
    let watching = keys.token("viewer", json!({"consume": ["cam"]}))?;
    // (a consumer-agent asking by stream does not wait for one that is not there yet)
    let place = format!("/place?stream=cam&token={watching}");
    eventually(LONG, "cam placeable", || async {
        node.get(&place).await.is_ok_and(|(s, _)| s == 200)
    })
    .await?;
    let viewer = Agent::consumer(&[
        "--server",
        &url,
        "--stream",
        "cam",
        "--token",
        &watching,
        "--stats-interval",
        "0.2",
    ])?;
    viewer
        .wait(LONG, "30 frames", |c| frames_now(c) >= 30)
        .await?;

    let bearer = format!("Bearer {watching}");
    let other = format!(
        "Bearer {}",
        keys.token("elsewhere", json!({"consume": ["other-*"]}))?
    );
    let any = format!("Bearer {}", keys.token("any", json!({"consume": ["*"]}))?);
    let no_media = "v=0\r\no=- 1 0 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n";
    let big = vec![b'a'; 2 * 1024 * 1024];
    let sdp = "application/sdp";
    let cases: [Case; 8] = [
        ("no token", "cam", None, sdp, OFFER.as_bytes(), 401, "token"),
        (
            "a bad token",
            "cam",
            Some("Bearer nonsense"),
            sdp,
            OFFER.as_bytes(),
            401,
            "",
        ),
        (
            "another stream's grant",
            "cam",
            Some(&other),
            sdp,
            OFFER.as_bytes(),
            403,
            "'cam'",
        ),
        (
            "garbage",
            "cam",
            Some(&bearer),
            sdp,
            b"hello",
            400,
            "not an SDP offer",
        ),
        (
            "no media",
            "cam",
            Some(&bearer),
            sdp,
            no_media.as_bytes(),
            400,
            "no audio or video",
        ),
        (
            "not SDP",
            "cam",
            Some(&bearer),
            "text/plain",
            OFFER.as_bytes(),
            415,
            "application/sdp",
        ),
        ("2 MiB", "cam", Some(&bearer), sdp, &big, 413, ""),
        (
            "an unknown stream",
            "nope",
            Some(&any),
            sdp,
            OFFER.as_bytes(),
            404,
            "unknown stream",
        ),
    ];
    for (what, stream, auth, content_type, body, status, text) in cases {
        let mut headers = vec![("Content-Type", content_type)];
        headers.extend(auth.map(|a| ("Authorization", a)));
        let reply = post(&node, &format!("/whep/{stream}"), &headers, body).await?;
        assert_eq!(reply.status, status, "{what}: {reply:?}");
        assert!(
            reply.body.contains(text),
            "{what}: no '{text}' in {reply:?}"
        );
    }

    let auth = [("Authorization", bearer.as_str())];
    let path = "/whep/cam/whep-00000000-0000-0000-0000-000000000000";
    let gone = request(&node.host, node.port, "DELETE", path, &auth, b"").await?;
    assert_eq!(gone.status, 404, "{gone:?}");
    let patch = request(&node.host, node.port, "PATCH", path, &auth, b"").await?;
    assert_eq!(patch.status, 405, "{patch:?}");
    let preflight = request(&node.host, node.port, "OPTIONS", "/whep/cam", &[], b"").await?;
    assert_eq!(preflight.status, 204, "{preflight:?}");
    let methods = preflight
        .header("access-control-allow-methods")
        .unwrap_or_default();
    assert!(methods.contains("POST"), "{preflight:?}");
    assert_eq!(preflight.header("access-control-allow-origin"), Some("*"));

    // Nothing half-created, and the viewer played on.
    let admin = keys.token("ops", json!({"admin": true}))?;
    let (status, body) = node.get(&format!("/api/v1/peers?token={admin}")).await?;
    assert_eq!(status, 200, "{body}");
    assert!(
        !body.contains("whep-"),
        "a refused WHEP peer stayed: {body}"
    );
    let before = frames_now(&viewer);
    viewer
        .wait(LONG, "30 more frames", |c| frames_now(c) >= before + 30)
        .await?;
    Ok(())
}

/// The answer is complete (the member's candidates written into it, since a WHEP player takes
/// no trickle) and carries the node's STUN and TURN servers as `Link` headers, the TURN
/// credential minted for this viewer (RFC 9725 section 4.6); its `Location` deletes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whep_answer_carries_the_members_candidates_and_the_nodes_ice_servers() -> Result<()> {
    let _one = media::exclusive().await;
    let secret = cluster_tests::coturn::secret_file("whep-links", "whep-secret")?;
    let secret = secret.display().to_string();
    let node = Node::start(&[
        "--stun-url",
        "stun:192.0.2.1:3478",
        "--turn-url",
        "turn:192.0.2.1:3478?transport=udp",
        "--turn-secret-file",
        &secret,
    ])
    .await?;
    let _producer = Agent::producer(&["--server", &node.url(), "--name", "cam", "--audio"])?;
    eventually(LONG, "cam placeable", || async {
        node.get("/place?stream=cam")
            .await
            .is_ok_and(|(s, _)| s == 200)
    })
    .await?;
    let sdp = [("Content-Type", "application/sdp")];
    let reply = post(&node, "/whep/cam", &sdp, OFFER.as_bytes()).await?;
    assert_eq!(reply.status, 201, "{reply:?}");
    assert_eq!(reply.header("content-type"), Some("application/sdp"));
    let candidates = reply.body.lines().filter(|l| l.starts_with("a=candidate:"));
    assert!(
        candidates.count() >= 1,
        "no candidate in the answer: {}",
        reply.body
    );
    assert!(reply.body.contains("a=sendonly"), "{}", reply.body);
    let links = reply.all("link");
    assert!(
        links.contains(&"<stun:192.0.2.1:3478>; rel=\"ice-server\""),
        "{links:?}"
    );
    let turn = links
        .iter()
        .find(|l| l.starts_with("<turn:192.0.2.1:3478?transport=udp>; rel=\"ice-server\""))
        .with_context(|| format!("no TURN link: {links:?}"))?;
    assert!(
        turn.contains("; username=\"") && turn.contains(":whep-"),
        "the credential names the viewer: {turn}"
    );
    assert!(turn.contains("; credential=\"") && turn.ends_with("credential-type=\"password\""));
    let location = reply.header("location").context("no Location")?.to_string();
    assert!(location.starts_with("/whep/cam/whep-"), "{location}");
    let peer = location.rsplit('/').next().unwrap_or_default().to_string();
    assert_eq!(sessions_of(&node, &peer).await?, 1);
    let delete = request(&node.host, node.port, "DELETE", &location, &[], b"").await?;
    assert_eq!(delete.status, 200, "{delete:?}");
    eventually(LONG, "the session ended", || async {
        sessions_of(&node, &peer).await.is_ok_and(|n| n == 0)
    })
    .await?;
    Ok(())
}

/// A stream with a relay: placement puts the WHEP viewer on the relay (relays first), and the
/// forward engine (str0m, relay-agent's default) answers the player's offer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stock_whepclientsrc_plays_through_a_forward_relay() -> Result<()> {
    let _one = media::exclusive().await;
    let node = Node::start(&[]).await?;
    let _origin = relaying::origin(&node, "stage", &["--audio"])?;
    let relay = relaying::forward(&node, "stage", "stage relay", &[])?;
    let relay_id = relay.wait_word_after("serving as", LONG).await?;

    let _player = whepclientsrc_plays(&node, "stage").await?;
    let peer = &the_whep_peer(&node).await?;
    let (_, body) = node.get("/api/v1/sessions").await?;
    let sessions: Value = serde_json::from_str(&body)?;
    let session = sessions["sessions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["consumer"] == peer.as_str())
        .with_context(|| format!("no session of {peer}: {sessions}"))?;
    assert!(
        session["producer"].as_str() == Some(relay_id.as_str()),
        "the WHEP viewer is the relay's ({relay_id}): {session}"
    );
    Ok(())
}
