//! The cluster bus: nodes joined over Redis.
//!
//! * Every node routes its own peers with its own [`Router`]; what the router addresses to
//!   other nodes goes out as [`proto::envelope::Envelope`]s, pipelined by one publisher task:
//!   presence on `{prefix}:presence` (to every node), everything else on `{prefix}:node:{id}`
//!   (to one node). What queues up for one node while the previous pipeline is in flight
//!   goes out as one batch envelope (one `PUBLISH`), to nodes that advertise reading batches
//!   in the hash `{prefix}:features`; to others, one `PUBLISH` per message.
//! * Registered peers are also kept in the hash `{prefix}:peers` (peer id -> node and status),
//!   written just before the announcement, from which a starting node loads its replica.
//! * Liveness: each node refreshes its score (expiry time) in the sorted set `{prefix}:nodes`
//!   every [`TICK`]; a node whose score has passed is reaped by the one node that wins
//!   `SET {prefix}:reap:{id} NX`: it removes the dead node's peers from the hash and publishes
//!   `nodeDown`, on which every node ends its sessions with the dead node and tells its
//!   listeners.
//! * A dead node's v2 peers with a resume token are not removed but suspended for the resume
//!   grace: the reaper keeps their entries, and stores `{prefix}:suspended:{token hash}`; a
//!   node where the client comes back claims that key (`GETDEL`: exactly one wins) and adopts
//!   the peer with its sessions (`sessionAdopt`/`adoptAck`); otherwise the reaper expires it
//!   (`suspendExpired`).
//! * Envelopes carry a per-sender, per-channel sequence number; a gap on a node channel means
//!   pub/sub lost a message, and the sessions with that sender are ended rather than left
//!   silently broken.
//!
//! See `docs/cluster.md` for the whole picture.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use proto::envelope::{
    Batch, NodeDownBody, NodeMessage, PeerStatusBody, Received, ResumeClaimBody, ResumeGrantBody,
    SessionAdoptBody, SuspendExpiredBody, FEATURE_BATCH,
};
use proto::{ClientMessage, ErrorCode, PeerId, PeerInfo, PeerStatus, ServerMessage};
use redis::aio::ConnectionManager;
use tokio::sync::mpsc;
use tracing::{debug, info, warn, Instrument};

use super::resp::{self, Pipeline};
use super::{deliver, deliver_many, Bus, BusStats, Claim, NodeSummary, Pending};
use crate::mailbox::Mailbox;
use crate::resume::{token_hash, token_node, ResumeRegistry};
use crate::routing::{Effect, NodeId, Outbox, Router};

/// How often a node refreshes its liveness and looks for dead nodes.
pub const TICK: Duration = Duration::from_millis(250);

/// Longest a resume claim waits for the other node's answer.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(3);

/// Longest a `list` waits for its read-your-writes barrier.
const BARRIER_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest an adopting node waits for the other nodes' sessions with the peer before it
/// welcomes the client.
const ADOPT_TIMEOUT: Duration = Duration::from_secs(2);

/// A suspended peer's claim key outlives the grace by this much, so that the reaper's expiry
/// (at the end of the grace) finds it; adopters check the deadline themselves.
const SUSPEND_KEY_SLACK: Duration = Duration::from_secs(5);

/// Every node drops a suspended peer this long after the key is gone, if it heard neither of
/// an adoption nor of an expiry (the reaper died, or Redis failed).
const SUSPEND_FALLBACK: Duration = Duration::from_secs(2);

/// Settings of the cluster bus.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub url: String,
    pub prefix: String,
    pub node_id: NodeId,
    /// A node not heard of for this long is dead.
    pub node_ttl: Duration,
    /// How long a dead node's v2 peers stay suspended for a resume elsewhere (0: removed at
    /// once).
    pub resume_grace: Duration,
    /// Most messages held for one suspended peer.
    pub hold_limit: usize,
}

/// Errors setting up the cluster bus.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("invalid Redis URL: {0}")]
    Url(#[source] redis::RedisError),
    #[error("cannot reach Redis: {0}")]
    Connect(#[source] redis::RedisError),
    #[error("cannot use this Redis URL: {0}")]
    Unsupported(#[source] resp::RespError),
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
    /// Subscribed to our channels (and the replica loaded since).
    connected: AtomicBool,
    /// The publisher has a working connection (its last pipeline went through).
    publishing: AtomicBool,
    /// Nodes listed in `{prefix}:nodes` at the last liveness tick.
    live_nodes: Mutex<Vec<NodeId>>,
    /// Nodes that read batch envelopes (from `{prefix}:features` at the last liveness tick).
    batch_nodes: Mutex<Arc<std::collections::HashSet<NodeId>>>,
    /// Set by `shutdown`: stop refreshing our liveness.
    leaving: AtomicBool,
    /// Our v2 peers by resume token, for claims from other nodes.
    registry: Arc<ResumeRegistry>,
    /// For the occasional direct command (claims of suspended peers).
    con: ConnectionManager,
}

/// A claim we sent for a client that reconnected here with another node's token.
struct PendingClaim {
    mailbox: Mailbox,
    done: tokio::sync::oneshot::Sender<Option<(PeerId, u64)>>,
    token: String,
    last: Option<u64>,
    /// Its node died: the peer is being adopted from its suspension instead.
    adopting: bool,
}

/// A peer we adopted, waiting for the other nodes' sessions with it.
struct Adoption {
    waiting: std::collections::HashSet<NodeId>,
    all_in: Option<tokio::sync::oneshot::Sender<()>>,
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
    /// Last (boot, sequence number) seen per sender and channel: gaps mean lost messages.
    seen: HashMap<NodeId, HashMap<String, (u64, u64)>>,
    /// Hash of the newest resume token of each local v2 peer, stored with it in Redis.
    tokens: HashMap<PeerId, String>,
    /// Nodes reaped while we ran (until we hear from them again).
    down: std::collections::HashSet<NodeId>,
    adoptions: HashMap<PeerId, Adoption>,
}

enum Outgoing {
    Barrier(u64),
    /// This node leaves: drop it from the liveness set, tell the others.
    Leave,
    /// A status, stored with the peer's token hash, then published.
    Announce(PeerStatusBody, Option<String>),
    /// Rewrite a peer's entry in `{prefix}:peers` without telling anyone (a new token).
    Store(PeerId, StoredPeer),
    ToNode(NodeId, NodeMessage),
    NodeDown(NodeDownBody),
    /// A suspended peer expired: remove its entry, tell every node.
    Expired(SuspendExpiredBody),
}

struct Keys {
    peers: String,
    nodes: String,
    presence: String,
    /// Hash: node id -> comma-separated envelope features it reads (e.g. `batch`).
    features: String,
    prefix: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        Keys {
            peers: format!("{prefix}:peers"),
            nodes: format!("{prefix}:nodes"),
            presence: format!("{prefix}:presence"),
            features: format!("{prefix}:features"),
            prefix: prefix.to_string(),
        }
    }
    fn node(&self, node: &str) -> String {
        format!("{}:node:{node}", self.prefix)
    }
    fn reap(&self, node: &str) -> String {
        format!("{}:reap:{node}", self.prefix)
    }
    fn suspended(&self, token_hash: &str) -> String {
        format!("{}:suspended:{token_hash}", self.prefix)
    }
}

/// What `{prefix}:peers` stores per peer.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredPeer {
    node: NodeId,
    status: PeerStatus,
    /// v2 peers: SHA-256 of the newest resume token, to resume it if its node dies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    resume: Option<String>,
    /// Its node died; it waits for a resume until then (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    suspended_until: Option<u64>,
}

/// What `{prefix}:suspended:{token hash}` holds: whoever deletes it adopts the peer.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct SuspendedPeer {
    peer_id: PeerId,
    node: NodeId,
    status: PeerStatus,
    until: u64,
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
        let info = client.get_connection_info().clone();
        resp::supported(info.addr()).map_err(ClusterError::Unsupported)?;
        let con = ConnectionManager::new(client.clone())
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
            con: con.clone(),
        });
        // Subscribe before loading, so nothing announced in between is missed.
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        // The bus tasks log with the node id, like the peers' spans.
        let span = tracing::info_span!("cluster", node = %shared.settings.node_id);
        actix_rt::spawn(
            subscriber(shared.clone(), info.clone(), con.clone(), ready_tx)
                .instrument(span.clone()),
        );
        let _ = ready_rx.await;
        actix_rt::spawn(publisher(shared.clone(), rx, info).instrument(span.clone()));
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
                Effect::Broadcast(to, msg) => deliver_many(&state.mailboxes, &to, &msg),
                Effect::Announce(body) => {
                    let resume = state.tokens.get(&body.peer_id).cloned();
                    let _ = self.out.send(Outgoing::Announce(body, resume));
                }
                Effect::ToNode(node, msg) => {
                    let _ = self.out.send(Outgoing::ToNode(node, msg));
                }
            }
        }
    }

    /// One envelope from the subscription: a message, or a batch of them.
    fn receive(self: &Arc<Self>, channel: &str, text: &str) {
        let env = match Received::parse(text) {
            Ok(env) => env,
            Err(e) => return warn!(channel, "dropping envelope: {e}"),
        };
        if env.from == self.settings.node_id {
            // Our own presence announcements come back to us; our barriers too.
            for msg in env.messages {
                if let Ok(Some(NodeMessage::Barrier(b))) = msg {
                    if let Some(fire) = self.state.lock().barriers.remove(&b.id) {
                        let _ = fire.send(());
                    }
                }
            }
            return;
        }
        let msgs = env.messages;
        let mut state = self.state.lock();
        let mut out = Outbox::new();
        state.down.remove(&env.from); // alive after all (or restarted)
                                      // Every envelope counts for gap detection, whatever it carries.
                                      // (looked up by reference: this runs for every envelope)
        let now = (env.boot, env.seq);
        let last = match state
            .seen
            .get_mut(env.from.as_str())
            .and_then(|by_channel| by_channel.get_mut(channel))
        {
            Some(seen) => Some(std::mem::replace(seen, now)),
            None => state
                .seen
                .entry(env.from.clone())
                .or_default()
                .insert(channel.to_string(), now),
        };
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
        for msg in msgs {
            match msg {
                Ok(Some(msg)) => self.apply(&mut state, &env.from, msg, &mut out),
                Ok(None) => debug!(kind = env.kind, "ignoring a message of a newer kind"),
                Err(e) => warn!(kind = env.kind, "dropping a message: {e}"),
            }
        }
        self.flush(&state, out);
    }

    /// One message from node `from`.
    fn apply(
        self: &Arc<Self>,
        state: &mut State,
        from: &NodeId,
        msg: NodeMessage,
        out: &mut Outbox,
    ) {
        if let NodeMessage::NodeDown(NodeDownBody { node, .. }) = &msg {
            if *node == self.settings.node_id {
                // We were presumed dead (a long pause?): put our peers back.
                warn!("the cluster presumed this node dead; announcing our peers again");
                for body in state.router.local_statuses() {
                    out.push(Effect::Announce(body));
                }
                return;
            }
        }
        match msg {
            NodeMessage::ResumeClaim(claim) => self.answer_claim(from.clone(), claim),
            NodeMessage::ResumeGrant(grant) => self.take_grant(state, from, grant, out),
            NodeMessage::NodeDown(body) => {
                let (node, suspended, grace) = (
                    body.node.clone(),
                    body.suspended.clone(),
                    Duration::from_millis(body.grace_ms),
                );
                state.router.remote(from, NodeMessage::NodeDown(body), out);
                self.after_node_down(state, &node, suspended, grace);
            }
            NodeMessage::AdoptAck(body) => {
                let peer_id = body.peer_id.clone();
                state.router.import_adopted(from, body);
                if let Some(a) = state.adoptions.get_mut(&peer_id) {
                    a.waiting.remove(from);
                    if a.waiting.is_empty() {
                        if let Some(fire) = a.all_in.take() {
                            let _ = fire.send(());
                        }
                    }
                }
            }
            msg => state.router.remote(from, msg, out),
        }
    }

    /// `node` was reaped (its `suspended` peers kept for `grace`): claims waiting for it turn
    /// into adoptions, and its suspended peers get a last-resort expiry here.
    fn after_node_down(
        self: &Arc<Self>,
        state: &mut State,
        node: &str,
        suspended: Vec<PeerId>,
        grace: Duration,
    ) {
        state.down.insert(node.to_string());
        for (id, claim) in state.claims.iter_mut() {
            if !claim.adopting && token_node(&claim.token) == Some(node) {
                claim.adopting = true;
                actix_rt::spawn(adopt(self.clone(), *id, claim.token.clone()).in_current_span());
            }
        }
        if suspended.is_empty() {
            return;
        }
        // Normally the reaper expires them (or a node adopts them) long before.
        let shared = self.clone();
        actix_rt::spawn(async move {
            tokio::time::sleep(grace + SUSPEND_KEY_SLACK + SUSPEND_FALLBACK).await;
            let mut state = shared.state.lock();
            let mut out = Outbox::new();
            for peer_id in &suspended {
                if state.router.expire(peer_id, &mut out) {
                    warn!(
                        peer_id,
                        "suspended peer neither adopted nor expired; dropping it"
                    );
                }
            }
            shared.flush(&state, out);
        });
    }

    /// Suspended `peer_id` (of dead `node`) expires: everywhere (we own its claim key).
    fn expire_suspended(&self, state: &mut State, peer_id: &str, node: &str) {
        let _ = self.out.send(Outgoing::Expired(SuspendExpiredBody {
            peer_id: peer_id.to_string(),
            node: node.to_string(),
        }));
        let mut out = Outbox::new();
        state.router.expire(peer_id, &mut out);
        self.flush(state, out);
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
                    state.tokens.remove(&p.peer_id);
                    state.router.leave(&p.peer_id, &mut out);
                    None
                }
            });
            if let Some((mut parked, (mut frames, written))) = resumable {
                let me = shared.settings.node_id.clone();
                if let Some((status, sessions)) =
                    state.router.export_peer(&parked.peer_id, &me, &node)
                {
                    state.mailboxes.remove(&parked.peer_id);
                    state.tokens.remove(&parked.peer_id);
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
        state.tokens.remove(peer_id);
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
            && self.shared.publishing.load(Ordering::SeqCst)
    }

    fn claim(&self, token: &str, last: Option<u64>, mailbox: Mailbox) -> Option<Claim> {
        let node = token_node(token)?.to_string();
        if !self.ready() {
            return None;
        }
        let me = &self.shared.settings.node_id;
        // A token of ours that the registry does not know (we restarted), or of a node that
        // is dead: the peer may be suspended, waiting for adoption.
        let dead = {
            let live = self.shared.live_nodes.lock();
            node == *me || (!live.is_empty() && !live.contains(&node))
        };
        let (done, answer) = tokio::sync::oneshot::channel();
        let mut state = self.shared.state.lock();
        let claim = state.next_claim;
        state.next_claim += 1;
        let adopting = dead || state.down.contains(&node);
        state.claims.insert(
            claim,
            PendingClaim {
                mailbox,
                done,
                token: token.to_string(),
                last,
                adopting,
            },
        );
        if adopting {
            // (in the cluster span: the adoption outlives the connection's request)
            let span = tracing::info_span!("cluster", node = %self.shared.settings.node_id);
            actix_rt::spawn(adopt(self.shared.clone(), claim, token.to_string()).instrument(span));
        } else {
            // If the node turns out dead, its reaping turns this into an adoption.
            let _ = self.shared.out.send(Outgoing::ToNode(
                node,
                NodeMessage::ResumeClaim(ResumeClaimBody {
                    claim,
                    token: token.to_string(),
                    last,
                }),
            ));
        }
        let shared = self.shared.clone();
        // Long enough for a dead node to be reaped and its peer adopted.
        let within = CLAIM_TIMEOUT + shared.settings.node_ttl + TICK + ADOPT_TIMEOUT;
        Some(Box::pin(async move {
            let answer = tokio::time::timeout(within, answer).await;
            if answer.is_err() {
                shared.state.lock().claims.remove(&claim);
            }
            answer.ok().and_then(Result::ok).flatten()
        }))
    }

    fn resume_token(&self, peer_id: &str, token: &str) {
        let hash = token_hash(token);
        let mut state = self.shared.state.lock();
        state.tokens.insert(peer_id.to_string(), hash.clone());
        // Already announced (a resumed peer): store the new hash now; a new peer's comes with
        // its first announcement.
        if let Some(status) = state.router.local_status(peer_id) {
            let stored = StoredPeer {
                node: self.shared.settings.node_id.clone(),
                status,
                resume: Some(hash),
                suspended_until: None,
            };
            let _ = self
                .shared
                .out
                .send(Outgoing::Store(peer_id.to_string(), stored));
        }
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

/// Numbers envelopes per channel, as the receivers' gap detection expects.
struct Sequencer {
    me: NodeId,
    boot: u64,
    seq: HashMap<String, u64>,
}

impl Sequencer {
    fn next(&mut self, channel: &str) -> u64 {
        match self.seq.get_mut(channel) {
            Some(n) => {
                *n += 1;
                *n
            }
            None => {
                self.seq.insert(channel.to_string(), 1);
                1
            }
        }
    }

    fn seal(&mut self, channel: &str, msg: &NodeMessage) -> String {
        let n = self.next(channel);
        msg.seal(&self.me, self.boot, n)
    }
}

/// Directed messages collected for one pipeline, by destination node, until something that is
/// not a batchable directed message comes (which is published after them, keeping order).
/// Regrouping by node keeps the order each node sees: a node reads only its own channel and
/// the presence channel, and presence is never held here.
#[derive(Default)]
struct Grouped {
    by_node: Vec<(NodeId, Vec<NodeMessage>)>,
}

impl Grouped {
    fn push(&mut self, node: NodeId, msg: NodeMessage) {
        match self.by_node.iter_mut().find(|(n, _)| *n == node) {
            Some((_, msgs)) => msgs.push(msg),
            None => self.by_node.push((node, vec![msg])),
        }
    }

    /// Adds the publishes to the pipeline and empties the groups. A lone message goes out as
    /// a plain envelope: no batch for one.
    fn publish(&mut self, pipe: &mut Pipeline, keys: &Keys, seq: &mut Sequencer) {
        for (node, msgs) in self.by_node.drain(..) {
            let channel = keys.node(&node);
            let text = match msgs.as_slice() {
                [msg] => seq.seal(&channel, msg),
                msgs => {
                    let mut batch = Batch::new();
                    msgs.iter().for_each(|m| batch.push(m));
                    let n = seq.next(&channel);
                    batch.seal(&seq.me, seq.boot, n)
                }
            };
            pipe.publish(&channel, &text);
        }
    }
}

/// Publishes what the routers address to other nodes, in order, pipelined: what queued up
/// while the previous pipeline was in flight goes out together, directed messages batched per
/// node (see [`Grouped`]).
async fn publisher(
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    redis: redis::ConnectionInfo,
) {
    let me = shared.settings.node_id.clone();
    let name = format!("gwc-{me}-publisher");
    let mut seq = Sequencer {
        me: me.clone(),
        boot: now_ms(),
        seq: HashMap::new(),
    };
    let mut batch = Vec::new();
    let mut grouped = Grouped::default();
    let mut pipe = Pipeline::default();
    let mut con: Option<resp::Connection> = None;
    let mut retry = Duration::ZERO;
    loop {
        let received = match &mut con {
            // Replies off: nothing to wait for but new messages, or the connection's end.
            Some(c) if c.is_quiet() => tokio::select! {
                n = rx.recv_many(&mut batch, 512) => Ok(n),
                e = c.closed() => Err(e),
            },
            Some(_) => Ok(rx.recv_many(&mut batch, 512).await),
            // Reconnect as soon as Redis is back, not only when the next message comes, so
            // the node is ready again (`ready` needs the publisher too).
            None => tokio::select! {
                n = rx.recv_many(&mut batch, 512) => Ok(n),
                _ = tokio::time::sleep(retry) => {
                    match connect_publisher(&redis, &name).await {
                        Ok(c) => {
                            con = Some(c);
                            shared.publishing.store(true, Ordering::SeqCst);
                        }
                        Err(e) => {
                            warn!(?retry, "cannot connect the publisher to Redis: {e}");
                            retry = (retry * 2).clamp(Duration::from_millis(100), Duration::from_secs(5));
                        }
                    }
                    continue;
                }
            },
        };
        let received = match received {
            Ok(n) => n,
            Err(e) => {
                warn!("the publisher's Redis connection ended: {e}");
                con = None;
                retry = Duration::ZERO;
                shared.publishing.store(false, Ordering::SeqCst);
                continue;
            }
        };
        if received == 0 {
            break;
        }
        pipe.clear();
        let batching = shared.batch_nodes.lock().clone();
        for item in batch.drain(..) {
            let item = match item {
                Outgoing::ToNode(node, msg) if batching.contains(&node) => {
                    grouped.push(node, msg);
                    continue;
                }
                item => item,
            };
            grouped.publish(&mut pipe, &shared.keys, &mut seq);
            let (channel, msg) = match item {
                Outgoing::Store(peer_id, stored) => {
                    let json = serde_json::to_string(&stored).unwrap_or_default();
                    pipe.hset(&shared.keys.peers, &peer_id, &json);
                    continue;
                }
                Outgoing::Expired(body) => {
                    pipe.hdel(&shared.keys.peers, &body.peer_id);
                    (
                        shared.keys.presence.clone(),
                        NodeMessage::SuspendExpired(body),
                    )
                }
                Outgoing::Announce(body, resume) => {
                    // The store first: whoever sees the announcement can read it back.
                    if body.change() == proto::envelope::StatusChange::Left {
                        pipe.hdel(&shared.keys.peers, &body.peer_id);
                    } else {
                        let stored = StoredPeer {
                            node: me.clone(),
                            status: body.status.clone(),
                            resume,
                            suspended_until: None,
                        };
                        let json = serde_json::to_string(&stored).unwrap_or_default();
                        pipe.hset(&shared.keys.peers, &body.peer_id, &json);
                    }
                    (shared.keys.presence.clone(), NodeMessage::PeerStatus(body))
                }
                Outgoing::ToNode(node, msg) => (shared.keys.node(&node), msg),
                Outgoing::Leave => {
                    pipe.cmd(&[b"ZREM", shared.keys.nodes.as_bytes(), me.as_bytes()]);
                    pipe.hdel(&shared.keys.features, &me);
                    (
                        shared.keys.presence.clone(),
                        NodeMessage::NodeDown(NodeDownBody {
                            node: me.clone(),
                            suspended: Vec::new(),
                            grace_ms: 0,
                        }),
                    )
                }
                Outgoing::Barrier(id) => (
                    shared.keys.node(&me),
                    NodeMessage::Barrier(proto::envelope::BarrierBody { id }),
                ),
                Outgoing::NodeDown(body) => {
                    (shared.keys.presence.clone(), NodeMessage::NodeDown(body))
                }
            };
            let text = seq.seal(&channel, &msg);
            pipe.publish(&channel, &text);
        }
        grouped.publish(&mut pipe, &shared.keys, &mut seq);
        if pipe.is_empty() {
            continue;
        }
        let sent = async {
            let con = match &mut con {
                Some(con) => con,
                None => con.insert(connect_publisher(&redis, &name).await?),
            };
            con.write(&pipe).await?;
            match con.is_quiet() {
                true => Ok(Vec::new()),
                false => con.replies(pipe.len()).await,
            }
        };
        match sent.await {
            Ok(errors) => {
                shared.publishing.store(true, Ordering::SeqCst);
                if let Some(e) = errors.first() {
                    warn!(
                        count = errors.len(),
                        "Redis refused commands of a pipeline: {e}"
                    );
                }
            }
            Err(e) => {
                // The receivers see the sequence gap and end what depended on these messages.
                warn!("publishing to Redis failed, messages lost: {e}");
                con = None;
                retry = Duration::ZERO;
                shared.publishing.store(false, Ordering::SeqCst);
            }
        }
    }
}

/// The publisher's connection, with Redis' replies off where allowed: a reply per pipeline
/// woke the node for nothing but an integer. Errors go unseen then, but what would make these
/// writes fail (a read-only replica, out of memory) fails the liveness tick's writes too, which
/// go through redis-rs and are logged. A writing socket whose peer has gone fails its next
/// write, and a closed connection ends the publisher's wait.
async fn connect_publisher(
    redis: &redis::ConnectionInfo,
    name: &str,
) -> Result<resp::Connection, resp::RespError> {
    let mut con = resp::Connection::connect(redis, name).await?;
    if !con.quiet().await? {
        info!("Redis refused CLIENT REPLY OFF: the publisher reads every reply");
    }
    Ok(con)
}

/// Keeps the subscription alive; on (re)connection reloads the replica and restores our peers
/// in Redis (it may have restarted empty).
async fn subscriber(
    shared: Arc<Shared>,
    redis: redis::ConnectionInfo,
    mut con: ConnectionManager,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    let mut backoff = Duration::from_millis(100);
    let node_channel = shared.keys.node(&shared.settings.node_id);
    let name = format!("gwc-{}-subscriber", shared.settings.node_id);
    loop {
        let subscribed = async {
            let mut sub = resp::Connection::connect(&redis, &name).await?;
            resp::subscribe(&mut sub, &[&shared.keys.presence, &node_channel]).await?;
            Ok::<_, resp::RespError>(sub)
        }
        .await;
        let mut sub = match subscribed {
            Ok(sub) => sub,
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
        let lost = loop {
            let read = sub.read_values(|value| match resp::message(&value) {
                Some((channel, payload)) => {
                    match (std::str::from_utf8(channel), std::str::from_utf8(payload)) {
                        (Ok(channel), Ok(text)) => shared.receive(channel, text),
                        _ => warn!("non-text message on the cluster channel"),
                    }
                }
                None => debug!(?value, "ignoring a push that is not a message"),
            });
            if let Err(e) = read.await {
                break e;
            }
        };
        warn!("lost the Redis subscription ({lost}); reconnecting");
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
        if peer.suspended_until.is_some() && state.router.is_suspended(&peer_id) {
            continue; // we hold it already, with what was sent to it
        }
        let change = match peer.status.peer_id {
            None => proto::envelope::StatusChange::Joined,
            Some(_) => proto::envelope::StatusChange::Changed,
        };
        let body = PeerStatusBody::new(peer_id, peer.status, change);
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
        // (expired nodes, live nodes, each node's envelope features)
        type Tick = (Vec<NodeId>, Vec<NodeId>, HashMap<NodeId, String>);
        let result: redis::RedisResult<Tick> = redis::pipe()
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
            .hset(&shared.keys.features, &me, FEATURE_BATCH)
            .ignore()
            .hgetall(&shared.keys.features)
            .query_async(&mut con)
            .await;
        let (dead, members, features) = match result {
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
        // Only nodes that say so get batches: an older node would ignore them.
        *shared.batch_nodes.lock() = Arc::new(
            features
                .into_iter()
                .filter(|(_, f)| f.split(',').any(|f| f.trim() == FEATURE_BATCH))
                .map(|(node, _)| node)
                .collect(),
        );
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
            state.router.node_down(&node, &[], &mut out);
            listed.remove(&node);
        }
    }
    shared.flush(&state, out);
}

/// Removes a dead node from the cluster, if this node wins the right to. Its v2 peers with a
/// resume token are suspended for the resume grace instead of removed: their entries stay
/// (marked), a claim key per token lets exactly one node adopt each, and we expire those not
/// adopted in time.
async fn reap(
    shared: &Arc<Shared>,
    con: &mut ConnectionManager,
    node: &str,
) -> redis::RedisResult<()> {
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
    let stored: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(&shared.keys.peers)
        .query_async(con)
        .await?;
    let grace = shared.settings.resume_grace;
    let until = now_ms() + grace.as_millis() as u64;
    let mut pipe = redis::pipe();
    let (mut gone, mut suspended) = (Vec::new(), Vec::new());
    for (peer_id, json) in stored {
        let Ok(peer) = serde_json::from_str::<StoredPeer>(&json) else {
            continue;
        };
        if peer.node != node {
            continue;
        }
        match peer.resume.filter(|_| !grace.is_zero()) {
            Some(hash) => {
                let key = shared.keys.suspended(&hash);
                let record = SuspendedPeer {
                    peer_id: peer_id.clone(),
                    node: node.to_string(),
                    status: peer.status.clone(),
                    until,
                };
                pipe.cmd("SET")
                    .arg(&key)
                    .arg(serde_json::to_string(&record).unwrap_or_default())
                    .arg("PX")
                    .arg((grace + SUSPEND_KEY_SLACK).as_millis() as u64)
                    .ignore();
                let entry = StoredPeer {
                    resume: Some(hash),
                    suspended_until: Some(until),
                    ..peer
                };
                pipe.hset(
                    &shared.keys.peers,
                    &peer_id,
                    serde_json::to_string(&entry).unwrap_or_default(),
                )
                .ignore();
                suspended.push((peer_id, key));
            }
            None => gone.push(peer_id),
        }
    }
    info!(
        node,
        removed = gone.len(),
        suspended = suspended.len(),
        "reaping a dead node"
    );
    if !gone.is_empty() {
        pipe.cmd("HDEL").arg(&shared.keys.peers).arg(&gone).ignore();
    }
    pipe.cmd("ZREM").arg(&shared.keys.nodes).arg(node).ignore();
    pipe.hdel(&shared.keys.features, node).ignore();
    pipe.query_async::<()>(con).await?;
    let ids: Vec<PeerId> = suspended.iter().map(|(id, _)| id.clone()).collect();
    // Everyone else learns it from the announcement; we apply it ourselves.
    let _ = shared.out.send(Outgoing::NodeDown(NodeDownBody {
        node: node.to_string(),
        suspended: ids.clone(),
        grace_ms: grace.as_millis() as u64,
    }));
    {
        let mut state = shared.state.lock();
        let mut out = Outbox::new();
        state.router.node_down(node, &ids, &mut out);
        shared.flush(&state, out);
        shared.after_node_down(&mut state, node, ids, grace);
    }
    if !suspended.is_empty() {
        actix_rt::spawn(
            expire_unclaimed(shared.clone(), node.to_string(), suspended, grace).in_current_span(),
        );
    }
    Ok(())
}

/// At the end of the grace, the reaper takes the claim key of each peer it suspended: if it
/// still exists, nobody adopted the peer, which leaves everywhere.
async fn expire_unclaimed(
    shared: Arc<Shared>,
    node: NodeId,
    suspended: Vec<(PeerId, String)>,
    grace: Duration,
) {
    tokio::time::sleep(grace).await;
    let mut con = shared.con.clone();
    for (peer_id, key) in suspended {
        match redis::cmd("DEL")
            .arg(&key)
            .query_async::<i64>(&mut con)
            .await
        {
            Ok(1) => {
                let mut state = shared.state.lock();
                shared.expire_suspended(&mut state, &peer_id, &node);
            }
            Ok(_) => debug!(peer_id, "suspended peer was adopted"),
            // Every node drops it later anyway (see `after_node_down`).
            Err(e) => warn!(peer_id, "cannot expire a suspended peer: {e}"),
        }
    }
}

/// Adopts the suspended peer under `token` for claim `claim`, if this node wins its claim key:
/// registers it here, asks every other node for its sessions with it, and answers the claim
/// once they all answered (or after [`ADOPT_TIMEOUT`]). Refuses if there is no such peer.
async fn adopt(shared: Arc<Shared>, claim: u64, token: String) {
    let key = shared.keys.suspended(&token_hash(&token));
    let mut con = shared.con.clone();
    let record = match redis::cmd("GETDEL")
        .arg(&key)
        .query_async::<Option<String>>(&mut con)
        .await
    {
        Ok(r) => r.and_then(|json| serde_json::from_str::<SuspendedPeer>(&json).ok()),
        Err(e) => {
            warn!("cannot claim a suspended peer: {e}");
            None
        }
    };
    let Some((peer_id, done, last, fired)) = begin_adoption(&shared, claim, record) else {
        return;
    };
    if tokio::time::timeout(ADOPT_TIMEOUT, fired).await.is_err() {
        warn!(peer_id, "not every node answered the adoption in time");
    }
    let mut state = shared.state.lock();
    state.adoptions.remove(&peer_id);
    // The numbering of frames goes on from what the client says it has: what was in flight
    // on the dead node is lost.
    if done
        .send(Some((peer_id.clone(), last.unwrap_or(0))))
        .is_err()
    {
        // The connection gave up waiting: nobody to hand the peer to.
        let mut out = Outbox::new();
        state.mailboxes.remove(&peer_id);
        state.router.leave(&peer_id, &mut out);
        shared.flush(&state, out);
    }
}

/// The claim answer of an adoption under way.
type ClaimDone = tokio::sync::oneshot::Sender<Option<(PeerId, u64)>>;

/// With the claim key won (`record`): registers the peer here and asks the other nodes for
/// their sessions with it. Returns what [`adopt`] waits for, or `None` if there is nothing to
/// adopt (the claim is then answered).
fn begin_adoption(
    shared: &Arc<Shared>,
    claim: u64,
    record: Option<SuspendedPeer>,
) -> Option<(
    PeerId,
    ClaimDone,
    Option<u64>,
    tokio::sync::oneshot::Receiver<()>,
)> {
    let me = shared.settings.node_id.clone();
    let mut state = shared.state.lock();
    let pending = state.claims.remove(&claim);
    let Some(rec) = record else {
        debug!("no suspended peer for this token");
        if let Some(p) = pending {
            let _ = p.done.send(None);
        }
        return None;
    };
    let Some(pending) = pending.filter(|_| now_ms() <= rec.until) else {
        // Too late, or the client gave up: we took its key, so we expire it.
        shared.expire_suspended(&mut state, &rec.peer_id, &rec.node);
        return None;
    };
    let peer_id = rec.peer_id.clone();
    let mut out = Outbox::new();
    state
        .router
        .adopt(&peer_id, pending.mailbox.version(), rec.status, &mut out);
    state.mailboxes.insert(peer_id.clone(), pending.mailbox);
    let others: std::collections::HashSet<NodeId> = shared
        .live_nodes
        .lock()
        .iter()
        .filter(|n| **n != me && **n != rec.node && !state.down.contains(*n))
        .cloned()
        .collect();
    for n in &others {
        out.push(Effect::ToNode(
            n.clone(),
            NodeMessage::SessionAdopt(SessionAdoptBody {
                peer_id: peer_id.clone(),
                node: me.clone(),
                old_node: rec.node.clone(),
            }),
        ));
    }
    info!(
        peer_id,
        from = rec.node,
        nodes = others.len(),
        "adopting a suspended peer of a dead node"
    );
    let (all_in, fired) = tokio::sync::oneshot::channel();
    if others.is_empty() {
        let _ = all_in.send(());
    } else {
        state.adoptions.insert(
            peer_id.clone(),
            Adoption {
                waiting: others,
                all_in: Some(all_in),
            },
        );
    }
    shared.flush(&state, out);
    Some((peer_id, pending.done, pending.last, fired))
}
