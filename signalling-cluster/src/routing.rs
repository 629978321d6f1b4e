//! The routing core: upstream `gst-webrtc-signalling-server` semantics as a pure state machine.
//!
//! It knows no transport. Each call takes one event (a peer joined, sent a message, left) and
//! appends the messages to deliver to [`Outbox`]; a [`crate::bus::Bus`] implementation moves
//! them. Where upstream is unsafe the router is stricter, and says so in a comment.

use std::collections::{HashMap, HashSet};

use proto::{
    ClientMessage, ErrorCode, PeerId, PeerInfo, PeerMessage, PeerStatus, ProtocolVersion,
    ServerMessage, SessionId,
};
use tracing::{debug, info, warn};

/// Messages to deliver, in order.
pub type Outbox = Vec<(PeerId, ServerMessage)>;

#[derive(Debug)]
struct Peer {
    status: PeerStatus,
    version: ProtocolVersion,
    producer_sessions: HashSet<SessionId>,
    consumer_sessions: HashSet<SessionId>,
}

#[derive(Debug, Clone)]
struct Session {
    producer: PeerId,
    consumer: PeerId,
}

impl Session {
    fn other(&self, id: &str) -> Option<&PeerId> {
        if self.producer == id {
            Some(&self.consumer)
        } else if self.consumer == id {
            Some(&self.producer)
        } else {
            None
        }
    }
}

/// All peers and sessions of one node.
#[derive(Debug, Default)]
pub struct Router {
    peers: HashMap<PeerId, Peer>,
    /// Peers with the listener role, to fan out status changes without scanning every peer.
    listeners: HashSet<PeerId>,
    sessions: HashMap<SessionId, Session>,
}

impl Router {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// A peer connected (upstream: `NewPeer`). Its `welcome` is sent by the connection itself.
    pub fn join(&mut self, peer_id: &str, version: ProtocolVersion) {
        self.peers.insert(
            peer_id.to_string(),
            Peer {
                status: PeerStatus::default(),
                version,
                producer_sessions: HashSet::new(),
                consumer_sessions: HashSet::new(),
            },
        );
    }

    /// One message from a connected peer.
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
                out.push((from.to_string(), ServerMessage::List { producers }));
                Ok(())
            }
            ClientMessage::ListConsumers => {
                let consumers = self.filter_peers(PeerStatus::consuming);
                out.push((from.to_string(), ServerMessage::ListConsumers { consumers }));
                Ok(())
            }
        };
        if let Err(err) = result {
            debug!(peer_id = from, code = %err.0, "request refused: {}", err.1);
            out.push((from.to_string(), ServerMessage::error(err.0, err.1)));
        }
    }

    /// A peer disconnected: end its sessions, then tell listeners it has no roles any more.
    pub fn leave(&mut self, peer_id: &str, out: &mut Outbox) {
        let Some(peer) = self.peers.remove(peer_id) else {
            return;
        };
        info!(peer_id, "removing peer");
        self.listeners.remove(peer_id);
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
        let (producer, consumer) = if to_peer.status.producing() {
            (to, from)
        } else if to_peer.status.consuming() {
            (from, to)
        } else {
            return Err((
                ErrorCode::InvalidSessionTarget,
                format!(
                    "Missing a producer or a consumer: id {from} roles {:?}, id {to} roles {:?}",
                    from_peer.status.roles, to_peer.status.roles
                ),
            ));
        };

        let session_id = uuid::Uuid::new_v4().to_string();
        self.sessions.insert(
            session_id.clone(),
            Session {
                producer: producer.to_string(),
                consumer: consumer.to_string(),
            },
        );
        if let Some(p) = self.peers.get_mut(producer) {
            p.producer_sessions.insert(session_id.clone());
        }
        if let Some(c) = self.peers.get_mut(consumer) {
            c.consumer_sessions.insert(session_id.clone());
        }
        info!(session_id, producer, consumer, "started a session");
        out.push((
            consumer.to_string(),
            ServerMessage::SessionStarted {
                peer_id: producer.to_string(),
                session_id: session_id.clone(),
            },
        ));
        out.push((
            producer.to_string(),
            ServerMessage::StartSession {
                peer_id: consumer.to_string(),
                session_id,
                offer,
            },
        ));
        Ok(())
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
        let Some(to) = session.other(from) else {
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
        out.push((to.clone(), ServerMessage::Peer(msg)));
        Ok(())
    }

    fn end_session(&mut self, from: &str, session_id: &str, out: &mut Outbox) -> Res {
        let Some(session) = self.sessions.get(session_id) else {
            warn!(peer_id = from, session_id, "end of unknown session");
            return self.v2_only_error(from, ErrorCode::UnknownSession, session_id);
        };
        // Stricter than upstream, which ends any session whose id it is given.
        if session.other(from).is_none() {
            return Err(not_member(from, session_id));
        }
        self.close_session(from, session_id, out);
        Ok(())
    }

    /// Removes a session ended by member `by` and tells the other member.
    fn close_session(&mut self, by: &str, session_id: &str, out: &mut Outbox) {
        let Some(session) = self.sessions.remove(session_id) else {
            return;
        };
        if let Some(p) = self.peers.get_mut(&session.producer) {
            p.producer_sessions.remove(session_id);
        }
        if let Some(c) = self.peers.get_mut(&session.consumer) {
            c.consumer_sessions.remove(session_id);
        }
        info!(session_id, by, "session ended");
        if let Some(other) = session.other(by) {
            out.push((
                other.clone(),
                ServerMessage::EndSession {
                    session_id: session_id.to_string(),
                },
            ));
        }
    }

    fn broadcast(&self, status: &PeerStatus, out: &mut Outbox) {
        for listener in &self.listeners {
            out.push((
                listener.clone(),
                ServerMessage::PeerStatusChanged(status.clone()),
            ));
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
            r.join(p, ProtocolVersion::V1);
        }
        r
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
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|(to, m)| to == "x" && m.kind() == "error"));
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
        assert_eq!(out[0].0, "c");
        assert_eq!(out[0].1.kind(), "endSession");
        assert_eq!(out[1].0, "l");
        assert!(matches!(&out[1].1, ServerMessage::PeerStatusChanged(s) if s.roles.is_empty()));
        assert_eq!(r.session_count(), 0);
    }
}
