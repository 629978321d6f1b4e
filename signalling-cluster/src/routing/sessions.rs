//! Sessions as their local members drive them: starting one (the remote member's node told
//! from one message, the consumer hearing first, as upstream), relaying sdp/ice between the two
//! members (only they may send; only the producer offers), ending it by a member, and ending it
//! for both (`abort_session`: node death, the operations API). What arrives from another node
//! for a session is in `cross_node.rs`.

use proto::envelope::{NodeMessage, RelayBody, SessionEndBody, SessionStartBody};
use proto::{EndReason, ErrorCode, PeerMessage, ProtocolVersion, ServerMessage};
use tracing::{info, warn};

use super::{access, deliver, not_found, Outbox, Res, Router, Session, Side};

impl Router {
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

    /// Ends the sessions a peer holds on `side`.
    pub(super) fn stop_sessions(&mut self, peer_id: &str, side: Side, out: &mut Outbox) {
        let Some(peer) = self.peers.get_mut(peer_id) else {
            return;
        };
        let sessions = std::mem::take(peer.sessions(side));
        for session_id in &sessions {
            self.close_session(peer_id, session_id, None, out);
        }
    }

    pub(super) fn start_session(
        &mut self,
        from: &str,
        to: &str,
        offer: Option<String>,
        max_height: Option<u32>,
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
        // A cap is the consumer's wish: a producer starting a session with a passive
        // consumer has none to pass on.
        let max_height = max_height.filter(|_| consumer == from);
        let start = SessionStartBody {
            session_id,
            producer: producer.to_string(),
            consumer: consumer.to_string(),
            offer,
            max_height,
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
    pub(super) fn register_session(&mut self, session_id: &str, session: &Session) {
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

    pub(super) fn relay(&mut self, from: &str, msg: PeerMessage, out: &mut Outbox) -> Res {
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

    pub(super) fn end_session(&mut self, from: &str, session_id: &str, out: &mut Outbox) -> Res {
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
    pub(super) fn close_session(
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

    pub(super) fn v2_only_error(&self, peer_id: &str, code: ErrorCode, session_id: &str) -> Res {
        if self.version(peer_id) >= ProtocolVersion::V2 {
            Err((code, format!("Unknown session {session_id}")))
        } else {
            Ok(())
        }
    }
}

/// What a member on `side` is told of a session that started: the producer is asked for an
/// offer (`startSession`), the consumer told it started (`sessionStarted`).
pub(super) fn session_started(side: Side, body: SessionStartBody) -> ServerMessage {
    match side {
        Side::Producer => ServerMessage::StartSession {
            peer_id: body.consumer,
            session_id: body.session_id,
            offer: body.offer,
            // (written to v2 producers only: `ServerMessage::encode`)
            max_height: body.max_height,
        },
        Side::Consumer => ServerMessage::SessionStarted {
            peer_id: body.producer,
            session_id: body.session_id,
        },
    }
}

fn not_member(id: &str, session_id: &str) -> (ErrorCode, String) {
    (
        ErrorCode::NotSessionMember,
        format!("Peer {id} is not part of {session_id}"),
    )
}
