//! The routing core: upstream `gst-webrtc-signalling-server` semantics as a pure state machine.
//!
//! It knows no transport. Each call takes one event (a local peer joined, sent a message, left;
//! another node reported something) and appends [`Effect`]s to an [`Outbox`]; a
//! [`crate::bus::Bus`] implementation carries them out. Where upstream is unsafe the router is
//! stricter, and says so in a comment.
//!
//! In a cluster every node runs one router. It knows its own peers, a replica of the other
//! nodes' registered peers (kept current by their announcements), and the sessions that have at
//! least one member here; each session remembers the node of each member, so relaying needs no
//! lookup anywhere else.
//!
//! | file | behaviour |
//! |---|---|
//! | `mod.rs` | the types; upstream semantics for local peers: join, status, lists, leave |
//! | `sessions.rs` | sessions driven by local members: start, relay (sdp/ice), end; ending for both |
//! | `replica.rs` | the other nodes' peers: their announcements, what we announce again |
//! | `cross_node.rs` | sessions with a member on another node: its start, relays and end arriving |
//! | `suspension.rs` | a dead node's peers: ended, or suspended (messages held) until adopted or expired |
//! | `moving.rs` | a live peer moving to another node (resume there), with the fences that keep order |
//! | `access.rs` | what a peer's grants let it do: roles, sessions, what lists and presence show, tenants |
//! | `census.rs` | what the metrics read of the router: peers by protocol and role, sessions, relays |
//! | `placement.rs` | a consumer asking for a stream: the member (origin or relay) with room, not away |
//! | `tests.rs` | the router's tests: local semantics, two routers wired by hand, suspension |

mod access;
mod census;
mod cross_node;
mod moving;
mod placement;
pub use census::{Census, PeerRow};
pub use placement::{Load, Unplaced};
mod replica;
mod sessions;
mod suspension;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use proto::envelope::{NodeMessage, PeerStatusBody, StatusChange};
use proto::{
    ClientMessage, ErrorCode, PeerId, PeerInfo, PeerStatus, ProtocolVersion, ServerMessage,
    SessionId,
};
use tracing::{debug, info};

use suspension::Suspension;

use crate::grants::Grants;
use access::unrestricted;

/// Node identifier.
pub type NodeId = String;

/// What the router asks its bus to do, in order.
#[derive(Debug)]
pub enum Effect {
    /// Send to a peer connected to this node.
    Deliver(PeerId, ServerMessage),
    /// Send one message to several peers of this node (listeners): encoded once per
    /// protocol version, not once per peer.
    Broadcast(Vec<PeerId>, ServerMessage),
    /// Tell every other node that a local peer's status changed (or that it left).
    Announce(PeerStatusBody),
    /// Send to one other node.
    ToNode(NodeId, NodeMessage),
}

/// Effects to carry out, in order.
pub type Outbox = Vec<Effect>;

/// Messages held for one suspended peer unless the router is given another limit.
const DEFAULT_HOLD_LIMIT: usize = 1024;

/// Which member of a session a peer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Producer,
    Consumer,
}

#[derive(Debug)]
struct Peer {
    status: PeerStatus,
    /// `None`: connected here.
    node: Option<NodeId>,
    version: ProtocolVersion,
    producer_sessions: HashSet<SessionId>,
    consumer_sessions: HashSet<SessionId>,
    /// A peer of a dead node waiting to be adopted elsewhere (replica entries only).
    suspended: Option<Suspension>,
    /// Another node's producer: the sessions its node last said it serves (`placement.rs`).
    load: usize,
    /// Its connection dropped and it is kept for a resume: placement passes it over, since a
    /// member whose process died serves no media (`placement.rs`).
    away: bool,
    /// What it may do (a local peer's token; everything without auth), and its tenant (all
    /// that is known of another node's peer, whose node enforces the rest).
    grants: Arc<Grants>,
    /// When this node learned of it (the operations API's age).
    since: std::time::Instant,
}

impl Peer {
    fn new(node: Option<NodeId>, version: ProtocolVersion, status: PeerStatus) -> Self {
        Peer {
            status,
            node,
            version,
            producer_sessions: HashSet::new(),
            consumer_sessions: HashSet::new(),
            suspended: None,
            load: 0,
            away: false,
            grants: unrestricted(),
            since: std::time::Instant::now(),
        }
    }

    /// The sessions it takes part in on `side`.
    fn sessions(&mut self, side: Side) -> &mut HashSet<SessionId> {
        match side {
            Side::Producer => &mut self.producer_sessions,
            Side::Consumer => &mut self.consumer_sessions,
        }
    }
}

#[derive(Debug, Clone)]
struct Session {
    producer: PeerId,
    consumer: PeerId,
    /// Node of each member, `None` when local.
    producer_node: Option<NodeId>,
    consumer_node: Option<NodeId>,
}

impl Session {
    /// Which member `id` is.
    fn side_of(&self, id: &str) -> Option<Side> {
        if self.producer == id {
            Some(Side::Producer)
        } else if self.consumer == id {
            Some(Side::Consumer)
        } else {
            None
        }
    }

    fn member(&self, side: Side) -> (&PeerId, &Option<NodeId>) {
        match side {
            Side::Producer => (&self.producer, &self.producer_node),
            Side::Consumer => (&self.consumer, &self.consumer_node),
        }
    }

    /// The node slot of member `id`.
    fn node_of_mut(&mut self, id: &str) -> Option<&mut Option<NodeId>> {
        match self.side_of(id)? {
            Side::Producer => Some(&mut self.producer_node),
            Side::Consumer => Some(&mut self.consumer_node),
        }
    }

    /// The other member and its node.
    fn other(&self, id: &str) -> Option<(&PeerId, &Option<NodeId>)> {
        match self.side_of(id)? {
            Side::Producer => Some(self.member(Side::Consumer)),
            Side::Consumer => Some(self.member(Side::Producer)),
        }
    }

    fn is_local(&self, id: &str) -> bool {
        self.side_of(id)
            .is_some_and(|side| self.member(side).1.is_none())
    }
}

/// All peers known to this node and the sessions it takes part in.
#[derive(Debug)]
pub struct Router {
    peers: HashMap<PeerId, Peer>,
    /// Local peers with the listener role, to fan out status changes without a scan.
    listeners: HashSet<PeerId>,
    sessions: HashMap<SessionId, Session>,
    /// Peers that moved from here to another node: late messages for them are forwarded.
    moved_out: HashMap<PeerId, NodeId>,
    /// Peers that moved here, and the node they came from (which forwards to us).
    moved_in: HashMap<PeerId, NodeId>,
    /// Sessions of a peer that moved here, whose deliveries wait until the old node confirms
    /// it forwarded everything sent before the move (so nothing overtakes anything).
    fences: HashMap<SessionId, Vec<(PeerId, ServerMessage)>>,
    /// Most messages held for one suspended peer.
    hold_limit: usize,
    /// `peer` messages relayed and their payload bytes: [to a local member, to another node].
    relayed: [(u64, u64); 2],
    /// Some peer known here holds less than every grant, or another tenant: lists and presence
    /// are filtered per peer (`access.rs`). Never set without auth, where they are not.
    grants_apply: bool,
}

impl Default for Router {
    fn default() -> Self {
        Router {
            peers: HashMap::new(),
            listeners: HashSet::new(),
            sessions: HashMap::new(),
            moved_out: HashMap::new(),
            moved_in: HashMap::new(),
            fences: HashMap::new(),
            hold_limit: DEFAULT_HOLD_LIMIT,
            relayed: [(0, 0); 2],
            grants_apply: false,
        }
    }
}

impl Router {
    pub fn new() -> Self {
        Self::default()
    }

    /// A router that holds at most `limit` messages for a suspended peer.
    pub fn with_hold_limit(limit: usize) -> Self {
        Router {
            hold_limit: limit.max(1),
            ..Self::default()
        }
    }

    /// Peers connected to this node.
    pub fn local_peer_count(&self) -> usize {
        self.peers.values().filter(|p| p.node.is_none()).count()
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// The producers of the whole cluster, as `list` answers.
    pub fn producers(&self) -> Vec<PeerInfo> {
        self.filter_peers(PeerStatus::producing)
    }

    /// A peer connected here (upstream: `NewPeer`). Its `welcome` is sent by the connection.
    pub fn join(&mut self, peer_id: &str, version: ProtocolVersion, out: &mut Outbox) {
        self.join_as(peer_id, version, unrestricted(), out)
    }

    /// One message from a local peer.
    pub fn handle(&mut self, from: &str, msg: ClientMessage, out: &mut Outbox) {
        let result = match msg {
            ClientMessage::SetPeerStatus(status) => self.set_peer_status(from, status, out),
            ClientMessage::StartSession {
                peer_id,
                offer,
                max_height,
            } => self.start_session(from, &peer_id, offer, max_height, out),
            ClientMessage::PlaceSession {
                stream,
                offer,
                max_height,
            } => self
                .place(from, &stream)
                .and_then(|peer_id| self.start_session(from, &peer_id, offer, max_height, out)),
            ClientMessage::EndSession { session_id } => self.end_session(from, &session_id, out),
            ClientMessage::Peer(msg) => self.relay(from, msg, out),
            ClientMessage::List => {
                let producers = self.visible_peers(from, PeerStatus::producing);
                deliver(out, from, ServerMessage::List { producers });
                Ok(())
            }
            ClientMessage::ListConsumers => {
                let consumers = self.visible_peers(from, PeerStatus::consuming);
                deliver(out, from, ServerMessage::ListConsumers { consumers });
                Ok(())
            }
        };
        if let Err((code, details)) = result {
            debug!(peer_id = from, %code, "request refused: {details}");
            deliver(out, from, ServerMessage::error(code, details));
        }
    }

    /// A local peer disconnected: end its sessions, then tell listeners (here and on every
    /// other node) that it has no roles any more.
    pub fn leave(&mut self, peer_id: &str, out: &mut Outbox) {
        if !self.is_local(peer_id) {
            // Not ours (any more): a late departure of a connection this node gave up, whose
            // peer lives on elsewhere (it was fenced, see `bus/cluster/fencing.rs`).
            return;
        }
        let Some(peer) = self.peers.remove(peer_id) else {
            return;
        };
        info!(peer_id, "removing peer");
        self.listeners.remove(peer_id);
        self.moved_in.remove(peer_id);
        for session_id in peer.producer_sessions.iter().chain(&peer.consumer_sessions) {
            self.close_session(peer_id, session_id, None, out);
        }
        // Upstream tells listeners about every departure, registered or not.
        let gone = gone(peer_id, peer.status.meta);
        self.broadcast(&peer.grants.tenant, &gone, out);
        announce(out, peer_id, &peer.grants.tenant, gone, StatusChange::Left);
    }

    /// Whether handling `msg` needs another node (and so fails while the cluster is down).
    pub fn crosses_nodes(&self, from: &str, msg: &ClientMessage) -> bool {
        match msg {
            ClientMessage::StartSession { peer_id, .. } => {
                self.peers.get(peer_id).is_some_and(|p| p.node.is_some())
            }
            ClientMessage::PlaceSession { stream, .. } => self
                .place(from, stream)
                .is_ok_and(|id| self.peers.get(&id).is_some_and(|p| p.node.is_some())),
            ClientMessage::Peer(m) => self
                .sessions
                .get(&m.session_id)
                .and_then(|s| s.other(from))
                .is_some_and(|(_, node)| node.is_some()),
            _ => false,
        }
    }

    /// The status of a peer connected here.
    pub fn local_status(&self, peer_id: &str) -> Option<PeerStatus> {
        self.peers
            .get(peer_id)
            .filter(|p| p.node.is_none())
            .map(|p| p.status.clone())
    }

    fn is_local(&self, peer_id: &str) -> bool {
        self.peers.get(peer_id).is_some_and(|p| p.node.is_none())
    }

    fn version(&self, peer_id: &str) -> ProtocolVersion {
        self.peers
            .get(peer_id)
            .map_or(ProtocolVersion::V1, |p| p.version)
    }

    fn set_peer_status(&mut self, peer_id: &str, status: PeerStatus, out: &mut Outbox) -> Res {
        let Some(peer) = self.peers.get(peer_id) else {
            return Err((
                ErrorCode::Internal,
                format!("Peer '{peer_id}' hasn't been welcomed"),
            ));
        };
        // Upstream compares the whole status, including the peerId it stored itself.
        if status == peer.status {
            info!(peer_id, "Status hasn't changed");
            return Ok(());
        }
        if status.producing() && status.consuming() {
            return Err((
                ErrorCode::InvalidRoles,
                format!("Cannot register peer {peer_id} as both producer and passive consumer"),
            ));
        }
        access::may_register(&peer.grants, &status)?;
        let tenant = peer.grants.tenant.clone();
        let (was_producing, was_consuming) = (peer.status.producing(), peer.status.consuming());
        if was_producing && !status.producing() {
            self.stop_sessions(peer_id, Side::Producer, out);
        } else if was_consuming && !status.consuming() {
            self.stop_sessions(peer_id, Side::Consumer, out);
        }

        let status = PeerStatus {
            peer_id: Some(peer_id.to_string()),
            ..status
        };
        if status.listening() {
            self.listeners.insert(peer_id.to_string());
        } else {
            self.listeners.remove(peer_id);
        }
        info!(peer_id, roles = %census::roles_text(&status.roles), "registered");
        self.broadcast(&tenant, &status, out);
        announce(out, peer_id, &tenant, status.clone(), StatusChange::Changed);
        if let Some(peer) = self.peers.get_mut(peer_id) {
            peer.status = status;
        }
        Ok(())
    }

    fn filter_peers(&self, filter: fn(&PeerStatus) -> bool) -> Vec<PeerInfo> {
        self.peers
            .iter()
            .filter(|(_, p)| filter(&p.status))
            .map(|(id, p)| PeerInfo {
                id: id.clone(),
                meta: p.status.meta.clone(),
            })
            .collect()
    }
}

fn deliver(out: &mut Outbox, to: &str, msg: ServerMessage) {
    out.push(Effect::Deliver(to.to_string(), msg));
}

/// Tells the other nodes of a local peer's `change`.
fn announce(
    out: &mut Outbox,
    peer_id: &str,
    tenant: &str,
    status: PeerStatus,
    change: StatusChange,
) {
    let body = PeerStatusBody::new(peer_id.to_string(), status, change).of_tenant(tenant);
    out.push(Effect::Announce(body));
}

/// What listeners hear of a peer that is gone: no roles, its last meta.
fn gone(peer_id: &str, meta: Option<serde_json::Value>) -> PeerStatus {
    PeerStatus {
        roles: vec![],
        meta,
        peer_id: Some(peer_id.to_string()),
    }
}

type Res = Result<(), (ErrorCode, String)>;

fn not_found(id: &str) -> (ErrorCode, String) {
    (
        ErrorCode::UnknownPeer,
        format!("Peer with ID '{id}' not found"),
    )
}
