//! Upstream `gst-webrtc-signalling-server` semantics, and the cases where we are stricter,
//! each against a running node over real WebSockets.

use std::time::Duration;

use anyhow::Result;
use cluster_tests::{Node, Peer};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const QUIET: Duration = Duration::from_millis(300);

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.chars().enumerate().all(|(i, c)| {
            matches!(i, 8 | 13 | 18 | 23) == (c == '-') && (c == '-' || c.is_ascii_hexdigit())
        })
}

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
async fn welcome_carries_a_fresh_uuid_and_nothing_else_in_v1() -> Result<()> {
    let node = Node::start(&[]).await?;
    let a = Peer::connect(&node.url()).await?;
    let b = Peer::connect(&node.url()).await?;
    assert!(is_uuid(&a.id) && is_uuid(&b.id), "{} {}", a.id, b.id);
    assert_ne!(a.id, b.id);
    assert_eq!(a.welcome, json!({"type": "welcome", "peerId": a.id}));
    assert_eq!(a.subprotocol, None, "v1 clients get no subprotocol header");
    Ok(())
}

#[tokio::test]
async fn v2_is_negotiated_by_subprotocol() -> Result<()> {
    let node = Node::start(&["--node-id", "node-7"]).await?;
    let p = Peer::connect_with(&node.url(), Some("foo, gstwebrtc-cluster.v2")).await?;
    assert_eq!(p.subprotocol.as_deref(), Some("gstwebrtc-cluster.v2"));
    assert_eq!(p.welcome["protocolVersion"], 2);
    assert_eq!(p.welcome["nodeId"], "node-7");
    let token = p.welcome["resumeToken"].as_str().unwrap();
    assert_eq!(token.len(), 64);
    let q = Peer::connect_with(&node.url(), Some("gstwebrtc-cluster.v2")).await?;
    assert_ne!(q.welcome["resumeToken"], p.welcome["resumeToken"]);
    Ok(())
}

#[tokio::test]
async fn listeners_see_every_status_change_including_their_own() -> Result<()> {
    let node = Node::start(&[]).await?;
    let mut l = Peer::connect(&node.url()).await?;
    l.set_status(&["listener"], Value::Null).await?;
    let own = l.expect("peerStatusChanged").await?;
    assert_eq!(
        own,
        json!({"type": "peerStatusChanged", "roles": ["listener"], "meta": null, "peerId": l.id})
    );

    let mut p = Peer::connect(&node.url()).await?;
    p.set_status(&["producer"], json!({"name": "cam"})).await?;
    let seen = l.expect("peerStatusChanged").await?;
    assert_eq!(
        seen,
        json!({"type": "peerStatusChanged", "roles": ["producer"], "meta": {"name": "cam"}, "peerId": p.id})
    );
    // a non-listener hears nothing
    p.assert_silent(QUIET).await?;

    // same status again: upstream re-announces it (its stored status carries the peerId)
    p.set_status(&["producer"], json!({"name": "cam"})).await?;
    l.expect("peerStatusChanged").await?;

    // a peer that stops listening stops hearing
    l.set_status(&[], Value::Null).await?;
    l.assert_silent(QUIET).await?;
    p.set_status(&["producer"], json!({"name": "cam2"})).await?;
    l.assert_silent(QUIET).await?;
    Ok(())
}

#[tokio::test]
async fn list_and_list_consumers() -> Result<()> {
    let node = Node::start(&[]).await?;
    let mut p = Peer::connect(&node.url()).await?;
    p.set_status(&["producer", "listener"], json!({"name": "cam"}))
        .await?;
    p.expect("peerStatusChanged").await?;
    let mut c = Peer::connect(&node.url()).await?;
    c.set_status(&["consumer"], json!({"name": "rec"})).await?;
    p.expect("peerStatusChanged").await?;
    let mut other = Peer::connect(&node.url()).await?;

    other.send(json!({"type": "list"})).await?;
    assert_eq!(
        other.expect("list").await?,
        json!({"type": "list", "producers": [{"id": p.id, "meta": {"name": "cam"}}]})
    );
    other.send(json!({"type": "listConsumers"})).await?;
    assert_eq!(
        other.expect("listConsumers").await?,
        json!({"type": "listConsumers", "consumers": [{"id": c.id, "meta": {"name": "rec"}}]})
    );
    Ok(())
}

#[tokio::test]
async fn consumer_initiated_session_notifies_both_sides() -> Result<()> {
    let node = Node::start(&[]).await?;
    let mut p = Peer::connect(&node.url()).await?;
    p.set_status(&["producer"], Value::Null).await?;
    p.sync().await?;
    let mut c = Peer::connect(&node.url()).await?;
    c.send(json!({"type": "startSession", "peerId": p.id, "offer": "v=0\r\n"}))
        .await?;
    let started = c.expect("sessionStarted").await?;
    let sid = started["sessionId"].as_str().unwrap();
    assert!(is_uuid(sid));
    assert_eq!(
        started,
        json!({"type": "sessionStarted", "peerId": p.id, "sessionId": sid})
    );
    assert_eq!(
        p.expect("startSession").await?,
        json!({"type": "startSession", "peerId": c.id, "sessionId": sid, "offer": "v=0\r\n"})
    );
    Ok(())
}

#[tokio::test]
async fn producer_initiated_session_with_a_passive_consumer() -> Result<()> {
    let node = Node::start(&[]).await?;
    let mut c = Peer::connect(&node.url()).await?;
    c.set_status(&["consumer"], Value::Null).await?;
    c.sync().await?;
    let mut p = Peer::connect(&node.url()).await?;
    p.set_status(&["producer"], Value::Null).await?;
    p.sync().await?;
    p.send(json!({"type": "startSession", "peerId": c.id}))
        .await?;
    let started = c.expect("sessionStarted").await?;
    assert_eq!(started["peerId"], p.id.as_str());
    let start = p.expect("startSession").await?;
    assert_eq!(
        start,
        json!({"type": "startSession", "peerId": c.id, "sessionId": started["sessionId"], "offer": null})
    );
    Ok(())
}

#[tokio::test]
async fn sdp_and_ice_are_forwarded_in_order_and_verbatim() -> Result<()> {
    let node = Node::start(&[]).await?;
    let (mut p, mut c, sid) = session(&node).await?;
    p.send(json!({"type": "peer", "sessionId": sid, "sdp": {"type": "offer", "sdp": "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"}}))
        .await?;
    for i in 0..50 {
        // odd spacing and an extra field: forwarded exactly as sent
        p.send_text(format!(
            r#"{{"type":"peer","sessionId":"{sid}","ice":{{ "candidate": "candidate:{i} 1 UDP 1 127.0.0.1 {} typ host", "sdpMLineIndex": 0, "sdpMid": "video0" }}}}"#,
            5000 + i
        ))
        .await?;
    }
    let offer = c.expect("peer").await?;
    assert_eq!(offer["sdp"]["type"], "offer");
    assert_eq!(offer["sessionId"], sid.as_str());
    for i in 0..50 {
        let ice = c.expect("peer").await?;
        assert_eq!(
            ice["ice"],
            json!({"candidate": format!("candidate:{i} 1 UDP 1 127.0.0.1 {} typ host", 5000 + i), "sdpMLineIndex": 0, "sdpMid": "video0"})
        );
    }
    c.send(json!({"type": "peer", "sessionId": sid, "sdp": {"type": "answer", "sdp": "v=0\r\n"}}))
        .await?;
    c.send(json!({"type": "peer", "sessionId": sid, "ice": {"candidate": "candidate:9 1 UDP 1 ::1 9 typ host", "sdpMLineIndex": 1}}))
        .await?;
    assert_eq!(p.expect("peer").await?["sdp"]["type"], "answer");
    assert_eq!(p.expect("peer").await?["ice"]["sdpMLineIndex"], 1);
    Ok(())
}

#[tokio::test]
async fn a_consumer_may_not_send_an_offer() -> Result<()> {
    let node = Node::start(&[]).await?;
    let (mut p, mut c, sid) = session(&node).await?;
    c.send(json!({"type": "peer", "sessionId": sid, "sdp": {"type": "offer", "sdp": "v=0\r\n"}}))
        .await?;
    let err = c.expect("error").await?;
    assert!(
        err["details"]
            .as_str()
            .unwrap()
            .contains("is not the producer"),
        "{err}"
    );
    p.assert_silent(QUIET).await?;
    Ok(())
}

#[tokio::test]
async fn end_session_reaches_the_other_side_only() -> Result<()> {
    let node = Node::start(&[]).await?;
    let (mut p, mut c, sid) = session(&node).await?;
    c.send(json!({"type": "endSession", "sessionId": sid}))
        .await?;
    assert_eq!(
        p.expect("endSession").await?,
        json!({"type": "endSession", "sessionId": sid})
    );
    c.assert_silent(QUIET).await?;
    // the session is gone: late candidates are dropped quietly (as upstream; v1)
    p.send(
        json!({"type": "peer", "sessionId": sid, "ice": {"candidate": "c", "sdpMLineIndex": 0}}),
    )
    .await?;
    c.assert_silent(QUIET).await?;
    p.assert_silent(QUIET).await?;
    Ok(())
}

#[tokio::test]
async fn disconnect_ends_sessions_and_tells_listeners() -> Result<()> {
    let node = Node::start(&[]).await?;
    let mut l = Peer::connect(&node.url()).await?;
    l.set_status(&["listener"], Value::Null).await?;
    l.expect("peerStatusChanged").await?;
    let (p, mut c, sid) = session(&node).await?;
    l.expect("peerStatusChanged").await?; // P registered
    let pid = p.id.clone();
    p.close().await;
    assert_eq!(
        c.expect("endSession").await?,
        json!({"type": "endSession", "sessionId": sid})
    );
    // listeners hear that P has no roles any more, with its last meta
    let gone = l.wait_until(|v| v["peerId"] == pid.as_str()).await?;
    assert_eq!(
        gone,
        json!({"type": "peerStatusChanged", "roles": [], "meta": {"name": "cam"}, "peerId": pid})
    );
    Ok(())
}

#[tokio::test]
async fn dropping_the_producer_role_ends_its_sessions() -> Result<()> {
    let node = Node::start(&[]).await?;
    let (mut p, mut c, sid) = session(&node).await?;
    p.set_status(&["listener"], Value::Null).await?;
    assert_eq!(c.expect("endSession").await?["sessionId"], sid.as_str());
    let own = p.expect("peerStatusChanged").await?;
    assert_eq!(own["roles"], json!(["listener"]));
    c.send(json!({"type": "list"})).await?;
    assert_eq!(c.expect("list").await?["producers"], json!([]));
    Ok(())
}

#[tokio::test]
async fn dropping_the_consumer_role_ends_its_sessions() -> Result<()> {
    let node = Node::start(&[]).await?;
    let mut c = Peer::connect(&node.url()).await?;
    c.set_status(&["consumer"], Value::Null).await?;
    c.sync().await?;
    let mut p = Peer::connect(&node.url()).await?;
    p.send(json!({"type": "startSession", "peerId": c.id}))
        .await?;
    let sid = c.expect("sessionStarted").await?["sessionId"].clone();
    p.expect("startSession").await?;
    c.set_status(&[], Value::Null).await?;
    assert_eq!(p.expect("endSession").await?["sessionId"], sid);
    Ok(())
}

#[tokio::test]
async fn errors_for_unknown_peers_and_conflicting_roles() -> Result<()> {
    let node = Node::start(&[]).await?;
    let mut a = Peer::connect(&node.url()).await?;
    a.send(json!({"type": "startSession", "peerId": "no-such-peer"}))
        .await?;
    assert_eq!(
        a.expect("error").await?,
        json!({"type": "error", "details": "Peer with ID 'no-such-peer' not found"})
    );
    a.set_status(&["producer", "consumer"], Value::Null).await?;
    let err = a.expect("error").await?;
    assert!(err["details"]
        .as_str()
        .unwrap()
        .contains("both producer and passive consumer"));
    // a peer that is neither producer nor consumer cannot be the target of a session
    let b = Peer::connect(&node.url()).await?;
    a.send(json!({"type": "startSession", "peerId": b.id}))
        .await?;
    let err = a.expect("error").await?;
    assert!(err["details"]
        .as_str()
        .unwrap()
        .contains("Missing a producer or a consumer"));
    Ok(())
}

#[tokio::test]
async fn a_third_peer_cannot_hijack_a_session() -> Result<()> {
    let node = Node::start(&["--log", "info"]).await?;
    let (mut p, mut c, sid) = session(&node).await?;
    let mut x = Peer::connect_with(&node.url(), Some("gstwebrtc-cluster.v2")).await?;
    x.send(json!({"type": "endSession", "sessionId": sid}))
        .await?;
    let err = x.expect("error").await?;
    assert_eq!(err["code"], "not-session-member");
    x.send(json!({"type": "peer", "sessionId": sid, "sdp": {"type": "offer", "sdp": "evil"}}))
        .await?;
    assert_eq!(x.expect("error").await?["code"], "not-session-member");
    x.send(
        json!({"type": "peer", "sessionId": sid, "ice": {"candidate": "evil", "sdpMLineIndex": 0}}),
    )
    .await?;
    assert_eq!(x.expect("error").await?["code"], "not-session-member");
    // neither member heard anything, and the session still works
    p.assert_silent(QUIET).await?;
    c.assert_silent(QUIET).await?;
    p.send(json!({"type": "peer", "sessionId": sid, "sdp": {"type": "offer", "sdp": "v=0"}}))
        .await?;
    assert_eq!(c.expect("peer").await?["sdp"]["sdp"], "v=0");
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
    let _p = Peer::connect(&node.url()).await?;
    let (status, body) = node.get("/healthz").await?;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body)?;
    assert_eq!(v["nodeId"], "n1");
    assert_eq!(v["peers"], 1);
    let (status, body) = node.get("/").await?;
    assert_eq!(status, 200);
    assert!(body.contains("gstwebrtc-cluster.v2"));
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
    std::fs::create_dir_all(&dir)?;
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, generated.cert.pem())?;
    std::fs::write(&key, generated.signing_key.serialize_pem())?;
    let node =
        Node::start_tls(&["-c", cert.to_str().unwrap(), "-k", key.to_str().unwrap()]).await?;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(generated.cert.der().clone())?;
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
