//! Version 1 is the gst-plugins-rs protocol: every message, in both directions, round-trips
//! through the upstream crate's own types and serializes to the same bytes.

use proto::{ClientMessage, ProtocolVersion, ServerMessage};
use serde_json::json;
use upstream_protocol as up;

fn meta() -> Option<serde_json::Value> {
    Some(json!({"name": "cam-1", "display-name": "Camera \"1\"", "n": 3}))
}

/// Upstream server messages, one per variant (and the optional parts both ways).
fn upstream_server_messages() -> Vec<up::OutgoingMessage> {
    vec![
        up::OutgoingMessage::Welcome {
            peer_id: "f3a1".into(),
        },
        up::OutgoingMessage::PeerStatusChanged(up::PeerStatus {
            roles: vec![up::PeerRole::Producer, up::PeerRole::Listener],
            meta: meta(),
            peer_id: Some("p1".into()),
        }),
        up::OutgoingMessage::PeerStatusChanged(up::PeerStatus {
            roles: vec![],
            meta: None,
            peer_id: Some("p1".into()),
        }),
        up::OutgoingMessage::StartSession {
            peer_id: "c1".into(),
            session_id: "s1".into(),
            offer: None,
        },
        up::OutgoingMessage::StartSession {
            peer_id: "c1".into(),
            session_id: "s1".into(),
            offer: Some("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n".into()),
        },
        up::OutgoingMessage::SessionStarted {
            peer_id: "p1".into(),
            session_id: "s1".into(),
        },
        up::OutgoingMessage::EndSession(up::EndSessionMessage {
            session_id: "s1".into(),
        }),
        up::OutgoingMessage::Peer(up::PeerMessage {
            session_id: "s1".into(),
            peer_message: up::PeerMessageInner::Sdp(up::SdpMessage::Offer {
                sdp: "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n".into(),
            }),
        }),
        up::OutgoingMessage::Peer(up::PeerMessage {
            session_id: "s1".into(),
            peer_message: up::PeerMessageInner::Sdp(up::SdpMessage::Answer {
                sdp: "v=0\r\n".into(),
            }),
        }),
        up::OutgoingMessage::Peer(up::PeerMessage {
            session_id: "s1".into(),
            peer_message: up::PeerMessageInner::Ice {
                candidate: "candidate:1 1 UDP 2015363327 127.0.0.1 40000 typ host".into(),
                sdp_m_line_index: 1,
            },
        }),
        up::OutgoingMessage::List {
            producers: vec![
                up::Peer {
                    id: "p1".into(),
                    meta: meta(),
                },
                up::Peer {
                    id: "p2".into(),
                    meta: None,
                },
            ],
        },
        up::OutgoingMessage::List { producers: vec![] },
        up::OutgoingMessage::ListConsumers {
            consumers: vec![up::Peer {
                id: "c1".into(),
                meta: meta(),
            }],
        },
        up::OutgoingMessage::Error {
            details: "Peer with ID 'x' not found".into(),
        },
    ]
}

fn upstream_client_messages() -> Vec<up::IncomingMessage> {
    vec![
        up::IncomingMessage::SetPeerStatus(up::PeerStatus {
            roles: vec![up::PeerRole::Producer],
            meta: meta(),
            peer_id: None,
        }),
        up::IncomingMessage::SetPeerStatus(up::PeerStatus {
            roles: vec![up::PeerRole::Consumer, up::PeerRole::Listener],
            meta: None,
            peer_id: Some("me".into()),
        }),
        up::IncomingMessage::StartSession(up::StartSessionMessage {
            peer_id: "p1".into(),
            offer: None,
        }),
        up::IncomingMessage::StartSession(up::StartSessionMessage {
            peer_id: "p1".into(),
            offer: Some("v=0\r\n".into()),
        }),
        up::IncomingMessage::EndSession(up::EndSessionMessage {
            session_id: "s1".into(),
        }),
        up::IncomingMessage::Peer(up::PeerMessage {
            session_id: "s1".into(),
            peer_message: up::PeerMessageInner::Sdp(up::SdpMessage::Answer {
                sdp: "v=0\r\na=\"quoted\"\r\n".into(),
            }),
        }),
        up::IncomingMessage::Peer(up::PeerMessage {
            session_id: "s1".into(),
            peer_message: up::PeerMessageInner::Sdp(up::SdpMessage::Offer { sdp: "v=0".into() }),
        }),
        up::IncomingMessage::Peer(up::PeerMessage {
            session_id: "s1".into(),
            peer_message: up::PeerMessageInner::Ice {
                candidate: "candidate:2 1 TCP 1 ::1 9 typ host tcptype active".into(),
                sdp_m_line_index: 0,
            },
        }),
        up::IncomingMessage::List,
        up::IncomingMessage::ListConsumers,
    ]
}

#[test]
fn server_messages_round_trip_through_upstream_types() {
    for theirs in upstream_server_messages() {
        let their_text = serde_json::to_string(&theirs).unwrap();
        // upstream -> ours
        let ours =
            ServerMessage::parse(&their_text).unwrap_or_else(|e| panic!("{their_text}: {e}"));
        // ours -> same bytes as upstream, v1 and v2 (v2 adds nothing to these)
        let our_text = ours.encode(ProtocolVersion::V1).unwrap();
        assert_eq!(our_text, their_text);
        // ours -> upstream
        let back: up::OutgoingMessage = serde_json::from_str(&our_text).unwrap();
        assert_eq!(back, theirs);
    }
}

#[test]
fn client_messages_round_trip_through_upstream_types() {
    for theirs in upstream_client_messages() {
        let their_text = serde_json::to_string(&theirs).unwrap();
        let ours =
            ClientMessage::parse(&their_text).unwrap_or_else(|e| panic!("{their_text}: {e}"));
        let our_text = ours.to_json();
        assert_eq!(our_text, their_text);
        let back: up::IncomingMessage = serde_json::from_str(&our_text).unwrap();
        // upstream's IncomingMessage has no PartialEq: compare by re-serializing
        assert_eq!(serde_json::to_string(&back).unwrap(), their_text);
    }
}

#[test]
fn every_v2_error_and_welcome_still_reads_as_upstream_v1() {
    // A v1 peer is given the v1 encoding; check it is exactly what upstream would parse.
    let msgs = [
        ServerMessage::error(proto::ErrorCode::UnknownPeer, "x"),
        ServerMessage::Welcome {
            peer_id: "p".into(),
            v2: Some(proto::WelcomeV2 {
                protocol_version: 2,
                node_id: "n".into(),
                resume_token: "t".into(),
                resumed: false,
                ice_servers: vec![proto::IceServer {
                    urls: vec!["turn:t:3478".into()],
                    username: Some("1:p".into()),
                    credential: Some("x".into()),
                }],
            }),
        },
        ServerMessage::StartSession {
            peer_id: "c".into(),
            session_id: "s".into(),
            offer: None,
            max_height: Some(360),
        },
    ];
    for m in msgs {
        let text = m.encode(ProtocolVersion::V1).unwrap();
        let theirs: up::OutgoingMessage = serde_json::from_str(&text).unwrap();
        assert_eq!(serde_json::to_string(&theirs).unwrap(), text);
    }
}
