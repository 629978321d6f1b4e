//! Placement: a v2 consumer asks for a *stream* (`startSession` with `stream`), and the node
//! picks the member of that stream's group to serve it: the origin (the producer whose
//! `meta.name` is the stream) or one of its relays (producers whose `meta.stream` is the stream
//! and whose `meta.relay-of` names their source), cluster-wide.
//!
//! The rule: among the members with room (`meta.capacity` not reached; no capacity: always
//! room), relays before the origin (the origin is kept for relays, which find it by name), then
//! the shallowest (`meta.depth`), then the least loaded (sessions ÷ capacity, a member without
//! one counting as 1,000), then the smallest peer id. A member's load is the number of
//! sessions it serves: exact for this node's peers; for another node's, the larger of what its
//! node last announced (`producerLoad`, at most every liveness tick) and the sessions this node
//! itself holds with it, so that a burst of requests on one node spreads at once. A member
//! whose connection dropped (kept for a resume, maybe a dead process) is *away* and passed
//! over until it is back: its viewers, whose media stopped, are placed elsewhere at once.

use std::collections::HashMap;

use proto::{ErrorCode, PeerId};

use super::{NodeId, Router};
use crate::grants::Grants;

/// How loaded a producer is, as its node announces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Load {
    pub sessions: usize,
    /// Its connection dropped; kept for a resume, passed over by placement.
    pub away: bool,
}

/// Why no member of a stream can take a viewer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unplaced {
    /// No producer (origin or relay) of that stream that the viewer may see is connected.
    #[error("unknown stream '{0}': no producer of it is connected")]
    UnknownStream(String),
    /// It has members, but every one is full (`meta.capacity`), away or suspended.
    #[error("no producer of stream '{0}' has room")]
    NoRoom(String),
}

/// What a member without `meta.capacity` is taken to hold, to weigh its load.
const ASSUMED_CAPACITY: f64 = 1000.0;

/// A member's meta field as a number (written as a string or a number).
fn number(meta: Option<&serde_json::Value>, key: &str) -> Option<u64> {
    let v = meta?.get(key)?;
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
}

impl Router {
    /// The member of `stream` that local peer `from` should be served by, or why none can.
    /// (Either way the v2 error code is `unknown-peer`; the details say which.)
    pub fn place(&self, from: &str, stream: &str) -> Result<PeerId, (ErrorCode, String)> {
        let viewer = self.peers.get(from).map(|p| p.grants.clone());
        self.choose(from, viewer.as_deref(), stream)
            .map_err(|why| (ErrorCode::UnknownPeer, why.to_string()))
    }

    /// The same for a viewer that is not a peer yet (`GET /place`), with these grants.
    pub fn place_for(&self, viewer: &Grants, stream: &str) -> Result<PeerId, Unplaced> {
        self.choose("", Some(viewer), stream)
    }

    fn choose(
        &self,
        from: &str,
        viewer: Option<&Grants>,
        stream: &str,
    ) -> Result<PeerId, Unplaced> {
        let mut held: HashMap<&str, usize> = HashMap::new();
        for s in self.sessions.values() {
            *held.entry(s.producer.as_str()).or_default() += 1;
        }
        let mut best: Option<((bool, u64, f64), &PeerId)> = None;
        // (a member seen at all, with room or not: the stream is known)
        let mut known = false;
        for (id, p) in &self.peers {
            if id == from || !p.status.producing() {
                continue;
            }
            if viewer.is_some_and(|v| !v.sees(&p.grants.tenant, &p.status)) {
                continue;
            }
            let meta = p.status.meta.as_ref();
            let text = |key: &str| meta.and_then(|m| m.get(key)).and_then(|v| v.as_str());
            let relay = text("relay-of").is_some();
            let member = match relay {
                true => text("stream") == Some(stream),
                false => text("name") == Some(stream),
            };
            if !member {
                continue;
            }
            known = true;
            // A WHIP publisher's stand-in has no media to give: its ingest member serves.
            if p.suspended.is_some() || p.away || proto::ingest::is_whip(meta) {
                continue;
            }
            let here = held.get(id.as_str()).copied().unwrap_or(0);
            let load = match p.node {
                None => here,
                Some(_) => p.load.max(here),
            };
            let capacity = number(meta, "capacity");
            if capacity.is_some_and(|c| load as u64 >= c) {
                continue; // full
            }
            let share = load as f64 / capacity.map_or(ASSUMED_CAPACITY, |c| c as f64);
            let key = (!relay, number(meta, "depth").unwrap_or(0), share);
            let better = match &best {
                None => true,
                Some((k, b)) => {
                    key.partial_cmp(k) == Some(std::cmp::Ordering::Less) || (key == *k && id < *b)
                }
            };
            if better {
                best = Some((key, id));
            }
        }
        match (best, known) {
            (Some((_, id)), _) => Ok(id.clone()),
            (None, true) => Err(Unplaced::NoRoom(stream.to_string())),
            (None, false) => Err(Unplaced::UnknownStream(stream.to_string())),
        }
    }

    /// This node's producers: how many sessions each serves, and whether it is away
    /// (announced as `producerLoad`).
    pub fn local_loads(&self) -> Vec<(PeerId, Load)> {
        self.peers
            .iter()
            .filter(|(_, p)| p.node.is_none() && p.status.producing())
            .map(|(id, p)| {
                let load = Load {
                    sessions: p.producer_sessions.len(),
                    away: p.away,
                };
                (id.clone(), load)
            })
            .collect()
    }

    /// `node` says how loaded its producer `peer_id` is.
    pub fn remote_load(&mut self, node: &NodeId, peer_id: &str, load: Load) {
        if let Some(p) = self.peers.get_mut(peer_id) {
            if p.node.as_ref() == Some(node) {
                p.load = load.sessions;
                p.away = load.away;
            }
        }
    }

    /// Local peer `peer_id` lost its connection and is kept for a resume (`away`), or is back.
    pub fn set_away(&mut self, peer_id: &str, away: bool) {
        if let Some(p) = self.peers.get_mut(peer_id) {
            if p.node.is_none() {
                p.away = away;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Outbox;
    use super::*;
    use proto::{ClientMessage, PeerRole, PeerStatus, ProtocolVersion};

    fn producer(r: &mut Router, id: &str, meta: serde_json::Value) {
        let mut out = Outbox::new();
        r.join(id, ProtocolVersion::V2, &mut out);
        let status = PeerStatus {
            roles: vec![PeerRole::Producer],
            meta: Some(meta),
            peer_id: None,
        };
        r.handle(id, ClientMessage::SetPeerStatus(status), &mut out);
    }

    #[test]
    fn a_relay_that_is_away_is_passed_over_until_it_is_back() {
        let mut r = Router::new();
        producer(&mut r, "origin", serde_json::json!({"name": "cam"}));
        for relay in ["r1", "r2"] {
            let meta = serde_json::json!({"name": "cam relay", "stream": "cam", "relay-of": "origin", "depth": "1"});
            producer(&mut r, relay, meta);
        }
        r.join("viewer", ProtocolVersion::V2, &mut Outbox::new());
        assert_eq!(r.place("viewer", "cam").unwrap(), "r1");
        r.set_away("r1", true);
        assert_eq!(r.place("viewer", "cam").unwrap(), "r2");
        r.set_away("r2", true);
        assert_eq!(r.place("viewer", "cam").unwrap(), "origin");
        r.set_away("r1", false);
        assert_eq!(r.place("viewer", "cam").unwrap(), "r1");
    }

    #[test]
    fn an_unknown_stream_is_told_apart_from_one_without_room() {
        let mut r = Router::new();
        producer(
            &mut r,
            "origin",
            serde_json::json!({"name": "cam", "capacity": 0}),
        );
        let all = Grants::everything();
        assert_eq!(
            r.place_for(&all, "nope"),
            Err(Unplaced::UnknownStream("nope".into()))
        );
        assert_eq!(
            r.place_for(&all, "cam"),
            Err(Unplaced::NoRoom("cam".into()))
        );
        r.set_away("origin", true);
        assert_eq!(
            r.place_for(&all, "cam"),
            Err(Unplaced::NoRoom("cam".into()))
        );
    }
}
