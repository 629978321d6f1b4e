//! The cluster bus: nodes joined over Redis.
//!
//! Every node routes its own peers with its own [`Router`]; what the router addresses to other
//! nodes goes out as [`proto::envelope::Envelope`]s on Redis pub/sub, and what other nodes
//! send comes in the same way. Registered peers are also stored in Redis, from which a
//! starting node loads its replica. See `docs/cluster.md` for the whole picture.
//!
//! | file | behaviour |
//! |---|---|
//! | `mod.rs` | [`RedisBus`]: the [`Bus`] of a cluster node; its shared state; carrying out the router's effects |
//! | `endpoint.rs` | where Redis is: a URL, or the master Sentinels name (followed through failovers) |
//! | `keys.rs` | every key and channel name in Redis, and what the stored values hold |
//! | `publisher.rs` | writing to Redis: pipelines, batch envelopes, sequence numbers |
//! | `admin.rs` | the operations API across nodes: actions sent to every node, listings gathered |
//! | `subscriber.rs` | reading from Redis: the subscription, gap and lateness checks, resync, the one handler per node-message kind |
//! | `liveness.rs` | a node's death: liveness scores, reaping, `nodeDown`, suspension and expiry of its peers; Redis that stops answering |
//! | `handover.rs` | resume across nodes: claims and grants with a live node, adoption of a dead node's peer |
//! | `load.rs` | announcing how many sessions each local producer serves, for placement |
//! | `fencing.rs` | a node cut off from Redis longer than the node TTL: its peers sent away, its rejoining as a new incarnation |

mod admin;
mod endpoint;
mod fencing;
mod handover;
mod keys;
mod liveness;
mod load;
mod publisher;
mod subscriber;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use proto::{ClientMessage, ErrorCode, PeerId, PeerInfo, ServerMessage};
use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, oneshot, Notify};
use tracing::{info, Instrument};

use super::resp;
use super::{deliver, deliver_many, Bus, BusStats, Claim, NodeSummary, Pending};
use crate::grants::Grants;
use crate::mailbox::Mailbox;
use crate::resume::ResumeRegistry;
use crate::routing::{Effect, NodeId, Outbox, Router};
pub use endpoint::Endpoint;
use handover::{Adoption, PendingClaim};
use keys::{now_ms, Keys};
use publisher::Outgoing;

/// Longest a `list` waits for its read-your-writes barrier.
const BARRIER_TIMEOUT: Duration = Duration::from_secs(2);

/// Settings of the cluster bus.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub endpoint: Endpoint,
    pub prefix: String,
    pub node_id: NodeId,
    /// A node not heard of for this long is dead.
    pub node_ttl: Duration,
    /// A Redis command not answered within this is a Redis unreachable.
    pub redis_timeout: Duration,
    /// How long a dead node's v2 peers stay suspended for a resume elsewhere (0: removed at
    /// once).
    pub resume_grace: Duration,
    /// Most messages held for one suspended peer.
    pub hold_limit: usize,
}

/// Errors setting up the cluster bus (each says its cause: no `source`, printed once).
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot locate Redis (a bad URL, or no Sentinel named the master): {0}")]
    Locate(redis::RedisError),
    #[error("cannot reach Redis: {0}")]
    Connect(redis::RedisError),
    #[error("cannot reach Redis: {0}")]
    Reach(resp::RespError),
    #[error("cannot use this Redis URL: {0}")]
    Unsupported(resp::RespError),
}

impl ClusterError {
    /// Whether trying again may work (Redis not up yet, unreachable for now); not for a URL
    /// or settings that cannot work.
    pub fn retryable(&self) -> bool {
        match self {
            ClusterError::Locate(e) => e.kind() != redis::ErrorKind::InvalidClientConfig,
            // (a certificate Redis shows that we do not trust stays untrusted)
            ClusterError::Reach(e) => !e.is_untrusted(),
            ClusterError::Connect(_) => true,
            ClusterError::Unsupported(_) => false,
        }
    }
}

/// The Redis-backed bus; see the module documentation.
pub struct RedisBus {
    shared: Arc<Shared>,
}

struct Shared {
    settings: RedisSettings,
    keys: Keys,
    state: Mutex<State>,
    /// To the publisher task, in routing order, each with the time it was queued.
    out: mpsc::UnboundedSender<(u64, Outgoing)>,
    /// Subscribed to our channels (and the replica loaded since).
    connected: AtomicBool,
    /// The publisher has a working connection (its last pipeline went through).
    publishing: AtomicBool,
    /// Nodes listed in `{prefix}:nodes` at the last liveness tick.
    live_nodes: Mutex<Vec<NodeId>>,
    /// Nodes that read batch envelopes (from `{prefix}:features` at the last liveness tick).
    batch_nodes: Mutex<Arc<HashSet<NodeId>>>,
    /// Set by `shutdown`: stop refreshing our liveness.
    leaving: AtomicBool,
    /// Our v2 peers by resume token, for claims from other nodes.
    registry: Arc<ResumeRegistry>,
    /// For the occasional direct command (claims of suspended peers); replaced by the
    /// liveness task when Redis stops answering.
    con: Mutex<ConnectionManager>,
    /// Redis answered the last liveness tick in time (`liveness.rs`).
    answering: AtomicBool,
    /// Told when Redis stops answering: the publisher and the subscriber drop their
    /// connections, whose buffered traffic would otherwise arrive late.
    stalled: Notify,
    barriers: Barriers,
    /// Cut off from Redis for longer than the node TTL (`fencing.rs`).
    fenced: AtomicBool,
    /// This incarnation's boot id, with which the publisher numbers envelopes (ms since the
    /// epoch; a new one when the node rejoins after a fence).
    boot: AtomicU64,
    /// The publisher drops anything queued before this time (ms): a fence's leftovers.
    fresh_from: AtomicU64,
    /// Operations API listings waiting for other nodes (`admin.rs`).
    admin: admin::AdminRequests,
}

/// Barriers in flight, by id: each fires when our marker comes back from Redis, that is when
/// everything published before it has gone through.
#[derive(Default)]
struct Barriers {
    waiting: Mutex<(u64, HashMap<u64, oneshot::Sender<()>>)>,
}

impl Barriers {
    fn fire(&self, id: u64) {
        if let Some(fire) = self.waiting.lock().1.remove(&id) {
            let _ = fire.send(());
        }
    }
}

#[derive(Default)]
struct State {
    router: Router,
    mailboxes: HashMap<PeerId, Mailbox>,
    /// Resume claims in flight, by id.
    claims: HashMap<u64, PendingClaim>,
    next_claim: u64,
    /// Hash of the newest resume token of each local v2 peer, stored with it in Redis.
    tokens: HashMap<PeerId, String>,
    /// Nodes reaped while we ran (until we hear from them again).
    down: HashSet<NodeId>,
    adoptions: HashMap<PeerId, Adoption>,
}

impl RedisBus {
    /// Connects to Redis, loads the cluster's peers and starts the bus tasks.
    pub async fn connect(
        settings: RedisSettings,
        registry: Arc<ResumeRegistry>,
    ) -> Result<Arc<RedisBus>, ClusterError> {
        let client = settings
            .endpoint
            .locate(settings.redis_timeout)
            .await
            .map_err(ClusterError::Locate)?;
        resp::supported(client.get_connection_info().addr()).map_err(ClusterError::Unsupported)?;
        // A connection of the bus' own first: it says at once why Redis cannot be reached
        // (refused, TLS, a password), where redis-rs' manager retries quietly until the timeout.
        let name = format!("gwc-{}-probe", settings.node_id);
        let probe = resp::Connection::connect(client.get_connection_info(), &name);
        tokio::time::timeout(settings.redis_timeout, probe)
            .await
            .map_err(|_| ClusterError::Reach(resp::RespError::Timeout(settings.redis_timeout)))?
            .map_err(ClusterError::Reach)?;
        // (bounded: redis-rs' own retries would keep a first connection silent for seconds)
        let con = within(
            settings.redis_timeout,
            manager(&client, settings.redis_timeout),
        )
        .await
        .map_err(ClusterError::Connect)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let state = State {
            router: Router::with_hold_limit(settings.hold_limit),
            ..State::default()
        };
        let shared = Arc::new(Shared {
            keys: Keys::new(&settings.prefix),
            settings,
            state: Mutex::new(state),
            out: tx,
            connected: AtomicBool::new(false),
            publishing: AtomicBool::new(false),
            live_nodes: Mutex::new(Vec::new()),
            batch_nodes: Mutex::new(Default::default()),
            leaving: AtomicBool::new(false),
            registry,
            con: Mutex::new(con.clone()),
            answering: AtomicBool::new(true),
            stalled: Notify::new(),
            barriers: Barriers::default(),
            fenced: AtomicBool::new(false),
            boot: AtomicU64::new(now_ms()),
            fresh_from: AtomicU64::new(0),
            admin: Default::default(),
        });
        // Subscribe before loading, so nothing announced in between is missed.
        let (ready_tx, ready_rx) = oneshot::channel();
        // The bus tasks log with the node id, like the peers' spans.
        let span = tracing::info_span!("cluster", node = %shared.settings.node_id);
        actix_rt::spawn(subscriber::subscriber(shared.clone(), ready_tx).instrument(span.clone()));
        let _ = ready_rx.await;
        actix_rt::spawn(publisher::publisher(shared.clone(), rx).instrument(span.clone()));
        actix_rt::spawn(liveness::liveness(shared.clone(), con).instrument(span));
        info!(node_id = shared.settings.node_id, "joined the cluster");
        Ok(Arc::new(RedisBus { shared }))
    }
}

impl Shared {
    /// Carries out the router's effects: local deliveries now, the rest via the publisher.
    fn flush(&self, state: &State, out: Outbox) {
        let at = now_ms();
        for effect in out {
            match effect {
                Effect::Deliver(to, msg) => deliver(&state.mailboxes, &to, &msg),
                Effect::Broadcast(to, msg) => deliver_many(&state.mailboxes, &to, &msg),
                Effect::Announce(body) => {
                    let resume = state.tokens.get(&body.peer_id).cloned();
                    let _ = self.out.send((at, Outgoing::Announce(body, resume)));
                }
                Effect::ToNode(node, msg) => {
                    let _ = self.out.send((at, Outgoing::ToNode(node, msg)));
                }
            }
        }
    }

    /// Hands `item` to the publisher, stamped with the time.
    fn publish(&self, item: Outgoing) {
        let _ = self.out.send((now_ms(), item));
    }
}

impl Bus for RedisBus {
    fn join(&self, peer_id: &str, mailbox: Mailbox, grants: Arc<Grants>) {
        let mut out = Outbox::new();
        let mut state = self.shared.state.lock();
        state
            .router
            .join_as(peer_id, mailbox.version(), grants, &mut out);
        state.mailboxes.insert(peer_id.to_string(), mailbox);
        self.shared.flush(&state, out);
    }

    fn handle(&self, from: &str, msg: ClientMessage) -> Option<Pending> {
        let mut out = Outbox::new();
        let mut state = self.shared.state.lock();
        if matches!(msg, ClientMessage::List | ClientMessage::ListConsumers) && self.ready() {
            // Read-your-writes: answer once a marker we publish now comes back, which is
            // after every announcement published before it has been applied here.
            drop(state);
            let fired = barrier(&self.shared);
            let (shared, from) = (self.shared.clone(), from.to_string());
            return Some(Box::pin(async move {
                // Never hang a peer on a lost marker: answer from what we have.
                let _ = tokio::time::timeout(BARRIER_TIMEOUT, fired).await;
                let mut out = Outbox::new();
                let mut state = shared.state.lock();
                state.router.handle(&from, msg, &mut out);
                shared.flush(&state, out);
            }));
        }
        if !self.ready() && state.router.crosses_nodes(from, &msg) {
            // Rather than a message lost in transit: a clear error now, and a relay's session
            // ended on both sides (the other node hears when Redis is back).
            deliver(
                &state.mailboxes,
                from,
                &ServerMessage::error(
                    ErrorCode::ClusterUnavailable,
                    "the cluster is unavailable: the other peer is on another node",
                ),
            );
            if let ClientMessage::Peer(m) = &msg {
                state.router.abort_session(&m.session_id, true, &mut out);
            }
        } else {
            state.router.handle(from, msg, &mut out);
        }
        self.shared.flush(&state, out);
        None
    }

    fn leave(&self, peer_id: &str) {
        let mut out = Outbox::new();
        let mut state = self.shared.state.lock();
        state.mailboxes.remove(peer_id);
        state.tokens.remove(peer_id);
        state.router.leave(peer_id, &mut out);
        self.shared.flush(&state, out);
    }

    fn peer_rows(&self, _me: &str) -> Vec<crate::routing::PeerRow> {
        let me = &self.shared.settings.node_id;
        self.shared.state.lock().router.peer_rows(me)
    }

    fn session_rows(
        &self,
        _me: &str,
    ) -> futures::future::BoxFuture<'static, Vec<proto::envelope::SessionRow>> {
        Box::pin(self.shared.clone().sessions())
    }

    fn act(&self, _me: &str, op: proto::envelope::AdminBody) {
        self.shared.act(op);
    }

    fn census(&self) -> crate::routing::Census {
        let mut census = self.shared.state.lock().router.census();
        census.nodes = self.nodes().len();
        census
    }

    fn regrant(&self, peer_id: &str, grants: Arc<Grants>) -> bool {
        let mut state = self.shared.state.lock();
        if state.router.tenant_of(peer_id) != Some(grants.tenant.as_str()) {
            return false;
        }
        state.router.regrant(peer_id, grants);
        true
    }

    fn place(&self, stream: &str, viewer: &Grants) -> Result<PeerId, crate::routing::Unplaced> {
        let state = self.shared.state.lock();
        state.router.place_for(viewer, stream)
    }

    fn away(&self, peer_id: &str, away: bool) {
        // (other nodes learn it with the loads, every liveness tick: bus/cluster/load.rs)
        self.shared.state.lock().router.set_away(peer_id, away);
    }

    fn notify_local(&self, msg: &ServerMessage) {
        let state = self.shared.state.lock();
        for mailbox in state.mailboxes.values() {
            let _ = mailbox.deliver(msg);
        }
    }

    fn close_local(&self, code: u16, reason: &str) {
        let state = self.shared.state.lock();
        for mailbox in state.mailboxes.values() {
            let _ = mailbox.send(crate::mailbox::Outbound::Close(code, reason.into()));
        }
    }

    fn producers(&self) -> Vec<PeerInfo> {
        self.shared.state.lock().router.producers()
    }

    fn nodes(&self) -> Vec<NodeSummary> {
        let counts = self.shared.state.lock().router.peers_per_node();
        let me = &self.shared.settings.node_id;
        let mut nodes: Vec<NodeSummary> = self
            .shared
            .live_nodes
            .lock()
            .iter()
            .map(|id| NodeSummary {
                peers: counts
                    .get(&(id != me).then(|| id.clone()))
                    .copied()
                    .unwrap_or(0),
                id: (id != me).then(|| id.clone()),
            })
            .collect();
        if !nodes.iter().any(|n| n.id.is_none()) {
            nodes.push(NodeSummary {
                id: None,
                peers: counts.get(&None).copied().unwrap_or(0),
            });
        }
        nodes
    }

    fn stats(&self) -> BusStats {
        let state = self.shared.state.lock();
        BusStats {
            peers: state.router.local_peer_count(),
            sessions: state.router.session_count(),
        }
    }

    fn ready(&self) -> bool {
        !self.shared.is_fenced()
            && self.shared.connected.load(Ordering::SeqCst)
            && self.shared.publishing.load(Ordering::SeqCst)
            && self.shared.answering.load(Ordering::SeqCst)
    }

    fn fenced(&self) -> bool {
        self.shared.is_fenced()
    }

    fn claim(&self, token: &str, last: Option<u64>, mailbox: Mailbox) -> Option<Claim> {
        if !self.ready() {
            return None;
        }
        self.shared.claim(token, last, mailbox)
    }

    fn resume_token(&self, peer_id: &str, token: &str) {
        self.shared.resume_token(peer_id, token);
    }

    fn shutdown(&self) -> Pending {
        let shared = self.shared.clone();
        Box::pin(async move {
            {
                let mut state = shared.state.lock();
                let mut out = Outbox::new();
                let local: Vec<PeerId> = state
                    .router
                    .local_statuses()
                    .into_iter()
                    .map(|b| b.peer_id)
                    .collect();
                info!(peers = local.len(), "leaving the cluster");
                shared.leaving.store(true, Ordering::SeqCst);
                for peer_id in &local {
                    state.mailboxes.remove(peer_id);
                    state.router.leave(peer_id, &mut out);
                }
                shared.flush(&state, out);
            }
            // Twice, each time waiting until it has gone through Redis: a liveness refresh
            // already under way when we set `leaving` may land after the first removal.
            for _ in 0..2 {
                shared.publish(Outgoing::Leave);
                let fired = barrier(&shared);
                let _ = tokio::time::timeout(BARRIER_TIMEOUT, fired).await;
            }
        })
    }
}

/// A connection (redis-rs) for the occasional command, whose deadlines are the Redis timeout
/// (redis-rs' own default answers within 500 ms or fails).
async fn manager(
    client: &redis::Client,
    timeout: Duration,
) -> redis::RedisResult<ConnectionManager> {
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_response_timeout(Some(timeout))
        .set_connection_timeout(Some(timeout));
    ConnectionManager::new_with_config(client.clone(), config).await
}

impl Shared {
    /// Where to connect to Redis now (a Sentinel master may have changed), for the bus' own
    /// RESP connections.
    async fn locate(&self) -> Result<redis::ConnectionInfo, resp::RespError> {
        match self
            .settings
            .endpoint
            .locate(self.settings.redis_timeout)
            .await
        {
            Ok(client) => Ok(client.get_connection_info().clone()),
            Err(e) => Err(std::io::Error::other(format!("cannot locate Redis: {e}")).into()),
        }
    }
}

/// A Redis command within the Redis timeout: one not answered in time fails like a refused
/// connection.
async fn within<T>(
    timeout: Duration,
    command: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> redis::RedisResult<T> {
    match tokio::time::timeout(timeout, command).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("Redis did not answer within {timeout:?}"),
        )
        .into()),
    }
}

/// Publishes a marker to our own channel; the receiver fires when it comes back, that is
/// when everything published before it has gone through Redis.
fn barrier(shared: &Shared) -> oneshot::Receiver<()> {
    let (fire, fired) = oneshot::channel();
    let id = {
        let mut waiting = shared.barriers.waiting.lock();
        let id = waiting.0;
        waiting.0 += 1;
        waiting.1.insert(id, fire);
        id
    };
    shared.publish(Outgoing::Barrier(id));
    fired
}
