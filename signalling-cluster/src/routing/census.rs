//! The router's state as the metrics (`crate::metrics`) and the operations API
//! (`crate::admin`) read it: local peers by protocol and role, sessions by scope, the relays
//! counted as they happened; every peer and session as rows.

use std::collections::HashMap;

use proto::envelope::SessionRow;
use proto::{PeerRole, ProtocolVersion};
use serde::Serialize;

use super::Router;

/// The router's state for the metrics, read when scraped.
#[derive(Debug, Default, Clone)]
pub struct Census {
    /// Local peers by (protocol, role).
    pub peers: Vec<((&'static str, &'static str), usize)>,
    /// Sessions with both members here, and with one on another node.
    pub local_sessions: usize,
    pub cross_node_sessions: usize,
    /// `peer` messages relayed and their bytes: [local, cross-node].
    pub relayed: [(u64, u64); 2],
    /// Live nodes, this one included (the bus fills it in).
    pub nodes: usize,
}

/// One peer as the operations API lists it (any node's: the replica knows them all).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerRow {
    pub id: String,
    pub node: String,
    pub roles: Vec<PeerRole>,
    pub name: Option<String>,
    /// `v1`/`v2` for this node's peers.
    pub protocol: Option<&'static str>,
    /// Its token's subject, for this node's peers with auth on.
    pub sub: Option<String>,
    /// Since this node learned of it.
    pub age_secs: u64,
}

/// Roles as the logs show them: `producer,listener` (`none` for none).
pub fn roles_text(roles: &[PeerRole]) -> String {
    let names: Vec<&str> = roles
        .iter()
        .map(|r| match r {
            PeerRole::Producer => "producer",
            PeerRole::Listener => "listener",
            PeerRole::Consumer => "consumer",
        })
        .collect();
    match names.is_empty() {
        true => "none".into(),
        false => names.join(","),
    }
}

impl Router {
    /// Every peer of the cluster (`me`: this node's id).
    pub fn peer_rows(&self, me: &str) -> Vec<PeerRow> {
        self.peers
            .iter()
            .map(|(id, p)| PeerRow {
                id: id.clone(),
                node: p.node.clone().unwrap_or_else(|| me.to_string()),
                roles: p.status.roles.clone(),
                name: p
                    .status
                    .meta
                    .as_ref()
                    .and_then(|m| m.get("name")?.as_str().map(String::from)),
                protocol: p
                    .node
                    .is_none()
                    .then_some(match p.version >= ProtocolVersion::V2 {
                        true => "v2",
                        false => "v1",
                    }),
                sub: p.grants.sub.clone().filter(|_| p.node.is_none()),
                age_secs: p.since.elapsed().as_secs(),
            })
            .collect()
    }

    /// The sessions this node takes part in.
    pub fn session_rows(&self, me: &str) -> Vec<SessionRow> {
        let node = |n: &Option<String>| n.clone().unwrap_or_else(|| me.to_string());
        self.sessions
            .iter()
            .map(|(id, s)| SessionRow {
                session_id: id.clone(),
                producer: s.producer.clone(),
                consumer: s.consumer.clone(),
                producer_node: node(&s.producer_node),
                consumer_node: node(&s.consumer_node),
            })
            .collect()
    }

    /// What the metrics read of the router (`crate::metrics`; `nodes` is the bus's).
    pub fn census(&self) -> Census {
        let mut peers: HashMap<(&'static str, &'static str), usize> = HashMap::new();
        for p in self.peers.values().filter(|p| p.node.is_none()) {
            let protocol = match p.version >= ProtocolVersion::V2 {
                true => "v2",
                false => "v1",
            };
            let role = match (
                p.status.producing(),
                p.status.consuming(),
                p.status.listening(),
            ) {
                (true, _, _) => "producer",
                (_, true, _) => "consumer",
                (_, _, true) => "listener",
                _ => "none",
            };
            *peers.entry((protocol, role)).or_default() += 1;
        }
        let local = self
            .sessions
            .values()
            .filter(|s| s.producer_node.is_none() && s.consumer_node.is_none())
            .count();
        Census {
            peers: peers.into_iter().collect(),
            local_sessions: local,
            cross_node_sessions: self.sessions.len() - local,
            relayed: self.relayed,
            nodes: 1,
        }
    }
}
