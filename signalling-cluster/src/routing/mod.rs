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
//! | `mod.rs` | the types; upstream semantics for local peers: join, status, sessions, relay, leave |
//! | `replica.rs` | the other nodes' peers: their announcements, what we announce again |
//! | `cross_node.rs` | sessions with a member on another node: its start, relays and end arriving |
//! | `suspension.rs` | a dead node's peers: ended, or suspended (messages held) until adopted or expired |
//! | `moving.rs` | a live peer moving to another node (resume there), with the fences that keep order |
//! | `access.rs` | what a peer's grants let it do: roles, sessions, what lists and presence show, tenants |
//! | `census.rs` | what the metrics read of the router: peers by protocol and role, sessions, relays |

mod access;
mod census;
mod cross_node;
mod moving;
mod placement;
pub use census::{Census, PeerRow};
pub use placement::{Load, Unplaced};
mod replica;
mod suspension;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use proto::envelope::{
    NodeMessage, PeerStatusBody, RelayBody, SessionEndBody, SessionStartBody, StatusChange,
};
use proto::{
    ClientMessage, EndReason, ErrorCode, PeerId, PeerInfo, PeerMessage, PeerStatus,
    ProtocolVersion, ServerMessage, SessionId,
};
use tracing::{debug, info, warn};

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
            ClientMessage::StartSession { peer_id, offer } => {
                self.start_session(from, &peer_id, offer, out)
            }
            ClientMessage::PlaceSession { stream, offer } => self
                .place(from, &stream)
                .and_then(|peer_id| self.start_session(from, &peer_id, offer, out)),
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

    /// Ends a session for both members: a local member gets `endSession`; a remote member's
    /// node is told if `tell_node`.
    pub fn abort_session(&mut self, session_id: &str, tell_node: bool, out: &mut Outbox) {
        self.abort_session_for(session_id, tell_node, None, out)
    }

    /// [`Router::abort_session`], telling v2 members why (`reason`).
    pub fn abort_session_for(
        &mut self,
        session_id: &str,
        tell_node: bool,
        reason: Option<EndReason>,
        out: &mut Outbox,
    ) {
        let Some(session) = self.sessions.get(session_id) else {
            return;
        };
        // Ending "by" a remote member notifies the local one; a local pair is notified both.
        let (by, remote) = match (&session.producer_node, &session.consumer_node) {
            (Some(n), _) => (
                session.producer.clone(),
                Some((n.clone(), session.producer.clone())),
            ),
            (_, Some(n)) => (
                session.consumer.clone(),
                Some((n.clone(), session.consumer.clone())),
            ),
            (None, None) => (session.producer.clone(), None),
        };
        if remote.is_none() {
            deliver(
                out,
                &by,
                ServerMessage::EndSession {
                    session_id: session_id.to_string(),
                    reason,
                },
            );
        }
        self.close_session(&by, session_id, reason, out);
        if let (true, Some((node, to))) = (tell_node, remote) {
            self.send_node(
                node,
                NodeMessage::SessionEnd(SessionEndBody {
                    session_id: session_id.to_string(),
                    to,
                    reason,
                }),
                out,
            );
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

    /// Ends the sessions a peer holds on `side`.
    fn stop_sessions(&mut self, peer_id: &str, side: Side, out: &mut Outbox) {
        let Some(peer) = self.peers.get_mut(peer_id) else {
            return;
        };
        let sessions = std::mem::take(peer.sessions(side));
        for session_id in &sessions {
            self.close_session(peer_id, session_id, None, out);
        }
    }

    fn start_session(
        &mut self,
        from: &str,
        to: &str,
        offer: Option<String>,
        out: &mut Outbox,
    ) -> Res {
        let from_peer = self.peers.get(from).ok_or_else(|| not_found(from))?;
        let to_peer = self.peers.get(to).ok_or_else(|| not_found(to))?;
        access::may_start(from_peer, to_peer, to)?;
        let ((producer, producer_node), (consumer, consumer_node)) = if to_peer.status.producing() {
            ((to, to_peer.node.clone()), (from, from_peer.node.clone()))
        } else if to_peer.status.consuming() {
            ((from, from_peer.node.clone()), (to, to_peer.node.clone()))
        } else {
            return Err((
                ErrorCode::InvalidSessionTarget,
                format!(
                    "Missing a producer or a consumer: id {from} roles {:?}, id {to} roles {:?}",
                    from_peer.status.roles, to_peer.status.roles
                ),
            ));
        };

        let other = if producer == from { consumer } else { producer };
        if self.hold_full(other) {
            return Err((
                ErrorCode::Internal,
                format!("Peer {other} is suspended and cannot take more messages"),
            ));
        }
        let session_id = uuid::Uuid::new_v4().to_string();
        let session = Session {
            producer: producer.to_string(),
            consumer: consumer.to_string(),
            producer_node,
            consumer_node,
        };
        self.register_session(&session_id, &session);
        info!(session_id, producer, consumer, "started a session");
        // The remote member's node learns of the session, and tells its peer, from one message.
        let remote = session
            .producer_node
            .clone()
            .or(session.consumer_node.clone());
        let start = SessionStartBody {
            session_id,
            producer: producer.to_string(),
            consumer: consumer.to_string(),
            offer,
        };
        if let Some(node) = remote {
            // (checked above: a suspended peer's hold has room)
            self.send_node(node, NodeMessage::SessionStart(start.clone()), out);
        }
        // The consumer hears first, as upstream does.
        for side in [Side::Consumer, Side::Producer] {
            let (member, node) = session.member(side);
            if node.is_none() {
                deliver(out, member, session_started(side, start.clone()));
            }
        }
        Ok(())
    }

    /// Records a session and links it to its local member(s).
    fn register_session(&mut self, session_id: &str, session: &Session) {
        self.sessions
            .insert(session_id.to_string(), session.clone());
        for side in [Side::Producer, Side::Consumer] {
            if let (member, None) = session.member(side) {
                if let Some(p) = self.peers.get_mut(member) {
                    p.sessions(side).insert(session_id.to_string());
                }
            }
        }
    }

    fn relay(&mut self, from: &str, msg: PeerMessage, out: &mut Outbox) -> Res {
        let Some(session) = self.sessions.get(&msg.session_id) else {
            // Upstream ignores these: late ICE candidates after an endSession are normal, and
            // stock webrtcsink treats any `error` as fatal. v2 clients are told.
            warn!(
                peer_id = from,
                session_id = msg.session_id,
                "peer message for unknown session"
            );
            return self.v2_only_error(from, ErrorCode::UnknownSession, &msg.session_id);
        };
        // Stricter than upstream: only the two members may send into a session.
        let Some((to, to_node)) = session.other(from).filter(|_| session.is_local(from)) else {
            return Err(not_member(from, &msg.session_id));
        };
        if msg.payload.is_offer() && from == session.consumer {
            return Err((
                ErrorCode::OfferNotAllowed,
                format!(
                    r#"cannot forward offer from "{from}" to "{}" as "{from}" is not the producer"#,
                    session.producer
                ),
            ));
        }
        let (to, to_node) = (to.clone(), to_node.clone());
        let counts = &mut self.relayed[to_node.is_some() as usize];
        counts.0 += 1;
        counts.1 += msg.payload.len() as u64;
        match to_node {
            None => {
                let session_id = msg.session_id.clone();
                self.deliver_in(&session_id, &to, ServerMessage::Peer(msg), out);
            }
            Some(node) => {
                let session_id = msg.session_id.clone();
                let relay = NodeMessage::Relay(RelayBody::new(to, msg));
                if !self.send_node(node, relay, out) {
                    // Rather than lose a message for the suspended peer: the session ends.
                    warn!(
                        peer_id = from,
                        session_id, "too much held for a suspended peer: ending the session"
                    );
                    self.abort_session(&session_id, true, out);
                }
            }
        }
        Ok(())
    }

    fn end_session(&mut self, from: &str, session_id: &str, out: &mut Outbox) -> Res {
        let Some(session) = self.sessions.get(session_id) else {
            warn!(peer_id = from, session_id, "end of unknown session");
            return self.v2_only_error(from, ErrorCode::UnknownSession, session_id);
        };
        // Stricter than upstream, which ends any session whose id it is given.
        if !session.is_local(from) {
            return Err(not_member(from, session_id));
        }
        self.close_session(from, session_id, None, out);
        Ok(())
    }

    /// Removes a session ended by member `by` and tells the other member (here or remote), and
    /// why if `reason`.
    fn close_session(
        &mut self,
        by: &str,
        session_id: &str,
        reason: Option<EndReason>,
        out: &mut Outbox,
    ) {
        let Some(session) = self.sessions.remove(session_id) else {
            return;
        };
        for side in [Side::Producer, Side::Consumer] {
            if let (member, None) = session.member(side) {
                if let Some(p) = self.peers.get_mut(member) {
                    p.sessions(side).remove(session_id);
                }
            }
        }
        info!(session_id, by, "session ended");
        self.note_ended_for_suspended(session_id, &session);
        let Some((other, other_node)) = session.other(by) else {
            return;
        };
        let end = ServerMessage::EndSession {
            session_id: session_id.to_string(),
            reason,
        };
        match other_node {
            None => {
                let other = other.clone();
                self.deliver_in(session_id, &other, end, out);
                self.release_fence(session_id, out);
            }
            Some(node) => {
                self.send_node(
                    node.clone(),
                    NodeMessage::SessionEnd(SessionEndBody {
                        session_id: session_id.to_string(),
                        to: other.clone(),
                        reason,
                    }),
                    out,
                );
            }
        }
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

    fn v2_only_error(&self, peer_id: &str, code: ErrorCode, session_id: &str) -> Res {
        if self.version(peer_id) >= ProtocolVersion::V2 {
            Err((code, format!("Unknown session {session_id}")))
        } else {
            Ok(())
        }
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

/// What a member on `side` is told of a session that started: the producer is asked for an
/// offer (`startSession`), the consumer told it started (`sessionStarted`).
fn session_started(side: Side, body: SessionStartBody) -> ServerMessage {
    match side {
        Side::Producer => ServerMessage::StartSession {
            peer_id: body.consumer,
            session_id: body.session_id,
            offer: body.offer,
        },
        Side::Consumer => ServerMessage::SessionStarted {
            peer_id: body.producer,
            session_id: body.session_id,
        },
    }
}

type Res = Result<(), (ErrorCode, String)>;

fn not_found(id: &str) -> (ErrorCode, String) {
    (
        ErrorCode::UnknownPeer,
        format!("Peer with ID '{id}' not found"),
    )
}

fn not_member(id: &str, session_id: &str) -> (ErrorCode, String) {
    (
        ErrorCode::NotSessionMember,
        format!("Peer {id} is not part of {session_id}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{PeerRole, RelayPayload, SdpType};

    fn status(roles: &[PeerRole]) -> ClientMessage {
        ClientMessage::SetPeerStatus(PeerStatus {
            roles: roles.to_vec(),
            meta: None,
            peer_id: None,
        })
    }

    fn router(peers: &[&str]) -> Router {
        let mut r = Router::new();
        for p in peers {
            r.join(p, ProtocolVersion::V1, &mut Outbox::new());
        }
        r
    }

    fn delivered(out: &Outbox) -> Vec<(&str, &ServerMessage)> {
        out.iter()
            .flat_map(|e| match e {
                Effect::Deliver(to, m) => vec![(to.as_str(), m)],
                Effect::Broadcast(to, m) => to.iter().map(|t| (t.as_str(), m)).collect(),
                _ => vec![],
            })
            .collect()
    }

    #[test]
    fn hijacker_cannot_end_or_inject_into_a_session() {
        let mut r = router(&["p", "c", "x"]);
        let mut out = Outbox::new();
        r.handle("p", status(&[PeerRole::Producer]), &mut out);
        r.handle(
            "c",
            ClientMessage::StartSession {
                peer_id: "p".into(),
                offer: None,
            },
            &mut out,
        );
        let sid = r.sessions.keys().next().unwrap().clone();
        out.clear();
        r.handle(
            "x",
            ClientMessage::EndSession {
                session_id: sid.clone(),
            },
            &mut out,
        );
        r.handle(
            "x",
            ClientMessage::Peer(PeerMessage {
                session_id: sid.clone(),
                payload: RelayPayload::from_sdp(SdpType::Answer, "v=0"),
            }),
            &mut out,
        );
        assert_eq!(r.session_count(), 1);
        let d = delivered(&out);
        assert_eq!(d.len(), 2);
        assert!(d.iter().all(|(to, m)| *to == "x" && m.kind() == "error"));
    }

    #[test]
    fn leaving_producer_ends_its_sessions_before_listeners_hear() {
        let mut r = router(&["p", "c", "l"]);
        let mut out = Outbox::new();
        r.handle("l", status(&[PeerRole::Listener]), &mut out);
        r.handle("p", status(&[PeerRole::Producer]), &mut out);
        r.handle(
            "c",
            ClientMessage::StartSession {
                peer_id: "p".into(),
                offer: None,
            },
            &mut out,
        );
        out.clear();
        r.leave("p", &mut out);
        let d = delivered(&out);
        assert_eq!(d[0].0, "c");
        assert_eq!(d[0].1.kind(), "endSession");
        assert_eq!(d[1].0, "l");
        assert!(matches!(d[1].1, ServerMessage::PeerStatusChanged(s) if s.roles.is_empty()));
        assert!(
            matches!(out.last(), Some(Effect::Announce(b)) if b.change() == StatusChange::Left)
        );
        assert_eq!(r.session_count(), 0);
    }

    /// What the cluster bus does with another node's message, for the kinds these tests send.
    fn remote(r: &mut Router, from: &str, msg: NodeMessage, out: &mut Outbox) {
        match msg {
            NodeMessage::PeerStatus(b) => r.remote_status(from, b, out),
            NodeMessage::SessionStart(b) => r.remote_session_start(from, b, out),
            NodeMessage::SessionEnd(b) => r.remote_session_end(from, b, out),
            NodeMessage::Relay(b) => r.remote_relay(from, b, out),
            NodeMessage::AdoptAck(b) => r.import_adopted(from, b),
            other => panic!("not a kind of these tests: {other:?}"),
        }
    }

    /// Routers wired by hand: returns what the receiving routers produced.
    fn exchange(from: &str, out: Outbox, nodes: &mut [(&str, &mut Router)]) -> Outbox {
        let mut local = Outbox::new();
        for e in out {
            match e {
                Effect::ToNode(node, msg) => {
                    let (_, r) = nodes.iter_mut().find(|(n, _)| *n == node).unwrap();
                    let mut o = Outbox::new();
                    remote(r, from, msg, &mut o);
                    local.extend(o);
                }
                Effect::Announce(body) => {
                    for (n, r) in nodes.iter_mut() {
                        if *n != from {
                            let mut o = Outbox::new();
                            remote(r, from, NodeMessage::PeerStatus(body.clone()), &mut o);
                            local.extend(o);
                        }
                    }
                }
                Effect::Deliver(..) | Effect::Broadcast(..) => {} // the sender's own peers
            }
        }
        local
    }

    #[test]
    fn a_session_across_two_routers_relays_and_ends_on_node_down() {
        let (mut a, mut b) = (router(&["c"]), router(&["p"]));
        let mut out = Outbox::new();
        b.handle("p", status(&[PeerRole::Producer]), &mut out);
        exchange("b", out, &mut [("a", &mut a)]);
        let mut out = Outbox::new();
        a.handle(
            "c",
            ClientMessage::StartSession {
                peer_id: "p".into(),
                offer: None,
            },
            &mut out,
        );
        let at_b = exchange("a", out, &mut [("b", &mut b)]);
        assert!(
            matches!(&at_b[..], [Effect::Deliver(p, ServerMessage::StartSession { .. })] if p == "p")
        );
        let sid = b.sessions.keys().next().unwrap().clone();

        let mut out = Outbox::new();
        b.handle(
            "p",
            ClientMessage::Peer(PeerMessage {
                session_id: sid.clone(),
                payload: RelayPayload::from_ice("candidate:1", 0),
            }),
            &mut out,
        );
        let at_a = exchange("b", out, &mut [("a", &mut a)]);
        assert!(matches!(&at_a[..], [Effect::Deliver(c, ServerMessage::Peer(_))] if c == "c"));

        let mut out = Outbox::new();
        a.node_down("b", &[], &mut out);
        assert!(
            matches!(&out[..], [Effect::Deliver(c, ServerMessage::EndSession { .. })] if c == "c")
        );
        assert_eq!(a.session_count(), 0);
    }

    /// Producer "p" on node "a" (dead soon) in a session with consumer "c" of router `b`.
    fn session_with_remote_producer() -> (Router, SessionId) {
        let mut b = router(&["c", "l"]);
        let mut out = Outbox::new();
        b.handle("l", status(&[PeerRole::Listener]), &mut out);
        b.remote_status(
            "a",
            PeerStatusBody::new(
                "p".into(),
                PeerStatus {
                    roles: vec![PeerRole::Producer],
                    meta: None,
                    peer_id: Some("p".into()),
                },
                StatusChange::Changed,
            ),
            &mut out,
        );
        b.handle(
            "c",
            ClientMessage::StartSession {
                peer_id: "p".into(),
                offer: None,
            },
            &mut out,
        );
        let sid = b.sessions.keys().next().unwrap().clone();
        (b, sid)
    }

    fn ice(sid: &str, candidate: &str) -> ClientMessage {
        ClientMessage::Peer(PeerMessage {
            session_id: sid.to_string(),
            payload: RelayPayload::from_ice(candidate, 0),
        })
    }

    #[test]
    fn a_suspended_peer_keeps_its_sessions_and_what_is_sent_to_it_is_held() {
        let (mut b, sid) = session_with_remote_producer();
        let mut out = Outbox::new();
        b.node_down("a", &["p".to_string()], &mut out);
        assert!(out.is_empty(), "nobody hears of a suspension: {out:?}");
        assert_eq!(b.session_count(), 1);
        assert_eq!(b.producers().len(), 1);
        assert!(b.remote_nodes().is_empty());
        b.handle("c", ice(&sid, "x1"), &mut out);
        assert!(out.is_empty(), "held, not sent to the dead node: {out:?}");

        // adopted on node "n": the session and the held message go there, in that order
        b.adopted("p", "n", "a", &mut out);
        match &out[..] {
            [Effect::ToNode(n1, NodeMessage::AdoptAck(ack)), Effect::ToNode(n2, NodeMessage::Relay(r))] =>
            {
                assert_eq!((n1.as_str(), n2.as_str()), ("n", "n"));
                assert_eq!(ack.sessions.len(), 1);
                assert_eq!(ack.sessions[0].session_id, sid);
                assert_eq!(r.to, "p");
            }
            other => panic!("{other:?}"),
        }
        out.clear();
        b.handle("c", ice(&sid, "x2"), &mut out);
        assert!(
            matches!(&out[..], [Effect::ToNode(n, NodeMessage::Relay(_))] if n == "n"),
            "{out:?}"
        );
    }

    #[test]
    fn a_session_ended_during_the_suspension_is_ended_for_the_adopter_too() {
        let (mut b, sid) = session_with_remote_producer();
        let mut out = Outbox::new();
        b.node_down("a", &["p".to_string()], &mut out);
        b.handle("c", ice(&sid, "x1"), &mut out);
        b.handle(
            "c",
            ClientMessage::EndSession {
                session_id: sid.clone(),
            },
            &mut out,
        );
        assert!(out.is_empty(), "{out:?}");
        b.adopted("p", "n", "a", &mut out);
        let kinds: Vec<&str> = out
            .iter()
            .map(|e| match e {
                Effect::ToNode(_, m) => m.kind(),
                _ => "other",
            })
            .collect();
        assert_eq!(kinds, ["adoptAck", "relay", "sessionEnd"]);
        assert!(
            matches!(&out[0], Effect::ToNode(_, NodeMessage::AdoptAck(a)) if a.sessions.len() == 1)
        );

        // the adopter learns the session, gets the relay, then its end
        let mut n = Router::new();
        let mut o = Outbox::new();
        n.adopt("p", ProtocolVersion::V2, PeerStatus::default(), &mut o);
        for e in out {
            if let Effect::ToNode(_, m) = e {
                remote(&mut n, "b", m, &mut o);
            }
        }
        let d = delivered(&o);
        assert_eq!(
            d.iter().map(|(_, m)| m.kind()).collect::<Vec<_>>(),
            ["peer", "endSession"]
        );
        assert_eq!(n.session_count(), 0);
    }

    #[test]
    fn a_suspended_peer_not_adopted_expires_like_a_dead_nodes_peer() {
        let (mut b, sid) = session_with_remote_producer();
        let mut out = Outbox::new();
        b.node_down("a", &["p".to_string()], &mut out);
        assert!(b.expire("p", &mut out));
        let d = delivered(&out);
        assert_eq!(
            d[0],
            (
                "c",
                &ServerMessage::EndSession {
                    session_id: sid,
                    reason: None
                }
            )
        );
        assert!(matches!(d[1], ("l", ServerMessage::PeerStatusChanged(s)) if s.roles.is_empty()));
        assert!(!out.iter().any(|e| matches!(e, Effect::ToNode(..))));
        assert_eq!((b.session_count(), b.producers().len()), (0, 0));
        assert!(!b.expire("p", &mut out), "only once");
    }

    #[test]
    fn the_hold_is_bounded_and_a_full_one_ends_the_session() {
        let (mut b, sid) = session_with_remote_producer();
        b.hold_limit = 3;
        let mut out = Outbox::new();
        b.node_down("a", &["p".to_string()], &mut out);
        for i in 0..3 {
            b.handle("c", ice(&sid, &format!("x{i}")), &mut out);
        }
        assert!(out.is_empty());
        b.handle("c", ice(&sid, "too-much"), &mut out);
        let d = delivered(&out);
        assert!(
            matches!(d[..], [("c", ServerMessage::EndSession { .. })]),
            "{out:?}"
        );
        assert_eq!(b.session_count(), 0);
    }

    #[test]
    fn peers_of_a_dead_node_without_suspension_leave_at_once() {
        let (mut b, _) = session_with_remote_producer();
        let mut out = Outbox::new();
        b.node_down("a", &[], &mut out);
        let kinds: Vec<_> = delivered(&out)
            .iter()
            .map(|(to, m)| (*to, m.kind()))
            .collect();
        assert_eq!(kinds, [("c", "endSession"), ("l", "peerStatusChanged")]);
        assert_eq!(b.producers().len(), 0);
    }
}
