//! Messages a peer sends to a signalling node.

use serde::de::{self, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::{required, ParseError, PeerId, PeerStatus, ProtocolVersion, SessionId, WireFields};

/// The largest `maxHeight` accepted: above any video a source here sends (8K is 4320).
pub const MAX_HEIGHT_LIMIT: u32 = 8192;

/// Checks a `startSession.maxHeight` (v2): absent, or an integer from 1 to
/// [`MAX_HEIGHT_LIMIT`]. Anything else is refused with the value in the reason.
pub fn max_height(value: Option<serde_json::Value>) -> Result<Option<u32>, ParseError> {
    let Some(value) = value else {
        return Ok(None);
    };
    value
        .as_u64()
        .filter(|h| (1..=u64::from(MAX_HEIGHT_LIMIT)).contains(h))
        .map(|h| Some(h as u32))
        .ok_or_else(|| {
            ParseError::Invalid(format!(
                "maxHeight must be an integer from 1 to {MAX_HEIGHT_LIMIT}, not {value}"
            ))
        })
}

/// A message from a peer to the server (same set in v1 and v2).
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    /// Register (or change) roles and metadata.
    SetPeerStatus(PeerStatus),
    /// Start a session with a producer (as consumer) or a consumer (as producer).
    StartSession {
        peer_id: PeerId,
        offer: Option<String>,
        /// v2: the tallest video (pixels) the consumer wants ([`max_height`] checks it).
        max_height: Option<u32>,
    },
    /// v2: a session with whichever member of stream `stream` (its origin, the producer whose
    /// `meta.name` it is, and its relays, whose `meta.stream` it is) the node places the
    /// consumer on. Written `startSession` with `stream` instead of `peerId`.
    PlaceSession {
        stream: String,
        offer: Option<String>,
        max_height: Option<u32>,
    },
    /// End a session the sender is a member of.
    EndSession { session_id: SessionId },
    /// SDP or ICE for the other member of a session.
    Peer(PeerMessage),
    /// Ask for the producers.
    List,
    /// Ask for the passive consumers.
    ListConsumers,
}

impl ClientMessage {
    /// The `type` of this message on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientMessage::SetPeerStatus(_) => "setPeerStatus",
            ClientMessage::StartSession { .. } | ClientMessage::PlaceSession { .. } => {
                "startSession"
            }
            ClientMessage::EndSession { .. } => "endSession",
            ClientMessage::Peer(_) => "peer",
            ClientMessage::List => "list",
            ClientMessage::ListConsumers => "listConsumers",
        }
    }
}

/// The `peer` message: a session id and its raw `sdp` or `ice` payload.
#[derive(Debug, Clone)]
pub struct PeerMessage {
    pub session_id: SessionId,
    pub payload: RelayPayload,
}

impl PartialEq for PeerMessage {
    fn eq(&self, other: &Self) -> bool {
        self.session_id == other.session_id && self.payload == other.payload
    }
}

/// SDP type of an `sdp` payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SdpType {
    Offer,
    Answer,
}

/// The payload of a `peer` message, validated but kept as the sender's raw JSON so relaying it
/// costs one copy and never changes a byte.
#[derive(Debug, Clone)]
pub enum RelayPayload {
    /// `{"type": "offer"|"answer", "sdp": "..."}`
    Sdp {
        sdp_type: SdpType,
        raw: Box<RawValue>,
    },
    /// `{"candidate": "...", "sdpMLineIndex": N}`
    Ice { raw: Box<RawValue> },
}

impl PartialEq for RelayPayload {
    /// Payloads compare by JSON value, not by bytes (whitespace and key order do not matter).
    fn eq(&self, other: &Self) -> bool {
        let value = |r: &RawValue| serde_json::from_str::<serde_json::Value>(r.get()).ok();
        match (self, other) {
            (RelayPayload::Sdp { raw: a, .. }, RelayPayload::Sdp { raw: b, .. })
            | (RelayPayload::Ice { raw: a }, RelayPayload::Ice { raw: b }) => value(a) == value(b),
            _ => false,
        }
    }
}

/// Accepts a JSON string without allocating it.
struct AnyString;

impl<'de> Deserialize<'de> for AnyString {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = AnyString;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<AnyString, E> {
                Ok(AnyString)
            }
        }
        d.deserialize_str(V)
    }
}

#[derive(Deserialize)]
struct SdpShape {
    #[serde(rename = "type")]
    sdp_type: SdpType,
    #[allow(dead_code)]
    sdp: AnyString,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IceShape {
    #[allow(dead_code)]
    candidate: AnyString,
    #[allow(dead_code)]
    sdp_m_line_index: u32,
}

impl RelayPayload {
    /// Checks an `sdp` payload has the upstream shape and remembers its type.
    pub fn sdp(raw: Box<RawValue>) -> Result<Self, ParseError> {
        let shape: SdpShape = serde_json::from_str(raw.get())
            .map_err(|e| ParseError::Invalid(format!("bad sdp: {e}")))?;
        Ok(RelayPayload::Sdp {
            sdp_type: shape.sdp_type,
            raw,
        })
    }

    /// Checks an `ice` payload has the upstream shape.
    pub fn ice(raw: Box<RawValue>) -> Result<Self, ParseError> {
        let _: IceShape = serde_json::from_str(raw.get())
            .map_err(|e| ParseError::Invalid(format!("bad ice: {e}")))?;
        Ok(RelayPayload::Ice { raw })
    }

    /// An `ice` payload another node relays: that node checked its shape when its client sent
    /// it (with [`RelayPayload::ice`]), and candidates are most of a session's messages, so
    /// the receiving node does not parse it again.
    pub fn ice_checked(raw: Box<RawValue>) -> Self {
        RelayPayload::Ice { raw }
    }

    /// Builds an `sdp` payload from its parts (clients).
    pub fn from_sdp(sdp_type: SdpType, sdp: &str) -> Self {
        #[derive(Serialize)]
        struct Sdp<'a> {
            #[serde(rename = "type")]
            sdp_type: SdpType,
            sdp: &'a str,
        }
        let raw = serde_json::value::to_raw_value(&Sdp { sdp_type, sdp })
            .expect("serializing strings cannot fail");
        RelayPayload::Sdp { sdp_type, raw }
    }

    /// Builds an `ice` payload from its parts (clients).
    pub fn from_ice(candidate: &str, sdp_m_line_index: u32) -> Self {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Ice<'a> {
            candidate: &'a str,
            sdp_m_line_index: u32,
        }
        let raw = serde_json::value::to_raw_value(&Ice {
            candidate,
            sdp_m_line_index,
        })
        .expect("serializing strings cannot fail");
        RelayPayload::Ice { raw }
    }

    pub fn is_offer(&self) -> bool {
        matches!(
            self,
            RelayPayload::Sdp {
                sdp_type: SdpType::Offer,
                ..
            }
        )
    }

    /// The raw JSON of the payload, as the sender wrote it.
    pub fn raw(&self) -> &RawValue {
        match self {
            RelayPayload::Sdp { raw, .. } | RelayPayload::Ice { raw } => raw,
        }
    }

    /// The key this payload goes under in a `peer` message.
    pub fn key(&self) -> &'static str {
        match self {
            RelayPayload::Sdp { .. } => "sdp",
            RelayPayload::Ice { .. } => "ice",
        }
    }

    /// Length of the raw payload in bytes.
    pub fn len(&self) -> usize {
        self.raw().get().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl PeerMessage {
    /// Writes `{"type":"peer","sessionId":…,"sdp"|"ice":<raw>}`, the payload verbatim.
    pub fn to_json(&self) -> String {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Out<'a> {
            #[serde(rename = "type")]
            kind: &'static str,
            session_id: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            sdp: Option<&'a RawValue>,
            #[serde(skip_serializing_if = "Option::is_none")]
            ice: Option<&'a RawValue>,
        }
        let (sdp, ice) = match &self.payload {
            RelayPayload::Sdp { raw, .. } => (Some(&**raw), None),
            RelayPayload::Ice { raw } => (None, Some(&**raw)),
        };
        serde_json::to_string(&Out {
            kind: "peer",
            session_id: &self.session_id,
            sdp,
            ice,
        })
        .expect("serializing strings and raw values cannot fail")
    }

    pub(crate) fn from_fields(f: &mut WireFields<'_>) -> Result<Self, ParseError> {
        let session_id = required(f.session_id.take(), "sessionId", "peer")?;
        let payload = match (f.sdp.take(), f.ice.take()) {
            (Some(sdp), None) => RelayPayload::sdp(sdp)?,
            (None, Some(ice)) => RelayPayload::ice(ice)?,
            (None, None) => {
                return Err(ParseError::Invalid(
                    "peer message carries neither 'sdp' nor 'ice'".into(),
                ))
            }
            (Some(_), Some(_)) => {
                return Err(ParseError::Invalid(
                    "peer message carries both 'sdp' and 'ice'".into(),
                ))
            }
        };
        Ok(PeerMessage {
            session_id,
            payload,
        })
    }
}

impl ClientMessage {
    /// Parses one text frame from a peer speaking the whole protocol (v2).
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        Self::parse_as(text, ProtocolVersion::V2)
    }

    /// Parses one text frame from a peer speaking `version`. A v1 peer's v2-only fields
    /// (`maxHeight`) are ignored unread, as upstream ignores fields it does not know.
    pub fn parse_as(text: &str, version: ProtocolVersion) -> Result<Self, ParseError> {
        let mut f = WireFields::parse(text)?;
        if version < ProtocolVersion::V2 {
            f.max_height = None;
        }
        let kind = f.kind.clone();
        Ok(match kind.as_ref() {
            "setPeerStatus" => ClientMessage::SetPeerStatus(PeerStatus {
                roles: required(f.roles.take(), "roles", &kind)?,
                meta: f.meta.take().flatten(),
                peer_id: f.peer_id.take(),
            }),
            "startSession" => {
                let max_height = max_height(f.max_height.take())?;
                match (f.peer_id.take(), f.stream.take()) {
                    (None, Some(stream)) => ClientMessage::PlaceSession {
                        stream,
                        offer: f.offer.take(),
                        max_height,
                    },
                    (peer_id, _) => ClientMessage::StartSession {
                        peer_id: required(peer_id, "peerId", &kind)?,
                        offer: f.offer.take(),
                        max_height,
                    },
                }
            }
            "endSession" => ClientMessage::EndSession {
                session_id: required(f.session_id.take(), "sessionId", &kind)?,
            },
            "peer" => ClientMessage::Peer(PeerMessage::from_fields(&mut f)?),
            "list" => ClientMessage::List,
            "listConsumers" => ClientMessage::ListConsumers,
            other => return Err(ParseError::UnknownType(other.to_string())),
        })
    }

    /// Serializes the message as upstream clients do.
    pub fn to_json(&self) -> String {
        match self {
            ClientMessage::Peer(p) => p.to_json(),
            other => serde_json::to_string(&ClientSer(other)).expect("plain data serializes"),
        }
    }
}

/// Serializes the non-relay client messages in upstream field order.
struct ClientSer<'a>(&'a ClientMessage);

impl Serialize for ClientSer<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        #[serde(tag = "type", rename_all = "camelCase")]
        enum Out<'a> {
            SetPeerStatus(&'a PeerStatus),
            #[serde(rename_all = "camelCase")]
            StartSession {
                peer_id: &'a str,
                offer: &'a Option<String>,
                #[serde(skip_serializing_if = "Option::is_none")]
                max_height: &'a Option<u32>,
            },
            #[serde(rename = "startSession", rename_all = "camelCase")]
            PlaceSession {
                stream: &'a str,
                offer: &'a Option<String>,
                #[serde(skip_serializing_if = "Option::is_none")]
                max_height: &'a Option<u32>,
            },
            #[serde(rename_all = "camelCase")]
            EndSession {
                session_id: &'a str,
            },
            List,
            ListConsumers,
        }
        match self.0 {
            ClientMessage::SetPeerStatus(st) => Out::SetPeerStatus(st).serialize(s),
            ClientMessage::StartSession {
                peer_id,
                offer,
                max_height,
            } => Out::StartSession {
                peer_id,
                offer,
                max_height,
            }
            .serialize(s),
            ClientMessage::PlaceSession {
                stream,
                offer,
                max_height,
            } => Out::PlaceSession {
                stream,
                offer,
                max_height,
            }
            .serialize(s),
            ClientMessage::EndSession { session_id } => Out::EndSession { session_id }.serialize(s),
            ClientMessage::List => Out::List.serialize(s),
            ClientMessage::ListConsumers => Out::ListConsumers.serialize(s),
            ClientMessage::Peer(_) => unreachable!("peer messages are written by PeerMessage"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_session_naming_a_stream_asks_for_placement() {
        assert_eq!(
            ClientMessage::parse(r#"{"type":"startSession","stream":"stage"}"#).unwrap(),
            ClientMessage::PlaceSession {
                stream: "stage".into(),
                offer: None,
                max_height: None,
            }
        );
        // with a peerId it is upstream's request, whatever else it carries
        assert!(matches!(
            ClientMessage::parse(r#"{"type":"startSession","peerId":"p","stream":"s"}"#),
            Ok(ClientMessage::StartSession { .. })
        ));
        // neither: the missing field is upstream's
        let err = ClientMessage::parse(r#"{"type":"startSession"}"#).unwrap_err();
        assert!(err.to_string().contains("peerId"), "{err}");
        let text = ClientMessage::PlaceSession {
            stream: "stage".into(),
            offer: None,
            max_height: None,
        }
        .to_json();
        assert_eq!(
            ClientMessage::parse(&text).unwrap(),
            ClientMessage::PlaceSession {
                stream: "stage".into(),
                offer: None,
                max_height: None,
            }
        );
    }

    #[test]
    fn max_height_round_trips_in_both_start_session_forms() {
        for msg in [
            ClientMessage::StartSession {
                peer_id: "p".into(),
                offer: None,
                max_height: Some(360),
            },
            ClientMessage::PlaceSession {
                stream: "stage".into(),
                offer: None,
                max_height: Some(8192),
            },
        ] {
            let text = msg.to_json();
            assert!(text.contains(r#""maxHeight":"#), "{text}");
            assert_eq!(ClientMessage::parse(&text).unwrap(), msg, "{text}");
        }
        // without a cap the bytes are upstream's (tests/upstream_compat.rs checks them all)
        let plain = ClientMessage::StartSession {
            peer_id: "p".into(),
            offer: None,
            max_height: None,
        };
        assert_eq!(
            plain.to_json(),
            r#"{"type":"startSession","peerId":"p","offer":null}"#
        );
    }

    #[test]
    fn a_bad_max_height_is_refused_with_a_reason() {
        for bad in [
            "0",
            "8193",
            "-1",
            "1.5",
            r#""360""#,
            "true",
            "[360]",
            "4294967656",
        ] {
            let text = format!(r#"{{"type":"startSession","peerId":"p","maxHeight":{bad}}}"#);
            let err = ClientMessage::parse(&text).expect_err(&text);
            assert!(
                err.to_string().contains("maxHeight must be an integer"),
                "{text}: {err}"
            );
            assert_eq!(err.code(), crate::ErrorCode::InvalidMessage);
            let text = format!(r#"{{"type":"startSession","stream":"s","maxHeight":{bad}}}"#);
            assert!(ClientMessage::parse(&text).is_err(), "{text}");
        }
        // null is no cap
        assert!(matches!(
            ClientMessage::parse(r#"{"type":"startSession","peerId":"p","maxHeight":null}"#),
            Ok(ClientMessage::StartSession {
                max_height: None,
                ..
            })
        ));
    }

    #[test]
    fn a_v1_peer_s_max_height_is_ignored_unread_as_upstream_does() {
        for text in [
            r#"{"type":"startSession","peerId":"p","maxHeight":360}"#,
            r#"{"type":"startSession","peerId":"p","maxHeight":0}"#,
        ] {
            assert_eq!(
                ClientMessage::parse_as(text, ProtocolVersion::V1).unwrap(),
                ClientMessage::StartSession {
                    peer_id: "p".into(),
                    offer: None,
                    max_height: None,
                },
                "{text}"
            );
        }
    }

    #[test]
    fn relay_payload_is_kept_verbatim() {
        let text = r#"{"type":"peer","sessionId":"s","ice":{ "sdpMLineIndex" : 0, "candidate":"candidate:1 1 UDP 1 127.0.0.1 5000 typ host","x":[1]}}"#;
        let ClientMessage::Peer(p) = ClientMessage::parse(text).unwrap() else {
            panic!("not a peer message")
        };
        assert_eq!(
            p.payload.raw().get(),
            r#"{ "sdpMLineIndex" : 0, "candidate":"candidate:1 1 UDP 1 127.0.0.1 5000 typ host","x":[1]}"#
        );
        assert!(p.to_json().ends_with(r#""x":[1]}}"#));
    }

    #[test]
    fn bad_shapes_are_rejected_with_a_reason() {
        let cases = [
            ("{", "malformed"),
            (r#"{"type":"nope"}"#, "unknown message type"),
            (r#"{"type":"setPeerStatus"}"#, "roles"),
            (r#"{"type":"setPeerStatus","roles":["king"]}"#, "invalid"),
            (r#"{"type":"startSession"}"#, "peerId"),
            (r#"{"type":"peer","sessionId":"s"}"#, "neither"),
            (
                r#"{"type":"peer","sessionId":"s","sdp":{"type":"pranswer","sdp":""}}"#,
                "bad sdp",
            ),
            (
                r#"{"type":"peer","sessionId":"s","sdp":{"type":"offer","sdp":3}}"#,
                "bad sdp",
            ),
            (
                r#"{"type":"peer","sessionId":"s","ice":{"candidate":"c"}}"#,
                "bad ice",
            ),
            (r#"[1,2]"#, "invalid"),
        ];
        for (text, needle) in cases {
            let err = ClientMessage::parse(text).expect_err(text).to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn offer_is_detected() {
        let ClientMessage::Peer(p) = ClientMessage::parse(
            r#"{"type":"peer","sessionId":"s","sdp":{"type":"offer","sdp":"v=0\r\n"}}"#,
        )
        .unwrap() else {
            panic!()
        };
        assert!(p.payload.is_offer());
    }
}
