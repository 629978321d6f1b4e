//! The bodies of the node-message kinds (the table is in [`super`]): plain data, written and
//! read by serde. Fields are only ever added, with a default, so older nodes' bodies still read.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::is_zero;
use crate::{ParseError, PeerId, PeerMessage, PeerStatus, RelayPayload, SessionId};

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

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PeerStatusBody {
    pub peer_id: PeerId,
    pub status: PeerStatus,
    /// The peer disconnected (its status carries `roles: []` and its last meta).
    #[serde(default)]
    pub(super) left: bool,
    /// The peer moved here from another node (resume): replicas update, listeners are not
    /// told.
    #[serde(default)]
    pub(super) moved: bool,
    /// The peer just connected and has not registered: known to every node (so that
    /// `startSession` to it fails as on one server), but listeners are not told.
    #[serde(default)]
    pub(super) joined: bool,
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
    /// The consumer's `startSession.maxHeight` (v2), for the producer. Absent: no cap (and
    /// what an older node writes; an older node reading it ignores it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_height: Option<u32>,
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
