//! A node's life and death in the cluster, the whole story in one place.
//!
//! 1. **Alive**: every [`TICK`] each node refreshes its score (the time its liveness expires)
//!    in the sorted set `{prefix}:nodes`, and advertises the envelope features it reads.
//! 2. **Detected dead**: a node whose score has passed is reaped by the one node that wins
//!    `SET {prefix}:reap:{id} NX` ([`reap`]). The reaper removes the dead node's peers from
//!    `{prefix}:peers`, except its v2 peers with a resume token: those are *suspended* for the
//!    resume grace (their entries kept and marked, and a key `{prefix}:suspended:{token hash}`
//!    stored, which the node where the client comes back takes to adopt the peer, see
//!    `handover.rs`).
//! 3. **Announced**: the reaper publishes `nodeDown` (with the suspended peers) and applies it
//!    itself; every node then ends its sessions with the dead node's other peers and tells its
//!    listeners ([`Shared::bury`], the router's part in `routing/suspension.rs`).
//! 4. **Expired**: at the end of the grace the reaper deletes the key of each suspended peer
//!    nobody adopted and publishes `suspendExpired`; every node also drops them on its own a
//!    little later should the reaper die or Redis fail ([`SUSPEND_FALLBACK`]).
//! 5. **Forgotten**: a node no longer listed at all for two TTLs (Redis restarted empty and the
//!    node never came back) is dropped without an announcement ([`forget_unlisted`]).
//! 6. **Not dead after all**: a node that hears `nodeDown` about itself (it was paused)
//!    announces its peers again; a node we buried that speaks again is taken off the list of
//!    the dead (`receive` in `subscriber.rs`).
//!
//! And from the side of a node that loses Redis:
//!
//! * **Unreachable**: a liveness tick not answered within `--redis-timeout` (a hung or
//!   paused Redis, a partition: nothing is refused, nothing answers) counts as a refused
//!   connection: the node is unready, requests that would cross nodes fail with
//!   `cluster-unavailable`, and every connection to Redis is replaced ([`Shared::unanswered`]).
//! * **Back**: once Redis answers again, the node reaps nobody for one node TTL: after a
//!   stall every node's score has expired, and each must get the time to refresh its own
//!   before anyone reaps it (without this, nodes that all waited out one Redis stall reaped
//!   each other, or not, by the race of their first ticks).
//! * **Fenced**: silent for longer than the node TTL, the node counts itself reaped and stops
//!   acting for the cluster until Redis answers; then it rejoins as a new incarnation
//!   (`fencing.rs`).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::envelope::{NodeDownBody, SuspendExpiredBody, FEATURE_BATCH};
use proto::PeerId;
use redis::aio::ConnectionManager;
use tracing::{debug, info, warn, Instrument};

use super::fencing::is_silence;
use super::keys::{now_ms, StoredPeer, SuspendedPeer};
use super::publisher::Outgoing;
use super::{manager, within, Shared, State};
use crate::routing::{Effect, NodeId, Outbox};

/// How often a node refreshes its liveness and looks for dead nodes.
pub const TICK: Duration = Duration::from_millis(250);

/// A suspended peer's key outlives the grace by this much, so that the reaper's expiry
/// (at the end of the grace) finds it; adopters check the deadline themselves.
const SUSPEND_KEY_SLACK: Duration = Duration::from_secs(5);

/// Every node drops a suspended peer this long after the key is gone, if it heard neither of
/// an adoption nor of an expiry (the reaper died, or Redis failed).
const SUSPEND_FALLBACK: Duration = Duration::from_secs(2);

/// Refreshes our liveness score and reaps nodes whose score has expired; tells the node when
/// Redis stops or starts answering again.
pub(super) async fn liveness(shared: Arc<Shared>, mut con: ConnectionManager) {
    let me = shared.settings.node_id.clone();
    let ttl = shared.settings.node_ttl.as_millis() as u64;
    let timeout = shared.settings.redis_timeout;
    let mut tick = tokio::time::interval(TICK);
    // After a stall, one tick, not a burst of the ones missed.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // When each node was last listed in {prefix}:nodes. A node missing from it for two TTLs
    // (Redis restarted empty and the node never came back) is gone for us too.
    let mut listed: HashMap<NodeId, Instant> = HashMap::new();
    // The connection failed a command: it may be stuck (a partition), so a new one first.
    let mut replace = false;
    // No reaping before then (see the module documentation: "Back").
    let mut reap_from = Instant::now();
    // What each local producer's load was last announced as (`load.rs`).
    let mut loads = HashMap::new();
    // When the last refresh that went through was sent: our score expires a TTL after.
    let mut last_refresh = Instant::now();
    // Fenced once our score has expired for everyone, and a tick more for the reaper.
    let fence_after = shared.settings.node_ttl + TICK;
    loop {
        tick.tick().await;
        if shared.leaving.load(Ordering::SeqCst) {
            return;
        }
        if replace {
            let located = shared.settings.endpoint.locate(timeout).await;
            let fresh = match located {
                Ok(client) => within(timeout, manager(&client, timeout)).await,
                Err(e) => Err(e),
            };
            match fresh {
                Ok(fresh) => {
                    con = fresh;
                    *shared.con.lock() = con.clone();
                    replace = false;
                }
                Err(e) => {
                    shared.unanswered(&e);
                    if is_silence(&e) && last_refresh.elapsed() > fence_after {
                        shared.fence();
                    }
                    continue;
                }
            }
        }
        let now = now_ms();
        let sent = Instant::now();
        // (expired nodes, live nodes, each node's envelope features)
        type Tick = (Vec<NodeId>, Vec<NodeId>, HashMap<NodeId, String>);
        let mut refresh = redis::pipe();
        refresh
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
            .hgetall(&shared.keys.features);
        let refreshed = within(timeout, refresh.query_async::<Tick>(&mut con)).await;
        let (dead, members, features) = match refreshed {
            Ok(r) => r,
            Err(e) => {
                replace = true;
                shared.unanswered(&e);
                if is_silence(&e) && last_refresh.elapsed() > fence_after {
                    shared.fence();
                }
                continue;
            }
        };
        last_refresh = sent;
        if shared.answered() {
            reap_from = Instant::now() + shared.settings.node_ttl;
        }
        if shared.is_fenced() {
            shared.rejoin();
        }
        let seen = Instant::now();
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
        shared.announce_loads(&mut loads);
        forget_unlisted(&shared, &mut listed, shared.settings.node_ttl * 2);
        let reaping = Instant::now() >= reap_from;
        for node in dead.into_iter().filter(|n| *n != me && reaping) {
            if let Err(e) = reap(&shared, &mut con, &node).await {
                warn!(node, "reaping failed: {e}");
            }
        }
    }
}

/// Ends what this node holds of nodes that have not been listed alive for `grace`.
fn forget_unlisted(shared: &Shared, listed: &mut HashMap<NodeId, Instant>, grace: Duration) {
    if !shared.connected.load(Ordering::SeqCst) {
        // No news is not bad news while we cannot hear anything: everyone gets a fresh grace
        // period once we can again.
        listed.clear();
        return;
    }
    let mut state = shared.state.lock();
    let mut out = Outbox::new();
    for node in state.router.remote_nodes() {
        let first_seen = *listed.entry(node.clone()).or_insert_with(Instant::now);
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
/// (marked), a key per token lets exactly one node adopt each, and we expire those not
/// adopted in time.
async fn reap(
    shared: &Arc<Shared>,
    con: &mut ConnectionManager,
    node: &str,
) -> redis::RedisResult<()> {
    let timeout = shared.settings.redis_timeout;
    let won: Option<String> = within(
        timeout,
        redis::cmd("SET")
            .arg(shared.keys.reap(node))
            .arg(&shared.settings.node_id)
            .arg("NX")
            .arg("PX")
            .arg(10_000)
            .query_async(con),
    )
    .await?;
    if won.is_none() {
        return Ok(()); // another node does it
    }
    crate::metrics::metrics().nodes_reaped.inc();
    let stored: HashMap<String, String> = within(
        timeout,
        redis::cmd("HGETALL")
            .arg(&shared.keys.peers)
            .query_async(con),
    )
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
        match peer.resume.clone().filter(|_| !grace.is_zero()) {
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
                    suspended_until: Some(until),
                    ..peer
                };
                pipe.hset(&shared.keys.peers, &peer_id, entry.to_json())
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
    within(timeout, pipe.query_async::<()>(con)).await?;
    let ids: Vec<PeerId> = suspended.iter().map(|(id, _)| id.clone()).collect();
    // Everyone else learns it from the announcement; we apply it ourselves.
    shared.publish(Outgoing::NodeDown(NodeDownBody {
        node: node.to_string(),
        suspended: ids.clone(),
        grace_ms: grace.as_millis() as u64,
    }));
    {
        let mut state = shared.state.lock();
        let mut out = Outbox::new();
        shared.bury(&mut state, node, ids, grace, &mut out);
        shared.flush(&state, out);
    }
    if !suspended.is_empty() {
        actix_rt::spawn(
            expire_unclaimed(shared.clone(), node.to_string(), suspended, grace).in_current_span(),
        );
    }
    Ok(())
}

/// At the end of the grace, the reaper takes the key of each peer it suspended: if it still
/// exists, nobody adopted the peer, which leaves everywhere.
async fn expire_unclaimed(
    shared: Arc<Shared>,
    node: NodeId,
    suspended: Vec<(PeerId, String)>,
    grace: Duration,
) {
    tokio::time::sleep(grace).await;
    let mut con = shared.con.lock().clone();
    for (peer_id, key) in suspended {
        let mut del = redis::cmd("DEL");
        del.arg(&key);
        match within(
            shared.settings.redis_timeout,
            del.query_async::<i64>(&mut con),
        )
        .await
        {
            Ok(1) => {
                let mut state = shared.state.lock();
                shared.expire_suspended(&mut state, &peer_id, &node);
            }
            Ok(_) => debug!(peer_id, "suspended peer was adopted"),
            // Every node drops it later anyway (see `bury`).
            Err(e) => warn!(peer_id, "cannot expire a suspended peer: {e}"),
        }
    }
}

impl Shared {
    /// Another node's `nodeDown`.
    pub(super) fn node_down(
        self: &Arc<Self>,
        state: &mut State,
        body: NodeDownBody,
        out: &mut Outbox,
    ) {
        if body.node == self.settings.node_id {
            // We were presumed dead (a long pause?): put our peers back.
            warn!("the cluster presumed this node dead; announcing our peers again");
            for body in state.router.local_statuses() {
                out.push(Effect::Announce(body));
            }
            return;
        }
        let grace = Duration::from_millis(body.grace_ms);
        self.bury(state, &body.node, body.suspended, grace, out);
    }

    /// `node` is dead (its `suspended` peers kept for `grace`): the router ends what we had
    /// with its other peers, our claims waiting for it turn into adoptions (`handover.rs`),
    /// and its suspended peers get a last-resort expiry here.
    fn bury(
        self: &Arc<Self>,
        state: &mut State,
        node: &str,
        suspended: Vec<PeerId>,
        grace: Duration,
        out: &mut Outbox,
    ) {
        state.router.node_down(node, &suspended, out);
        state.down.insert(node.to_string());
        self.adopt_instead(state, node);
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

    /// Suspended `peer_id` (of dead `node`) expires: everywhere (we own its key).
    pub(super) fn expire_suspended(&self, state: &mut State, peer_id: &str, node: &str) {
        self.publish(Outgoing::Expired(SuspendExpiredBody {
            peer_id: peer_id.to_string(),
            node: node.to_string(),
        }));
        let mut out = Outbox::new();
        state.router.expire(peer_id, &mut out);
        self.flush(state, out);
    }

    /// Redis did not answer a liveness tick (`e`).
    fn unanswered(&self, e: &redis::RedisError) {
        if self.answering.swap(false, Ordering::SeqCst) {
            warn!(
                "Redis is unreachable ({e}): unready, and refusing what would cross nodes, until it answers"
            );
            self.stalled.notify_waiters();
        } else {
            debug!("Redis still unreachable: {e}");
        }
    }

    /// Redis answered a liveness tick; true if it had stopped answering before.
    fn answered(&self) -> bool {
        let back = !self.answering.swap(true, Ordering::SeqCst);
        if back {
            info!("Redis answers again");
        }
        back
    }
}
