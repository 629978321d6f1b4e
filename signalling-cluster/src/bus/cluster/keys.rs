//! The cluster's schema in Redis: every key and channel name, and what the stored values
//! hold. Every name starts with the prefix (`--redis-prefix`, default `gwc`).
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{prefix}:presence` | channel | announcements to every node (peer status, `nodeDown`, `suspendExpired`) |
//! | `{prefix}:node:{id}` | channel | messages for one node (sessions, relays, claims, barriers) |
//! | `{prefix}:peers` | hash | peer id -> [`StoredPeer`]: every registered peer of the cluster |
//! | `{prefix}:nodes` | sorted set | node id, scored with the time its liveness expires (ms) |
//! | `{prefix}:features` | hash | node id -> comma-separated envelope features it reads (`batch`) |
//! | `{prefix}:reap:{id}` | string | who reaps dead node `id` (`SET NX`: one node wins) |
//! | `{prefix}:suspended:{token hash}` | string | [`SuspendedPeer`]: whoever deletes it adopts the peer |

use std::time::{SystemTime, UNIX_EPOCH};

use proto::{PeerId, PeerStatus};

use crate::routing::NodeId;

pub(super) struct Keys {
    pub(super) peers: String,
    pub(super) nodes: String,
    pub(super) presence: String,
    pub(super) features: String,
    prefix: String,
}

impl Keys {
    pub(super) fn new(prefix: &str) -> Self {
        Keys {
            peers: format!("{prefix}:peers"),
            nodes: format!("{prefix}:nodes"),
            presence: format!("{prefix}:presence"),
            features: format!("{prefix}:features"),
            prefix: prefix.to_string(),
        }
    }

    /// The channel of one node.
    pub(super) fn node(&self, node: &str) -> String {
        format!("{}:node:{node}", self.prefix)
    }

    pub(super) fn reap(&self, node: &str) -> String {
        format!("{}:reap:{node}", self.prefix)
    }

    pub(super) fn suspended(&self, token_hash: &str) -> String {
        format!("{}:suspended:{token_hash}", self.prefix)
    }
}

/// What `{prefix}:peers` stores per peer.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct StoredPeer {
    pub(super) node: NodeId,
    pub(super) status: PeerStatus,
    /// v2 peers: SHA-256 of the newest resume token, to resume it if its node dies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) resume: Option<String>,
    /// Its node died; it waits for a resume until then (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) suspended_until: Option<u64>,
}

impl StoredPeer {
    pub(super) fn to_json(&self) -> String {
        // (plain strings and numbers: serializing cannot fail)
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// What `{prefix}:suspended:{token hash}` holds: whoever deletes it adopts the peer.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct SuspendedPeer {
    pub(super) peer_id: PeerId,
    pub(super) node: NodeId,
    pub(super) status: PeerStatus,
    pub(super) until: u64,
}

/// Milliseconds since the epoch, the clock of liveness scores and deadlines.
pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
