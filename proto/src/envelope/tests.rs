//! The envelope's tests: every kind round-trips, alone and batched; both readers agree;
//! what older and newer nodes write still reads.

use super::*;
use crate::{PeerMessage, PeerRole, PeerStatus, RelayPayload};

fn samples() -> Vec<NodeMessage> {
    vec![
        NodeMessage::PeerStatus(PeerStatusBody {
            peer_id: "p".into(),
            status: PeerStatus {
                roles: vec![PeerRole::Producer],
                meta: Some(serde_json::json!({"name": "cam"})),
                peer_id: Some("p".into()),
            },
            left: false,
            joined: false,
            moved: false,
            tenant: Some("acme".into()),
        }),
        NodeMessage::SessionStart(SessionStartBody {
            session_id: "s".into(),
            producer: "p".into(),
            consumer: "c".into(),
            offer: None,
            max_height: None,
        }),
        NodeMessage::SessionStart(SessionStartBody {
            session_id: "s".into(),
            producer: "p".into(),
            consumer: "c".into(),
            offer: Some("v=0".into()),
            max_height: Some(360),
        }),
        NodeMessage::SessionEnd(SessionEndBody {
            session_id: "s".into(),
            to: "c".into(),
            reason: None,
        }),
        NodeMessage::Relay(RelayBody {
            session_id: "s".into(),
            to: "c".into(),
            key: "ice".into(),
            payload: RawValue::from_string(r#"{ "candidate":"c", "sdpMLineIndex":0 }"#.into())
                .unwrap(),
        }),
        NodeMessage::NodeDown(NodeDownBody {
            node: "node-b".into(),
            suspended: vec![],
            grace_ms: 0,
        }),
        NodeMessage::NodeDown(NodeDownBody {
            node: "node-b".into(),
            suspended: vec!["p".into()],
            grace_ms: 30_000,
        }),
        NodeMessage::SessionAdopt(SessionAdoptBody {
            peer_id: "p".into(),
            node: "b".into(),
            old_node: "a".into(),
        }),
        NodeMessage::AdoptAck(AdoptAckBody {
            peer_id: "p".into(),
            sessions: vec![AdoptedSession {
                session_id: "s".into(),
                producer: "p".into(),
                consumer: "c".into(),
            }],
        }),
        NodeMessage::SuspendExpired(SuspendExpiredBody {
            peer_id: "p".into(),
            node: "a".into(),
        }),
        NodeMessage::Barrier(BarrierBody { id: 9 }),
        NodeMessage::ResumeClaim(ResumeClaimBody {
            claim: 1,
            token: "t".into(),
            last: Some(4),
        }),
        NodeMessage::ResumeGrant(ResumeGrantBody {
            claim: 1,
            peer_id: Some("p".into()),
            status: PeerStatus::default(),
            sessions: vec![SessionRecord {
                session_id: "s".into(),
                producer: "p".into(),
                producer_node: "a".into(),
                consumer: "c".into(),
                consumer_node: "b".into(),
            }],
            frames: vec![r#"{"type":"endSession","sessionId":"x"}"#.into()],
            written: 4,
        }),
        NodeMessage::SessionMoved(SessionMovedBody {
            session_id: "s".into(),
            peer_id: "p".into(),
            node: "b".into(),
            old_node: "a".into(),
        }),
    ]
}

#[test]
fn every_kind_round_trips_with_payload_bytes_intact() {
    for (i, msg) in samples().into_iter().enumerate() {
        let text = msg.seal("node-a", 7, i as u64 + 1, 0);
        let env = Envelope::parse(&text).unwrap();
        assert_eq!(env.from, "node-a");
        assert_eq!((env.boot, env.seq), (7, i as u64 + 1));
        assert_eq!(env.open().unwrap(), Some(msg), "{text}");
    }
}

#[test]
fn a_batch_carries_every_kind_in_order_with_payload_bytes_intact() {
    let mut batch = Batch::new();
    for msg in samples() {
        batch.push(&msg);
    }
    assert_eq!(batch.len(), samples().len());
    let text = batch.seal("node-\"a\"", 7, 42, 0);
    let env = Envelope::parse(&text).unwrap();
    assert_eq!(
        (env.from.as_str(), env.boot, env.seq),
        ("node-\"a\"", 7, 42)
    );
    assert_eq!(env.kind, BATCH_KIND);
    let read: Vec<_> = env
        .messages()
        .unwrap()
        .into_iter()
        .map(|m| m.unwrap().unwrap())
        .collect();
    assert_eq!(read, samples(), "{text}");
    // an empty batch is still an envelope that reads as nothing
    let empty = Envelope::parse(&Batch::new().seal("a", 1, 1, 0)).unwrap();
    assert!(empty.messages().unwrap().is_empty());
}

#[test]
fn a_batch_item_of_an_unknown_kind_or_broken_body_spoils_only_itself() {
    let text = r#"{"v":1,"from":"n2","seq":3,"kind":"batch","body":[
        {"kind":"teleport","body":{"x":1}},
        {"kind":"sessionEnd","body":{"sessionId":7}},
        {"kind":"barrier","body":{"id":5}}]}"#;
    let msgs = Envelope::parse(text).unwrap().messages().unwrap();
    assert_eq!(msgs.len(), 3);
    assert!(matches!(msgs[0], Ok(None)));
    assert!(msgs[1].is_err());
    assert!(matches!(
        msgs[2],
        Ok(Some(NodeMessage::Barrier(BarrierBody { id: 5 })))
    ));
    // a batch whose body is not a list is one error
    let text = r#"{"v":1,"from":"n2","seq":4,"kind":"batch","body":{"kind":"barrier"}}"#;
    assert!(Envelope::parse(text).unwrap().messages().is_err());
    // and an older reader (open) sees a batch as a kind it does not know
    let text = Batch::new().seal("a", 1, 1, 0);
    assert_eq!(Envelope::parse(&text).unwrap().open().unwrap(), None);
}

/// The one-pass reader gives what the careful one gives, for every kind, batched or not,
/// and for what it cannot read in one pass.
#[test]
fn one_pass_reading_agrees_with_the_careful_reading() {
    let careful = |text: &str| {
        let env = Envelope::parse(text).unwrap();
        let msgs: Vec<_> = env
            .messages()
            .unwrap()
            .into_iter()
            .map(|m| m.ok())
            .collect();
        (env.from, env.boot, env.seq, env.kind, msgs)
    };
    let quick = |text: &str| {
        let r = Received::parse(text).unwrap();
        let msgs: Vec<_> = r.messages.into_iter().map(|m| m.ok()).collect();
        (r.from, r.boot, r.seq, r.kind, msgs)
    };
    let mut texts: Vec<String> = samples()
        .iter()
        .enumerate()
        .map(|(i, m)| m.seal("n\"1", 3, i as u64, 0))
        .collect();
    let mut batch = Batch::new();
    samples().iter().for_each(|m| batch.push(m));
    texts.push(batch.seal("n1", 3, 99, 0));
    texts.extend(
        [
            // body before kind, unknown fields, unknown kinds, an item that cannot be read
            r#"{"body":{"id":5},"kind":"barrier","v":1,"from":"n2","seq":1}"#,
            r#"{"v":1,"from":"n2","seq":7,"kind":"teleport","body":{"x":[1,{"y":2}]},"extra":true}"#,
            r#"{"v":1,"from":"n2","seq":3,"kind":"batch","body":[{"kind":"teleport","body":{"x":1}},{"kind":"sessionEnd","body":{"sessionId":7}},{"body":{"id":5},"kind":"barrier"}]}"#,
            r#"{"v":1,"from":"n2","seq":3,"kind":"batch","extra":{"a":[]},"body":[{"kind":"barrier","body":{"id":5},"later":1}]}"#,
        ]
        .map(String::from),
    );
    for text in &texts {
        assert_eq!(quick(text), careful(text), "{text}");
    }
    // and what the careful reader refuses, the quick one refuses too
    for bad in [
        r#"{"v":2,"from":"n2","seq":1,"kind":"barrier","body":{"id":1}}"#,
        r#"{"v":1,"from":"n2","seq":1,"kind":"batch","body":{"kind":"barrier"}}"#,
        r#"{"v":1,"from":"n2","seq":1,"kind":"barrier","body":{"id":1}} trailing"#,
        r#"{"v":1,"from":"n2","kind":"barrier","body":{"id":1}}"#,
    ] {
        assert!(Received::parse(bad).is_err(), "{bad}");
        assert!(
            Envelope::parse(bad).and_then(|e| e.messages()).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn newer_nodes_can_add_kinds_and_fields() {
    let text = r#"{"v":1,"from":"n2","seq":7,"kind":"teleport","body":{"x":1},"extra":true}"#;
    let env = Envelope::parse(text).unwrap();
    assert_eq!(env.open().unwrap(), None);
    let text = r#"{"v":1,"from":"n2","seq":8,"kind":"barrier","body":{"id":1,"load":0.5}}"#;
    assert!(matches!(
        Envelope::parse(text).unwrap().open().unwrap(),
        Some(NodeMessage::Barrier(BarrierBody { id: 1 }))
    ));
}

#[test]
fn a_relay_carries_the_payload_bytes_and_refuses_unknown_keys() {
    let raw = r#"{ "type":"offer", "sdp":"v=0" }"#;
    let msg = PeerMessage {
        session_id: "s".into(),
        payload: RelayPayload::sdp(RawValue::from_string(raw.into()).unwrap()).unwrap(),
    };
    let body = RelayBody::new("c".into(), msg.clone());
    assert_eq!((body.key.as_str(), body.payload.get()), ("sdp", raw));
    let back = body.clone().into_message().unwrap();
    assert_eq!(back, msg);
    assert!(back.payload.is_offer());
    assert_eq!(back.payload.raw().get(), raw);
    let bad = RelayBody {
        key: "candidate".into(),
        ..body.clone()
    };
    assert!(bad.into_message().is_err());
    let broken = RelayBody {
        payload: RawValue::from_string(r#"{"type":"maybe"}"#.into()).unwrap(),
        ..body
    };
    assert!(broken.into_message().is_err());
}

#[test]
fn status_changes_keep_the_three_flags_of_the_wire() {
    for (change, flags) in [
        (
            StatusChange::Joined,
            r#""left":false,"moved":false,"joined":true"#,
        ),
        (
            StatusChange::Changed,
            r#""left":false,"moved":false,"joined":false"#,
        ),
        (
            StatusChange::Moved,
            r#""left":false,"moved":true,"joined":false"#,
        ),
        (
            StatusChange::Left,
            r#""left":true,"moved":false,"joined":false"#,
        ),
    ] {
        let msg = NodeMessage::PeerStatus(PeerStatusBody::new(
            "p".into(),
            PeerStatus::default(),
            change,
        ));
        let text = msg.seal("a", 1, 1, 0);
        assert!(text.contains(flags), "{text}");
        match Envelope::parse(&text).unwrap().open().unwrap() {
            Some(NodeMessage::PeerStatus(b)) => assert_eq!(b.change(), change),
            other => panic!("{other:?}"),
        }
    }
    // an older node's body without flags is a plain status change
    let text = r#"{"v":1,"from":"n","seq":1,"kind":"peerStatus","body":{"peerId":"p","status":{"roles":[]}}}"#;
    match Envelope::parse(text).unwrap().open().unwrap() {
        Some(NodeMessage::PeerStatus(b)) => assert_eq!(b.change(), StatusChange::Changed),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_send_time_is_read_by_both_readers_and_absent_from_older_envelopes() {
    let at = 1_700_000_000_123;
    let text = NodeMessage::Barrier(BarrierBody { id: 1 }).seal("a", 1, 1, at);
    assert!(
        text.contains(r#""seq":1,"at":1700000000123,"kind""#),
        "{text}"
    );
    assert_eq!(Received::parse(&text).unwrap().at, at);
    assert_eq!(Envelope::parse(&text).unwrap().at, at);
    let mut batch = Batch::new();
    batch.push(&NodeMessage::Barrier(BarrierBody { id: 2 }));
    assert_eq!(Received::parse(&batch.seal("a", 1, 2, at)).unwrap().at, at);
    let old = r#"{"v":1,"from":"n","seq":1,"kind":"barrier","body":{"id":1}}"#;
    assert_eq!(Received::parse(old).unwrap().at, 0);
    assert!(!NodeMessage::Barrier(BarrierBody { id: 1 })
        .seal("a", 1, 1, 0)
        .contains("\"at\""));
}

#[test]
fn node_down_without_suspension_keeps_its_old_wire_format() {
    let plain = NodeMessage::NodeDown(NodeDownBody {
        node: "n".into(),
        suspended: vec![],
        grace_ms: 0,
    });
    assert!(plain.seal("a", 1, 1, 0).contains(r#""body":{"node":"n"}"#));
    // and an older node's nodeDown reads as one without suspension
    let text = r#"{"v":1,"from":"n2","seq":1,"kind":"nodeDown","body":{"node":"n"}}"#;
    assert_eq!(Envelope::parse(text).unwrap().open().unwrap(), Some(plain));
}

#[test]
fn newer_major_version_is_refused() {
    let text = r#"{"v":2,"from":"n2","seq":1,"kind":"barrier","body":{}}"#;
    assert!(matches!(
        Envelope::parse(text),
        Err(EnvelopeError::TooNew(2))
    ));
}

#[test]
fn a_session_start_without_a_cap_keeps_its_old_wire_format_and_old_bodies_read() {
    let plain = NodeMessage::SessionStart(SessionStartBody {
        session_id: "s".into(),
        producer: "p".into(),
        consumer: "c".into(),
        offer: None,
        max_height: None,
    });
    let text = plain.seal("a", 1, 1, 0);
    assert!(!text.contains("maxHeight"), "{text}");
    // an older node's sessionStart (no maxHeight) reads as one without a cap
    let old = r#"{"v":1,"from":"n","seq":1,"kind":"sessionStart","body":{"sessionId":"s","producer":"p","consumer":"c","offer":null}}"#;
    assert_eq!(Envelope::parse(old).unwrap().open().unwrap(), Some(plain));
    assert_eq!(Received::parse(old).unwrap().at, 0);
    // a newer node's cap is carried; the field is all an older node would skip
    let capped = NodeMessage::SessionStart(SessionStartBody {
        session_id: "s".into(),
        producer: "p".into(),
        consumer: "c".into(),
        offer: None,
        max_height: Some(360),
    });
    let text = capped.seal("a", 1, 1, 0);
    assert!(text.contains(r#""offer":null,"maxHeight":360}"#), "{text}");
    assert_eq!(
        Envelope::parse(&text).unwrap().open().unwrap(),
        Some(capped)
    );
}
