//! A cluster node whose Redis is not there yet: on a first install Redis often starts after the
//! nodes. A node makes its first attempt before it listens (so that a node up and healthy with
//! Redis there has joined); if that fails (at once when refused, within `--redis-timeout` when
//! nothing answers), it listens and goes on waiting for Redis with backoff, each attempt logged;
//! until it has joined, `/readyz` answers 503, WebSocket upgrades get 503 with the reason,
//! and the operations API and `/place` answer 503 too (`Bus::joining`). Once joined, every
//! call goes to the [`RedisBus`]. It gives up only after `--redis-join-timeout`, if given, or
//! at once on a Redis URL that no retry can fix.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use proto::envelope::{AdminBody, SessionRow};
use proto::{ClientMessage, PeerId, PeerInfo, ServerMessage};
use tracing::{info, warn};

use super::cluster::{ClusterError, RedisBus, RedisSettings};
use super::{Bus, BusStats, Claim, NodeSummary, Pending};
use crate::grants::Grants;
use crate::mailbox::{Mailbox, Outbound};
use crate::resume::ResumeRegistry;
use crate::routing::{Census, PeerRow, Unplaced};

/// The first wait between attempts, doubled after each up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Why the node stopped trying to join.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The Redis URL (or Sentinel settings) cannot work, however long the node waits.
    // (causes in the messages, not `source`s: printed once, on one line)
    #[error("cannot join the cluster: {0}")]
    Unusable(ClusterError),
    #[error("cannot join the cluster within --redis-join-timeout ({secs} s): {last}")]
    TimedOut { secs: f64, last: ClusterError },
}

impl JoinError {
    /// A configuration error (exit 2) rather than a Redis that stayed away (exit 1).
    pub fn is_usage(&self) -> bool {
        matches!(self, JoinError::Unusable(_))
    }
}

/// The bus of a cluster node: a [`RedisBus`] once joined, nothing before.
#[derive(Default)]
pub struct JoiningBus {
    joined: OnceLock<Arc<RedisBus>>,
}

impl JoiningBus {
    /// The bus, the work that joins the cluster (to run beside the server: it ends `Ok` once
    /// joined, or with why the node gives up), and a signal that the first attempt failed.
    pub fn start(
        settings: RedisSettings,
        registry: Arc<ResumeRegistry>,
        bound: Option<Duration>,
    ) -> (
        Arc<JoiningBus>,
        impl Future<Output = Result<(), JoinError>>,
        tokio::sync::oneshot::Receiver<()>,
    ) {
        let bus = Arc::new(JoiningBus::default());
        let joining = bus.clone();
        let (first_failed, first) = tokio::sync::oneshot::channel();
        let mut first_failed = Some(first_failed);
        let work = async move {
            let started = tokio::time::Instant::now();
            let deadline = bound.map(|b| started + b);
            let mut backoff = FIRST_BACKOFF;
            let mut attempt = 0u64;
            loop {
                attempt += 1;
                info!(attempt, "joining the cluster: connecting to Redis");
                // (each step of an attempt is bounded by the Redis timeout)
                let result = RedisBus::connect(settings.clone(), registry.clone()).await;
                let e = match result {
                    Ok(bus) => {
                        let _ = joining.joined.set(bus);
                        return Ok(());
                    }
                    Err(e) if !e.retryable() => return Err(JoinError::Unusable(e)),
                    Err(e) => e,
                };
                if let Some(tell) = first_failed.take() {
                    let _ = tell.send(());
                }
                let now = tokio::time::Instant::now();
                if deadline.is_some_and(|at| now >= at) {
                    let secs = bound.unwrap_or_default().as_secs_f64();
                    return Err(JoinError::TimedOut { secs, last: e });
                }
                warn!(
                    attempt,
                    retry_in_ms = backoff.as_millis() as u64,
                    waited_secs = now.duration_since(started).as_secs(),
                    "waiting for Redis: {e}; unready (/readyz 503) and refusing connections \
                     until the node has joined"
                );
                // (the last attempt is made at the bound)
                let wake = deadline.map_or(now + backoff, |at| at.min(now + backoff));
                tokio::time::sleep_until(wake).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        };
        (bus, work, first)
    }

    fn bus(&self) -> Option<&Arc<RedisBus>> {
        self.joined.get()
    }
}

impl Bus for JoiningBus {
    fn join(&self, peer_id: &str, mailbox: Mailbox, grants: Arc<Grants>) {
        match self.bus() {
            Some(bus) => bus.join(peer_id, mailbox, grants),
            // (upgrades are refused while joining: a peer cannot get here, but if it did it
            // would be registered nowhere)
            None => {
                let _ = mailbox.send(Outbound::Close(1013, "not in the cluster yet".into()));
            }
        }
    }

    fn regrant(&self, peer_id: &str, grants: Arc<Grants>) -> bool {
        self.bus().is_some_and(|b| b.regrant(peer_id, grants))
    }

    fn handle(&self, from: &str, msg: ClientMessage) -> Option<Pending> {
        self.bus()?.handle(from, msg)
    }

    fn leave(&self, peer_id: &str) {
        if let Some(bus) = self.bus() {
            bus.leave(peer_id);
        }
    }

    fn away(&self, peer_id: &str, away: bool) {
        if let Some(bus) = self.bus() {
            bus.away(peer_id, away);
        }
    }

    fn notify_local(&self, msg: &ServerMessage) {
        if let Some(bus) = self.bus() {
            bus.notify_local(msg);
        }
    }

    fn close_local(&self, code: u16, reason: &str) {
        if let Some(bus) = self.bus() {
            bus.close_local(code, reason);
        }
    }

    fn claim(&self, token: &str, last: Option<u64>, mailbox: Mailbox) -> Option<Claim> {
        self.bus()?.claim(token, last, mailbox)
    }

    fn resume_token(&self, peer_id: &str, token: &str) {
        if let Some(bus) = self.bus() {
            bus.resume_token(peer_id, token);
        }
    }

    fn shutdown(&self) -> Pending {
        match self.bus() {
            Some(bus) => bus.shutdown(),
            None => Box::pin(async {}),
        }
    }

    fn ready(&self) -> bool {
        self.bus().is_some_and(|b| b.ready())
    }

    fn joining(&self) -> bool {
        self.bus().is_none()
    }

    fn fenced(&self) -> bool {
        self.bus().is_some_and(|b| b.fenced())
    }

    fn place(&self, stream: &str, viewer: &Grants) -> Result<PeerId, Unplaced> {
        match self.bus() {
            Some(bus) => bus.place(stream, viewer),
            None => Err(Unplaced::UnknownStream(stream.to_string())),
        }
    }

    fn producers(&self) -> Vec<PeerInfo> {
        self.bus().map(|b| b.producers()).unwrap_or_default()
    }

    fn nodes(&self) -> Vec<NodeSummary> {
        self.bus().map(|b| b.nodes()).unwrap_or_default()
    }

    fn census(&self) -> Census {
        self.bus().map(|b| b.census()).unwrap_or_default()
    }

    fn peer_rows(&self, me: &str) -> Vec<PeerRow> {
        self.bus().map(|b| b.peer_rows(me)).unwrap_or_default()
    }

    fn session_rows(&self, me: &str) -> futures::future::BoxFuture<'static, Vec<SessionRow>> {
        match self.bus() {
            Some(bus) => bus.session_rows(me),
            None => Box::pin(futures::future::ready(Vec::new())),
        }
    }

    fn act(&self, me: &str, op: AdminBody) {
        if let Some(bus) = self.bus() {
            bus.act(me, op);
        }
    }

    fn stats(&self) -> BusStats {
        self.bus().map_or(
            BusStats {
                peers: 0,
                sessions: 0,
            },
            |b| b.stats(),
        )
    }
}
