//! The parsers that face the network, fed random and mutated input (property tests on stable:
//! cargo-fuzz needs a nightly toolchain). Seeded from real messages; no input may panic, and
//! the envelope reader's fast path must agree with its careful one. Budget: `PROPTEST_CASES`
//! (256 by default, in CI; the figures of a longer run are in docs/security.md).

use proptest::prelude::*;
use proto::envelope::{Envelope, NodeMessage, PeerStatusBody, Received, StatusChange};
use proto::{ClientMessage, PeerStatus, ServerMessage};

/// Messages clients really send (stock webrtcsink/webrtcsrc, gstwebrtc-api, ours).
const CLIENT: &[&str] = &[
    r#"{"type":"setPeerStatus","roles":["producer"],"meta":{"name":"cam-1"}}"#,
    r#"{"type":"setPeerStatus","roles":["listener"],"peerId":"x"}"#,
    r#"{"type":"startSession","peerId":"0d8e6f52-0c7f-4a3b-9c4f-1b2c3d4e5f60"}"#,
    r#"{"type":"startSession","stream":"stage","offer":"v=0\r\n"}"#,
    r#"{"type":"peer","sessionId":"s","sdp":{"type":"offer","sdp":"v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\n"}}"#,
    r#"{"type":"peer","sessionId":"s","ice":{"candidate":"candidate:1 1 UDP 2015363327 10.0.0.1 5000 typ host","sdpMLineIndex":0}}"#,
    r#"{"type":"endSession","sessionId":"s"}"#,
    r#"{"type":"list"}"#,
    r#"{"type":"listConsumers"}"#,
];

/// Messages clients receive.
const SERVER: &[&str] = &[
    r#"{"type":"welcome","peerId":"p","protocolVersion":2,"nodeId":"n","resumeToken":"t","resumed":false}"#,
    r#"{"type":"peerStatusChanged","roles":["producer"],"meta":{"name":"a"},"peerId":"p"}"#,
    r#"{"type":"list","producers":[{"id":"p","meta":{"name":"a"}}]}"#,
    r#"{"type":"error","details":"no","code":"forbidden"}"#,
    r#"{"type":"goAway","reason":"drain","reconnectInMs":50}"#,
    r#"{"type":"tokenExpiring","expiresAt":1764579012}"#,
];

/// Real envelopes: one message, and a batch.
fn envelopes() -> Vec<String> {
    let status = PeerStatus {
        roles: vec![proto::PeerRole::Producer],
        meta: Some(serde_json::json!({"name": "cam-1"})),
        peer_id: Some("p".into()),
    };
    let body = PeerStatusBody::new("p".into(), status, StatusChange::Changed).of_tenant("acme");
    let one = NodeMessage::PeerStatus(body.clone());
    let mut batch = proto::envelope::Batch::new();
    batch.push(&one);
    batch.push(&NodeMessage::PeerStatus(body));
    vec![
        one.seal("node-a", 1, 7, 1764579012345),
        batch.seal("node-a", 1, 8, 0),
    ]
}

/// A mutation of `seed`: byte flips, insertions, deletions, a truncation.
fn mutated(seeds: Vec<String>) -> impl Strategy<Value = String> {
    let n = seeds.len();
    (
        0..n,
        prop::collection::vec((any::<u16>(), any::<u8>(), 0u8..4), 0..8),
    )
        .prop_map(move |(i, edits)| {
            let mut bytes = seeds[i].clone().into_bytes();
            for (at, byte, op) in edits {
                if bytes.is_empty() {
                    break;
                }
                let at = at as usize % bytes.len();
                match op {
                    0 => bytes[at] = byte,
                    1 => bytes.insert(at, byte),
                    2 => {
                        bytes.remove(at);
                    }
                    _ => bytes.truncate(at),
                }
            }
            String::from_utf8_lossy(&bytes).into_owned()
        })
}

fn strings(seeds: &[&str]) -> Vec<String> {
    seeds.iter().map(|s| s.to_string()).collect()
}

proptest! {
    #[test]
    fn the_client_message_parser_takes_any_text(text in any::<String>()) {
        let _ = ClientMessage::parse(&text);
    }

    #[test]
    fn the_client_message_parser_takes_mutated_real_messages(text in mutated(strings(CLIENT))) {
        let _ = ClientMessage::parse(&text);
    }

    #[test]
    fn the_server_message_parser_takes_mutated_real_messages(text in mutated(strings(SERVER))) {
        if let Ok(msg) = ServerMessage::parse(&text) {
            // what parses re-encodes
            let _ = msg.encode(proto::ProtocolVersion::V2);
        }
    }

    #[test]
    fn the_envelope_reader_takes_any_text(text in any::<String>()) {
        let _ = Received::parse(&text);
    }

    #[test]
    fn both_envelope_readers_agree_on_mutated_real_envelopes(text in mutated(envelopes())) {
        let quick = Received::parse(&text);
        let careful = Envelope::parse(&text).and_then(|e| e.messages());
        match (&quick, &careful) {
            (Ok(q), Ok(c)) => {
                prop_assert_eq!(q.messages.len(), c.len());
                for (a, b) in q.messages.iter().zip(c) {
                    prop_assert_eq!(a.is_ok(), b.is_ok());
                }
            }
            (Err(_), Err(_)) => {}
            _ => prop_assert!(false, "the readers disagree on {text:?}: {quick:?} / {careful:?}"),
        }
    }
}
