//! Sessions with a member on another node, as the other node's messages reach us: the
//! session starts (our member is told), relays arrive for our member (sdp/ice, the payload
//! passed on as the sending client wrote it), and the session ends. The sending side is in
//! `sessions.rs` (`start_session`, `relay`, `close_session`), which addresses the member's node
//! through [`Router::send_node`].

use proto::envelope::{NodeMessage, RelayBody, SessionEndBody, SessionStartBody};
use proto::ServerMessage;
use tracing::{debug, info, warn};

use super::sessions::session_started;
use super::{deliver, Effect, Outbox, Router, Session, Side};

impl Router {
    /// Another node started a session between its peer and ours.
    pub fn remote_session_start(&mut self, node: &str, body: SessionStartBody, out: &mut Outbox) {
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
                    reason: None,
                }),
            ));
            return;
        }
        self.register_session(&body.session_id, &session);
        info!(session_id = body.session_id, node, "remote session started");
        let (side, member) = match producer_here {
            true => (Side::Producer, body.producer.clone()),
            false => (Side::Consumer, body.consumer.clone()),
        };
        deliver(out, &member, session_started(side, body));
    }

    /// SDP or ICE from another node's member for ours.
    pub fn remote_relay(&mut self, node: &str, body: RelayBody, out: &mut Outbox) {
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
        let forwarded = self.moved_in.get(&body.to).is_some_and(|n| n == node);
        let member_node_ok = forwarded
            || session
                .other(&body.to)
                .is_some_and(|(_, n)| n.as_deref() == Some(node));
        if !session.is_local(&body.to) || !member_node_ok {
            warn!(
                session_id = body.session_id,
                node, "relay from a non-member node"
            );
            return;
        }
        let (to, session_id) = (body.to.clone(), body.session_id.clone());
        let msg = match body.into_message() {
            Ok(msg) => ServerMessage::Peer(msg),
            Err(e) => return warn!(node, "invalid relayed payload: {e}"),
        };
        if forwarded {
            // Forwarded by the old node: it all comes before the fence is lifted.
            deliver(out, &to, msg);
        } else {
            self.deliver_in(&session_id, &to, msg, out);
        }
    }

    /// Another node ended a session with our member `body.to`.
    pub fn remote_session_end(&mut self, node: &str, body: SessionEndBody, out: &mut Outbox) {
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
        self.close_session(&other, &body.session_id, body.reason, out);
    }
}
