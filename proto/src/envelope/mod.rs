//! The node-to-node envelope carried over the cluster bus (Redis pub/sub).
//!
//! Every message between nodes is one [`Envelope`]: a format version `v`, the sending node, a
//! sequence number and a `kind` naming the body. Rolling upgrades rely on two rules:
//!
//! * a node accepts every envelope whose `v` major it knows ([`ENVELOPE_VERSION`]) and ignores
//!   (and counts) bodies of a `kind` it does not know, so a newer node may add kinds;
//! * fields are only ever added to a body, and readers ignore fields they do not know.
//!
//! `seq` counts envelopes per sending node and channel; a receiver that sees a gap knows
//! pub/sub lost something and ends the sessions affected (see `docs/cluster.md`).
//!
//! Under load a node packs the messages it has queued for one node into a single envelope of
//! kind [`BATCH_KIND`] (one `PUBLISH`, one parse, one sequence number for many relays); see
//! [`Batch`]. Older nodes would ignore that kind, so a node only sends batches to nodes that
//! advertise [`FEATURE_BATCH`].

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{ParseError, PeerId, PeerMessage, PeerStatus, RelayPayload, SessionId};

mod read;

/// Version of the envelope format written by this build.
pub const ENVELOPE_VERSION: u16 = 1;

/// The `kind` of an envelope whose body is an array of `{"kind", "body"}` messages, in order.
pub const BATCH_KIND: &str = "batch";

/// The feature a node advertises (in the cluster's feature hash) when it reads batches.
pub const FEATURE_BATCH: &str = "batch";

/// One node-to-node message.
#[derive(Serialize, Deserialize, Debug)]
pub struct Envelope {
    /// Envelope format version.
    pub v: u16,
    /// Id of the sending node.
    pub from: String,
    /// When the sending node process started (ms since the epoch): a restarted node with the
    /// same id starts its sequence numbers again.
    #[serde(default)]
    pub boot: u64,
    /// Per-sender, per-channel sequence number, starting at 1.
    pub seq: u64,
    /// When the sender published it (its wall clock, ms since the epoch); 0 (absent): not
    /// said, as older nodes write. Receivers drop directed messages that arrive too late.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub at: u64,
    /// Which [`NodeMessage`] the body holds.
    pub kind: String,
    /// The body, decoded according to `kind`.
    pub body: Box<RawValue>,
}

/// Why an envelope could not be read.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("envelope is not valid JSON: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("envelope version {0} is newer than this node understands ({ENVELOPE_VERSION})")]
    TooNew(u16),
}

/// Declares the node-message kinds once: the enum, its wire `kind` names, and the writer and
/// reader of each body follow from this one table.
macro_rules! node_messages {
    ($($(#[$doc:meta])* $variant:ident($body:ty) = $kind:literal,)*) => {
        /// The bodies nodes exchange.
        #[derive(Debug, Clone, PartialEq)]
        pub enum NodeMessage {
            $($(#[$doc])* $variant($body),)*
        }

        impl NodeMessage {
            /// The `kind` naming this body on the wire.
            pub fn kind(&self) -> &'static str {
                match self {
                    $(NodeMessage::$variant(_) => $kind,)*
                }
            }

            /// Writes the body as JSON to `out`.
            fn write_body(&self, out: &mut Vec<u8>) {
                let written = match self {
                    $(NodeMessage::$variant(b) => serde_json::to_writer(out, b),)*
                };
                written.expect("plain data serializes");
            }
        }

        /// Decodes a body of `kind` from `d`; `None` (the body skipped) for a kind this build
        /// does not know.
        fn decode<'de, D: serde::Deserializer<'de>>(
            kind: &str,
            d: D,
        ) -> Result<Option<NodeMessage>, D::Error> {
            Ok(Some(match kind {
                $($kind => NodeMessage::$variant(Deserialize::deserialize(d)?),)*
                _ => {
                    serde::de::IgnoredAny::deserialize(d)?;
                    return Ok(None);
                }
            }))
        }
    };
}

node_messages! {
    /// A peer's status changed on the sending node (joined, registered, moved here or left:
    /// see [`PeerStatusBody::change`]).
    PeerStatus(PeerStatusBody) = "peerStatus",
    /// Start a session between a local producer and consumer on different nodes.
    SessionStart(SessionStartBody) = "sessionStart",
    /// A session ended; tell the member on the receiving node.
    SessionEnd(SessionEndBody) = "sessionEnd",
    /// SDP/ICE for a peer on the receiving node, payload verbatim.
    Relay(RelayBody) = "relay",
    /// A node died without saying goodbye (or left); sent by the one node that reaped it.
    NodeDown(NodeDownBody) = "nodeDown",
    /// A marker a node sends to itself: when it comes back, everything published before it
    /// has been received (read-your-writes for `list`). Sent to another node, a no-op whose
    /// sequence number shows the receiver at once what a lost Redis connection lost.
    Barrier(BarrierBody) = "barrier",
    /// Another node asks for a peer back: a client reconnected there with this resume token.
    ResumeClaim(ResumeClaimBody) = "resumeClaim",
    /// The answer to a claim: the peer, its sessions and what was queued for it.
    ResumeGrant(ResumeGrantBody) = "resumeGrant",
    /// A session member moved to another node (sent by the new node to the other member's).
    SessionMoved(SessionMovedBody) = "sessionMoved",
    /// The other member's node switched to the new node; sent through the old node, after
    /// everything it sent there before.
    MoveAck(SessionMovedBody) = "moveAck",
    /// Sent by the old node to the new one after it forwarded everything before the ack:
    /// direct messages for the session may now be delivered.
    MoveFence(SessionMovedBody) = "moveFence",
    /// A suspended peer of a dead node resumed on the sending node: point the sessions with it
    /// there, answer with [`NodeMessage::AdoptAck`], then send what was held for it.
    SessionAdopt(SessionAdoptBody) = "sessionAdopt",
    /// The answer to a [`NodeMessage::SessionAdopt`]: the receiver's sessions with the peer
    /// (including those that ended meanwhile; their `sessionEnd` follows).
    AdoptAck(AdoptAckBody) = "adoptAck",
    /// A suspended peer was not resumed in time: it leaves (sessions end, listeners told).
    SuspendExpired(SuspendExpiredBody) = "suspendExpired",
    /// The sessions a producer of the sender serves, on change (placement; old nodes ignore it).
    ProducerLoad(ProducerLoadBody) = "producerLoad",
    /// An operator's action or question, from the node whose operations API was asked.
    Admin(AdminBody) = "admin",
    /// A node's answer to an `admin` question: the sessions it takes part in.
    AdminReply(AdminReplyBody) = "adminReply",
}

/// What an operator asks of every node (each does its part; old nodes ignore it).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase", tag = "op")]
pub enum AdminBody {
    /// End this session (the node of a member does).
    #[serde(rename_all = "camelCase")]
    EndSession { session_id: SessionId },
    /// Disconnect this peer (its node does), telling a v2 peer `reason`.
    #[serde(rename_all = "camelCase")]
    Kick { peer_id: PeerId, reason: String },
    /// Drain, as on SIGTERM (the node named does).
    Drain { node: String },
    /// Answer with the sessions you take part in (`adminReply`, `request` echoed).
    Sessions { request: u64 },
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AdminReplyBody {
    pub request: u64,
    pub sessions: Vec<SessionRow>,
}

/// One session as the operations API lists it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SessionRow {
    pub session_id: SessionId,
    pub producer: PeerId,
    pub consumer: PeerId,
    pub producer_node: String,
    pub consumer_node: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ProducerLoadBody {
    pub peer_id: PeerId,
    pub sessions: usize,
    /// Its connection dropped (kept for a resume): not to be placed on. Absent: false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub away: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SessionAdoptBody {
    pub peer_id: PeerId,
    /// The node the peer is on now.
    pub node: String,
    /// The dead node it was on.
    pub old_node: String,
}

/// A session between two peers, without nodes: the receiver of an [`AdoptAckBody`] knows
/// them (the adopted peer is its own, the other is the sender's).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AdoptedSession {
    pub session_id: SessionId,
    pub producer: PeerId,
    pub consumer: PeerId,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AdoptAckBody {
    pub peer_id: PeerId,
    #[serde(default)]
    pub sessions: Vec<AdoptedSession>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SuspendExpiredBody {
    pub peer_id: PeerId,
    /// The dead node it was on.
    pub node: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ResumeClaimBody {
    pub claim: u64,
    pub token: String,
    /// Frames the client says it received; those after it are sent again.
    #[serde(default)]
    pub last: Option<u64>,
}

/// A session as one member's node describes it: both members with their nodes.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SessionRecord {
    pub session_id: SessionId,
    pub producer: PeerId,
    pub producer_node: String,
    pub consumer: PeerId,
    pub consumer_node: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResumeGrantBody {
    pub claim: u64,
    /// `None`: refused (unknown token, or the peer is gone).
    pub peer_id: Option<PeerId>,
    #[serde(default)]
    pub status: PeerStatus,
    #[serde(default)]
    pub sessions: Vec<SessionRecord>,
    /// Frames for the peer, encoded for its version, in order: those it lost in flight, then
    /// those still queued.
    #[serde(default)]
    pub frames: Vec<String>,
    /// Number of the last frame the client has: `frames` go on from there.
    #[serde(default)]
    pub written: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SessionMovedBody {
    pub session_id: SessionId,
    pub peer_id: PeerId,
    /// The node the peer is on now.
    pub node: String,
    /// The node the peer moved from.
    #[serde(default)]
    pub old_node: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BarrierBody {
    pub id: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodeDownBody {
    pub node: String,
    /// v2 peers of the dead node kept for resume (suspended) instead of removed. Older nodes
    /// ignore the field and remove them at once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suspended: Vec<PeerId>,
    /// How long the suspended peers wait for a resume.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub grace_ms: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PeerStatusBody {
    pub peer_id: PeerId,
    pub status: PeerStatus,
    /// The peer disconnected (its status carries `roles: []` and its last meta).
    #[serde(default)]
    left: bool,
    /// The peer moved here from another node (resume): replicas update, listeners are not
    /// told.
    #[serde(default)]
    moved: bool,
    /// The peer just connected and has not registered: known to every node (so that
    /// `startSession` to it fails as on one server), but listeners are not told.
    #[serde(default)]
    joined: bool,
    /// The peer's tenant (auth on, its token names one): peers of other tenants never see
    /// or reach it. Absent: the default tenant (older nodes send none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// What a [`PeerStatusBody`] announces. On the wire it is three flags, at most one of them
/// set (none: [`StatusChange::Changed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusChange {
    /// Connected, not registered yet (`joined`).
    Joined,
    /// Registered, or its status changed.
    Changed,
    /// Resumed on the sending node after living on another one (`moved`).
    Moved,
    /// Disconnected (`left`).
    Left,
}

impl PeerStatusBody {
    pub fn new(peer_id: PeerId, status: PeerStatus, change: StatusChange) -> Self {
        PeerStatusBody {
            peer_id,
            status,
            left: change == StatusChange::Left,
            moved: change == StatusChange::Moved,
            joined: change == StatusChange::Joined,
            tenant: None,
        }
    }

    /// The same, for a peer of `tenant` (the default tenant is not written).
    pub fn of_tenant(mut self, tenant: &str) -> Self {
        self.tenant = (!tenant.is_empty()).then(|| tenant.to_string());
        self
    }

    /// The announced change. Should a writer set several flags, `moved` wins over `joined`,
    /// and `joined` over `left`, as receivers have always read them.
    pub fn change(&self) -> StatusChange {
        match (self.moved, self.joined, self.left) {
            (true, _, _) => StatusChange::Moved,
            (_, true, _) => StatusChange::Joined,
            (_, _, true) => StatusChange::Left,
            _ => StatusChange::Changed,
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SessionStartBody {
    pub session_id: SessionId,
    pub producer: PeerId,
    pub consumer: PeerId,
    pub offer: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SessionEndBody {
    pub session_id: SessionId,
    /// The member to notify.
    pub to: PeerId,
    /// Why, when it was not the other member's doing (told to a v2 member).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<crate::EndReason>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct RelayBody {
    pub session_id: SessionId,
    /// Receiving peer.
    pub to: PeerId,
    /// `sdp` or `ice`.
    pub key: String,
    pub payload: Box<RawValue>,
}

impl RelayBody {
    /// A local peer's message for `to`, a peer on another node: the payload goes as the
    /// client wrote it.
    pub fn new(to: PeerId, msg: PeerMessage) -> Self {
        RelayBody {
            session_id: msg.session_id,
            to,
            key: msg.payload.key().to_string(),
            payload: match msg.payload {
                RelayPayload::Sdp { raw, .. } | RelayPayload::Ice { raw } => raw,
            },
        }
    }

    /// The message this relay carries, for its peer. One rule for every receiver: `key` says
    /// what the payload is, and an unknown key is refused. An `sdp` is checked (its type
    /// decides who may send it); an `ice` candidate is not parsed again, since the sending
    /// node checked it when its client sent it.
    pub fn into_message(self) -> Result<PeerMessage, ParseError> {
        let payload = match self.key.as_str() {
            "sdp" => RelayPayload::sdp(self.payload)?,
            "ice" => RelayPayload::ice_checked(self.payload),
            other => {
                return Err(ParseError::Invalid(format!(
                    "relay with an unknown payload key {other:?}"
                )))
            }
        };
        Ok(PeerMessage {
            session_id: self.session_id,
            payload,
        })
    }
}

impl PartialEq for RelayBody {
    fn eq(&self, o: &Self) -> bool {
        self.session_id == o.session_id
            && self.to == o.to
            && self.key == o.key
            && self.payload.get() == o.payload.get()
    }
}

impl NodeMessage {
    /// Wraps the message in an envelope from `from` (started at `boot`) with number `seq`,
    /// sent at `at` (0: not said).
    pub fn seal(&self, from: &str, boot: u64, seq: u64, at: u64) -> String {
        let mut body = Vec::with_capacity(256);
        self.write_body(&mut body);
        seal_raw(from, boot, seq, at, self.kind(), &body)
    }
}

/// Writes an envelope around an already serialized body. The fields are those of
/// [`Envelope`], written by hand so the body is copied once rather than parsed again.
fn seal_raw(from: &str, boot: u64, seq: u64, at: u64, kind: &str, body: &[u8]) -> String {
    use std::io::Write as _;
    let mut out = Vec::with_capacity(body.len() + from.len() + 64);
    // (writes into a Vec cannot fail)
    let _ = write!(out, "{{\"v\":{ENVELOPE_VERSION},\"from\":");
    serde_json::to_writer(&mut out, from).expect("a string serializes");
    let _ = write!(out, ",\"boot\":{boot},\"seq\":{seq}");
    if at != 0 {
        let _ = write!(out, ",\"at\":{at}");
    }
    out.extend_from_slice(b",\"kind\":");
    serde_json::to_writer(&mut out, kind).expect("a string serializes");
    out.extend_from_slice(b",\"body\":");
    out.extend_from_slice(body);
    out.push(b'}');
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// Messages for one channel packed into one envelope of kind [`BATCH_KIND`], in order.
#[derive(Debug, Default)]
pub struct Batch {
    /// The body so far: `[` and the items written, comma-separated.
    body: Vec<u8>,
    len: usize,
}

impl Batch {
    pub fn new() -> Self {
        Batch::default()
    }

    /// Appends a message.
    pub fn push(&mut self, msg: &NodeMessage) {
        self.body
            .extend_from_slice(if self.len == 0 { b"[" } else { b"," });
        self.body.extend_from_slice(b"{\"kind\":\"");
        self.body.extend_from_slice(msg.kind().as_bytes()); // plain ASCII, nothing to escape
        self.body.extend_from_slice(b"\",\"body\":");
        msg.write_body(&mut self.body);
        self.body.push(b'}');
        self.len += 1;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The envelope carrying every message pushed, from `from` with number `seq`.
    pub fn seal(mut self, from: &str, boot: u64, seq: u64, at: u64) -> String {
        if self.len == 0 {
            self.body.push(b'[');
        }
        self.body.push(b']');
        seal_raw(from, boot, seq, at, BATCH_KIND, &self.body)
    }
}

/// One message inside a batch, as read.
#[derive(Deserialize)]
struct BatchItem<'a> {
    #[serde(borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    body: &'a RawValue,
}

impl Envelope {
    /// Reads an envelope. Newer *major* versions are refused; the body is decoded by [`Envelope::open`].
    pub fn parse(text: &str) -> Result<Self, EnvelopeError> {
        let env: Envelope = serde_json::from_str(text)?;
        if env.v > ENVELOPE_VERSION {
            return Err(EnvelopeError::TooNew(env.v));
        }
        Ok(env)
    }

    /// Decodes the body; `Ok(None)` for a kind this build does not know (a newer node's).
    /// A batch is a kind of its own here: read it with [`Envelope::messages`].
    pub fn open(&self) -> Result<Option<NodeMessage>, EnvelopeError> {
        open_body(&self.kind, self.body.get())
    }

    /// Every message the envelope carries, in order: the one of a plain envelope, or each of a
    /// batch. `None` stands for a message of a kind this build does not know; a message that
    /// cannot be read is an error of its own and does not spoil the others.
    pub fn messages(
        &self,
    ) -> Result<Vec<Result<Option<NodeMessage>, EnvelopeError>>, EnvelopeError> {
        if self.kind != BATCH_KIND {
            return Ok(vec![self.open()]);
        }
        let items: Vec<BatchItem> = serde_json::from_str(self.body.get())?;
        Ok(items
            .iter()
            .map(|item| open_body(&item.kind, item.body.get()))
            .collect())
    }
}

fn open_body(kind: &str, b: &str) -> Result<Option<NodeMessage>, EnvelopeError> {
    let mut de = serde_json::Deserializer::from_str(b);
    let msg = decode(kind, &mut de)?;
    de.end()?;
    Ok(msg)
}

pub use read::Received;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PeerRole;

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
}
