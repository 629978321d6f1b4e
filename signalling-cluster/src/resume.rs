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

/// v2 peers by resume token: connected ones, and parked ones waiting to resume.
pub struct ResumeRegistry {
    grace: Duration,
    /// Parked peers with the generation they were parked in, so that an expiry timer of an
    /// earlier suspension never removes a later one.
    parked: Mutex<HashMap<String, (u64, Parked)>>,
    live: Mutex<HashMap<String, Recipient<Handover>>>,
    generation: std::sync::atomic::AtomicU64,
}

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
    pub fn connected(&self, token: &str, connection: Recipient<Handover>) {
        self.live.lock().insert(token.to_string(), connection);
    }

    /// The v2 connection under `token` is down.
    pub fn disconnected(&self, token: &str, connection: &Recipient<Handover>) {
        let mut live = self.live.lock();
        if live.get(token) == Some(connection) {
            live.remove(token);
        }
    }

    /// Parks a peer whose connection dropped; after the grace period, or when its queue
    /// fills, it leaves.
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
    pub async fn take(&self, token: &str) -> Option<Parked> {
        if let Some((_, p)) = self.parked.lock().remove(token) {
            return Some(p);
        }
        let connection = self.live.lock().remove(token)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        connection.send(Handover(tx)).await.ok()?;
        rx.await.ok().flatten()
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
