//! What one node does on its own: protocol negotiation, bad input, limits, slow readers,
//! draining, TLS. (Upstream semantics, on one node and on a cluster, are in `semantics.rs`.)

use std::time::Duration;

use anyhow::Result;
use cluster_tests::{Node, Peer};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const QUIET: Duration = Duration::from_millis(300);

/// A producer P (meta name "cam") and a consumer C in a session started by C.
async fn session(node: &Node) -> Result<(Peer, Peer, String)> {
    let mut p = Peer::connect(&node.url()).await?;
    p.set_status(&["producer"], json!({"name": "cam"})).await?;
    p.sync().await?;
    let mut c = Peer::connect(&node.url()).await?;
    c.send(json!({"type": "startSession", "peerId": p.id}))
        .await?;
    let started = c.expect("sessionStarted").await?;
    let sid = started["sessionId"].as_str().unwrap().to_string();
    p.expect("startSession").await?;
    Ok((p, c, sid))
}

/// Asserts the P→C session still relays (after something bad happened to someone else).
async fn still_relays(p: &mut Peer, c: &mut Peer, sid: &str) -> Result<()> {
    p.send(
        json!({"type": "peer", "sessionId": sid, "ice": {"candidate": "c", "sdpMLineIndex": 0}}),
    )
    .await?;
    assert_eq!(c.expect("peer").await?["ice"]["candidate"], "c");
    Ok(())
}

#[tokio::test]
async fn v2_is_negotiated_by_subprotocol() -> Result<()> {
    let node = Node::start(&["--node-id", "node-7"]).await?;
    let p = Peer::connect_with(&node.url(), Some("foo, gstwebrtc-cluster.v2")).await?;
    assert_eq!(p.subprotocol.as_deref(), Some("gstwebrtc-cluster.v2"));
    assert_eq!(p.welcome["protocolVersion"], 2);
    assert_eq!(p.welcome["nodeId"], "node-7");
    // 256 random bits, then the issuing node, so any node knows whom to ask on resume
    let token = p.welcome["resumeToken"].as_str().unwrap();
    let (secret, issuer) = token.split_once('.').unwrap();
    assert_eq!(secret.len(), 64);
    assert!(secret.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(issuer, "node-7");
    let q = Peer::connect_with(&node.url(), Some("gstwebrtc-cluster.v2")).await?;
    assert_ne!(q.welcome["resumeToken"], p.welcome["resumeToken"]);
    Ok(())
}

#[tokio::test]
async fn bad_input_gets_an_error_and_the_connection_stays_usable() -> Result<()> {
    let node = Node::start(&[]).await?;
    let mut v1 = Peer::connect(&node.url()).await?;
    let mut v2 = Peer::connect_with(&node.url(), Some("gstwebrtc-cluster.v2")).await?;
    let cases: Vec<(Message, &str)> = vec![
        (Message::text("{not json"), "malformed-message"),
        (Message::text(r#"{"type":"teleport"}"#), "unknown-type"),
        (Message::text(r#"{"no":"type"}"#), "invalid-message"),
        (
            Message::text(r#"{"type":"setPeerStatus","roles":"producer"}"#),
            "invalid-message",
        ),
        (
            Message::text(r#"{"type":"peer","sessionId":"s","ice":{"candidate":1}}"#),
            "invalid-message",
        ),
        (Message::binary(vec![0u8, 1, 2]), "binary-frame"),
    ];
    for (msg, code) in cases {
        v1.send_raw(msg.clone()).await?;
        let err = v1.expect("error").await?;
        assert!(err.get("code").is_none(), "v1 sees no code: {err}");
        assert!(!err["details"].as_str().unwrap().is_empty());
        v2.send_raw(msg).await?;
        let err = v2.expect("error").await?;
        assert_eq!(err["code"], code, "{err}");
    }
    v1.send(json!({"type": "list"})).await?;
    v1.expect("list").await?;
    v2.send(json!({"type": "list"})).await?;
    v2.expect("list").await?;
    Ok(())
}

#[tokio::test]
async fn v2_peers_are_told_about_unknown_sessions() -> Result<()> {
    let node = Node::start(&[]).await?;
    let mut v2 = Peer::connect_with(&node.url(), Some("gstwebrtc-cluster.v2")).await?;
    v2.send(json!({"type": "endSession", "sessionId": "nope"}))
        .await?;
    assert_eq!(v2.expect("error").await?["code"], "unknown-session");
    v2.send(
        json!({"type": "peer", "sessionId": "nope", "ice": {"candidate": "c", "sdpMLineIndex": 0}}),
    )
    .await?;
    assert_eq!(v2.expect("error").await?["code"], "unknown-session");
    Ok(())
}

#[tokio::test]
async fn big_offers_pass_whole_and_oversized_frames_close_with_1009() -> Result<()> {
    let node = Node::start(&["--max-message-size", "1048576"]).await?;
    let (mut p, mut c, sid) = session(&node).await?;
    // ~700 KB offer: under the limit, must arrive intact
    let sdp = "a=candidate:1 1 UDP 2015363327 192.0.2.1 40000 typ host\r\n".repeat(12_000);
    p.send(json!({"type": "peer", "sessionId": sid, "sdp": {"type": "offer", "sdp": sdp}}))
        .await?;
    let got = c.expect("peer").await?;
    assert_eq!(got["sdp"]["sdp"].as_str().map(str::len), Some(sdp.len()));

    let mut big = Peer::connect(&node.url()).await?;
    big.send_text(format!(
        r#"{{"type":"list","pad":"{}"}}"#,
        "x".repeat(1_100_000)
    ))
    .await?;
    assert_eq!(big.closed().await?, Some(1009));
    // everyone else is still served
    still_relays(&mut p, &mut c, &sid).await?;
    Ok(())
}

#[tokio::test]
async fn a_flooding_peer_is_cut_off_and_others_are_served() -> Result<()> {
    let node = Node::start(&["--max-messages-per-sec", "50"]).await?;
    let (mut p, mut c, sid) = session(&node).await?;
    let mut flood = Peer::connect_with(&node.url(), Some("gstwebrtc-cluster.v2")).await?;
    for _ in 0..500 {
        if flood.send(json!({"type": "list"})).await.is_err() {
            break;
        }
    }
    let err = flood.wait_for("error").await?;
    assert_eq!(err["code"], "rate-limited");
    assert_eq!(flood.closed().await?, Some(1008));
    still_relays(&mut p, &mut c, &sid).await?;
    Ok(())
}

#[tokio::test]
async fn a_peer_that_does_not_read_is_disconnected_without_slowing_others() -> Result<()> {
    let node = Node::start(&["--peer-queue", "8"]).await?;
    let mut l = Peer::connect(&node.url()).await?;
    l.set_status(&["listener"], Value::Null).await?;
    l.expect("peerStatusChanged").await?;
    // the stuck listener registers, then never reads again
    let mut stuck = Peer::connect(&node.url()).await?;
    stuck.set_status(&["listener"], Value::Null).await?;
    let stuck_id = stuck.id.clone();
    l.expect("peerStatusChanged").await?;

    // a producer changes its (large) meta over and over: each change goes to both listeners
    let mut p = Peer::connect(&node.url()).await?;
    let pad = "m".repeat(64 * 1024);
    let mut stuck_gone = false;
    for i in 0..400 {
        p.set_status(&["producer"], json!({"n": i, "pad": pad}))
            .await?;
        // the reading listener gets every change, in order, while the other one clogs
        loop {
            let v = l.recv().await?;
            if v["peerId"] == stuck_id.as_str() && v["roles"] == json!([]) {
                stuck_gone = true;
                continue;
            }
            assert_eq!(v["meta"]["n"], i, "{}", v["type"]);
            break;
        }
        if stuck_gone {
            break;
        }
    }
    assert!(
        stuck_gone,
        "the peer that never reads was never disconnected"
    );
    drop(stuck);
    Ok(())
}

#[tokio::test]
async fn health_endpoints_answer() -> Result<()> {
    let node = Node::start(&["--node-id", "n1"]).await?;
    let p = Peer::connect(&node.url()).await?;
    // the upgrade names the node, for sticky load balancers
    assert_eq!(p.headers["x-signalling-node"], "n1");
    let cookie = p.headers["set-cookie"].to_str()?;
    assert!(cookie.starts_with("gwc-node=n1;"), "{cookie}");
    let (status, body) = node.get("/healthz").await?;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body)?;
    assert_eq!(v["nodeId"], "n1");
    assert_eq!(v["peers"], 1);
    // a browser's GET gets the web app (see tests/web.rs)
    let (status, body) = node.get("/").await?;
    assert_eq!(status, 200);
    assert!(body.contains("<title>gst-webrtc-cluster</title>"), "{body}");
    Ok(())
}

/// A cluster node on SIGTERM: `goAway` to v2 peers (they move to other nodes), no new
/// connections, and the peers that stay (v1) are closed with 1001 at the end of the drain
/// timeout, not before; then it exits 0.
#[tokio::test]
async fn sigterm_sends_go_away_to_v2_peers_and_exits_after_the_drain_timeout() -> Result<()> {
    let drain = Duration::from_secs(2);
    let redis = cluster_tests::Redis::start().await?;
    let mut node = Node::join(&redis, "draining", &["--drain-timeout", "2"]).await?;
    let mut v1 = Peer::connect(&node.url()).await?;
    let mut v2 = Peer::connect_with(&node.url(), Some("gstwebrtc-cluster.v2")).await?;
    let signalled = std::time::Instant::now();
    node.proc.signal(15);
    let go_away = v2.expect("goAway").await?;
    assert_eq!(go_away["reason"], "node shutting down");
    v2.close().await;
    // a draining node takes no new connections (load balancers move on)
    assert!(Peer::connect(&node.url()).await.is_err());
    // the v1 peer hears nothing (goAway is not v1) and stays connected while the node drains,
    // until the drain timeout closes its connection: with 1001, and not before
    v1.assert_silent(QUIET).await?;
    assert_eq!(
        v1.closed().await?,
        Some(1001),
        "closed as the node goes away"
    );
    let closed_after = signalled.elapsed();
    assert!(
        closed_after >= drain,
        "closed {closed_after:?} after SIGTERM, before the drain timeout"
    );
    let status = exited_within(&mut node, Duration::from_secs(30)).await?;
    assert!(status.success(), "{status}");
    Ok(())
}

/// Waits for the node to exit, `within` being a deadline (not a timing figure).
async fn exited_within(node: &mut Node, within: Duration) -> Result<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(status) = node.proc.child.try_wait()? {
            return Ok(status);
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the node still runs {within:?} after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// With worker threads (`--workers 2`) instead of the node's one event loop: sessions relay
/// both ways between peers served by different threads. SIGTERM to this standalone node (no
/// other node to move to) does not wait out its drain timeout: v2 peers get `goAway`, every
/// connection is closed with 1001 at once, and the node exits 0.
#[tokio::test]
async fn with_worker_threads_sessions_relay_and_sigterm_drains() -> Result<()> {
    let mut node = Node::start(&["--workers", "2", "--drain-timeout", "120"]).await?;
    // connections go to the workers in turn: four pairs span both
    let mut pairs = Vec::new();
    for _ in 0..4 {
        pairs.push(session(&node).await?);
    }
    for (p, c, sid) in &mut pairs {
        still_relays(p, c, sid).await?;
        still_relays(c, p, sid).await?;
    }
    let mut v2 = Peer::connect_with(&node.url(), Some("gstwebrtc-cluster.v2")).await?;
    node.proc.signal(15);
    assert_eq!(v2.expect("goAway").await?["reason"], "node shutting down");
    assert_eq!(v2.closed().await?, Some(1001), "the v2 peer is not kept");
    for (p, c, _) in &mut pairs {
        assert_eq!(p.closed().await?, Some(1001));
        assert_eq!(c.closed().await?, Some(1001));
    }
    // (a deadline far below the 120 s drain timeout: it did not wait that out)
    let status = exited_within(&mut node, Duration::from_secs(30)).await?;
    assert!(status.success(), "{status}");
    Ok(())
}

#[tokio::test]
async fn tls_with_cert_and_key_serves_wss() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("gwc-tls-{}", std::process::id()));
    let (cert, key, der) = cluster_tests::self_signed(&dir)?;
    let node =
        Node::start_tls(&["-c", cert.to_str().unwrap(), "-k", key.to_str().unwrap()]).await?;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(der)?;
    let tls = rustls::ClientConfig::builder_with_provider(
        rustls::crypto::ring::default_provider().into(),
    )
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let url = format!("wss://localhost:{}", node.port);
    let mut p = Peer::connect_tls(&url, std::sync::Arc::new(tls)).await?;
    p.send(json!({"type": "list"})).await?;
    assert_eq!(
        p.expect("list").await?,
        json!({"type": "list", "producers": []})
    );
    // plain ws:// to a TLS node does not get a welcome
    assert!(Peer::connect(&format!("ws://127.0.0.1:{}", node.port))
        .await
        .is_err());
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// A v2 producer P in a session with consumer C (C started it), on one node.
async fn v2_session(node: &Node) -> Result<(Peer, Peer, String)> {
    let mut p = Peer::connect_with(&node.url(), Some("gstwebrtc-cluster.v2")).await?;
    p.set_status(&["producer"], json!({"name": "cam"})).await?;
    p.sync().await?;
    let mut c = Peer::connect(&node.url()).await?;
    c.send(json!({"type": "startSession", "peerId": p.id}))
        .await?;
    let sid = c.expect("sessionStarted").await?["sessionId"]
        .as_str()
        .unwrap()
        .to_string();
    p.expect("startSession").await?;
    Ok((p, c, sid))
}

#[tokio::test]
async fn a_v2_peer_resumes_after_its_connection_drops() -> Result<()> {
    let node = Node::start(&[]).await?;
    let mut l = Peer::connect(&node.url()).await?;
    l.set_status(&["listener"], Value::Null).await?;
    l.expect("peerStatusChanged").await?;
    let (p, mut c, sid) = v2_session(&node).await?;
    l.expect("peerStatusChanged").await?; // P registered
    let (pid, token) = (
        p.id.clone(),
        p.welcome["resumeToken"].as_str().unwrap().to_string(),
    );

    node.cut(p).await?; // the TCP connection goes away without a WebSocket close
    for i in 0..5 {
        c.send(json!({"type": "peer", "sessionId": sid, "ice": {"candidate": format!("while-away-{i}"), "sdpMLineIndex": 0}}))
            .await?;
    }
    let url = format!("{}/?resume={token}", node.url());
    let mut p = Peer::connect_with(&url, Some("gstwebrtc-cluster.v2")).await?;
    assert_eq!(p.id, pid, "same peer id");
    assert_eq!(p.welcome["resumed"], true);
    for i in 0..5 {
        assert_eq!(
            p.expect("peer").await?["ice"]["candidate"],
            format!("while-away-{i}")
        );
    }
    // the session goes on; the consumer and the listener saw nothing but a pause
    p.send(json!({"type": "peer", "sessionId": sid, "sdp": {"type": "offer", "sdp": "v=0"}}))
        .await?;
    assert_eq!(c.expect("peer").await?["sdp"]["sdp"], "v=0");
    c.assert_silent(QUIET).await?;
    l.assert_silent(QUIET).await?;
    Ok(())
}

#[tokio::test]
async fn a_v2_peer_not_back_within_the_grace_period_leaves() -> Result<()> {
    let node = Node::start(&["--resume-grace", "1"]).await?;
    let mut l = Peer::connect(&node.url()).await?;
    l.set_status(&["listener"], Value::Null).await?;
    l.expect("peerStatusChanged").await?;
    let (p, mut c, sid) = v2_session(&node).await?;
    l.expect("peerStatusChanged").await?;
    let (pid, token) = (
        p.id.clone(),
        p.welcome["resumeToken"].as_str().unwrap().to_string(),
    );
    drop(p);
    assert_eq!(c.expect("endSession").await?["sessionId"], sid.as_str());
    let gone = l.wait_until(|v| v["peerId"] == pid.as_str()).await?;
    assert_eq!(gone["roles"], json!([]));
    // the token is spent: a reconnection with it is a new peer
    let url = format!("{}/?resume={token}", node.url());
    let again = Peer::connect_with(&url, Some("gstwebrtc-cluster.v2")).await?;
    assert_ne!(again.id, pid);
    assert!(again.welcome.get("resumed").is_none());
    Ok(())
}

#[tokio::test]
async fn a_v1_peer_is_removed_at_once_when_its_connection_drops() -> Result<()> {
    let node = Node::start(&[]).await?;
    let mut p = Peer::connect(&node.url()).await?;
    p.set_status(&["producer"], Value::Null).await?;
    p.sync().await?;
    let mut c = Peer::connect(&node.url()).await?;
    c.send(json!({"type": "startSession", "peerId": p.id}))
        .await?;
    let sid = c.expect("sessionStarted").await?["sessionId"].clone();
    p.expect("startSession").await?;
    drop(p);
    assert_eq!(c.expect("endSession").await?["sessionId"], sid);
    Ok(())
}

#[tokio::test]
async fn frames_lost_in_flight_are_sent_again_on_resume() -> Result<()> {
    let node = Node::start(&[]).await?;
    let (mut p, mut c, sid) = v2_session(&node).await?;
    for i in 1..=3 {
        c.send(json!({"type": "peer", "sessionId": sid, "ice": {"candidate": format!("a{i}"), "sdpMLineIndex": 0}}))
            .await?;
    }
    for _ in 1..=3 {
        p.expect("peer").await?;
    }
    // the last two reached the socket, but the client never got them: it reports one less two
    let last = p.frames - 2;
    let token = p.welcome["resumeToken"].as_str().unwrap().to_string();
    node.cut(p).await?;
    c.send(
        json!({"type": "peer", "sessionId": sid, "ice": {"candidate": "a4", "sdpMLineIndex": 0}}),
    )
    .await?;
    let url = format!("{}/?resume={token}&last={last}", node.url());
    let mut p = Peer::connect_with(&url, Some("gstwebrtc-cluster.v2")).await?;
    for i in 2..=4 {
        assert_eq!(p.expect("peer").await?["ice"]["candidate"], format!("a{i}"));
    }
    p.assert_silent(QUIET).await?;
    Ok(())
}

/// Fragments of one text message, as a client sends them.
fn fragments(parts: &[&str]) -> Vec<Message> {
    use tokio_tungstenite::tungstenite::protocol::frame::{
        coding::{Data, OpCode},
        Frame,
    };
    parts
        .iter()
        .enumerate()
        .map(|(i, part)| {
            let op = if i == 0 { Data::Text } else { Data::Continue };
            let last = i + 1 == parts.len();
            Message::Frame(Frame::message(part.to_string(), OpCode::Data(op), last))
        })
        .collect()
}

#[tokio::test]
async fn fragmented_messages_are_joined_and_closed_with_1009_above_the_limit() -> Result<()> {
    let node = Node::start(&["--max-message-size", "1048576"]).await?;
    let mut p = Peer::connect(&node.url()).await?;
    for frame in fragments(&[r#"{"type":"#, r#""li"#, r#"st"}"#]) {
        p.send_raw(frame).await?;
    }
    assert_eq!(
        p.expect("list").await?,
        json!({"type": "list", "producers": []})
    );
    // every fragment is under the limit, the message is not
    let pad = "x".repeat(600_000);
    let big = fragments(&[r#"{"type":"list","pad":""#, &pad, &pad, r#""}"#]);
    for frame in big {
        if p.send_raw(frame).await.is_err() {
            break;
        }
    }
    assert_eq!(p.closed().await?, Some(1009));
    Ok(())
}

/// Sends `request` (and what follows it) on a fresh connection in one write; returns the
/// response head and the bytes after it, read until `done` says enough or the node closes.
async fn raw_exchange(
    port: u16,
    request: &[u8],
    done: impl Fn(&[u8]) -> bool,
) -> Result<(String, Vec<u8>)> {
    use anyhow::Context as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(request).await?;
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            if done(&got[end + 4..]) {
                break;
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, s.read(&mut chunk))
            .await
            .context("no answer in time")??;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&chunk[..n]);
    }
    let end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no response head")?;
    let head = String::from_utf8_lossy(&got[..end]).into_owned();
    Ok((head, got[end + 4..].to_vec()))
}

/// The text frames (unmasked, unfragmented, as the node sends them) at the start of `bytes`.
fn server_texts(mut bytes: &[u8]) -> Vec<String> {
    let mut texts = Vec::new();
    while bytes.len() >= 2 {
        let (len, at) = match bytes[1] & 0x7f {
            126 if bytes.len() >= 4 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            126 | 127 => break,
            n => (n as usize, 2),
        };
        if bytes.len() < at + len {
            break;
        }
        if bytes[0] & 0x0f == 1 {
            texts.push(String::from_utf8_lossy(&bytes[at..at + len]).into_owned());
        }
        bytes = &bytes[at + len..];
    }
    texts
}

#[tokio::test]
async fn a_first_frame_in_the_same_packet_as_the_handshake_is_read() -> Result<()> {
    let node = Node::start(&[]).await?;
    let mut request = b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n"
        .to_vec();
    // {"type":"list"}, masked as a client must
    let text = br#"{"type":"list"}"#;
    let mask = [0x11, 0x22, 0x33, 0x44];
    request.extend([0x81, 0x80 | text.len() as u8]);
    request.extend(mask);
    request.extend(text.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    let (head, rest) = raw_exchange(node.port, &request, |b| server_texts(b).len() >= 2).await?;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    let texts = server_texts(&rest);
    let welcome: Value = serde_json::from_str(&texts[0])?;
    assert_eq!(welcome["type"], "welcome");
    let list: Value = serde_json::from_str(&texts[1])?;
    assert_eq!(list, json!({"type": "list", "producers": []}));
    Ok(())
}

#[tokio::test]
async fn a_bad_websocket_upgrade_gets_a_clear_400() -> Result<()> {
    let node = Node::start(&[]).await?;
    for request in [
        // no key, no version
        "GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        // not a GET
        "POST / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        // a version we do not speak
        "GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
    ] {
        let (head, body) = raw_exchange(node.port, request.as_bytes(), |_| false).await?;
        assert!(head.starts_with("HTTP/1.1 400"), "{request}: {head}");
        let body = String::from_utf8(body)?;
        assert!(body.starts_with("bad WebSocket upgrade: "), "{body}");
    }
    // the node goes on serving
    assert_eq!(node.get("/healthz").await?.0, 200);
    Peer::connect(&node.url()).await?;
    Ok(())
}

#[tokio::test]
async fn a_text_message_that_is_not_utf8_closes_with_1007() -> Result<()> {
    use tokio_tungstenite::tungstenite::protocol::frame::{
        coding::{Data, OpCode},
        Frame,
    };
    let node = Node::start(&[]).await?;
    let mut p = Peer::connect(&node.url()).await?;
    let bad = vec![b'"', 0xff, 0xfe, b'"'];
    p.send_raw(Message::Frame(Frame::message(
        bad,
        OpCode::Data(Data::Text),
        true,
    )))
    .await?;
    assert_eq!(p.closed().await?, Some(1007));
    Ok(())
}

/// A peer that only listens, on a node busy writing to it, is pinged all the same and kept as
/// long as it answers: silence is judged by pongs, not by how busy the node is.
#[tokio::test]
async fn a_listener_kept_busy_is_pinged_and_stays_connected() -> Result<()> {
    let node = Node::start(&["--ping-interval", "1"]).await?;
    let mut listener = Peer::connect(&node.url()).await?;
    listener.set_status(&["listener"], Value::Null).await?;
    listener.sync().await?;
    let mut producer = Peer::connect(&node.url()).await?;
    // a status change every 200 ms for over three ping intervals: the node never falls quiet
    let until = std::time::Instant::now() + Duration::from_millis(4500);
    let mut n = 0;
    while std::time::Instant::now() < until {
        producer
            .set_status(&["producer"], json!({ "name": format!("cam-{n}") }))
            .await?;
        let seen = listener.wait_for("peerStatusChanged").await?;
        assert_eq!(seen["meta"]["name"], format!("cam-{n}"));
        n += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The node pinged it (pings are not text: they are counted apart), and it is still
    // connected though it sent nothing itself all along but its pongs.
    assert!(
        listener.pings > 0,
        "never pinged in 4.5 s at --ping-interval 1"
    );
    listener.sync().await?;
    Ok(())
}
