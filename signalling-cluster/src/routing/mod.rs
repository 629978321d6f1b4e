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

use std::collections::{HashMap, HashSet};

use proto::envelope::{
    AdoptAckBody, AdoptedSession, NodeMessage, PeerStatusBody, RelayBody, SessionEndBody,
    SessionMovedBody, SessionRecord, SessionStartBody, StatusChange,
};
use proto::{
    ClientMessage, ErrorCode, PeerId, PeerInfo, PeerMessage, PeerStatus, ProtocolVersion,
    RelayPayload, ServerMessage, SessionId,
};
use tracing::{debug, info, warn};

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

#[derive(Debug)]
struct Peer {
    status: PeerStatus,
    /// `None`: connected here.
    node: Option<NodeId>,
    version: ProtocolVersion,
    producer_sessions: HashSet<SessionId>,
    consumer_sessions: HashSet<SessionId>,
    /// A peer of a dead node waiting to be resumed elsewhere (replica entries only).
    suspended: Option<Suspension>,
}

/// What this node keeps for a suspended peer until a node adopts it or it expires.
#[derive(Debug, Default)]
struct Suspension {
    /// The node that was declared dead.
    node: NodeId,
    /// What local peers addressed to it meanwhile, in order (bounded by the hold limit, except
    /// `sessionEnd`s, at most one per session).
    held: Vec<NodeMessage>,
    /// Sessions with it that ended meanwhile: the adopter must know them to deliver the held
    /// `sessionEnd`s.
    ended: Vec<AdoptedSession>,
}

/// Messages held for one suspended peer when the router is given no limit.
const DEFAULT_HOLD_LIMIT: usize = 1024;

impl Peer {
    fn new(node: Option<NodeId>, version: ProtocolVersion, status: PeerStatus) -> Self {
        Peer {
            status,
            node,
            version,
            producer_sessions: HashSet::new(),
            consumer_sessions: HashSet::new(),
            suspended: None,
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
    /// The other member and its node.
    fn other(&self, id: &str) -> Option<(&PeerId, &Option<NodeId>)> {
        if self.producer == id {
            Some((&self.consumer, &self.consumer_node))
        } else if self.consumer == id {
            Some((&self.producer, &self.producer_node))
        } else {
            None
        }
    }

    fn is_local(&self, id: &str) -> bool {
        (self.producer == id && self.producer_node.is_none())
            || (self.consumer == id && self.consumer_node.is_none())
    }
}

/// All peers known to this node and the sessions it takes part in.
#[derive(Debug, Default)]
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
    /// Most messages held for one suspended peer (0: [`DEFAULT_HOLD_LIMIT`]).
    hold_limit: usize,
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

    /// The local peers, to announce again after the cluster store was lost.
    pub fn local_statuses(&self) -> Vec<PeerStatusBody> {
        self.peers
            .iter()
            .filter(|(_, p)| p.node.is_none())
            .map(|(id, p)| {
                // registration stores the peer id in the status; unregistered peers stay silent
                let change = match p.status.peer_id {
                    None => StatusChange::Joined,
                    Some(_) => StatusChange::Changed,
                };
                PeerStatusBody::new(id.clone(), p.status.clone(), change)
            })
            .collect()
    }

    /// A peer connected here (upstream: `NewPeer`). Its `welcome` is sent by the connection.
    pub fn join(&mut self, peer_id: &str, version: ProtocolVersion, out: &mut Outbox) {
        self.peers.insert(
            peer_id.to_string(),
            Peer::new(None, version, PeerStatus::default()),
        );
        out.push(Effect::Announce(PeerStatusBody::new(
            peer_id.to_string(),
            PeerStatus::default(),
            StatusChange::Joined,
        )));
    }

    /// One message from a local peer.
    pub fn handle(&mut self, from: &str, msg: ClientMessage, out: &mut Outbox) {
        let result = match msg {
            ClientMessage::SetPeerStatus(status) => self.set_peer_status(from, status, out),
            ClientMessage::StartSession { peer_id, offer } => {
                self.start_session(from, &peer_id, offer, out)
            }
            ClientMessage::EndSession { session_id } => self.end_session(from, &session_id, out),
            ClientMessage::Peer(msg) => self.relay(from, msg, out),
            ClientMessage::List => {
                let producers = self.filter_peers(PeerStatus::producing);
                deliver(out, from, ServerMessage::List { producers });
                Ok(())
            }
            ClientMessage::ListConsumers => {
                let consumers = self.filter_peers(PeerStatus::consuming);
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
        let Some(peer) = self.peers.remove(peer_id) else {
            return;
        };
        info!(peer_id, "removing peer");
        self.listeners.remove(peer_id);
        self.moved_in.remove(peer_id);
        for session_id in peer.producer_sessions.iter().chain(&peer.consumer_sessions) {
            self.close_session(peer_id, session_id, out);
        }
        // Upstream tells listeners about every departure, registered or not.
        let gone = PeerStatus {
            roles: vec![],
            meta: peer.status.meta,
            peer_id: Some(peer_id.to_string()),
        };
        self.broadcast(&gone, out);
        out.push(Effect::Announce(PeerStatusBody::new(
            peer_id.to_string(),
            gone,
            StatusChange::Left,
        )));
    }

    /// A message from another node.
    pub fn remote(&mut self, from_node: &str, msg: NodeMessage, out: &mut Outbox) {
        match msg {
            NodeMessage::PeerStatus(body) => self.remote_status(from_node, body, out),
            NodeMessage::SessionStart(body) => self.remote_session_start(from_node, body, out),
            NodeMessage::SessionEnd(body) => self.remote_session_end(from_node, body, out),
            NodeMessage::Relay(body) => self.remote_relay(from_node, body, out),
            NodeMessage::NodeDown(body) => self.node_down(&body.node, &body.suspended, out),
            NodeMessage::SessionAdopt(body) => {
                self.adopted(&body.peer_id, &body.node, &body.old_node, out)
            }
            NodeMessage::AdoptAck(body) => self.import_adopted(from_node, body),
            NodeMessage::SuspendExpired(body) => {
                self.expire(&body.peer_id, out);
            }
            NodeMessage::SessionMoved(body) => {
                // A member moved to body.node: switch, then confirm through its old node
                // (after everything we sent there).
                if let Some(s) = self.sessions.get_mut(&body.session_id) {
                    if s.producer == body.peer_id {
                        s.producer_node = Some(body.node.clone());
                    } else if s.consumer == body.peer_id {
                        s.consumer_node = Some(body.node.clone());
                    }
                }
                out.push(Effect::ToNode(
                    body.old_node.clone(),
                    NodeMessage::MoveAck(body),
                ));
            }
            NodeMessage::MoveAck(body) => {
                // Everything the acking node sent us before is forwarded already.
                out.push(Effect::ToNode(
                    body.node.clone(),
                    NodeMessage::MoveFence(body),
                ));
            }
            NodeMessage::MoveFence(body) => self.release_fence(&body.session_id, out),
            NodeMessage::Barrier(_) | NodeMessage::ResumeClaim(_) | NodeMessage::ResumeGrant(_) => {
            }
        }
    }

    /// Another node is gone: its peers leave, the sessions with them end; except the peers in
    /// `suspend`, which stay (listed, sessions open, messages to them held) until a node adopts
    /// them ([`Router::adopted`]) or they expire ([`Router::expire`]).
    pub fn node_down(&mut self, node: &str, suspend: &[PeerId], out: &mut Outbox) {
        for peer_id in suspend {
            if let Some(p) = self.peers.get_mut(peer_id) {
                if p.node.as_deref() == Some(node) && p.suspended.is_none() {
                    info!(peer_id, node, "peer of a dead node suspended for resume");
                    p.suspended = Some(Suspension {
                        node: node.to_string(),
                        ..Suspension::default()
                    });
                }
            }
        }
        self.end_sessions_with(node, false, out);
        let gone: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.node.as_deref() == Some(node) && p.suspended.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        info!(node, peers = gone.len(), "node down");
        for peer_id in gone {
            if let Some(peer) = self.peers.remove(&peer_id) {
                let status = PeerStatus {
                    roles: vec![],
                    meta: peer.status.meta,
                    peer_id: Some(peer_id),
                };
                self.broadcast(&status, out);
            }
        }
    }

    /// Ends every session with a member on `node` (suspended members excepted): local members
    /// get `endSession`, and if `tell_node`, the node too (best effort: it may be unreachable).
    pub fn end_sessions_with(&mut self, node: &str, tell_node: bool, out: &mut Outbox) {
        let ended: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| {
                (s.producer_node.as_deref() == Some(node) && !self.is_suspended(&s.producer))
                    || (s.consumer_node.as_deref() == Some(node) && !self.is_suspended(&s.consumer))
            })
            .map(|(id, _)| id.clone())
            .collect();
        for session_id in ended {
            self.abort_session(&session_id, tell_node, out);
        }
    }

    /// Ends a session for both members: a local member gets `endSession`; a remote member's
    /// node is told if `tell_node`.
    pub fn abort_session(&mut self, session_id: &str, tell_node: bool, out: &mut Outbox) {
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
                },
            );
        }
        self.close_session(&by, session_id, out);
        if let (true, Some((node, to))) = (tell_node, remote) {
            self.send_node(
                node,
                NodeMessage::SessionEnd(SessionEndBody {
                    session_id: session_id.to_string(),
                    to,
                }),
                out,
            );
        }
    }

    /// Whether handling `msg` needs another node (and so fails while the cluster is down).
    pub fn crosses_nodes(&self, from: &str, msg: &ClientMessage) -> bool {
        match msg {
            ClientMessage::StartSession { peer_id, .. } => {
                self.peers.get(peer_id).is_some_and(|p| p.node.is_some())
            }
            ClientMessage::Peer(m) => self
                .sessions
                .get(&m.session_id)
                .and_then(|s| s.other(from))
                .is_some_and(|(_, node)| node.is_some()),
            _ => false,
        }
    }

    /// Nodes that have peers in the replica or members in sessions here (suspended peers,
    /// whose node is dead, do not count: they expire on their own).
    pub fn remote_nodes(&self) -> Vec<NodeId> {
        // Runs every liveness tick over every peer and session: the few distinct nodes are
        // collected by reference and cloned once each.
        let members =
            self.peers
                .iter()
                .map(|(id, p)| (&p.node, id))
                .chain(self.sessions.values().flat_map(|s| {
                    [
                        (&s.producer_node, &s.producer),
                        (&s.consumer_node, &s.consumer),
                    ]
                }));
        let mut nodes: Vec<&NodeId> = Vec::new();
        for (node, member) in members {
            if let Some(node) = node {
                if !nodes.contains(&node) && !self.is_suspended(member) {
                    nodes.push(node);
                }
            }
        }
        nodes.into_iter().cloned().collect()
    }

    /// Whether `peer_id` is a suspended peer of a dead node.
    pub fn is_suspended(&self, peer_id: &str) -> bool {
        self.peers
            .get(peer_id)
            .is_some_and(|p| p.suspended.is_some())
    }

    /// The status of a peer connected here.
    pub fn local_status(&self, peer_id: &str) -> Option<PeerStatus> {
        self.peers
            .get(peer_id)
            .filter(|p| p.node.is_none())
            .map(|p| p.status.clone())
    }

    /// Sends `msg` to `node`, or holds it if it is for a suspended peer. Returns false if the
    /// hold is full (then nothing is sent: the caller ends the session). `sessionEnd` is always
    /// held: at most one per session.
    fn send_node(&mut self, node: NodeId, msg: NodeMessage, out: &mut Outbox) -> bool {
        let limit = match self.hold_limit {
            0 => DEFAULT_HOLD_LIMIT,
            n => n,
        };
        let target = match &msg {
            NodeMessage::Relay(b) => Some(b.to.as_str()),
            NodeMessage::SessionEnd(b) => Some(b.to.as_str()),
            NodeMessage::SessionStart(b) if self.is_suspended(&b.producer) => {
                Some(b.producer.as_str())
            }
            NodeMessage::SessionStart(b) => Some(b.consumer.as_str()),
            _ => None,
        };
        let hold = target
            .and_then(|t| self.peers.get_mut(t))
            .and_then(|p| p.suspended.as_mut());
        match hold {
            Some(s) if s.held.len() >= limit && !matches!(msg, NodeMessage::SessionEnd(_)) => false,
            Some(s) => {
                debug!(
                    kind = msg.kind(),
                    held = s.held.len(),
                    "holding for a suspended peer"
                );
                s.held.push(msg);
                true
            }
            None => {
                out.push(Effect::ToNode(node, msg));
                true
            }
        }
    }

    /// Whether the hold of suspended peer `peer_id` is full.
    fn hold_full(&self, peer_id: &str) -> bool {
        let limit = match self.hold_limit {
            0 => DEFAULT_HOLD_LIMIT,
            n => n,
        };
        self.peers
            .get(peer_id)
            .and_then(|p| p.suspended.as_ref())
            .is_some_and(|s| s.held.len() >= limit)
    }

    /// A suspended peer resumed here (its node died): it becomes local, its sessions with
    /// local peers too, and what local peers sent it meanwhile is delivered, in order. Its
    /// sessions with peers of other nodes come with their [`NodeMessage::AdoptAck`]s.
    pub fn adopt(
        &mut self,
        peer_id: &str,
        version: ProtocolVersion,
        status: PeerStatus,
        out: &mut Outbox,
    ) {
        let suspension = self
            .peers
            .remove(peer_id)
            .and_then(|p| p.suspended)
            .unwrap_or_default();
        let mut peer = Peer::new(None, version, status.clone());
        if status.listening() {
            self.listeners.insert(peer_id.to_string());
        }
        self.moved_out.remove(peer_id);
        for (session_id, s) in self.sessions.iter_mut() {
            if s.producer == peer_id {
                s.producer_node = None;
                peer.producer_sessions.insert(session_id.clone());
            } else if s.consumer == peer_id {
                s.consumer_node = None;
                peer.consumer_sessions.insert(session_id.clone());
            }
        }
        self.peers.insert(peer_id.to_string(), peer);
        info!(
            peer_id,
            held = suspension.held.len(),
            "adopted a suspended peer"
        );
        for msg in suspension.held {
            self.deliver_held(peer_id, msg, out);
        }
        out.push(Effect::Announce(PeerStatusBody::new(
            peer_id.to_string(),
            status,
            StatusChange::Moved,
        )));
    }

    /// Delivers to adopted local peer `peer_id` a message held for it as for its old node.
    fn deliver_held(&mut self, peer_id: &str, msg: NodeMessage, out: &mut Outbox) {
        match msg {
            NodeMessage::Relay(body) => {
                let payload = match body.key.as_str() {
                    "sdp" => RelayPayload::sdp(body.payload),
                    _ => Ok(RelayPayload::ice_checked(body.payload)),
                };
                match payload {
                    Ok(payload) => deliver(
                        out,
                        peer_id,
                        ServerMessage::Peer(PeerMessage {
                            session_id: body.session_id,
                            payload,
                        }),
                    ),
                    Err(e) => warn!(peer_id, "invalid held payload: {e}"),
                }
            }
            NodeMessage::SessionStart(body) if body.producer == peer_id => deliver(
                out,
                peer_id,
                ServerMessage::StartSession {
                    peer_id: body.consumer,
                    session_id: body.session_id,
                    offer: body.offer,
                },
            ),
            NodeMessage::SessionStart(body) => deliver(
                out,
                peer_id,
                ServerMessage::SessionStarted {
                    peer_id: body.producer,
                    session_id: body.session_id,
                },
            ),
            NodeMessage::SessionEnd(body) => deliver(
                out,
                peer_id,
                ServerMessage::EndSession {
                    session_id: body.session_id,
                },
            ),
            other => debug!(kind = other.kind(), "nothing to deliver of a held message"),
        }
    }

    /// Suspended peer `peer_id` (of dead node `old_node`) resumed on `node`: point our sessions
    /// with it there, list them to `node` (with those that ended meanwhile), then send it
    /// what we held, in order. Always answers, so the adopter need not wait for us.
    pub fn adopted(&mut self, peer_id: &str, node: &str, old_node: &str, out: &mut Outbox) {
        let suspension = match self.peers.get_mut(peer_id) {
            Some(p) if p.node.is_some() => {
                p.node = Some(node.to_string());
                p.suspended.take().unwrap_or_default()
            }
            _ => Suspension::default(),
        };
        let mut sessions = Vec::new();
        for (session_id, s) in self.sessions.iter_mut() {
            let member = if s.producer == peer_id {
                &mut s.producer_node
            } else if s.consumer == peer_id {
                &mut s.consumer_node
            } else {
                continue;
            };
            if member.as_deref() != Some(old_node) {
                continue;
            }
            *member = Some(node.to_string());
            sessions.push(AdoptedSession {
                session_id: session_id.clone(),
                producer: s.producer.clone(),
                consumer: s.consumer.clone(),
            });
        }
        info!(
            peer_id,
            node,
            sessions = sessions.len(),
            held = suspension.held.len(),
            "suspended peer adopted elsewhere"
        );
        sessions.extend(suspension.ended);
        out.push(Effect::ToNode(
            node.to_string(),
            NodeMessage::AdoptAck(AdoptAckBody {
                peer_id: peer_id.to_string(),
                sessions,
            }),
        ));
        for msg in suspension.held {
            out.push(Effect::ToNode(node.to_string(), msg));
        }
    }

    /// `node`'s sessions with a peer we adopted: they are ours now (what `node` held for the
    /// peer follows on the same channel).
    pub fn import_adopted(&mut self, node: &str, body: AdoptAckBody) {
        if !self.is_local(&body.peer_id) {
            return;
        }
        for s in body.sessions {
            let other = |m: &str| (m != body.peer_id).then(|| node.to_string());
            if s.producer != body.peer_id && s.consumer != body.peer_id {
                continue;
            }
            let session = Session {
                producer_node: other(&s.producer),
                consumer_node: other(&s.consumer),
                producer: s.producer,
                consumer: s.consumer,
            };
            self.register_session(&s.session_id, &session);
        }
    }

    /// A suspended peer was not resumed in time: it leaves as a peer of a dead node does. False
    /// if it is not (or no longer) suspended here.
    pub fn expire(&mut self, peer_id: &str, out: &mut Outbox) -> bool {
        if !self.is_suspended(peer_id) {
            return false;
        }
        let Some(peer) = self.peers.remove(peer_id) else {
            return false;
        };
        info!(peer_id, "suspended peer not resumed in time; removing it");
        let sessions: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.producer == peer_id || s.consumer == peer_id)
            .map(|(id, _)| id.clone())
            .collect();
        for session_id in sessions {
            // ended "by" the expired peer: the local member is told
            self.close_session(peer_id, &session_id, out);
        }
        self.broadcast(
            &PeerStatus {
                roles: vec![],
                meta: peer.status.meta,
                peer_id: Some(peer_id.to_string()),
            },
            out,
        );
        true
    }

    /// Delivers a message of session `session_id` to local `to`, or holds it behind the
    /// session's fence.
    fn deliver_in(&mut self, session_id: &str, to: &str, msg: ServerMessage, out: &mut Outbox) {
        match self.fences.get_mut(session_id) {
            Some(held) => held.push((to.to_string(), msg)),
            None => deliver(out, to, msg),
        }
    }

    /// Lets the held messages of a session through, in order.
    pub fn release_fence(&mut self, session_id: &str, out: &mut Outbox) {
        for (to, msg) in self.fences.remove(session_id).unwrap_or_default() {
            deliver(out, &to, msg);
        }
    }

    /// Hands local peer `peer_id` over to `new_node` (resume there): returns its status and
    /// sessions, described with explicit nodes (`me` for this one). The peer disappears from
    /// here without a departure; late messages for it are forwarded.
    pub fn export_peer(
        &mut self,
        peer_id: &str,
        me: &str,
        new_node: &str,
    ) -> Option<(PeerStatus, Vec<SessionRecord>)> {
        if !self.is_local(peer_id) {
            return None;
        }
        let peer = self.peers.remove(peer_id)?;
        self.listeners.remove(peer_id);
        self.moved_out
            .insert(peer_id.to_string(), new_node.to_string());
        let mut records = Vec::new();
        for session_id in peer.producer_sessions.iter().chain(&peer.consumer_sessions) {
            let Some(session) = self.sessions.get_mut(session_id) else {
                continue;
            };
            let node = |n: &Option<NodeId>| n.clone().unwrap_or_else(|| me.to_string());
            records.push(SessionRecord {
                session_id: session_id.clone(),
                producer: session.producer.clone(),
                producer_node: node(&session.producer_node),
                consumer: session.consumer.clone(),
                consumer_node: node(&session.consumer_node),
            });
            // The moved member is remote from now on; a session with no member left here
            // is no longer ours to keep.
            if session.producer == peer_id {
                session.producer_node = Some(new_node.to_string());
            } else {
                session.consumer_node = Some(new_node.to_string());
            }
            if session.producer_node.is_some() && session.consumer_node.is_some() {
                self.sessions.remove(session_id);
            }
        }
        Some((peer.status, records))
    }

    /// Takes over a peer handed over by `old_node`, connected here now. Sessions whose other
    /// member is not on `old_node` are fenced until the old node confirms the switch.
    #[allow(clippy::too_many_arguments)]
    pub fn import_peer(
        &mut self,
        peer_id: &str,
        version: ProtocolVersion,
        status: PeerStatus,
        records: Vec<SessionRecord>,
        me: &str,
        old_node: &str,
        out: &mut Outbox,
    ) {
        let mut peer = Peer::new(None, version, status.clone());
        if status.listening() {
            self.listeners.insert(peer_id.to_string());
        }
        self.moved_in
            .insert(peer_id.to_string(), old_node.to_string());
        self.moved_out.remove(peer_id);
        let local = |n: &str| (n != me).then(|| n.to_string());
        for r in records {
            let session = Session {
                producer: r.producer.clone(),
                consumer: r.consumer.clone(),
                producer_node: if r.producer == peer_id {
                    None
                } else {
                    local(&r.producer_node)
                },
                consumer_node: if r.consumer == peer_id {
                    None
                } else {
                    local(&r.consumer_node)
                },
            };
            let Some((other, other_node)) = session.other(peer_id) else {
                continue;
            };
            let (other, other_node) = (other.clone(), other_node.clone());
            let moved = SessionMovedBody {
                session_id: r.session_id.clone(),
                peer_id: peer_id.to_string(),
                node: me.to_string(),
                old_node: old_node.to_string(),
            };
            match other_node.as_deref() {
                // The other member is on the old node: everything comes through it, in order.
                Some(n) if n == old_node => {}
                // On a third node: it learns of the move from us and confirms via the old node.
                Some(n) => {
                    self.fences.insert(r.session_id.clone(), Vec::new());
                    out.push(Effect::ToNode(
                        n.to_string(),
                        NodeMessage::SessionMoved(moved),
                    ));
                }
                // Here: our earlier messages went to the old node; confirm through it.
                None => {
                    if !self.is_local(&other) {
                        continue; // the other member left meanwhile
                    }
                    self.fences.insert(r.session_id.clone(), Vec::new());
                    out.push(Effect::ToNode(
                        old_node.to_string(),
                        NodeMessage::MoveAck(moved),
                    ));
                    if let Some(o) = self.peers.get_mut(&other) {
                        if session.producer == other {
                            o.producer_sessions.insert(r.session_id.clone());
                        } else {
                            o.consumer_sessions.insert(r.session_id.clone());
                        }
                    }
                }
            }
            if session.producer == peer_id {
                peer.producer_sessions.insert(r.session_id.clone());
            } else {
                peer.consumer_sessions.insert(r.session_id.clone());
            }
            self.sessions.insert(r.session_id, session);
        }
        self.peers.insert(peer_id.to_string(), peer);
        out.push(Effect::Announce(PeerStatusBody::new(
            peer_id.to_string(),
            status,
            StatusChange::Moved,
        )));
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
        let (was_producing, was_consuming) = (peer.status.producing(), peer.status.consuming());
        if was_producing && !status.producing() {
            self.stop_sessions(peer_id, true, out);
        } else if was_consuming && !status.consuming() {
            self.stop_sessions(peer_id, false, out);
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
        info!(peer_id, roles = ?status.roles, "registered");
        self.broadcast(&status, out);
        out.push(Effect::Announce(PeerStatusBody::new(
            peer_id.to_string(),
            status.clone(),
            StatusChange::Changed,
        )));
        if let Some(peer) = self.peers.get_mut(peer_id) {
            peer.status = status;
        }
        Ok(())
    }

    /// Ends the sessions a peer holds as producer (or as consumer).
    fn stop_sessions(&mut self, peer_id: &str, as_producer: bool, out: &mut Outbox) {
        let Some(peer) = self.peers.get_mut(peer_id) else {
            return;
        };
        let sessions = std::mem::take(if as_producer {
            &mut peer.producer_sessions
        } else {
            &mut peer.consumer_sessions
        });
        for session_id in &sessions {
            self.close_session(peer_id, session_id, out);
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
        if let Some(node) = remote {
            // (checked above: a suspended peer's hold has room)
            self.send_node(
                node,
                NodeMessage::SessionStart(SessionStartBody {
                    session_id: session_id.clone(),
                    producer: producer.to_string(),
                    consumer: consumer.to_string(),
                    offer: offer.clone(),
                }),
                out,
            );
        }
        if session.consumer_node.is_none() {
            deliver(
                out,
                consumer,
                ServerMessage::SessionStarted {
                    peer_id: producer.to_string(),
                    session_id: session_id.clone(),
                },
            );
        }
        if session.producer_node.is_none() {
            deliver(
                out,
                producer,
                ServerMessage::StartSession {
                    peer_id: consumer.to_string(),
                    session_id,
                    offer,
                },
            );
        }
        Ok(())
    }

    /// Records a session and links it to its local member(s).
    fn register_session(&mut self, session_id: &str, session: &Session) {
        self.sessions
            .insert(session_id.to_string(), session.clone());
        if session.producer_node.is_none() {
            if let Some(p) = self.peers.get_mut(&session.producer) {
                p.producer_sessions.insert(session_id.to_string());
            }
        }
        if session.consumer_node.is_none() {
            if let Some(c) = self.peers.get_mut(&session.consumer) {
                c.consumer_sessions.insert(session_id.to_string());
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
        match to_node {
            None => {
                let session_id = msg.session_id.clone();
                self.deliver_in(&session_id, &to, ServerMessage::Peer(msg), out);
            }
            Some(node) => {
                let session_id = msg.session_id.clone();
                let relay = NodeMessage::Relay(RelayBody {
                    session_id: msg.session_id,
                    to,
                    key: msg.payload.key().to_string(),
                    payload: match msg.payload {
                        RelayPayload::Sdp { raw, .. } | RelayPayload::Ice { raw } => raw,
                    },
                });
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
        self.close_session(from, session_id, out);
        Ok(())
    }

    /// Removes a session ended by member `by` and tells the other member (here or remote).
    fn close_session(&mut self, by: &str, session_id: &str, out: &mut Outbox) {
        let Some(session) = self.sessions.remove(session_id) else {
            return;
        };
        for (member, node, as_producer) in [
            (&session.producer, &session.producer_node, true),
            (&session.consumer, &session.consumer_node, false),
        ] {
            if node.is_none() {
                if let Some(p) = self.peers.get_mut(member) {
                    if as_producer {
                        p.producer_sessions.remove(session_id);
                    } else {
                        p.consumer_sessions.remove(session_id);
                    }
                }
            }
        }
        info!(session_id, by, "session ended");
        // A suspended member's adopter must know the session to deliver its end.
        for member in [&session.producer, &session.consumer] {
            if let Some(s) = self
                .peers
                .get_mut(member)
                .and_then(|p| p.suspended.as_mut())
            {
                s.ended.push(AdoptedSession {
                    session_id: session_id.to_string(),
                    producer: session.producer.clone(),
                    consumer: session.consumer.clone(),
                });
            }
        }
        let Some((other, other_node)) = session.other(by) else {
            return;
        };
        let end = ServerMessage::EndSession {
            session_id: session_id.to_string(),
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
                    }),
                    out,
                );
            }
        }
    }

    /// The replica entry of a peer of another node, created if new.
    fn remote_entry(&mut self, peer_id: &str, node: &str) -> &mut Peer {
        self.peers.entry(peer_id.to_string()).or_insert_with(|| {
            Peer::new(
                Some(node.to_string()),
                ProtocolVersion::V1,
                PeerStatus::default(),
            )
        })
    }

    fn remote_status(&mut self, node: &str, body: PeerStatusBody, out: &mut Outbox) {
        if self.is_local(&body.peer_id) {
            return; // an echo of our own, or a stale claim: local state wins
        }
        let change = body.change();
        if change == StatusChange::Moved {
            // A peer resumed on another node: same peer, new home; listeners hear nothing.
            // (A forwarding entry stays: senders that have not switched yet still send here.)
            let entry = self.remote_entry(&body.peer_id, node);
            entry.node = Some(node.to_string());
            entry.status = body.status;
            return;
        }
        if change == StatusChange::Joined {
            self.remote_entry(&body.peer_id, node);
            return; // listeners hear of registrations, not connections
        }
        if change == StatusChange::Left && self.is_suspended(&body.peer_id) {
            // Gone before we heard of its adoption: end what we hold with it.
            self.moved_out.remove(&body.peer_id);
            self.expire(&body.peer_id, out);
            return;
        }
        if change == StatusChange::Changed {
            // Its node speaks for it again (it was presumed dead after a pause): send it what
            // we held.
            let held = self
                .peers
                .get_mut(&body.peer_id)
                .filter(|p| p.suspended.as_ref().is_some_and(|s| s.node == node))
                .and_then(|p| p.suspended.take());
            if let Some(held) = held {
                for msg in held.held {
                    out.push(Effect::ToNode(node.to_string(), msg));
                }
            }
        }
        if change == StatusChange::Left {
            self.peers.remove(&body.peer_id);
            self.moved_out.remove(&body.peer_id);
        } else {
            let entry = self.remote_entry(&body.peer_id, node);
            entry.node = Some(node.to_string());
            entry.status = body.status.clone();
        }
        self.broadcast(&body.status, out);
    }

    fn remote_session_start(&mut self, node: &str, body: SessionStartBody, out: &mut Outbox) {
        let (producer_here, consumer_here) =
            (self.is_local(&body.producer), self.is_local(&body.consumer));
        let session = Session {
            producer: body.producer.clone(),
            consumer: body.consumer.clone(),
            producer_node: (!producer_here).then(|| node.to_string()),
            consumer_node: (!consumer_here).then(|| node.to_string()),
        };
        if producer_here == consumer_here {
            // The local member left meanwhile (or the message is bogus): end it on the sender.
            warn!(
                session_id = body.session_id,
                node, "session start for no local member"
            );
            let other = if producer_here {
                &body.consumer
            } else {
                &body.producer
            };
            let to = if self.is_local(other) {
                &body.producer
            } else {
                other
            };
            out.push(Effect::ToNode(
                node.to_string(),
                NodeMessage::SessionEnd(SessionEndBody {
                    session_id: body.session_id,
                    to: to.clone(),
                }),
            ));
            return;
        }
        self.register_session(&body.session_id, &session);
        info!(session_id = body.session_id, node, "remote session started");
        if producer_here {
            deliver(
                out,
                &body.producer,
                ServerMessage::StartSession {
                    peer_id: body.consumer,
                    session_id: body.session_id,
                    offer: body.offer,
                },
            );
        } else {
            deliver(
                out,
                &body.consumer,
                ServerMessage::SessionStarted {
                    peer_id: body.producer,
                    session_id: body.session_id,
                },
            );
        }
    }

    fn remote_session_end(&mut self, node: &str, body: SessionEndBody, out: &mut Outbox) {
        if let Some(to) = self.moved_out.get(&body.to) {
            out.push(Effect::ToNode(to.clone(), NodeMessage::SessionEnd(body)));
            return;
        }
        let Some(session) = self.sessions.get(&body.session_id) else {
            return;
        };
        let forwarded = self.moved_in.get(&body.to).is_some_and(|n| n == node);
        // Only the node of the other member may end it for ours.
        let Some((other, other_node)) = session.other(&body.to) else {
            return;
        };
        if !session.is_local(&body.to) || (other_node.as_deref() != Some(node) && !forwarded) {
            warn!(
                session_id = body.session_id,
                node, "session end from a non-member node"
            );
            return;
        }
        let other = other.clone();
        self.close_session(&other, &body.session_id, out);
    }

    fn remote_relay(&mut self, node: &str, body: RelayBody, out: &mut Outbox) {
        if let Some(to) = self.moved_out.get(&body.to) {
            out.push(Effect::ToNode(to.clone(), NodeMessage::Relay(body)));
            return;
        }
        let Some(session) = self.sessions.get(&body.session_id) else {
            debug!(
                session_id = body.session_id,
                "relay for a session that ended"
            );
            return;
        };
        // From the other member's node, or forwarded by the node our member moved from.
        let member_node_ok = session
            .other(&body.to)
            .is_some_and(|(_, n)| n.as_deref() == Some(node))
            || self.moved_in.get(&body.to).is_some_and(|n| n == node);
        if !session.is_local(&body.to) || !member_node_ok {
            warn!(
                session_id = body.session_id,
                node, "relay from a non-member node"
            );
            return;
        }
        let payload = match body.key.as_str() {
            "sdp" => RelayPayload::sdp(body.payload),
            "ice" => Ok(RelayPayload::ice_checked(body.payload)),
            other => {
                warn!(key = other, "relay with an unknown payload key");
                return;
            }
        };
        match payload {
            Ok(payload) => {
                let msg = ServerMessage::Peer(PeerMessage {
                    session_id: body.session_id.clone(),
                    payload,
                });
                if self.moved_in.get(&body.to).is_some_and(|n| n == node) {
                    // Forwarded by the old node: it all comes before the fence is lifted.
                    deliver(out, &body.to, msg);
                } else {
                    self.deliver_in(&body.session_id, &body.to, msg, out);
                }
            }
            Err(e) => warn!(node, "invalid relayed payload: {e}"),
        }
    }

    /// Status change for this node's listeners.
    fn broadcast(&self, status: &PeerStatus, out: &mut Outbox) {
        if self.listeners.is_empty() {
            return;
        }
        out.push(Effect::Broadcast(
            self.listeners.iter().cloned().collect(),
            ServerMessage::PeerStatusChanged(status.clone()),
        ));
    }

    /// The producers of the whole cluster, as `list` answers.
    pub fn producers(&self) -> Vec<PeerInfo> {
        self.filter_peers(PeerStatus::producing)
    }

    /// Number of known peers per node (`None`: this node).
    pub fn peers_per_node(&self) -> HashMap<Option<NodeId>, usize> {
        let mut counts = HashMap::new();
        for p in self.peers.values() {
            *counts.entry(p.node.clone()).or_insert(0) += 1;
        }
        counts
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
    use proto::{PeerRole, SdpType};

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

    /// Routers wired by hand: returns what the receiving routers produced.
    fn exchange(from: &str, out: Outbox, nodes: &mut [(&str, &mut Router)]) -> Outbox {
        let mut local = Outbox::new();
        for e in out {
            match e {
                Effect::ToNode(node, msg) => {
                    let (_, r) = nodes.iter_mut().find(|(n, _)| *n == node).unwrap();
                    let mut o = Outbox::new();
                    r.remote(from, msg, &mut o);
                    local.extend(o);
                }
                Effect::Announce(body) => {
                    for (n, r) in nodes.iter_mut() {
                        if *n != from {
                            let mut o = Outbox::new();
                            r.remote(from, NodeMessage::PeerStatus(body.clone()), &mut o);
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
        b.remote(
            "a",
            NodeMessage::PeerStatus(PeerStatusBody::new(
                "p".into(),
                PeerStatus {
                    roles: vec![PeerRole::Producer],
                    meta: None,
                    peer_id: Some("p".into()),
                },
                StatusChange::Changed,
            )),
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
                n.remote("b", m, &mut o);
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
        assert_eq!(d[0], ("c", &ServerMessage::EndSession { session_id: sid }));
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
