//! The publisher: one task that writes what the router addresses to other nodes, in routing
//! order, to Redis, pipelined: what queued up while the previous pipeline was in flight goes
//! out together, and directed messages for a node that reads batches are packed into one
//! batch envelope (see [`Grouped`]). Every envelope is numbered per channel ([`Sequencer`]),
//! which is how receivers detect a lost one.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use proto::envelope::{
    BarrierBody, Batch, NodeDownBody, NodeMessage, PeerStatusBody, ProducerLoadBody, StatusChange,
    SuspendExpiredBody,
};
use proto::PeerId;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::keys::{now_ms, Keys, StoredPeer};
use super::Shared;
use crate::bus::resp::{self, Pipeline};
use crate::routing::NodeId;

/// What the node hands the publisher, in order.
pub(super) enum Outgoing {
    Barrier(u64),
    /// This node leaves: drop it from the liveness set, tell the others.
    Leave,
    /// This node rejoins after a fence, with none of its old peers: tell the others to drop
    /// what they still hold of it.
    Restart,
    /// A status, stored with the peer's token hash, then published.
    Announce(PeerStatusBody, Option<String>),
    /// Rewrite a peer's entry in `{prefix}:peers` without telling anyone (a new token).
    Store(PeerId, StoredPeer),
    ToNode(NodeId, NodeMessage),
    NodeDown(NodeDownBody),
    /// A suspended peer expired: remove its entry, tell every node.
    Expired(SuspendExpiredBody),
    /// A local producer's session count changed (`load.rs`).
    Load(ProducerLoadBody),
}

/// Numbers envelopes per channel, as the receivers' gap detection expects, and stamps them
/// with the time of their pipeline, by which receivers refuse what arrives too late.
struct Sequencer {
    me: NodeId,
    boot: u64,
    seq: HashMap<String, u64>,
    /// When the pipeline being built is sent (ms since the epoch).
    at: u64,
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
        msg.seal(&self.me, self.boot, n, self.at)
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
    fn publish(
        &mut self,
        pipe: &mut Pipeline,
        keys: &Keys,
        seq: &mut Sequencer,
        written: &mut HashSet<NodeId>,
    ) {
        for (node, msgs) in self.by_node.drain(..) {
            remember(written, &node);
            let channel = keys.node(&node);
            let text = match msgs.as_slice() {
                [msg] => seq.seal(&channel, msg),
                msgs => {
                    let mut batch = Batch::new();
                    msgs.iter().for_each(|m| batch.push(m));
                    let n = seq.next(&channel);
                    batch.seal(&seq.me, seq.boot, n, seq.at)
                }
            };
            pipe.publish(&channel, &text);
        }
    }
}

/// Notes that the connection published to `node` (looked up first: a clone only for a node
/// new to this connection).
fn remember(written: &mut HashSet<NodeId>, node: &NodeId) {
    if !written.contains(node) {
        written.insert(node.clone());
    }
}

/// What the publisher's wait ended with.
enum Next {
    /// This many items (0: the node is gone).
    Received(usize),
    Lost(String),
    Reconnect,
}

/// The publisher task's state.
struct Publisher {
    shared: Arc<Shared>,
    /// The connection's client name.
    name: String,
    seq: Sequencer,
    grouped: Grouped,
    pipe: Pipeline,
    con: Option<resp::Connection>,
    /// Wait before the next connection attempt.
    retry: Duration,
    /// Nodes this connection has published to.
    written: HashSet<NodeId>,
    /// Nodes a lost connection had published to: some of it may never have reached them.
    /// Each gets a numbered no-op first thing on the next connection (a barrier), whose
    /// number shows it the gap at once, rather than with the next real message (which might
    /// be for a session started after the loss, and end it for nothing).
    suspect: HashSet<NodeId>,
}

/// Publishes what `rx` brings until the node is gone.
pub(super) async fn publisher(
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<(u64, Outgoing)>,
) {
    let me = shared.settings.node_id.clone();
    let mut p = Publisher {
        name: format!("gwc-{me}-publisher"),
        seq: Sequencer {
            me,
            boot: shared.boot.load(Ordering::SeqCst),
            seq: HashMap::new(),
            at: 0,
        },
        shared,
        grouped: Grouped::default(),
        pipe: Pipeline::default(),
        con: None,
        retry: Duration::ZERO,
        written: HashSet::new(),
        suspect: HashSet::new(),
    };
    let mut batch = Vec::new();
    while p.wait(&mut rx, &mut batch).await {
        p.pipe.clear();
        if p.shared.is_fenced() {
            // The cluster counts us dead: nothing we say now may reach it (`fencing.rs`).
            batch.clear();
            p.suspect.clear();
            continue;
        }
        let boot = p.shared.boot.load(Ordering::SeqCst);
        if boot != p.seq.boot {
            // A new incarnation numbers from scratch; what the old one owed is void.
            p.seq.boot = boot;
            p.seq.seq.clear();
            p.written.clear();
            p.suspect.clear();
        }
        let fresh_from = p.shared.fresh_from.load(Ordering::SeqCst);
        batch.retain(|(at, _)| *at >= fresh_from);
        // The oldest item's time: what waited out a stall must not pass for new.
        p.seq.at = batch.iter().map(|(at, _)| *at).min().unwrap_or_else(now_ms);
        for node in std::mem::take(&mut p.suspect) {
            p.add(Outgoing::ToNode(
                node,
                NodeMessage::Barrier(BarrierBody { id: 0 }),
            ));
        }
        let batching = p.shared.batch_nodes.lock().clone();
        for (_, item) in batch.drain(..) {
            match item {
                Outgoing::ToNode(node, msg) if batching.contains(&node) => {
                    p.grouped.push(node, msg)
                }
                item => p.add(item),
            }
        }
        p.grouped
            .publish(&mut p.pipe, &p.shared.keys, &mut p.seq, &mut p.written);
        if !p.pipe.is_empty() {
            p.send().await;
        }
    }
}

impl Publisher {
    /// Waits for what to publish next, into `batch`, keeping the connection up meanwhile.
    /// False once the node is gone.
    async fn wait(
        &mut self,
        rx: &mut mpsc::UnboundedReceiver<(u64, Outgoing)>,
        batch: &mut Vec<(u64, Outgoing)>,
    ) -> bool {
        loop {
            let shared = self.shared.clone();
            let stalled = shared.stalled.notified();
            if self.con.is_some() && !shared.answering.load(Ordering::SeqCst) {
                // Redis stopped answering: what this connection still carries would arrive
                // late; a new one is made once Redis answers its greeting.
                self.lost();
            }
            let next = tokio::select! {
                next = self.next(rx, batch) => next,
                _ = stalled, if self.con.is_some() => Next::Lost("Redis stopped answering".into()),
            };
            match next {
                Next::Received(n) => return n > 0,
                Next::Lost(reason) => {
                    warn!("the publisher's Redis connection ended: {reason}");
                    self.lost();
                }
                Next::Reconnect => {
                    self.reconnect().await;
                    if self.con.is_some() && !self.suspect.is_empty() {
                        return true; // the no-ops go out now, not with the next message
                    }
                }
            }
        }
    }

    /// What comes first: items to publish, the connection's end, or (without a connection)
    /// the time to connect again.
    async fn next(
        &mut self,
        rx: &mut mpsc::UnboundedReceiver<(u64, Outgoing)>,
        batch: &mut Vec<(u64, Outgoing)>,
    ) -> Next {
        match &mut self.con {
            // Replies off: nothing to wait for but new messages, or the connection's end.
            Some(c) if c.is_quiet() => tokio::select! {
                n = rx.recv_many(batch, 512) => Next::Received(n),
                e = c.closed() => Next::Lost(e.to_string()),
            },
            Some(_) => Next::Received(rx.recv_many(batch, 512).await),
            // Reconnect as soon as Redis is back, not only when the next message comes, so
            // the node is ready again (`ready` needs the publisher too).
            None => tokio::select! {
                n = rx.recv_many(batch, 512) => Next::Received(n),
                _ = tokio::time::sleep(self.retry) => Next::Reconnect,
            },
        }
    }

    async fn reconnect(&mut self) {
        match connect_publisher(&self.shared, &self.name).await {
            Ok(c) => {
                self.con = Some(c);
                self.shared.publishing.store(true, Ordering::SeqCst);
            }
            Err(e) => {
                warn!(
                    retry_in_ms = self.retry.as_millis() as u64,
                    "cannot connect the publisher to Redis: {e}"
                );
                self.retry =
                    (self.retry * 2).clamp(Duration::from_millis(100), Duration::from_secs(5));
            }
        }
    }

    /// The connection is gone: the node is not ready until the next one.
    fn lost(&mut self) {
        self.suspect.extend(self.written.drain());
        self.con = None;
        self.retry = Duration::ZERO;
        self.shared.publishing.store(false, Ordering::SeqCst);
    }

    /// Adds one item's commands to the pipeline, after the directed messages grouped so far.
    fn add(&mut self, item: Outgoing) {
        let shared = &self.shared;
        let (keys, me) = (&shared.keys, &shared.settings.node_id);
        self.grouped
            .publish(&mut self.pipe, keys, &mut self.seq, &mut self.written);
        let (channel, msg) = match item {
            Outgoing::Store(peer_id, stored) => {
                self.pipe.hset(&keys.peers, &peer_id, &stored.to_json());
                return;
            }
            Outgoing::Expired(body) => {
                self.pipe.hdel(&keys.peers, &body.peer_id);
                (keys.presence.clone(), NodeMessage::SuspendExpired(body))
            }
            Outgoing::Announce(body, resume) => {
                // The store first: whoever sees the announcement can read it back.
                if body.change() == StatusChange::Left {
                    self.pipe.hdel(&keys.peers, &body.peer_id);
                } else {
                    let stored = StoredPeer {
                        node: me.clone(),
                        status: body.status.clone(),
                        resume,
                        suspended_until: None,
                    };
                    self.pipe
                        .hset(&keys.peers, &body.peer_id, &stored.to_json());
                }
                (keys.presence.clone(), NodeMessage::PeerStatus(body))
            }
            Outgoing::ToNode(node, msg) => {
                remember(&mut self.written, &node);
                (keys.node(&node), msg)
            }
            Outgoing::Leave => {
                self.pipe
                    .cmd(&[b"ZREM", keys.nodes.as_bytes(), me.as_bytes()]);
                self.pipe.hdel(&keys.features, me);
                let body = NodeDownBody {
                    node: me.clone(),
                    suspended: Vec::new(),
                    grace_ms: 0,
                };
                (keys.presence.clone(), NodeMessage::NodeDown(body))
            }
            Outgoing::Restart => {
                let body = NodeDownBody {
                    node: me.clone(),
                    suspended: Vec::new(),
                    grace_ms: 0,
                };
                (keys.presence.clone(), NodeMessage::NodeDown(body))
            }
            Outgoing::Barrier(id) => (keys.node(me), NodeMessage::Barrier(BarrierBody { id })),
            Outgoing::NodeDown(body) => (keys.presence.clone(), NodeMessage::NodeDown(body)),
            Outgoing::Load(body) => (keys.presence.clone(), NodeMessage::ProducerLoad(body)),
        };
        let text = self.seq.seal(&channel, &msg);
        self.pipe.publish(&channel, &text);
    }

    /// Writes the pipeline (connecting first if need be).
    async fn send(&mut self) {
        let sent = async {
            let con = match &mut self.con {
                Some(con) => con,
                None => self
                    .con
                    .insert(connect_publisher(&self.shared, &self.name).await?),
            };
            con.write(&self.pipe).await?;
            match con.is_quiet() {
                true => Ok(Vec::new()),
                false => con.replies(self.pipe.len()).await,
            }
        };
        // A write blocks only when Redis stopped reading (its buffers are full): unreachable.
        let timeout = self.shared.settings.redis_timeout;
        let sent = async {
            tokio::time::timeout(timeout, sent)
                .await
                .unwrap_or(Err(resp::RespError::Timeout(timeout)))
        };
        match sent.await {
            Ok(errors) => {
                self.shared.publishing.store(true, Ordering::SeqCst);
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
                self.lost();
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
    shared: &Shared,
    name: &str,
) -> Result<resp::Connection, resp::RespError> {
    let mut con = resp::Connection::connect(&shared.locate().await?, name).await?;
    if !con.quiet().await? {
        info!("Redis refused CLIENT REPLY OFF: the publisher reads every reply");
    }
    Ok(con)
}
