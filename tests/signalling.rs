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

#[tokio::test]
async fn sigterm_sends_go_away_to_v2_peers_and_exits_after_the_drain_timeout() -> Result<()> {
    let mut node = Node::start(&["--drain-timeout", "2"]).await?;
    let mut v1 = Peer::connect(&node.url()).await?;
    let mut v2 = Peer::connect_with(&node.url(), Some("gstwebrtc-cluster.v2")).await?;
    node.proc.signal(15);
    let go_away = v2.expect("goAway").await?;
    assert_eq!(go_away["reason"], "node shutting down");
    v2.close().await;
    // the v1 peer hears nothing (goAway is not v1) and stays connected while the node drains,
    // until the drain timeout closes its connection
    v1.assert_silent(QUIET).await?;
    let _ = v1.closed().await;
    let status = tokio::task::spawn_blocking(move || node.proc.child.wait()).await??;
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

    drop(p); // the TCP connection goes away without a WebSocket close
    tokio::time::sleep(Duration::from_millis(200)).await;
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
    drop(p);
    tokio::time::sleep(Duration::from_millis(200)).await;
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
