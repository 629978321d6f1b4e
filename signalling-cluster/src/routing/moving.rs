//! A live peer moving to another node: a v2 client that reconnects elsewhere with its resume
//! token is handed over by its old node (`bus/cluster/handover.rs` carries the claim and the
//! grant). The old node exports the peer and its sessions and forwards what arrives for it
//! late; the new node imports them and *fences* each session whose other member is on a third
//! node (or here) until the old node confirms it forwarded everything sent before the move,
//! so that no message overtakes another.

use proto::envelope::{NodeMessage, SessionMovedBody, SessionRecord, StatusChange};
use proto::{PeerStatus, ProtocolVersion, ServerMessage};

use super::{announce, deliver, Effect, NodeId, Outbox, Peer, Router, Session};

impl Router {
    /// Delivers a message of session `session_id` to local `to`, or holds it behind the
    /// session's fence.
    pub(super) fn deliver_in(
        &mut self,
        session_id: &str,
        to: &str,
        msg: ServerMessage,
        out: &mut Outbox,
    ) {
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
            if let Some(node) = session.node_of_mut(peer_id) {
                *node = Some(new_node.to_string());
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
        // (its tenant, known from its old node's announcements; its connection's token
        // grants the rest: `Router::regrant`)
        if let Some(known) = self.peers.get(peer_id) {
            peer.grants = known.grants.clone();
        }
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
                    if let (Some(o), Some(side)) =
                        (self.peers.get_mut(&other), session.side_of(&other))
                    {
                        o.sessions(side).insert(r.session_id.clone());
                    }
                }
            }
            if let Some(side) = session.side_of(peer_id) {
                peer.sessions(side).insert(r.session_id.clone());
            }
            self.sessions.insert(r.session_id, session);
        }
        let tenant = peer.grants.tenant.clone();
        self.peers.insert(peer_id.to_string(), peer);
        announce(out, peer_id, &tenant, status, StatusChange::Moved);
    }

    /// A member of one of our sessions moved to `body.node`: switch, then confirm through its
    /// old node (after everything we sent there).
    pub fn session_moved(&mut self, body: SessionMovedBody, out: &mut Outbox) {
        if let Some(node) = self
            .sessions
            .get_mut(&body.session_id)
            .and_then(|s| s.node_of_mut(&body.peer_id))
        {
            *node = Some(body.node.clone());
        }
        out.push(Effect::ToNode(
            body.old_node.clone(),
            NodeMessage::MoveAck(body),
        ));
    }

    /// The other member's node confirmed the move of a peer that left us: everything it sent
    /// us before is forwarded already, so the new node may lift its fence.
    pub fn move_acked(&mut self, body: SessionMovedBody, out: &mut Outbox) {
        out.push(Effect::ToNode(
            body.node.clone(),
            NodeMessage::MoveFence(body),
        ));
    }
}
