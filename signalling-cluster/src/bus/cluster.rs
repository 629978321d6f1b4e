//! The cluster bus: nodes joined over Redis.
//!
//! * Every node routes its own peers with its own [`Router`]; what the router addresses to
//!   other nodes goes out as [`proto::envelope::Envelope`]s, pipelined by one publisher task:
//!   presence on `{prefix}:presence` (to every node), everything else on `{prefix}:node:{id}`
//!   (to one node). A relayed message therefore costs one `PUBLISH`.
//! * Registered peers are also kept in the hash `{prefix}:peers` (peer id -> node and status),
//!   written just before the announcement, from which a starting node loads its replica.
//! * Liveness: each node refreshes its score (expiry time) in the sorted set `{prefix}:nodes`
//!   every [`TICK`]; a node whose score has passed is reaped by the one node that wins
//!   `SET {prefix}:reap:{id} NX`: it removes the dead node's peers from the hash and publishes
//!   `nodeDown`, on which every node ends its sessions with the dead node and tells its
//!   listeners.
//! * Envelopes carry a per-sender, per-channel sequence number; a gap on a node channel means
//!   pub/sub lost a message, and the sessions with that sender are ended rather than left
//!   silently broken.
//!
//! See `docs/cluster.md` for the whole picture.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use parking_lot::Mutex;
use proto::envelope::{
    Envelope, NodeDownBody, NodeMessage, PeerStatusBody, ResumeClaimBody, ResumeGrantBody,
};
use proto::{ClientMessage, ErrorCode, PeerId, PeerInfo, PeerStatus, ServerMessage};
use redis::aio::ConnectionManager;
use tokio::sync::mpsc;
use tracing::{debug, info, warn, Instrument};

use super::{deliver, Bus, BusStats, Claim, NodeSummary, Pending};
use crate::mailbox::Mailbox;
use crate::resume::{token_node, ResumeRegistry};
use crate::routing::{Effect, NodeId, Outbox, Router};

/// How often a node refreshes its liveness and looks for dead nodes.
pub const TICK: Duration = Duration::from_millis(250);

/// Longest a resume claim waits for the other node's answer.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(3);

/// Longest a `list` waits for its read-your-writes barrier.
const BARRIER_TIMEOUT: Duration = Duration::from_secs(2);

/// Settings of the cluster bus.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub url: String,
    pub prefix: String,
    pub node_id: NodeId,
    /// A node not heard of for this long is dead.
    pub node_ttl: Duration,
}

/// Errors setting up the cluster bus.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("invalid Redis URL: {0}")]
    Url(#[source] redis::RedisError),
    #[error("cannot reach Redis: {0}")]
    Connect(#[source] redis::RedisError),
}

/// The Redis-backed bus; see the module documentation.
pub struct RedisBus {
    shared: Arc<Shared>,
}

struct Shared {
    settings: RedisSettings,
    keys: Keys,
    state: Mutex<State>,
    /// To the publisher task, in routing order.
    out: mpsc::UnboundedSender<Outgoing>,
    /// Redis reachable (subscriber connected and last publish succeeded).
    connected: AtomicBool,
    /// Nodes listed in `{prefix}:nodes` at the last liveness tick.
    live_nodes: Mutex<Vec<NodeId>>,
    /// Set by `shutdown`: stop refreshing our liveness.
    leaving: AtomicBool,
    /// Our v2 peers by resume token, for claims from other nodes.
    registry: Arc<ResumeRegistry>,
}

/// A claim we sent for a client that reconnected here with another node's token.
struct PendingClaim {
    mailbox: Mailbox,
    done: tokio::sync::oneshot::Sender<Option<(PeerId, u64)>>,
}

#[derive(Default)]
struct State {
    router: Router,
    mailboxes: HashMap<PeerId, Mailbox>,
    /// Barriers in flight, by id: fired when our marker comes back from Redis.
    barriers: HashMap<u64, tokio::sync::oneshot::Sender<()>>,
    next_barrier: u64,
    /// Resume claims in flight, by id.
    claims: HashMap<u64, PendingClaim>,
    next_claim: u64,
    /// Last (boot, sequence number) seen per (sender, channel): gaps mean lost messages.
    seen: HashMap<(String, String), (u64, u64)>,
}

enum Outgoing {
    Barrier(u64),
    /// This node leaves: drop it from the liveness set, tell the others.
    Leave,
    Announce(PeerStatusBody),
    ToNode(NodeId, NodeMessage),
    NodeDown(NodeId),
}

struct Keys {
    peers: String,
    nodes: String,
    presence: String,
    prefix: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        Keys {
            peers: format!("{prefix}:peers"),
            nodes: format!("{prefix}:nodes"),
            presence: format!("{prefix}:presence"),
            prefix: prefix.to_string(),
        }
    }
    fn node(&self, node: &str) -> String {
        format!("{}:node:{node}", self.prefix)
    }
    fn reap(&self, node: &str) -> String {
        format!("{}:reap:{node}", self.prefix)
    }
}

/// What `{prefix}:peers` stores per peer.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredPeer {
    node: NodeId,
    status: PeerStatus,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl RedisBus {
    /// Connects to Redis, loads the cluster's peers and starts the bus tasks.
    pub async fn connect(
        settings: RedisSettings,
        registry: Arc<ResumeRegistry>,
    ) -> Result<Arc<RedisBus>, ClusterError> {
        let client = redis::Client::open(settings.url.as_str()).map_err(ClusterError::Url)?;
        let con = ConnectionManager::new(client.clone())
            .await
            .map_err(ClusterError::Connect)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            keys: Keys::new(&settings.prefix),
            settings,
            state: Mutex::new(State::default()),
            out: tx,
            connected: AtomicBool::new(false),
            live_nodes: Mutex::new(Vec::new()),
            leaving: AtomicBool::new(false),
            registry,
        });
        // Subscribe before loading, so nothing announced in between is missed.
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        // The bus tasks log with the node id, like the peers' spans.
        let span = tracing::info_span!("cluster", node = %shared.settings.node_id);
        actix_rt::spawn(
            subscriber(shared.clone(), client, con.clone(), ready_tx).instrument(span.clone()),
        );
        let _ = ready_rx.await;
        actix_rt::spawn(publisher(shared.clone(), rx, con.clone()).instrument(span.clone()));
        actix_rt::spawn(liveness(shared.clone(), con).instrument(span));
        info!(node_id = shared.settings.node_id, "joined the cluster");
        Ok(Arc::new(RedisBus { shared }))
    }
}

impl Shared {
    /// Carries out the router's effects: local deliveries now, the rest via the publisher.
    fn flush(&self, state: &State, out: Outbox) {
        for effect in out {
            match effect {
                Effect::Deliver(to, msg) => deliver(&state.mailboxes, &to, &msg),
                Effect::Announce(body) => {
                    let _ = self.out.send(Outgoing::Announce(body));
                }
                Effect::ToNode(node, msg) => {
                    let _ = self.out.send(Outgoing::ToNode(node, msg));
                }
            }
        }
    }

    /// One envelope from the subscription.
    fn receive(self: &Arc<Self>, channel: &str, text: &str) {
        let env = match Envelope::parse(text) {
            Ok(env) => env,
            Err(e) => return warn!(channel, "dropping envelope: {e}"),
        };
        if env.from == self.settings.node_id {
            // Our own presence announcements come back to us; our barriers too.
            if env.kind == "barrier" {
                if let Ok(Some(NodeMessage::Barrier(b))) = env.open() {
                    if let Some(fire) = self.state.lock().barriers.remove(&b.id) {
                        let _ = fire.send(());
                    }
                }
            }
            return;
        }
        let msg = match env.open() {
            Ok(Some(msg)) => msg,
            Ok(None) => return debug!(kind = env.kind, "ignoring envelope of a newer kind"),
            Err(e) => return warn!(kind = env.kind, "dropping envelope: {e}"),
        };
        let mut state = self.state.lock();
        let mut out = Outbox::new();
        // Every envelope counts for gap detection, whatever it carries.
        let key = (env.from.clone(), channel.to_string());
        let last = state.seen.insert(key, (env.boot, env.seq));
        // A new boot of the sender starts counting again.
        let gap = last.is_some_and(|(boot, last)| boot == env.boot && env.seq > last + 1);
        if gap && channel != self.keys.presence {
            // A directed message was lost: the sessions with that node may be broken.
            warn!(
                from = env.from,
                ?last,
                seq = env.seq,
                "message gap: ending sessions with node"
            );
            state.router.end_sessions_with(&env.from, true, &mut out);
        }
        if let NodeMessage::NodeDown(NodeDownBody { node }) = &msg {
            if *node == self.settings.node_id {
                // We were presumed dead (a long pause?): put our peers back.
                warn!("the cluster presumed this node dead; announcing our peers again");
                for body in state.router.local_statuses() {
                    out.push(Effect::Announce(body));
                }
                self.flush(&state, out);
                return;
            }
        }
        match msg {
            NodeMessage::ResumeClaim(claim) => self.answer_claim(env.from.clone(), claim),
            NodeMessage::ResumeGrant(grant) => {
                self.take_grant(&mut state, &env.from, grant, &mut out)
            }
            msg => state.router.remote(&env.from, msg, &mut out),
        }
        self.flush(&state, out);
    }

    /// Another node wants one of our peers: hand it over (after closing its connection here,
    /// if it still has one), with its sessions and what is queued for it.
    fn answer_claim(self: &Arc<Self>, node: NodeId, claim: ResumeClaimBody) {
        let shared = self.clone();
        actix_rt::spawn(async move {
            let parked = shared.registry.claim(&claim.token).await;
            let mut state = shared.state.lock();
            let mut grant = ResumeGrantBody {
                claim: claim.claim,
                peer_id: None,
                status: PeerStatus::default(),
                sessions: Vec::new(),
                frames: Vec::new(),
                written: 0,
            };
            let mut out = Vec::new();
            let resumable = parked.and_then(|p| match p.sent.resume(claim.last) {
                Some(replay) => Some((p, replay)),
                None => {
                    warn!(
                        peer_id = p.peer_id,
                        "cannot replay what the client lost; the peer leaves"
                    );
                    state.mailboxes.remove(&p.peer_id);
                    state.router.leave(&p.peer_id, &mut out);
                    None
                }
            });
            if let Some((mut parked, (replay, written))) = resumable {
                let me = shared.settings.node_id.clone();
                if let Some((status, sessions)) =
                    state.router.export_peer(&parked.peer_id, &me, &node)
                {
                    state.mailboxes.remove(&parked.peer_id);
                    let mut frames = replay;
                    frames.append(&mut parked.unsent);
                    while let Ok(out) = parked.receiver.rx.try_recv() {
                        if let crate::mailbox::Outbound::Text(t) = out {
                            frames.push(t);
                        }
                    }
                    info!(
                        peer_id = parked.peer_id,
                        to = node,
                        frames = frames.len(),
                        written,
                        "peer handed over"
                    );
                    grant.peer_id = Some(parked.peer_id);
                    grant.status = status;
                    grant.sessions = sessions;
                    grant.frames = frames;
                    grant.written = written;
                }
            }
            out.push(Effect::ToNode(node, NodeMessage::ResumeGrant(grant)));
            shared.flush(&state, out);
        });
    }

    /// The answer to one of our claims: register the peer here with the mailbox its new
    /// connection waits on, queued messages first.
    fn take_grant(&self, state: &mut State, from: &str, grant: ResumeGrantBody, out: &mut Outbox) {
        let Some(pending) = state.claims.remove(&grant.claim) else {
            return;
        };
        let Some(peer_id) = grant.peer_id else {
            let _ = pending.done.send(None);
            return;
        };
        for frame in grant.frames {
            let _ = pending.mailbox.send(crate::mailbox::Outbound::Text(frame));
        }
        let me = self.settings.node_id.clone();
        state.router.import_peer(
            &peer_id,
            pending.mailbox.version(),
            grant.status,
            grant.sessions,
            &me,
            from,
            out,
        );
        state.mailboxes.insert(peer_id.clone(), pending.mailbox);
        let _ = pending.done.send(Some((peer_id, grant.written)));
    }
}

impl Bus for RedisBus {
    fn join(&self, peer_id: &str, mailbox: Mailbox) {
        let mut out = Outbox::new();
        let mut state = self.shared.state.lock();
        state.router.join(peer_id, mailbox.version(), &mut out);
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
        state.router.leave(peer_id, &mut out);
        self.shared.flush(&state, out);
    }

    fn notify_local(&self, msg: &ServerMessage) {
        let state = self.shared.state.lock();
        for mailbox in state.mailboxes.values() {
            let _ = mailbox.deliver(msg);
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
        self.shared.connected.load(Ordering::SeqCst)
    }

    fn claim(&self, token: &str, last: Option<u64>, mailbox: Mailbox) -> Option<Claim> {
        let node = token_node(token)?.to_string();
        if node == self.shared.settings.node_id || !self.ready() {
            return None;
        }
        let (done, answer) = tokio::sync::oneshot::channel();
        let mut state = self.shared.state.lock();
        let claim = state.next_claim;
        state.next_claim += 1;
        state.claims.insert(claim, PendingClaim { mailbox, done });
        let _ = self.shared.out.send(Outgoing::ToNode(
            node,
            NodeMessage::ResumeClaim(ResumeClaimBody {
                claim,
                token: token.to_string(),
                last,
            }),
        ));
        let shared = self.shared.clone();
        Some(Box::pin(async move {
            let answer = tokio::time::timeout(CLAIM_TIMEOUT, answer).await;
            if answer.is_err() {
                shared.state.lock().claims.remove(&claim);
            }
            answer.ok().and_then(Result::ok).flatten()
        }))
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
                let _ = shared.out.send(Outgoing::Leave);
                let fired = barrier(&shared);
                let _ = tokio::time::timeout(BARRIER_TIMEOUT, fired).await;
            }
        })
    }
}

/// Publishes a marker to our own channel; the receiver fires when it comes back, that is
/// when everything published before it has gone through Redis.
fn barrier(shared: &Shared) -> tokio::sync::oneshot::Receiver<()> {
    let mut state = shared.state.lock();
    let id = state.next_barrier;
    state.next_barrier += 1;
    let (fire, fired) = tokio::sync::oneshot::channel();
    state.barriers.insert(id, fire);
    let _ = shared.out.send(Outgoing::Barrier(id));
    fired
}

/// Publishes what the routers address to other nodes, in order, pipelined.
async fn publisher(
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    mut con: ConnectionManager,
) {
    let me = shared.settings.node_id.clone();
    let boot = now_ms();
    let mut seq: HashMap<String, u64> = HashMap::new();
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, 512).await > 0 {
        let mut pipe = redis::pipe();
        for item in batch.drain(..) {
            let (channel, msg) = match item {
                Outgoing::Announce(body) => {
                    // The store first: whoever sees the announcement can read it back.
                    if body.left {
                        pipe.hdel(&shared.keys.peers, &body.peer_id).ignore();
                    } else {
                        let stored = StoredPeer {
                            node: me.clone(),
                            status: body.status.clone(),
                        };
                        let json = serde_json::to_string(&stored).unwrap_or_default();
                        pipe.hset(&shared.keys.peers, &body.peer_id, json).ignore();
                    }
                    (shared.keys.presence.clone(), NodeMessage::PeerStatus(body))
                }
                Outgoing::ToNode(node, msg) => (shared.keys.node(&node), msg),
                Outgoing::Leave => {
                    pipe.cmd("ZREM").arg(&shared.keys.nodes).arg(&me).ignore();
                    (
                        shared.keys.presence.clone(),
                        NodeMessage::NodeDown(NodeDownBody { node: me.clone() }),
                    )
                }
                Outgoing::Barrier(id) => (
                    shared.keys.node(&me),
                    NodeMessage::Barrier(proto::envelope::BarrierBody { id }),
                ),
                Outgoing::NodeDown(node) => (
                    shared.keys.presence.clone(),
                    NodeMessage::NodeDown(NodeDownBody { node }),
                ),
            };
            let n = seq.entry(channel.clone()).or_insert(0);
            *n += 1;
            pipe.publish(channel, msg.seal(&me, boot, *n)).ignore();
        }
        match pipe.query_async::<()>(&mut con).await {
            Ok(()) => {}
            Err(e) => {
                // The receivers see the sequence gap and end what depended on these messages.
                warn!("publishing to Redis failed, messages lost: {e}");
                shared.connected.store(false, Ordering::SeqCst);
            }
        }
    }
}

/// Keeps the subscription alive; on (re)connection reloads the replica and restores our peers
/// in Redis (it may have restarted empty).
async fn subscriber(
    shared: Arc<Shared>,
    client: redis::Client,
    mut con: ConnectionManager,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    let mut backoff = Duration::from_millis(100);
    let node_channel = shared.keys.node(&shared.settings.node_id);
    loop {
        let pubsub = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&shared.keys.presence).await?;
            pubsub.subscribe(&node_channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        }
        .await;
        let pubsub = match pubsub {
            Ok(p) => p,
            Err(e) => {
                warn!(?backoff, "cannot subscribe to Redis: {e}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if let Err(e) = resync(&shared, &mut con).await {
            warn!("cannot load the cluster state: {e}");
            tokio::time::sleep(backoff).await;
            continue;
        }
        backoff = Duration::from_millis(100);
        shared.connected.store(true, Ordering::SeqCst);
        info!("subscribed to the cluster");
        if let Some(r) = ready.take() {
            let _ = r.send(());
        }
        let mut messages = pubsub.into_on_message();
        while let Some(msg) = messages.next().await {
            match msg.get_payload::<String>() {
                Ok(text) => shared.receive(msg.get_channel_name(), &text),
                Err(e) => warn!("non-text message on the cluster channel: {e}"),
            }
        }
        warn!("lost the Redis subscription; reconnecting");
        shared.connected.store(false, Ordering::SeqCst);
    }
}

/// Loads the other nodes' peers into the replica and writes ours back (Redis may be new).
async fn resync(shared: &Shared, con: &mut ConnectionManager) -> redis::RedisResult<()> {
    let stored: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(&shared.keys.peers)
        .query_async(con)
        .await?;
    let mut state = shared.state.lock();
    let mut out = Outbox::new();
    for (peer_id, json) in stored {
        let Ok(peer) = serde_json::from_str::<StoredPeer>(&json) else {
            continue;
        };
        if peer.node == shared.settings.node_id {
            continue;
        }
        let body = PeerStatusBody {
            joined: peer.status.peer_id.is_none(),
            peer_id,
            status: peer.status,
            left: false,
            moved: false,
        };
        state
            .router
            .remote(&peer.node, NodeMessage::PeerStatus(body), &mut out);
    }
    for body in state.router.local_statuses() {
        out.push(Effect::Announce(body));
    }
    shared.flush(&state, out);
    Ok(())
}

/// Refreshes our liveness score and reaps nodes whose score has expired.
async fn liveness(shared: Arc<Shared>, mut con: ConnectionManager) {
    let me = shared.settings.node_id.clone();
    let ttl = shared.settings.node_ttl.as_millis() as u64;
    let mut tick = tokio::time::interval(TICK);
    // When each node was last listed in {prefix}:nodes. A node missing from it for two TTLs
    // (Redis restarted empty and the node never came back) is gone for us too.
    let mut listed: HashMap<NodeId, std::time::Instant> = HashMap::new();
    loop {
        tick.tick().await;
        if shared.leaving.load(Ordering::SeqCst) {
            return;
        }
        let now = now_ms();
        let result: redis::RedisResult<(Vec<String>, Vec<String>)> = redis::pipe()
            .cmd("ZADD")
            .arg(&shared.keys.nodes)
            .arg(now + ttl)
            .arg(&me)
            .ignore()
            .cmd("ZRANGEBYSCORE")
            .arg(&shared.keys.nodes)
            .arg("-inf")
            .arg(now)
            .cmd("ZRANGE")
            .arg(&shared.keys.nodes)
            .arg(0)
            .arg(-1)
            .query_async(&mut con)
            .await;
        let (dead, members) = match result {
            Ok(r) => r,
            Err(e) => {
                debug!("liveness update failed: {e}");
                continue;
            }
        };
        let seen = std::time::Instant::now();
        for m in &members {
            listed.insert(m.clone(), seen);
        }
        *shared.live_nodes.lock() = members;
        forget_unlisted(&shared, &mut listed, shared.settings.node_ttl * 2);
        for node in dead.into_iter().filter(|n| *n != me) {
            if let Err(e) = reap(&shared, &mut con, &node).await {
                warn!(node, "reaping failed: {e}");
            }
        }
    }
}

/// Ends what this node holds of nodes that have not been listed alive for `grace`.
fn forget_unlisted(
    shared: &Shared,
    listed: &mut HashMap<NodeId, std::time::Instant>,
    grace: Duration,
) {
    if !shared.connected.load(Ordering::SeqCst) {
        // No news is not bad news while we cannot hear anything: everyone gets a fresh grace
        // period once we can again.
        listed.clear();
        return;
    }
    let mut state = shared.state.lock();
    let mut out = Outbox::new();
    for node in state.router.remote_nodes() {
        let first_seen = *listed
            .entry(node.clone())
            .or_insert_with(std::time::Instant::now);
        if first_seen.elapsed() > grace {
            warn!(node, "node no longer listed in the cluster; forgetting it");
            state.router.node_down(&node, &mut out);
            listed.remove(&node);
        }
    }
    shared.flush(&state, out);
}

/// Removes a dead node from the cluster, if this node wins the right to.
async fn reap(shared: &Shared, con: &mut ConnectionManager, node: &str) -> redis::RedisResult<()> {
    let won: Option<String> = redis::cmd("SET")
        .arg(shared.keys.reap(node))
        .arg(&shared.settings.node_id)
        .arg("NX")
        .arg("PX")
        .arg(10_000)
        .query_async(con)
        .await?;
    if won.is_none() {
        return Ok(()); // another node does it
    }
    info!(node, "reaping a dead node");
    let stored: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(&shared.keys.peers)
        .query_async(con)
        .await?;
    let theirs: Vec<&String> = stored
        .iter()
        .filter(|(_, json)| serde_json::from_str::<StoredPeer>(json).is_ok_and(|p| p.node == node))
        .map(|(id, _)| id)
        .collect();
    let mut pipe = redis::pipe();
    if !theirs.is_empty() {
        pipe.cmd("HDEL")
            .arg(&shared.keys.peers)
            .arg(&theirs)
            .ignore();
    }
    pipe.cmd("ZREM").arg(&shared.keys.nodes).arg(node).ignore();
    pipe.query_async::<()>(con).await?;
    // Everyone else learns it from the announcement; we apply it ourselves.
    let _ = shared.out.send(Outgoing::NodeDown(node.to_string()));
    let mut state = shared.state.lock();
    let mut out = Outbox::new();
    state.router.node_down(node, &mut out);
    shared.flush(&state, out);
    Ok(())
}
