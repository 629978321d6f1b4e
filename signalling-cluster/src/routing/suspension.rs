//! What the router does when another node dies. Its peers leave and the sessions with them
//! end, except its v2 peers that hold a resume token: those are *suspended* for the resume
//! grace, still listed, their sessions open and what local peers send them held here, until
//! a node where the client comes back *adopts* them (sessions and held messages go there) or
//! they expire and leave after all. How a death is detected and announced is the cluster
//! bus's part (`bus/cluster/liveness.rs`); the claim of a suspended peer, `bus/cluster/handover.rs`.

use proto::envelope::{AdoptAckBody, AdoptedSession, NodeMessage, StatusChange};
use proto::{PeerId, PeerStatus, ProtocolVersion, ServerMessage, SessionId};
use tracing::{debug, info, warn};

use super::sessions::session_started;
use super::{announce, deliver, gone, Effect, NodeId, Outbox, Peer, Router, Session, Side};

/// What this node keeps for a suspended peer until a node adopts it or it expires.
#[derive(Debug, Default)]
pub(super) struct Suspension {
    /// The node that was declared dead.
    pub(super) node: NodeId,
    /// What local peers addressed to it meanwhile, in order (bounded by the hold limit, except
    /// `sessionEnd`s, at most one per session).
    pub(super) held: Vec<NodeMessage>,
    /// Sessions with it that ended meanwhile: the adopter must know them to deliver the held
    /// `sessionEnd`s.
    pub(super) ended: Vec<AdoptedSession>,
}

impl Router {
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
        let leaving: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.node.as_deref() == Some(node) && p.suspended.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        info!(node, peers = leaving.len(), "node down");
        for peer_id in leaving {
            if let Some(peer) = self.peers.remove(&peer_id) {
                self.broadcast(&peer.grants.tenant, &gone(&peer_id, peer.status.meta), out);
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

    /// Whether `peer_id` is a suspended peer of a dead node.
    pub fn is_suspended(&self, peer_id: &str) -> bool {
        self.peers
            .get(peer_id)
            .is_some_and(|p| p.suspended.is_some())
    }

    /// Sends `msg` to `node`, or holds it if it is for a suspended peer. Returns false if the
    /// hold is full (then nothing is sent: the caller ends the session). `sessionEnd` is always
    /// held: at most one per session.
    pub(super) fn send_node(&mut self, node: NodeId, msg: NodeMessage, out: &mut Outbox) -> bool {
        let target = match &msg {
            NodeMessage::Relay(b) => Some(b.to.as_str()),
            NodeMessage::SessionEnd(b) => Some(b.to.as_str()),
            NodeMessage::SessionStart(b) if self.is_suspended(&b.producer) => {
                Some(b.producer.as_str())
            }
            NodeMessage::SessionStart(b) => Some(b.consumer.as_str()),
            _ => None,
        };
        let limit = self.hold_limit;
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
    pub(super) fn hold_full(&self, peer_id: &str) -> bool {
        self.peers
            .get(peer_id)
            .and_then(|p| p.suspended.as_ref())
            .is_some_and(|s| s.held.len() >= self.hold_limit)
    }

    /// A session with suspended members ended: their adopter must know the session to
    /// deliver its end.
    pub(super) fn note_ended_for_suspended(&mut self, session_id: &str, session: &Session) {
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
    }

    /// `node` speaks for `peer_id` again, which we suspended as a peer of a dead node (it was
    /// presumed dead after a pause): the peer lives on there, and gets what we held for it.
    pub(super) fn release_hold(&mut self, peer_id: &str, node: &str, out: &mut Outbox) {
        let held = self
            .peers
            .get_mut(peer_id)
            .filter(|p| p.suspended.as_ref().is_some_and(|s| s.node == node))
            .and_then(|p| p.suspended.take());
        if let Some(held) = held {
            for msg in held.held {
                out.push(Effect::ToNode(node.to_string(), msg));
            }
        }
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
        let (suspension, grants) = match self.peers.remove(peer_id) {
            Some(p) => (p.suspended.unwrap_or_default(), Some(p.grants)),
            None => (Suspension::default(), None),
        };
        let mut peer = Peer::new(None, version, status.clone());
        // (its tenant; its connection's token grants the rest: `Router::regrant`)
        if let Some(grants) = grants {
            peer.grants = grants;
        }
        let tenant = peer.grants.tenant.clone();
        if status.listening() {
            self.listeners.insert(peer_id.to_string());
        }
        self.moved_out.remove(peer_id);
        for (session_id, s) in self.sessions.iter_mut() {
            if let Some(side) = s.side_of(peer_id) {
                *s.node_of_mut(peer_id).expect("a member") = None;
                peer.sessions(side).insert(session_id.clone());
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
        announce(out, peer_id, &tenant, status, StatusChange::Moved);
    }

    /// Delivers to adopted local peer `peer_id` a message held for it as for its old node.
    fn deliver_held(&mut self, peer_id: &str, msg: NodeMessage, out: &mut Outbox) {
        match msg {
            NodeMessage::Relay(body) => match body.into_message() {
                Ok(msg) => deliver(out, peer_id, ServerMessage::Peer(msg)),
                Err(e) => warn!(peer_id, "invalid held payload: {e}"),
            },
            NodeMessage::SessionStart(body) => {
                let side = match body.producer == peer_id {
                    true => Side::Producer,
                    false => Side::Consumer,
                };
                deliver(out, peer_id, session_started(side, body));
            }
            NodeMessage::SessionEnd(body) => deliver(
                out,
                peer_id,
                ServerMessage::EndSession {
                    session_id: body.session_id,
                    reason: body.reason,
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
            let Some(member) = s.node_of_mut(peer_id) else {
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
            self.close_session(peer_id, &session_id, None, out);
        }
        self.broadcast(&peer.grants.tenant, &gone(peer_id, peer.status.meta), out);
        true
    }
}
