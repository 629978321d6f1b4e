//! Upstream `gst-webrtc-signalling-server` semantics over real WebSockets, each case run twice:
//! on one node, and on three nodes joined by a real `redis-server` with the peers of the case
//! spread over the nodes (peer `i` on node `i % 3`). A peer must not be able to tell the
//! difference.

use std::time::Duration;

use anyhow::Result;
use cluster_tests::{Peer, Topo};
use serde_json::{json, Value};

const QUIET: Duration = Duration::from_millis(300);

cluster_tests::on_one_node_and_a_cluster!(
    three_nodes = 3;
    welcome_carries_a_fresh_uuid,
    listeners_see_every_status_change_including_their_own,
    list_and_list_consumers,
    consumer_initiated_session_notifies_both_sides,
    producer_initiated_session_with_a_passive_consumer,
    sdp_and_ice_are_forwarded_in_order_and_verbatim,
    a_consumer_may_not_send_an_offer,
    end_session_reaches_the_other_side_only,
    disconnect_ends_sessions_and_tells_listeners,
    dropping_the_producer_role_ends_its_sessions,
    dropping_the_consumer_role_ends_its_sessions,
    errors_for_unknown_peers_and_conflicting_roles,
    a_third_peer_cannot_hijack_a_session,
);

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.chars().enumerate().all(|(i, c)| {
            matches!(i, 8 | 13 | 18 | 23) == (c == '-') && (c == '-' || c.is_ascii_hexdigit())
        })
}

/// Producer P (meta name "cam") on node 0 and consumer C on node 1, in a session C started.
async fn session(t: &Topo) -> Result<(Peer, Peer, String)> {
    let mut p = Peer::connect(&t.url(0)).await?;
    p.set_status(&["producer"], json!({"name": "cam"})).await?;
    let mut c = Peer::connect(&t.url(1)).await?;
    Topo::visible(&mut c, &p.id, false).await?;
    c.send(json!({"type": "startSession", "peerId": p.id}))
        .await?;
    let started = c.expect("sessionStarted").await?;
    let sid = started["sessionId"].as_str().unwrap().to_string();
    p.expect("startSession").await?;
    Ok((p, c, sid))
}

async fn welcome_carries_a_fresh_uuid(t: &Topo) -> Result<()> {
    let a = Peer::connect(&t.url(0)).await?;
    let b = Peer::connect(&t.url(1)).await?;
    assert!(is_uuid(&a.id) && is_uuid(&b.id), "{} {}", a.id, b.id);
    assert_ne!(a.id, b.id);
    assert_eq!(a.welcome, json!({"type": "welcome", "peerId": a.id}));
    assert_eq!(a.subprotocol, None, "v1 clients get no subprotocol header");
    Ok(())
}

async fn listeners_see_every_status_change_including_their_own(t: &Topo) -> Result<()> {
    let mut l = Peer::connect(&t.url(0)).await?;
    l.set_status(&["listener"], Value::Null).await?;
    let own = l.expect("peerStatusChanged").await?;
    assert_eq!(
        own,
        json!({"type": "peerStatusChanged", "roles": ["listener"], "meta": null, "peerId": l.id})
    );

    let mut p = Peer::connect(&t.url(1)).await?;
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

async fn list_and_list_consumers(t: &Topo) -> Result<()> {
    let mut p = Peer::connect(&t.url(0)).await?;
    p.set_status(&["producer", "listener"], json!({"name": "cam"}))
        .await?;
    p.expect("peerStatusChanged").await?;
    let mut c = Peer::connect(&t.url(1)).await?;
    c.set_status(&["consumer"], json!({"name": "rec"})).await?;
    p.expect("peerStatusChanged").await?;
    let mut other = Peer::connect(&t.url(2)).await?;
    Topo::visible(&mut other, &c.id, true).await?;
    Topo::visible(&mut other, &p.id, false).await?;

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

async fn consumer_initiated_session_notifies_both_sides(t: &Topo) -> Result<()> {
    let mut p = Peer::connect(&t.url(0)).await?;
    p.set_status(&["producer"], Value::Null).await?;
    let mut c = Peer::connect(&t.url(1)).await?;
    Topo::visible(&mut c, &p.id, false).await?;
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

async fn producer_initiated_session_with_a_passive_consumer(t: &Topo) -> Result<()> {
    let mut c = Peer::connect(&t.url(0)).await?;
    c.set_status(&["consumer"], Value::Null).await?;
    let mut p = Peer::connect(&t.url(1)).await?;
    p.set_status(&["producer"], Value::Null).await?;
    Topo::visible(&mut p, &c.id, true).await?;
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

async fn sdp_and_ice_are_forwarded_in_order_and_verbatim(t: &Topo) -> Result<()> {
    let (mut p, mut c, sid) = session(t).await?;
    p.send(json!({"type": "peer", "sessionId": sid, "sdp": {"type": "offer", "sdp": "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"}}))
        .await?;
    // odd spacing, an escape and an extra field: forwarded exactly as sent, byte for byte
    let ice = |i: usize| {
        format!(
            r#"{{ "candidate": "candidate:{i} 1 UDP 1 127.0.0.1 {} typ host",  "sdpMLineIndex": 0, "sdpMid": "video\u0030" }}"#,
            5000 + i
        )
    };
    for i in 0..50 {
        p.send_text(format!(
            r#"{{"type":"peer","sessionId":"{sid}","ice":{}}}"#,
            ice(i)
        ))
        .await?;
    }
    let offer = c.expect("peer").await?;
    assert_eq!(offer["sdp"]["type"], "offer");
    assert_eq!(offer["sessionId"], sid.as_str());
    for i in 0..50 {
        let text = c.recv_text().await?;
        let got: Value = serde_json::from_str(&text)?;
        assert_eq!(
            (&got["type"], &got["sessionId"]),
            (&json!("peer"), &json!(sid))
        );
        assert!(
            text.contains(&format!(r#""ice":{}"#, ice(i))),
            "not the bytes sent: {text}"
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

async fn a_consumer_may_not_send_an_offer(t: &Topo) -> Result<()> {
    let (mut p, mut c, sid) = session(t).await?;
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

async fn end_session_reaches_the_other_side_only(t: &Topo) -> Result<()> {
    let (mut p, mut c, sid) = session(t).await?;
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

async fn disconnect_ends_sessions_and_tells_listeners(t: &Topo) -> Result<()> {
    let mut l = Peer::connect(&t.url(2)).await?;
    l.set_status(&["listener"], Value::Null).await?;
    l.expect("peerStatusChanged").await?;
    let (p, mut c, sid) = session(t).await?;
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

async fn dropping_the_producer_role_ends_its_sessions(t: &Topo) -> Result<()> {
    let (mut p, mut c, sid) = session(t).await?;
    p.set_status(&["listener"], Value::Null).await?;
    assert_eq!(c.expect("endSession").await?["sessionId"], sid.as_str());
    let own = p.expect("peerStatusChanged").await?;
    assert_eq!(own["roles"], json!(["listener"]));
    Topo::list_until(&mut c, false, |l| l["producers"] == json!([])).await?;
    Ok(())
}

async fn dropping_the_consumer_role_ends_its_sessions(t: &Topo) -> Result<()> {
    let mut c = Peer::connect(&t.url(0)).await?;
    c.set_status(&["consumer"], Value::Null).await?;
    let mut p = Peer::connect(&t.url(1)).await?;
    Topo::visible(&mut p, &c.id, true).await?;
    p.send(json!({"type": "startSession", "peerId": c.id}))
        .await?;
    let sid = c.expect("sessionStarted").await?["sessionId"].clone();
    p.expect("startSession").await?;
    c.set_status(&[], Value::Null).await?;
    assert_eq!(p.expect("endSession").await?["sessionId"], sid);
    Ok(())
}

async fn errors_for_unknown_peers_and_conflicting_roles(t: &Topo) -> Result<()> {
    let mut a = Peer::connect(&t.url(0)).await?;
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
    // a connected peer that is neither producer nor consumer (here: on another node) cannot
    // be the target of a session; it is known, not "not found"
    let b = Peer::connect(&t.url(1)).await?;
    let deadline = std::time::Instant::now() + cluster_tests::STEP;
    let err = loop {
        a.send(json!({"type": "startSession", "peerId": b.id}))
            .await?;
        let err = a.expect("error").await?;
        let details = err["details"].as_str().unwrap_or_default().to_string();
        if !details.contains("not found") || std::time::Instant::now() > deadline {
            break details;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(err.contains("Missing a producer or a consumer"), "{err}");
    Ok(())
}

async fn a_third_peer_cannot_hijack_a_session(t: &Topo) -> Result<()> {
    let (mut p, mut c, sid) = session(t).await?;
    // on the producer's node, where the session is known
    let mut x = Peer::connect_with(&t.url(0), Some("gstwebrtc-cluster.v2")).await?;
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
