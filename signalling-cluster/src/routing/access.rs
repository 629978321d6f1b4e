//! Access: what a peer's grants (`crate::grants`) let it do, applied by the router to the peer
//! that acts. Registering a role, starting a session, what lists and presence show, and
//! tenants kept apart. Without auth every peer holds every grant in the default tenant, and
//! nothing here changes what upstream's server does.

use std::sync::Arc;

use proto::envelope::StatusChange;
use proto::{ErrorCode, PeerId, PeerInfo, PeerStatus, ProtocolVersion, ServerMessage};

use super::{announce, not_found, Effect, Outbox, Peer, Res, Router};
use crate::grants::Grants;

/// Everything, in the default tenant: a peer of a node without auth.
pub(super) fn unrestricted() -> Arc<Grants> {
    thread_local! {
        static EVERYTHING: Arc<Grants> = Arc::new(Grants::everything());
    }
    EVERYTHING.with(Arc::clone)
}

use crate::grants::producer_name as name_of;

/// Whether `grants` allow registering `status` (its roles, a producer's name).
pub(super) fn may_register(grants: &Grants, status: &PeerStatus) -> Res {
    if status.producing() && !grants.may_produce(name_of(status)) {
        let name = name_of(status).unwrap_or("(no name)");
        return Err((
            ErrorCode::Forbidden,
            format!("Not allowed to produce '{name}'"),
        ));
    }
    if status.consuming() && !grants.may_consume_any() {
        return Err((ErrorCode::Forbidden, "Not allowed to consume".into()));
    }
    if status.listening() && !grants.may_listen() {
        return Err((ErrorCode::Forbidden, "Not allowed to listen".into()));
    }
    Ok(())
}

/// Whether `from` may start a session with `to` (peer id `to_id`): another tenant's peers do
/// not exist for it, and a producer needs a `consume` grant covering its name.
pub(super) fn may_start(from: &Peer, to: &Peer, to_id: &str) -> Res {
    if to.grants.tenant != from.grants.tenant {
        return Err(not_found(to_id));
    }
    if to.status.producing() && !from.grants.may_consume(name_of(&to.status)) {
        let name = name_of(&to.status).unwrap_or("(no name)");
        return Err((
            ErrorCode::Forbidden,
            format!("Not allowed to watch '{name}'"),
        ));
    }
    Ok(())
}

impl Router {
    /// A peer connected here with what its token grants.
    pub fn join_as(
        &mut self,
        peer_id: &str,
        version: ProtocolVersion,
        grants: Arc<Grants>,
        out: &mut Outbox,
    ) {
        let tenant = grants.tenant.clone();
        self.grants_apply |= !grants.is_unrestricted();
        let mut peer = Peer::new(None, version, PeerStatus::default());
        peer.grants = grants;
        self.peers.insert(peer_id.to_string(), peer);
        let joined = PeerStatus::default();
        announce(out, peer_id, &tenant, joined, StatusChange::Joined);
    }

    /// A local peer resumed with a new token: what it grants from now on.
    pub fn regrant(&mut self, peer_id: &str, grants: Arc<Grants>) {
        if let Some(p) = self.peers.get_mut(peer_id).filter(|p| p.node.is_none()) {
            self.grants_apply |= !grants.is_unrestricted();
            p.grants = grants;
        }
    }

    /// The tenant of a known peer.
    pub fn tenant_of(&self, peer_id: &str) -> Option<&str> {
        self.peers.get(peer_id).map(|p| p.grants.tenant.as_str())
    }

    /// Tells the local listeners that may see it (same tenant; a producer only to those who
    /// may watch it) of the status of a peer of `tenant`.
    pub(super) fn broadcast(&self, tenant: &str, status: &PeerStatus, out: &mut Outbox) {
        if self.listeners.is_empty() {
            return;
        }
        if !self.grants_apply {
            // (no auth anywhere in sight: every listener sees everything, as upstream)
            let to = self.listeners.iter().cloned().collect();
            out.push(Effect::Broadcast(
                to,
                ServerMessage::PeerStatusChanged(status.clone()),
            ));
            return;
        }
        let to: Vec<PeerId> = self
            .listeners
            .iter()
            .filter(|l| {
                self.peers
                    .get(l.as_str())
                    .is_some_and(|p| p.grants.sees(tenant, status))
            })
            .cloned()
            .collect();
        if !to.is_empty() {
            let msg = ServerMessage::PeerStatusChanged(status.clone());
            out.push(Effect::Broadcast(to, msg));
        }
    }

    /// The peers passing `filter` that `viewer` may see (`Grants::sees`).
    pub(super) fn visible_peers(
        &self,
        viewer: &str,
        filter: fn(&PeerStatus) -> bool,
    ) -> Vec<PeerInfo> {
        if !self.grants_apply {
            return self.filter_peers(filter);
        }
        let Some(grants) = self.peers.get(viewer).map(|p| p.grants.clone()) else {
            return Vec::new();
        };
        self.peers
            .iter()
            .filter(|(_, p)| filter(&p.status) && grants.sees(&p.grants.tenant, &p.status))
            .map(|(id, p)| PeerInfo {
                id: id.clone(),
                meta: p.status.meta.clone(),
            })
            .collect()
    }
}
