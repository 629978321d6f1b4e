//! The router's own tests: upstream semantics for local peers, sessions across two routers
//! wired by hand, suspension and adoption.

use super::*;
use proto::{PeerMessage, PeerRole, RelayPayload, SdpType};

fn status(roles: &[PeerRole]) -> ClientMessage {
    ClientMessage::SetPeerStatus(PeerStatus {
        roles: roles.to_vec(),
        meta: None,
        peer_id: None,
    })
}

fn router(peers: &[&str]) -> Router {
    let mut r = Router::new();
    for p in peers {
        r.join(p, ProtocolVersion::V1, &mut Outbox::new());
    }
    r
}

fn delivered(out: &Outbox) -> Vec<(&str, &ServerMessage)> {
    out.iter()
        .flat_map(|e| match e {
            Effect::Deliver(to, m) => vec![(to.as_str(), m)],
            Effect::Broadcast(to, m) => to.iter().map(|t| (t.as_str(), m)).collect(),
            _ => vec![],
        })
        .collect()
}

#[test]
fn hijacker_cannot_end_or_inject_into_a_session() {
    let mut r = router(&["p", "c", "x"]);
    let mut out = Outbox::new();
    r.handle("p", status(&[PeerRole::Producer]), &mut out);
    r.handle(
        "c",
        ClientMessage::StartSession {
            peer_id: "p".into(),
            offer: None,
            max_height: None,
        },
        &mut out,
    );
    let sid = r.sessions.keys().next().unwrap().clone();
    out.clear();
    r.handle(
        "x",
        ClientMessage::EndSession {
            session_id: sid.clone(),
        },
        &mut out,
    );
    r.handle(
        "x",
        ClientMessage::Peer(PeerMessage {
            session_id: sid.clone(),
            payload: RelayPayload::from_sdp(SdpType::Answer, "v=0"),
        }),
        &mut out,
    );
    assert_eq!(r.session_count(), 1);
    let d = delivered(&out);
    assert_eq!(d.len(), 2);
    assert!(d.iter().all(|(to, m)| *to == "x" && m.kind() == "error"));
}

#[test]
fn leaving_producer_ends_its_sessions_before_listeners_hear() {
    let mut r = router(&["p", "c", "l"]);
    let mut out = Outbox::new();
    r.handle("l", status(&[PeerRole::Listener]), &mut out);
    r.handle("p", status(&[PeerRole::Producer]), &mut out);
    r.handle(
        "c",
        ClientMessage::StartSession {
            peer_id: "p".into(),
            offer: None,
            max_height: None,
        },
        &mut out,
    );
    out.clear();
    r.leave("p", &mut out);
    let d = delivered(&out);
    assert_eq!(d[0].0, "c");
    assert_eq!(d[0].1.kind(), "endSession");
    assert_eq!(d[1].0, "l");
    assert!(matches!(d[1].1, ServerMessage::PeerStatusChanged(s) if s.roles.is_empty()));
    assert!(matches!(out.last(), Some(Effect::Announce(b)) if b.change() == StatusChange::Left));
    assert_eq!(r.session_count(), 0);
}

/// What the cluster bus does with another node's message, for the kinds these tests send.
fn remote(r: &mut Router, from: &str, msg: NodeMessage, out: &mut Outbox) {
    match msg {
        NodeMessage::PeerStatus(b) => r.remote_status(from, b, out),
        NodeMessage::SessionStart(b) => r.remote_session_start(from, b, out),
        NodeMessage::SessionEnd(b) => r.remote_session_end(from, b, out),
        NodeMessage::Relay(b) => r.remote_relay(from, b, out),
        NodeMessage::AdoptAck(b) => r.import_adopted(from, b),
        other => panic!("not a kind of these tests: {other:?}"),
    }
}

/// Routers wired by hand: returns what the receiving routers produced.
fn exchange(from: &str, out: Outbox, nodes: &mut [(&str, &mut Router)]) -> Outbox {
    let mut local = Outbox::new();
    for e in out {
        match e {
            Effect::ToNode(node, msg) => {
                let (_, r) = nodes.iter_mut().find(|(n, _)| *n == node).unwrap();
                let mut o = Outbox::new();
                remote(r, from, msg, &mut o);
                local.extend(o);
            }
            Effect::Announce(body) => {
                for (n, r) in nodes.iter_mut() {
                    if *n != from {
                        let mut o = Outbox::new();
                        remote(r, from, NodeMessage::PeerStatus(body.clone()), &mut o);
                        local.extend(o);
                    }
                }
            }
            Effect::Deliver(..) | Effect::Broadcast(..) => {} // the sender's own peers
        }
    }
    local
}

#[test]
fn a_session_across_two_routers_relays_and_ends_on_node_down() {
    let (mut a, mut b) = (router(&["c"]), router(&["p"]));
    let mut out = Outbox::new();
    b.handle("p", status(&[PeerRole::Producer]), &mut out);
    exchange("b", out, &mut [("a", &mut a)]);
    let mut out = Outbox::new();
    a.handle(
        "c",
        ClientMessage::StartSession {
            peer_id: "p".into(),
            offer: None,
            max_height: None,
        },
        &mut out,
    );
    let at_b = exchange("a", out, &mut [("b", &mut b)]);
    assert!(
        matches!(&at_b[..], [Effect::Deliver(p, ServerMessage::StartSession { .. })] if p == "p")
    );
    let sid = b.sessions.keys().next().unwrap().clone();

    let mut out = Outbox::new();
    b.handle(
        "p",
        ClientMessage::Peer(PeerMessage {
            session_id: sid.clone(),
            payload: RelayPayload::from_ice("candidate:1", 0),
        }),
        &mut out,
    );
    let at_a = exchange("b", out, &mut [("a", &mut a)]);
    assert!(matches!(&at_a[..], [Effect::Deliver(c, ServerMessage::Peer(_))] if c == "c"));

    let mut out = Outbox::new();
    a.node_down("b", &[], &mut out);
    assert!(matches!(&out[..], [Effect::Deliver(c, ServerMessage::EndSession { .. })] if c == "c"));
    assert_eq!(a.session_count(), 0);
}

/// Producer "p" on node "a" (dead soon) in a session with consumer "c" of router `b`.
fn session_with_remote_producer() -> (Router, SessionId) {
    let mut b = router(&["c", "l"]);
    let mut out = Outbox::new();
    b.handle("l", status(&[PeerRole::Listener]), &mut out);
    b.remote_status(
        "a",
        PeerStatusBody::new(
            "p".into(),
            PeerStatus {
                roles: vec![PeerRole::Producer],
                meta: None,
                peer_id: Some("p".into()),
            },
            StatusChange::Changed,
        ),
        &mut out,
    );
    b.handle(
        "c",
        ClientMessage::StartSession {
            peer_id: "p".into(),
            offer: None,
            max_height: None,
        },
        &mut out,
    );
    let sid = b.sessions.keys().next().unwrap().clone();
    (b, sid)
}

fn ice(sid: &str, candidate: &str) -> ClientMessage {
    ClientMessage::Peer(PeerMessage {
        session_id: sid.to_string(),
        payload: RelayPayload::from_ice(candidate, 0),
    })
}

#[test]
fn a_suspended_peer_keeps_its_sessions_and_what_is_sent_to_it_is_held() {
    let (mut b, sid) = session_with_remote_producer();
    let mut out = Outbox::new();
    b.node_down("a", &["p".to_string()], &mut out);
    assert!(out.is_empty(), "nobody hears of a suspension: {out:?}");
    assert_eq!(b.session_count(), 1);
    assert_eq!(b.producers().len(), 1);
    assert!(b.remote_nodes().is_empty());
    b.handle("c", ice(&sid, "x1"), &mut out);
    assert!(out.is_empty(), "held, not sent to the dead node: {out:?}");

    // adopted on node "n": the session and the held message go there, in that order
    b.adopted("p", "n", "a", &mut out);
    match &out[..] {
        [Effect::ToNode(n1, NodeMessage::AdoptAck(ack)), Effect::ToNode(n2, NodeMessage::Relay(r))] =>
        {
            assert_eq!((n1.as_str(), n2.as_str()), ("n", "n"));
            assert_eq!(ack.sessions.len(), 1);
            assert_eq!(ack.sessions[0].session_id, sid);
            assert_eq!(r.to, "p");
        }
        other => panic!("{other:?}"),
    }
    out.clear();
    b.handle("c", ice(&sid, "x2"), &mut out);
    assert!(
        matches!(&out[..], [Effect::ToNode(n, NodeMessage::Relay(_))] if n == "n"),
        "{out:?}"
    );
}

#[test]
fn a_session_ended_during_the_suspension_is_ended_for_the_adopter_too() {
    let (mut b, sid) = session_with_remote_producer();
    let mut out = Outbox::new();
    b.node_down("a", &["p".to_string()], &mut out);
    b.handle("c", ice(&sid, "x1"), &mut out);
    b.handle(
        "c",
        ClientMessage::EndSession {
            session_id: sid.clone(),
        },
        &mut out,
    );
    assert!(out.is_empty(), "{out:?}");
    b.adopted("p", "n", "a", &mut out);
    let kinds: Vec<&str> = out
        .iter()
        .map(|e| match e {
            Effect::ToNode(_, m) => m.kind(),
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["adoptAck", "relay", "sessionEnd"]);
    assert!(
        matches!(&out[0], Effect::ToNode(_, NodeMessage::AdoptAck(a)) if a.sessions.len() == 1)
    );

    // the adopter learns the session, gets the relay, then its end
    let mut n = Router::new();
    let mut o = Outbox::new();
    n.adopt("p", ProtocolVersion::V2, PeerStatus::default(), &mut o);
    for e in out {
        if let Effect::ToNode(_, m) = e {
            remote(&mut n, "b", m, &mut o);
        }
    }
    let d = delivered(&o);
    assert_eq!(
        d.iter().map(|(_, m)| m.kind()).collect::<Vec<_>>(),
        ["peer", "endSession"]
    );
    assert_eq!(n.session_count(), 0);
}

#[test]
fn a_suspended_peer_not_adopted_expires_like_a_dead_nodes_peer() {
    let (mut b, sid) = session_with_remote_producer();
    let mut out = Outbox::new();
    b.node_down("a", &["p".to_string()], &mut out);
    assert!(b.expire("p", &mut out));
    let d = delivered(&out);
    assert_eq!(
        d[0],
        (
            "c",
            &ServerMessage::EndSession {
                session_id: sid,
                reason: None
            }
        )
    );
    assert!(matches!(d[1], ("l", ServerMessage::PeerStatusChanged(s)) if s.roles.is_empty()));
    assert!(!out.iter().any(|e| matches!(e, Effect::ToNode(..))));
    assert_eq!((b.session_count(), b.producers().len()), (0, 0));
    assert!(!b.expire("p", &mut out), "only once");
}

#[test]
fn the_hold_is_bounded_and_a_full_one_ends_the_session() {
    let (mut b, sid) = session_with_remote_producer();
    b.hold_limit = 3;
    let mut out = Outbox::new();
    b.node_down("a", &["p".to_string()], &mut out);
    for i in 0..3 {
        b.handle("c", ice(&sid, &format!("x{i}")), &mut out);
    }
    assert!(out.is_empty());
    b.handle("c", ice(&sid, "too-much"), &mut out);
    let d = delivered(&out);
    assert!(
        matches!(d[..], [("c", ServerMessage::EndSession { .. })]),
        "{out:?}"
    );
    assert_eq!(b.session_count(), 0);
}

#[test]
fn peers_of_a_dead_node_without_suspension_leave_at_once() {
    let (mut b, _) = session_with_remote_producer();
    let mut out = Outbox::new();
    b.node_down("a", &[], &mut out);
    let kinds: Vec<_> = delivered(&out)
        .iter()
        .map(|(to, m)| (*to, m.kind()))
        .collect();
    assert_eq!(kinds, [("c", "endSession"), ("l", "peerStatusChanged")]);
    assert_eq!(b.producers().len(), 0);
}

/// A consumer's `maxHeight` reaches its producer: in the `startSession` the producer is
/// given, locally and across nodes, and written only for a v2 producer.
#[test]
fn the_producer_side_receives_the_consumers_max_height_and_a_v1_producer_does_not_see_it() {
    let capped = |peer_id: &str| ClientMessage::StartSession {
        peer_id: peer_id.into(),
        offer: None,
        max_height: Some(360),
    };
    // local: the producer's startSession carries it
    let mut r = Router::new();
    let mut out = Outbox::new();
    r.join("p2", ProtocolVersion::V2, &mut out);
    r.join("p1", ProtocolVersion::V1, &mut out);
    r.join("c", ProtocolVersion::V2, &mut out);
    r.handle("p2", status(&[PeerRole::Producer]), &mut out);
    r.handle("p1", status(&[PeerRole::Producer]), &mut out);
    for (producer, version) in [("p2", ProtocolVersion::V2), ("p1", ProtocolVersion::V1)] {
        out.clear();
        r.handle("c", capped(producer), &mut out);
        let d = delivered(&out);
        let Some((_, start)) = d.iter().find(|(to, _)| *to == producer) else {
            panic!("{producer} was not told: {d:?}")
        };
        assert!(
            matches!(
                start,
                ServerMessage::StartSession {
                    max_height: Some(360),
                    ..
                }
            ),
            "{start:?}"
        );
        let text = start.encode(version).unwrap();
        assert_eq!(
            text.contains(r#""maxHeight":360"#),
            version == ProtocolVersion::V2,
            "{text}"
        );
        // the consumer's own sessionStarted does not echo it
        let (_, started) = d.iter().find(|(to, _)| *to == "c").unwrap();
        assert!(!started
            .encode(ProtocolVersion::V2)
            .unwrap()
            .contains("maxHeight"));
    }

    // across nodes: carried by the node envelope to the producer's node
    let (mut a, mut b) = (router(&["c"]), router(&["p"]));
    let mut out = Outbox::new();
    b.handle("p", status(&[PeerRole::Producer]), &mut out);
    exchange("b", out, &mut [("a", &mut a)]);
    let mut out = Outbox::new();
    a.handle("c", capped("p"), &mut out);
    let at_b = exchange("a", out, &mut [("b", &mut b)]);
    assert!(
        matches!(&at_b[..], [Effect::Deliver(p, ServerMessage::StartSession { max_height: Some(360), .. })] if p == "p"),
        "{at_b:?}"
    );
}

/// A producer starting a session with a passive consumer has no cap to pass on, whatever it
/// writes: `maxHeight` is the consumer's wish.
#[test]
fn a_producer_cannot_cap_itself_through_a_passive_consumer_session() {
    let mut r = Router::new();
    let mut out = Outbox::new();
    r.join("p", ProtocolVersion::V2, &mut out);
    r.join("c", ProtocolVersion::V2, &mut out);
    r.handle("c", status(&[PeerRole::Consumer]), &mut out);
    r.handle("p", status(&[PeerRole::Producer]), &mut out);
    out.clear();
    r.handle(
        "p",
        ClientMessage::StartSession {
            peer_id: "c".into(),
            offer: None,
            max_height: Some(360),
        },
        &mut out,
    );
    let d = delivered(&out);
    let (_, start) = d.iter().find(|(to, _)| *to == "p").unwrap();
    assert!(
        matches!(
            start,
            ServerMessage::StartSession {
                max_height: None,
                ..
            }
        ),
        "{start:?}"
    );
}
