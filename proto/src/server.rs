//! Messages a signalling node sends to a peer.

use serde::{Deserialize, Serialize};

use crate::client::PeerMessage;
use crate::WireFields;
use crate::{required, ErrorCode, ParseError, PeerId, PeerStatus, ProtocolVersion, SessionId};

/// A producer or consumer in a `list`/`listConsumers` answer.
#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
pub struct PeerInfo {
    pub id: PeerId,
    #[serde(default)]
    pub meta: Option<serde_json::Value>,
}

/// What version 2 adds to `welcome`.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq, Clone)]
#[serde(rename_all = "camelCase")]
pub struct WelcomeV2 {
    /// The version the server speaks on this connection (2).
    pub protocol_version: u16,
    /// The node the peer is connected to.
    pub node_id: String,
    /// Opaque secret that lets this peer resume its identity after a dropped connection.
    pub resume_token: String,
    /// This connection resumed an earlier one: same peer id, sessions kept, messages queued
    /// meanwhile follow.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resumed: bool,
    /// The STUN and TURN servers this peer should use, TURN credentials minted for it
    /// (`RTCIceServer` shape); renewed in the `welcome` of a resume. Absent when the node has
    /// none to give.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ice_servers: Vec<IceServer>,
}

/// One entry of `iceServers`, as WebRTC's `RTCIceServer`: URLs (`stun:`, `turn:`, `turns:`)
/// and, for TURN, a username and credential (coturn's REST scheme: `expiry:id` and
/// base64(HMAC-SHA1(secret, username))).
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq, Clone)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// Why a session ended, when it was not the other member's doing (v2 `endSession.reason`).
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
pub enum EndReason {
    /// An operator ended it (`POST /api/v1/sessions/{id}/end`, `signalling-cluster admin
    /// end-session`): a client should not start it again by itself.
    Operator,
    /// A reason this client does not know yet.
    #[serde(other)]
    Other,
}

impl EndReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            EndReason::Operator => "operator",
            EndReason::Other => "other",
        }
    }
}

/// A message from the server to a peer.
///
/// One type for both versions: [`ServerMessage::encode`] writes it for the peer's version,
/// dropping what v1 does not have.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMessage {
    /// First message on every connection: the peer's id (and in v2, node and resume token).
    Welcome {
        peer_id: PeerId,
        v2: Option<WelcomeV2>,
    },
    /// A peer's roles or meta changed (roles empty: it left). Sent to listeners.
    PeerStatusChanged(PeerStatus),
    /// To the producer: a session starts with consumer `peer_id` (which may carry an offer).
    StartSession {
        peer_id: PeerId,
        session_id: SessionId,
        offer: Option<String>,
        /// v2: the consumer's cap on the video height it wants (its `startSession.maxHeight`).
        max_height: Option<u32>,
    },
    /// To the consumer: its session with producer `peer_id` starts.
    SessionStarted {
        peer_id: PeerId,
        session_id: SessionId,
    },
    /// The other member ended the session, or left. v2 adds why, when the reason is not the
    /// other member (`reason: "operator"`: ended through the operations API).
    EndSession {
        session_id: SessionId,
        reason: Option<EndReason>,
    },
    /// SDP/ICE relayed from the other member of a session.
    Peer(PeerMessage),
    /// Answer to `list`.
    List { producers: Vec<PeerInfo> },
    /// Answer to `listConsumers`.
    ListConsumers { consumers: Vec<PeerInfo> },
    /// Something the peer asked for failed. `code` is only sent in v2.
    Error {
        details: String,
        code: Option<ErrorCode>,
    },
    /// v2 only: this node is draining; reconnect (with the resume token) elsewhere.
    GoAway {
        reason: String,
        reconnect_in_ms: Option<u64>,
    },
    /// v2 only: the connection's token expires at `expires_at` (UNIX seconds), when the node
    /// closes it; resume with a fresh one (`?resume=…&token=…`) to keep the peer and sessions.
    TokenExpiring { expires_at: u64 },
    /// v2 only: fresh ICE servers (new TURN credentials) for the sessions this peer starts
    /// from now on, sent before the `welcome`'s expire. Sessions already running keep theirs:
    /// a TURN server checks a credential when an allocation is made, not after.
    IceServers { ice_servers: Vec<IceServer> },
}

impl ServerMessage {
    pub fn error(code: ErrorCode, details: impl Into<String>) -> Self {
        ServerMessage::Error {
            details: details.into(),
            code: Some(code),
        }
    }

    /// The `type` of this message on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            ServerMessage::Welcome { .. } => "welcome",
            ServerMessage::PeerStatusChanged(_) => "peerStatusChanged",
            ServerMessage::StartSession { .. } => "startSession",
            ServerMessage::SessionStarted { .. } => "sessionStarted",
            ServerMessage::EndSession { .. } => "endSession",
            ServerMessage::Peer(_) => "peer",
            ServerMessage::List { .. } => "list",
            ServerMessage::ListConsumers { .. } => "listConsumers",
            ServerMessage::Error { .. } => "error",
            ServerMessage::GoAway { .. } => "goAway",
            ServerMessage::TokenExpiring { .. } => "tokenExpiring",
            ServerMessage::IceServers { .. } => "iceServers",
        }
    }

    /// Writes the message for a peer speaking `version`, or `None` if that version has no such
    /// message (a v1 peer is never sent `goAway`).
    pub fn encode(&self, version: ProtocolVersion) -> Option<String> {
        let v2 = version >= ProtocolVersion::V2;
        let out = match self {
            ServerMessage::Peer(p) => return Some(p.to_json()),
            ServerMessage::GoAway { .. }
            | ServerMessage::TokenExpiring { .. }
            | ServerMessage::IceServers { .. }
                if !v2 =>
            {
                return None
            }
            ServerMessage::Welcome { peer_id, v2: extra } => Out::Welcome {
                peer_id,
                extra: if v2 { extra.as_ref() } else { None },
            },
            ServerMessage::PeerStatusChanged(st) => Out::PeerStatusChanged(st),
            ServerMessage::StartSession {
                peer_id,
                session_id,
                offer,
                max_height,
            } => Out::StartSession {
                peer_id,
                session_id,
                offer,
                max_height: if v2 { max_height.as_ref() } else { None },
            },
            ServerMessage::SessionStarted {
                peer_id,
                session_id,
            } => Out::SessionStarted {
                peer_id,
                session_id,
            },
            ServerMessage::EndSession { session_id, reason } => Out::EndSession {
                session_id,
                reason: if v2 { reason.as_ref() } else { None },
            },
            ServerMessage::List { producers } => Out::List { producers },
            ServerMessage::ListConsumers { consumers } => Out::ListConsumers { consumers },
            ServerMessage::Error { details, code } => Out::Error {
                details,
                code: if v2 { code.as_ref() } else { None },
            },
            ServerMessage::GoAway {
                reason,
                reconnect_in_ms,
            } => Out::GoAway {
                reason,
                reconnect_in_ms,
            },
            ServerMessage::TokenExpiring { expires_at } => Out::TokenExpiring {
                expires_at: *expires_at,
            },
            ServerMessage::IceServers { ice_servers } => Out::IceServers { ice_servers },
        };
        Some(serde_json::to_string(&out).expect("plain data serializes"))
    }

    /// Parses a text frame from a server (v1 or v2; clients use this).
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let mut f = WireFields::parse(text)?;
        let kind = f.kind.clone();
        let k = kind.as_ref();
        Ok(match k {
            "welcome" => {
                let peer_id = required(f.peer_id.take(), "peerId", k)?;
                let v2 = match (f.protocol_version, f.node_id.take(), f.resume_token.take()) {
                    (Some(protocol_version), Some(node_id), Some(resume_token)) => {
                        Some(WelcomeV2 {
                            protocol_version,
                            node_id,
                            resume_token,
                            resumed: f.resumed.unwrap_or(false),
                            ice_servers: f.ice_servers.take().unwrap_or_default(),
                        })
                    }
                    _ => None,
                };
                ServerMessage::Welcome { peer_id, v2 }
            }
            "peerStatusChanged" => ServerMessage::PeerStatusChanged(PeerStatus {
                roles: required(f.roles.take(), "roles", k)?,
                meta: f.meta.take().flatten(),
                peer_id: f.peer_id.take(),
            }),
            "startSession" => ServerMessage::StartSession {
                peer_id: required(f.peer_id.take(), "peerId", k)?,
                session_id: required(f.session_id.take(), "sessionId", k)?,
                offer: f.offer.take(),
                max_height: crate::max_height(f.max_height.take())?,
            },
            "sessionStarted" => ServerMessage::SessionStarted {
                peer_id: required(f.peer_id.take(), "peerId", k)?,
                session_id: required(f.session_id.take(), "sessionId", k)?,
            },
            "endSession" => ServerMessage::EndSession {
                session_id: required(f.session_id.take(), "sessionId", k)?,
                reason: f.reason.take().map(|r| {
                    serde_json::from_value(serde_json::Value::String(r)).unwrap_or(EndReason::Other)
                }),
            },
            "peer" => ServerMessage::Peer(PeerMessage::from_fields(&mut f)?),
            "list" => ServerMessage::List {
                producers: required(f.producers.take(), "producers", k)?,
            },
            "listConsumers" => ServerMessage::ListConsumers {
                consumers: required(f.consumers.take(), "consumers", k)?,
            },
            "error" => ServerMessage::Error {
                details: required(f.details.take(), "details", k)?,
                code: f.code,
            },
            "goAway" => ServerMessage::GoAway {
                reason: f.reason.take().unwrap_or_default(),
                reconnect_in_ms: f.reconnect_in_ms,
            },
            "tokenExpiring" => ServerMessage::TokenExpiring {
                expires_at: required(f.expires_at, "expiresAt", k)?,
            },
            "iceServers" => ServerMessage::IceServers {
                ice_servers: required(f.ice_servers.take(), "iceServers", k)?,
            },
            other => return Err(ParseError::UnknownType(other.to_string())),
        })
    }
}

/// Wire layout, in upstream field order. v2-only fields are skipped when `None`.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "camelCase")]
enum Out<'a> {
    #[serde(rename_all = "camelCase")]
    Welcome {
        peer_id: &'a str,
        #[serde(flatten, skip_serializing_if = "Option::is_none")]
        extra: Option<&'a WelcomeV2>,
    },
    PeerStatusChanged(&'a PeerStatus),
    #[serde(rename_all = "camelCase")]
    StartSession {
        peer_id: &'a str,
        session_id: &'a str,
        offer: &'a Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        max_height: Option<&'a u32>,
    },
    #[serde(rename_all = "camelCase")]
    SessionStarted {
        peer_id: &'a str,
        session_id: &'a str,
    },
    #[serde(rename_all = "camelCase")]
    EndSession {
        session_id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'a EndReason>,
    },
    List {
        producers: &'a [PeerInfo],
    },
    ListConsumers {
        consumers: &'a [PeerInfo],
    },
    Error {
        details: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        code: Option<&'a ErrorCode>,
    },
    #[serde(rename_all = "camelCase")]
    GoAway {
        reason: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        reconnect_in_ms: &'a Option<u64>,
    },
    #[serde(rename_all = "camelCase")]
    TokenExpiring {
        expires_at: u64,
    },
    #[serde(rename_all = "camelCase")]
    IceServers {
        ice_servers: &'a [IceServer],
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_never_sees_v2_fields_or_messages() {
        let welcome = ServerMessage::Welcome {
            peer_id: "p".into(),
            v2: Some(WelcomeV2 {
                protocol_version: 2,
                node_id: "n".into(),
                resume_token: "t".into(),
                resumed: false,
                ice_servers: Vec::new(),
            }),
        };
        assert_eq!(
            welcome.encode(ProtocolVersion::V1).unwrap(),
            r#"{"type":"welcome","peerId":"p"}"#
        );
        assert_eq!(
            welcome.encode(ProtocolVersion::V2).unwrap(),
            r#"{"type":"welcome","peerId":"p","protocolVersion":2,"nodeId":"n","resumeToken":"t"}"#
        );
        let err = ServerMessage::error(ErrorCode::UnknownPeer, "no");
        assert_eq!(
            err.encode(ProtocolVersion::V1).unwrap(),
            r#"{"type":"error","details":"no"}"#
        );
        assert_eq!(
            err.encode(ProtocolVersion::V2).unwrap(),
            r#"{"type":"error","details":"no","code":"unknown-peer"}"#
        );
        let go_away = ServerMessage::GoAway {
            reason: "draining".into(),
            reconnect_in_ms: None,
        };
        assert_eq!(go_away.encode(ProtocolVersion::V1), None);
        let renewed = ServerMessage::IceServers {
            ice_servers: vec![IceServer {
                urls: vec!["stun:s.example:3478".into()],
                username: None,
                credential: None,
            }],
        };
        assert_eq!(renewed.encode(ProtocolVersion::V1), None);
        assert_eq!(
            renewed.encode(ProtocolVersion::V2).unwrap(),
            r#"{"type":"iceServers","iceServers":[{"urls":["stun:s.example:3478"]}]}"#
        );
        let end = ServerMessage::EndSession {
            session_id: "s".into(),
            reason: Some(EndReason::Operator),
        };
        assert_eq!(
            end.encode(ProtocolVersion::V1).unwrap(),
            r#"{"type":"endSession","sessionId":"s"}"#
        );
        assert_eq!(
            end.encode(ProtocolVersion::V2).unwrap(),
            r#"{"type":"endSession","sessionId":"s","reason":"operator"}"#
        );
        assert_eq!(
            go_away.encode(ProtocolVersion::V2).unwrap(),
            r#"{"type":"goAway","reason":"draining"}"#
        );
        let start = ServerMessage::StartSession {
            peer_id: "c".into(),
            session_id: "s".into(),
            offer: None,
            max_height: Some(360),
        };
        assert_eq!(
            start.encode(ProtocolVersion::V1).unwrap(),
            r#"{"type":"startSession","peerId":"c","sessionId":"s","offer":null}"#
        );
        assert_eq!(
            start.encode(ProtocolVersion::V2).unwrap(),
            r#"{"type":"startSession","peerId":"c","sessionId":"s","offer":null,"maxHeight":360}"#
        );
    }

    #[test]
    fn v2_messages_parse_back() {
        for msg in [
            ServerMessage::Welcome {
                peer_id: "p".into(),
                v2: Some(WelcomeV2 {
                    protocol_version: 2,
                    node_id: "n".into(),
                    resume_token: "t".into(),
                    resumed: true,
                    ice_servers: vec![IceServer {
                        urls: vec!["turn:t.example:3478?transport=udp".into()],
                        username: Some("1700000000:p".into()),
                        credential: Some("c2VjcmV0".into()),
                    }],
                }),
            },
            ServerMessage::error(ErrorCode::OfferNotAllowed, "x"),
            ServerMessage::IceServers {
                ice_servers: vec![IceServer {
                    urls: vec!["turn:t.example:3478?transport=tcp".into()],
                    username: Some("1700000000:p".into()),
                    credential: Some("c2VjcmV0".into()),
                }],
            },
            ServerMessage::GoAway {
                reason: "r".into(),
                reconnect_in_ms: Some(5),
            },
            ServerMessage::EndSession {
                session_id: "s".into(),
                reason: Some(EndReason::Operator),
            },
            ServerMessage::StartSession {
                peer_id: "c".into(),
                session_id: "s".into(),
                offer: Some("v=0".into()),
                max_height: Some(720),
            },
        ] {
            let text = msg.encode(ProtocolVersion::V2).unwrap();
            assert_eq!(ServerMessage::parse(&text).unwrap(), msg, "{text}");
        }
    }

    #[test]
    fn unknown_error_codes_read_as_internal() {
        let msg =
            ServerMessage::parse(r#"{"type":"error","details":"d","code":"from-the-future"}"#)
                .unwrap();
        assert_eq!(msg, ServerMessage::error(ErrorCode::Internal, "d"));
    }
}
