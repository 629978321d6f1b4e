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
//!
//! | file | behaviour |
//! |---|---|
//! | `mod.rs` | the envelope, the kind table, sealing (plain and batched), the careful reading |
//! | `bodies.rs` | the body of each kind (re-exported here: `proto::envelope::SessionEndBody`, ...) |
//! | `read.rs` | the one-pass reading a receiver does ([`Received`]) |
//! | `tests.rs` | the envelope's tests |

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

mod bodies;
mod read;
#[cfg(test)]
mod tests;

pub use bodies::{
    AdminBody, AdminReplyBody, AdoptAckBody, AdoptedSession, BarrierBody, NodeDownBody,
    PeerStatusBody, ProducerLoadBody, RelayBody, ResumeClaimBody, ResumeGrantBody,
    SessionAdoptBody, SessionEndBody, SessionMovedBody, SessionRecord, SessionRow,
    SessionStartBody, StatusChange, SuspendExpiredBody,
};
pub use read::Received;

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

fn is_zero(n: &u64) -> bool {
    *n == 0
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
