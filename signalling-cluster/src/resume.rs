//! Keeping a v2 peer alive across a dropped connection.
//!
//! When a v2 peer's socket ends without a WebSocket close, its peer id, roles and sessions stay
//! in the router and messages for it keep queuing in its [`Mailbox`] (bounded by the peer
//! queue). The receiving end of the mailbox is parked here under the peer's resume token for
//! `--resume-grace`. A reconnection with that token takes it back: same peer id, and the queued
//! messages are delivered first, in order. If the grace period passes or the queue fills, the
//! peer leaves as a disconnected peer does.
//!
//! Resuming on another node of a cluster is not done yet: the token is only known here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use proto::PeerId;
use tracing::info;

use crate::bus::Bus;
use crate::mailbox::{Mailbox, MailboxReceiver};

/// A suspended peer, waiting for its client to come back.
pub struct Parked {
    pub peer_id: PeerId,
    pub mailbox: Mailbox,
    pub receiver: MailboxReceiver,
    /// Frames the dropped connection had taken from the queue but could not write.
    pub unsent: Vec<String>,
}

/// Suspended peers by resume token.
pub struct ResumeRegistry {
    grace: Duration,
    /// Parked peers with the generation they were parked in, so that an expiry timer of an
    /// earlier suspension never removes a later one.
    parked: Mutex<HashMap<String, (u64, Parked)>>,
    generation: std::sync::atomic::AtomicU64,
}

impl ResumeRegistry {
    pub fn new(grace: Duration) -> Arc<Self> {
        Arc::new(ResumeRegistry {
            grace,
            parked: Mutex::new(HashMap::new()),
            generation: Default::default(),
        })
    }

    /// Whether dropped connections are kept at all (`--resume-grace 0` turns it off).
    pub fn enabled(&self) -> bool {
        !self.grace.is_zero()
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

    /// Takes a parked peer back for a reconnection with its token.
    pub fn take(&self, token: &str) -> Option<Parked> {
        self.parked.lock().remove(token).map(|(_, p)| p)
    }
}
