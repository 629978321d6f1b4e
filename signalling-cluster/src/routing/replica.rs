//! The replica of the other nodes' peers: every node announces its peers' changes (joined,
//! registered, moved here, left) on the presence channel, and every other node keeps them
//! in its router, so that `list`, `startSession` and presence work as on one server.

use std::collections::HashMap;

use proto::envelope::{PeerStatusBody, StatusChange};
use proto::{PeerStatus, ProtocolVersion};

use super::{NodeId, Outbox, Peer, Router};
use crate::grants::Grants;

impl Router {
    /// The local peers, to announce again after the cluster store was lost (or after this
    /// node was presumed dead).
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
                    .of_tenant(&p.grants.tenant)
            })
            .collect()
    }

    /// Another node announced a change of one of its peers.
    pub fn remote_status(&mut self, node: &str, body: PeerStatusBody, out: &mut Outbox) {
        if self.is_local(&body.peer_id) {
            return; // an echo of our own, or a stale announcement: local state wins
        }
        let tenant = body.tenant.clone().unwrap_or_default();
        match body.change() {
            StatusChange::Moved => {
                // A peer resumed on another node: same peer, new home; listeners hear nothing.
                // (A forwarding entry stays: senders that have not switched yet still send
                // here.)
                let entry = self.remote_entry(&body.peer_id, node, &tenant);
                entry.node = Some(node.to_string());
                entry.status = body.status;
            }
            // listeners hear of registrations, not connections
            StatusChange::Joined => {
                self.remote_entry(&body.peer_id, node, &tenant);
            }
            StatusChange::Left if self.is_suspended(&body.peer_id) => {
                // Gone before we heard of its adoption: end what we hold with it.
                self.moved_out.remove(&body.peer_id);
                self.expire(&body.peer_id, out);
            }
            StatusChange::Left => {
                self.peers.remove(&body.peer_id);
                self.moved_out.remove(&body.peer_id);
                self.broadcast(&tenant, &body.status, out);
            }
            StatusChange::Changed => {
                // Its node may speak for a peer we suspended (the node was presumed dead
                // after a pause): the peer lives on there.
                self.release_hold(&body.peer_id, node, out);
                let entry = self.remote_entry(&body.peer_id, node, &tenant);
                entry.node = Some(node.to_string());
                entry.status = body.status.clone();
                self.broadcast(&tenant, &body.status, out);
            }
        }
    }

    /// The replica entry of a peer of another node (in `tenant`), created if new.
    fn remote_entry(&mut self, peer_id: &str, node: &str, tenant: &str) -> &mut Peer {
        self.grants_apply |= !tenant.is_empty();
        let entry = self.peers.entry(peer_id.to_string()).or_insert_with(|| {
            Peer::new(
                Some(node.to_string()),
                ProtocolVersion::V1,
                PeerStatus::default(),
            )
        });
        if entry.grants.tenant != tenant {
            entry.grants = std::sync::Arc::new(Grants::of_tenant(Some(tenant)));
        }
        entry
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

    /// Number of known peers per node (`None`: this node).
    pub fn peers_per_node(&self) -> HashMap<Option<NodeId>, usize> {
        let mut counts = HashMap::new();
        for p in self.peers.values() {
            *counts.entry(p.node.clone()).or_insert(0) += 1;
        }
        counts
    }
}
