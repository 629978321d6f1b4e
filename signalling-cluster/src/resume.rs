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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use parking_lot::Mutex;
use proto::PeerId;
use rand::RngCore;
use tokio::sync::Notify;
use tracing::{debug, info};

use crate::bus::Bus;
use crate::mailbox::{Mailbox, MailboxReceiver};

/// A peer whose connection dropped, kept for a resume (or handed over to a new connection).
pub struct Parked {
    pub peer_id: PeerId,
    pub mailbox: Mailbox,
    pub receiver: MailboxReceiver,
    /// What was written to the dropped connection, to replay what the client never got.
    pub sent: Sent,
}

/// Frames written to a v2 peer, numbered from 1 across its connections (the `welcome` is not
/// counted). The client counts what it receives and resumes with `&last=N`; the frames after
/// N that the network lost with the old connection are sent again. The last
/// [`Sent::KEEP`] frames (at most [`Sent::KEEP_BYTES`]) are kept for that.
#[derive(Debug, Default)]
pub struct Sent {
    /// Number of the last frame written.
    pub written: u64,
    ring: std::collections::VecDeque<String>,
    bytes: usize,
}

impl Sent {
    pub const KEEP: usize = 256;
    pub const KEEP_BYTES: usize = 4 * 1024 * 1024;

    /// Continues the numbering after frame `written`.
    pub fn starting_at(written: u64) -> Self {
        Sent {
            written,
            ..Default::default()
        }
    }

    pub fn record(&mut self, frame: String) {
        self.written += 1;
        self.bytes += frame.len();
        self.ring.push_back(frame);
        while self.ring.len() > Self::KEEP || self.bytes > Self::KEEP_BYTES {
            match self.ring.pop_front() {
                Some(f) => self.bytes -= f.len(),
                None => break,
            }
        }
    }

    /// The frames after number `last`, or `None` if some of them are no longer kept.
    pub fn after(&self, last: u64) -> Option<Vec<String>> {
        let last = last.min(self.written);
        let oldest = self.written - self.ring.len() as u64 + 1;
        if last + 1 < oldest {
            return None;
        }
        let skip = (last + 1 - oldest) as usize;
        Some(self.ring.iter().skip(skip).cloned().collect())
    }

    /// For a client that received up to `last` (or, if it does not say, all that was
    /// written): the frames to send again and where the numbering goes on from.
    pub fn resume(&self, last: Option<u64>) -> Option<(Vec<String>, u64)> {
        match last {
            None => Some((Vec::new(), self.written)),
            Some(last) => {
                let last = last.min(self.written);
                self.after(last).map(|replay| (replay, last))
            }
        }
    }
}

/// Asks a connected peer's connection to give the peer up for a reconnection with its token:
/// it stops writing, hands back its queue and what it wrote, and closes without removing the
/// peer. (The connection actor, `crate::peer::PeerConnection`, handles it.)
#[derive(Message)]
#[rtype(result = "()")]
pub struct Handover(pub tokio::sync::oneshot::Sender<Option<Parked>>);

/// v2 peers by resume token: connected ones, ones being parked, and parked ones waiting to
/// resume.
pub struct ResumeRegistry {
    grace: Duration,
    entries: Mutex<HashMap<String, Entry>>,
    /// Told of every change of an entry, for reconnections waiting on a parking.
    changed: Notify,
    generation: AtomicU64,
    /// The node is stopping with nowhere to resume (a standalone node's SIGTERM): nothing is
    /// parked any more.
    closed: AtomicBool,
}

enum Entry {
    /// Connected: its connection gives the peer up on a [`Handover`].
    Live(Recipient<Handover>),
    /// Its connection just ended without a close: the writer is handing back the queue, and
    /// the peer is parked in a moment (or leaves, if it was stuck).
    Parking,
    /// Waiting for a resume, with the generation it was parked in, so that an expiry timer of
    /// an earlier parking never removes a later one.
    Parked { generation: u64, peer: Parked },
}

/// Longest a reconnection waits for its peer's old connection to be parked. A client told to
/// move (`goAway`, a drain) reconnects elsewhere at once, often before the old node noticed
/// that its socket ended: without the wait its resume raced the parking and became a new
/// peer. Parking takes one writer round (milliseconds); the bound only matters for a writer
/// stuck on a dead socket.
const PARKING_WAIT: Duration = Duration::from_secs(2);

/// A fresh resume token for a peer of `node_id`.
pub fn new_token(node_id: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{hex}.{node_id}")
}

/// What the cluster stores to recognise `token` (SHA-256, hex): never the token itself.
pub fn token_hash(token: &str) -> String {
    // rustls' ring provider is compiled in anyway: its SHA-256 spares a dependency.
    let sha256 = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256
        .tls13()
        .map(|s| s.common.hash_provider);
    match sha256 {
        Some(h) => h
            .hash(token.as_bytes())
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        // (a TLS 1.3 suite always has a hash; keep the token out of Redis regardless)
        None => String::new(),
    }
}

/// The node that issued `token`.
pub fn token_node(token: &str) -> Option<&str> {
    token.split_once('.').map(|(_, node)| node)
}

impl ResumeRegistry {
    pub fn new(grace: Duration) -> Arc<Self> {
        Arc::new(ResumeRegistry {
            grace,
            entries: Mutex::new(HashMap::new()),
            changed: Notify::new(),
            generation: Default::default(),
            closed: AtomicBool::new(false),
        })
    }

    /// Whether dropped connections are kept at all (`--resume-grace 0` turns it off, and so
    /// does [`ResumeRegistry::close`]).
    pub fn enabled(&self) -> bool {
        !self.grace.is_zero() && !self.closed.load(Ordering::SeqCst)
    }

    /// From now on, connections that end are not kept for a resume: the node stops and no
    /// other node could take them (a standalone node).
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    /// A v2 connection is up under `token`.
    pub fn connected(&self, token: &str, connection: Recipient<Handover>) {
        self.entries
            .lock()
            .insert(token.to_string(), Entry::Live(connection));
        self.changed.notify_waiters();
    }

    /// The v2 connection under `token` is down; `parking`: its peer is about to be parked
    /// ([`ResumeRegistry::park`], or [`ResumeRegistry::abandon`] if that fails).
    pub fn disconnected(&self, token: &str, connection: &Recipient<Handover>, parking: bool) {
        let mut entries = self.entries.lock();
        if matches!(entries.get(token), Some(Entry::Live(c)) if c == connection) {
            match parking {
                true => entries.insert(token.to_string(), Entry::Parking),
                false => entries.remove(token),
            };
            self.changed.notify_waiters();
        }
    }

    /// Parks a peer whose connection dropped; after the grace period, or when its queue
    /// fills, it leaves.
    pub fn park(self: &Arc<Self>, token: String, parked: Parked, bus: Arc<dyn Bus>) {
        let peer_id = parked.peer_id.clone();
        let stuck = parked.receiver.stuck.clone();
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        {
            let mut entries = self.entries.lock();
            if !matches!(entries.get(&token), Some(Entry::Parking)) {
                // Forgotten meanwhile (`forget_all`): the peer is not this node's any more.
                return debug!(peer_id, "not parking a forgotten peer");
            }
            info!(
                peer_id,
                grace_secs = self.grace.as_secs(),
                "connection lost; keeping the peer for resume"
            );
            entries.insert(
                token.clone(),
                Entry::Parked {
                    generation,
                    peer: parked,
                },
            );
        }
        self.changed.notify_waiters();
        bus.away(&peer_id, true);
        let registry = self.clone();
        actix_rt::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(registry.grace) => {}
                _ = stuck.notified() => {}
            }
            // Still parked (not resumed) since then? Then it is gone for good.
            let expired = {
                let mut entries = registry.entries.lock();
                match entries.get(&token) {
                    Some(Entry::Parked { generation: g, .. }) if *g == generation => {
                        match entries.remove(&token) {
                            Some(Entry::Parked { peer, .. }) => Some(peer),
                            _ => None,
                        }
                    }
                    _ => None,
                }
            };
            if let Some(p) = expired {
                info!(
                    peer_id = p.peer_id,
                    "not resumed in time; removing the peer"
                );
                crate::metrics::resumed("expired");
                bus.leave(&p.peer_id);
            }
        });
    }

    /// Forgets every peer (the node was fenced: the cluster suspended its v2 peers, and a
    /// resume goes through their suspension now). Connections that end from now on are not
    /// parked; parked queues are dropped.
    pub fn forget_all(&self) {
        let mut entries = self.entries.lock();
        if !entries.is_empty() {
            info!(
                peers = entries.len(),
                "forgetting every peer kept for resume"
            );
            entries.clear();
            self.changed.notify_waiters();
        }
    }

    /// The peer being parked under `token` could not be (its queue was stuck): it leaves.
    pub fn abandon(&self, token: &str) {
        let mut entries = self.entries.lock();
        if matches!(entries.get(token), Some(Entry::Parking)) {
            entries.remove(token);
            self.changed.notify_waiters();
        }
    }

    /// Takes the peer under `token` for a reconnection: a parked one at once, a connected one
    /// after closing its old connection, one being parked once it is (within
    /// `PARKING_WAIT`).
    pub async fn take(&self, token: &str) -> Option<Parked> {
        let deadline = tokio::time::Instant::now() + PARKING_WAIT;
        loop {
            // Registered before looking, so that no change in between is missed.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let live = {
                let mut entries = self.entries.lock();
                match entries.remove(token) {
                    None => return None,
                    Some(Entry::Parked { peer, .. }) => return Some(peer),
                    Some(entry) => {
                        let live = match &entry {
                            Entry::Live(connection) => Some(connection.clone()),
                            _ => None,
                        };
                        entries.insert(token.to_string(), entry);
                        live
                    }
                }
            };
            if let Some(connection) = live {
                let (tx, rx) = tokio::sync::oneshot::channel();
                if connection.send(Handover(tx)).await.is_ok() {
                    if let Ok(Some(parked)) = rx.await {
                        let mut entries = self.entries.lock();
                        if matches!(entries.get(token), Some(Entry::Live(c)) if *c == connection) {
                            entries.remove(token);
                        }
                        return Some(parked);
                    }
                }
                // Its connection is ending by itself: it parks the peer, or the peer leaves.
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_what_the_client_did_not_get() {
        let mut sent = Sent::starting_at(0);
        for i in 1..=5 {
            sent.record(format!("f{i}"));
        }
        assert_eq!(
            sent.resume(Some(3)),
            Some((vec!["f4".into(), "f5".into()], 3))
        );
        assert_eq!(sent.resume(Some(5)), Some((vec![], 5)));
        assert_eq!(sent.resume(None), Some((vec![], 5)));
        // a client claiming more than was sent gets nothing again
        assert_eq!(sent.resume(Some(9)), Some((vec![], 5)));
    }

    #[test]
    fn token_hash_is_sha256_hex() {
        assert_eq!(
            token_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn refuses_when_frames_are_no_longer_kept() {
        let mut sent = Sent::starting_at(10);
        for i in 0..(Sent::KEEP + 5) {
            sent.record(format!("f{i}"));
        }
        assert_eq!(sent.resume(Some(10)), None);
        assert!(sent.resume(Some(10 + 5)).is_some());
    }
}
