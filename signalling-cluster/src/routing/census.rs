//! The router's state as the metrics read it (`crate::metrics`), when scraped: local peers by
//! protocol and role, sessions by scope, and the relays counted as they happened.

use std::collections::HashMap;

use proto::ProtocolVersion;

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

impl Router {
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
