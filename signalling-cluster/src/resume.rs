//! Keeping a v2 peer alive across a dropped connection, and handing it over on resume.
//!
//! Every v2 connection is registered here under its resume token. When a v2 peer's socket
//! ends without a WebSocket close, its peer id, roles and sessions stay in the router and
//! messages for it keep queuing in its [`Mailbox`] (bounded by the peer queue); the receiving
//! end of the mailbox is parked here for `--resume-grace`. A reconnection with the token
//! claims the peer — parked, or even still connected (its old connection is then closed) — on
//! this node, or, through the cluster bus, from another node. If the grace period passes or
//! the queue fills, the peer leaves as a disconnected peer does.
//!
//! Tokens are `<256 random bits, hex>.<node id>`, so any node knows whom to ask.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use parking_lot::Mutex;
use proto::PeerId;
use rand::RngCore;
use tracing::info;

use crate::bus::Bus;
use crate::mailbox::{Mailbox, MailboxReceiver};
use crate::peer::{Handover, PeerConnection};

/// A suspended (or handed over) peer.
pub struct Parked {
    pub peer_id: PeerId,
    pub mailbox: Mailbox,
    pub receiver: MailboxReceiver,
    /// Frames the dropped connection had taken from the queue but could not write.
    pub unsent: Vec<String>,
}

/// v2 peers by resume token: connected ones, and parked ones waiting to resume.
pub struct ResumeRegistry {
    grace: Duration,
    /// Parked peers with the generation they were parked in, so that an expiry timer of an
    /// earlier suspension never removes a later one.
    parked: Mutex<HashMap<String, (u64, Parked)>>,
    live: Mutex<HashMap<String, Addr<PeerConnection>>>,
    generation: std::sync::atomic::AtomicU64,
}

/// A fresh resume token for a peer of `node_id`.
pub fn new_token(node_id: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{hex}.{node_id}")
}

/// The node that issued `token`.
pub fn token_node(token: &str) -> Option<&str> {
    token.split_once('.').map(|(_, node)| node)
}

impl ResumeRegistry {
    pub fn new(grace: Duration) -> Arc<Self> {
        Arc::new(ResumeRegistry {
            grace,
            parked: Mutex::new(HashMap::new()),
            live: Mutex::new(HashMap::new()),
            generation: Default::default(),
        })
    }

    /// Whether dropped connections are kept at all (`--resume-grace 0` turns it off).
    pub fn enabled(&self) -> bool {
        !self.grace.is_zero()
    }

    /// A v2 connection is up under `token`.
    pub fn connected(&self, token: &str, addr: Addr<PeerConnection>) {
        self.live.lock().insert(token.to_string(), addr);
    }

    /// The v2 connection under `token` is down.
    pub fn disconnected(&self, token: &str, addr: &Addr<PeerConnection>) {
        let mut live = self.live.lock();
        if live.get(token) == Some(addr) {
            live.remove(token);
        }
    }

    /// Parks a suspended peer; after the grace period, or when its queue fills, it leaves.
    pub fn park(self: &Arc<Self>, token: String, parked: Parked, bus: Arc<dyn Bus>) {
        let peer_id = parked.peer_id.clone();
        let stuck = parked.receiver.stuck.clone();
        info!(peer_id, grace = ?self.grace, "connection lost; keeping the peer for resume");
        let generation = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.parked
            .lock()
            .insert(token.clone(), (generation, parked));
        let registry = self.clone();
        actix_rt::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(registry.grace) => {}
                _ = stuck.notified() => {}
            }
            // Still parked (not resumed) since then? Then it is gone for good.
            let expired = {
                let mut parked = registry.parked.lock();
                match parked.get(&token) {
                    Some((g, _)) if *g == generation => parked.remove(&token).map(|(_, p)| p),
                    _ => None,
                }
            };
            if let Some(p) = expired {
                info!(
                    peer_id = p.peer_id,
                    "not resumed in time; removing the peer"
                );
                bus.leave(&p.peer_id);
            }
        });
    }

    /// Takes the peer under `token` for a reconnection: a parked one at once, a connected one
    /// after closing its old connection.
    pub async fn claim(&self, token: &str) -> Option<Parked> {
        if let Some((_, p)) = self.parked.lock().remove(token) {
            return Some(p);
        }
        let addr = self.live.lock().remove(token)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        addr.send(Handover(tx)).await.ok()?;
        rx.await.ok().flatten()
    }
}
