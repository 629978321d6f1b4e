//! The bus between peer connections and the routing core.
//!
//! Peer actors only ever talk to a [`Bus`]. [`MemoryBus`] routes inside one process (a single
//! node, upstream's model); the cluster implementation routes across nodes over Redis with the
//! same trait, so a peer actor cannot tell which one it is connected to. [`JoiningBus`] stands
//! for it while Redis is not there yet at start (`joining.rs`).
//!
//! Every call is fire-and-forget: answers and errors come back through the peer's
//! [`Mailbox`], as they do on the wire.

mod cluster;
mod joining;
mod memory;
pub mod resp;

pub use cluster::{ClusterError, Endpoint, RedisBus, RedisSettings};
pub use joining::{JoinError, JoiningBus};
pub use memory::MemoryBus;

use std::collections::HashMap;

use std::sync::Arc;

use proto::{ClientMessage, PeerId, PeerInfo, ServerMessage};

use crate::grants::Grants;
use crate::routing::{Census, PeerRow, Unplaced};
use proto::envelope::{AdminBody, SessionRow};
use tracing::warn;

use crate::mailbox::{Mailbox, Outbound};

pub trait Bus: Send + Sync + 'static {
    /// A peer connected, with what its token grants; messages for it go to `mailbox`.
    fn join(&self, peer_id: &str, mailbox: Mailbox, grants: Arc<Grants>);
    /// A resumed peer's new token: what it grants from now on. `false` (nothing changed) if
    /// it names another tenant than the peer's.
    fn regrant(&self, peer_id: &str, grants: Arc<Grants>) -> bool;
    /// One message from a connected peer, in the order the peer sent them. If the answer
    /// has to wait (a `list` in a cluster waits for the cluster to catch up), the returned
    /// future delivers it; the connection handles nothing else from the peer until then, so
    /// answers keep the order of requests.
    fn handle(&self, from: &str, msg: ClientMessage) -> Option<Pending>;
    /// The peer disconnected (or was disconnected).
    fn leave(&self, peer_id: &str);
    /// The peer's connection dropped and it is kept for a resume (`away`), or it resumed:
    /// placement passes over a producer that is away (`routing/placement.rs`).
    fn away(&self, peer_id: &str, away: bool);
    /// Sends `msg` to every peer connected to this node (encoded per peer version, so a v2-only
    /// message such as `goAway` reaches v2 peers only).
    fn notify_local(&self, msg: &ServerMessage);
    /// Closes every connection to this node with `code` and `reason` (the node stops).
    fn close_local(&self, code: u16, reason: &str);
    /// A client reconnected here with a resume token issued by another node, having received
    /// `last` frames (if it says): ask that node for the peer. The future yields its id and
    /// the number of the last frame accounted for, once the peer is registered here with
    /// `mailbox` (the frames it lost and what was queued for it already in the mailbox); or
    /// `None` if refused. If the token's node died, the peer is adopted from its suspension
    /// instead (frames in flight are lost). The future ends in bounded time. `None` if the bus
    /// cannot reach other nodes.
    fn claim(&self, _token: &str, _last: Option<u64>, _mailbox: Mailbox) -> Option<Claim> {
        None
    }
    /// Connected v2 peer `peer_id` holds resume token `token` (its newest): in a cluster, the
    /// token's hash is stored with the peer, so that any node can resume it should this node
    /// die.
    fn resume_token(&self, _peer_id: &str, _token: &str) {}
    /// The node is stopping: remove its peers from the cluster now (their sessions end,
    /// listeners are told) rather than after the liveness TTL.
    fn shutdown(&self) -> Pending {
        Box::pin(async {})
    }
    /// Whether the node can serve everything it should (`/readyz`): in a cluster, whether the
    /// cluster bus is reachable.
    fn ready(&self) -> bool {
        true
    }
    /// Whether the node is still waiting to join its cluster (Redis unreachable since the
    /// start, `bus/joining.rs`): it takes no connections and answers nothing cluster-wide yet.
    fn joining(&self) -> bool {
        false
    }
    /// Whether the node was cut off from its cluster for so long that the others count it
    /// dead: it takes no connections until it has rejoined.
    fn fenced(&self) -> bool {
        false
    }
    /// The member of `stream` a new viewer should be served by, cluster-wide
    /// (`routing/placement.rs`), for clients that start sessions by peer id (`GET /place`).
    fn place(&self, stream: &str, viewer: &Grants) -> Result<PeerId, Unplaced>;
    /// The producers of the whole cluster (`GET /api/v1/producers`).
    fn producers(&self) -> Vec<PeerInfo>;
    /// The live nodes and their peers (`GET /api/v1/nodes`); `id: None` is this node.
    fn nodes(&self) -> Vec<NodeSummary>;
    /// What the metrics read (`crate::metrics`), now.
    fn census(&self) -> Census;
    /// Every peer of the cluster (`me`: this node's id), for the operations API.
    fn peer_rows(&self, me: &str) -> Vec<PeerRow>;
    /// The sessions of the whole cluster: this node's, and every other live node's answer
    /// within a second.
    fn session_rows(&self, me: &str) -> futures::future::BoxFuture<'static, Vec<SessionRow>>;
    /// An operator's action (`crate::admin`): this node's part now, then every other node's.
    fn act(&self, me: &str, op: AdminBody);
    /// Figures for `/healthz` and the operations API.
    fn stats(&self) -> BusStats;
}

/// Work the connection must wait for before reading the peer's next message.
pub type Pending = futures::future::BoxFuture<'static, ()>;

/// A resume claim under way: the resumed peer's id and the number of the last frame before
/// what its new connection will write, or `None` if refused.
pub type Claim = futures::future::BoxFuture<'static, Option<(PeerId, u64)>>;

/// One node as the operations API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSummary {
    pub id: Option<String>,
    pub peers: usize,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BusStats {
    pub peers: usize,
    pub sessions: usize,
}

/// Queues `msg` for the local peers `to` that are still connected, encoding it once per
/// protocol version (presence fan-out: one status change, every listener).
pub(crate) fn deliver_many(
    mailboxes: &HashMap<PeerId, Mailbox>,
    to: &[PeerId],
    msg: &ServerMessage,
) {
    let mut encoded: [Option<Option<String>>; 2] = [None, None];
    for peer in to {
        let Some(mailbox) = mailboxes.get(peer) else {
            continue;
        };
        let slot = match mailbox.version() {
            proto::ProtocolVersion::V1 => 0,
            proto::ProtocolVersion::V2 => 1,
        };
        let Some(text) = encoded[slot].get_or_insert_with(|| msg.encode(mailbox.version())) else {
            continue; // nothing to say to a peer of this version
        };
        if mailbox.send(Outbound::Text(text.clone())).is_err() {
            warn!(
                peer_id = peer,
                kind = msg.kind(),
                "peer queue full, disconnecting it"
            );
        }
    }
}

/// Queues `msg` for local peer `to`, if still connected.
pub(crate) fn deliver(mailboxes: &HashMap<PeerId, Mailbox>, to: &str, msg: &ServerMessage) {
    let Some(mailbox) = mailboxes.get(to) else {
        return;
    };
    if mailbox.deliver(msg).is_err() {
        // The peer's connection is being dropped; its `leave` follows.
        warn!(
            peer_id = to,
            kind = msg.kind(),
            "peer queue full, disconnecting it"
        );
    }
}

/// A peer id, fresh for every connection (upstream uses UUIDv4 too).
pub fn new_peer_id() -> PeerId {
    uuid::Uuid::new_v4().to_string()
}
