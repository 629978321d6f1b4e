//! The subscription: one connection subscribed to the presence channel and this node's own
//! channel. Each envelope is checked for a gap in its sender's numbering (pub/sub lost a
//! message: the sessions with that sender are ended rather than left silently broken), and
//! each message it carries goes to its one handler in [`Shared::apply`]. On every
//! (re)connection the replica is loaded again and our peers are written back, since Redis may
//! have restarted empty.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use proto::envelope::{NodeMessage, PeerStatusBody, Received, StatusChange};
use redis::aio::ConnectionManager;
use tracing::{debug, info, warn};

use super::keys::{now_ms, StoredPeer};
use super::{within, Shared, State};
use crate::bus::resp;
use crate::routing::{Effect, NodeId, Outbox};

/// The last (boot, sequence number) seen per sender and channel, and each sender's newest
/// boot.
#[derive(Default)]
struct Sequences {
    seen: HashMap<NodeId, HashMap<String, (u64, u64)>>,
    newest: HashMap<NodeId, u64>,
}

impl Sequences {
    /// Whether boot `boot` of `from` is older than one already heard from: an incarnation
    /// that has since been replaced (the node was fenced and rejoined, see `fencing.rs`).
    fn superseded(&mut self, from: &str, boot: u64) -> bool {
        match self.newest.get_mut(from) {
            Some(newest) if boot < *newest => true,
            Some(newest) => {
                *newest = boot;
                false
            }
            None => {
                self.newest.insert(from.to_string(), boot);
                false
            }
        }
    }

    /// Records envelope number `seq` of `from`'s boot `boot` on `channel`; true if one went
    /// missing before it. A new boot of the sender starts counting again.
    fn gap(&mut self, from: &str, channel: &str, boot: u64, seq: u64) -> Option<(u64, u64)> {
        // (looked up by reference: this runs for every envelope)
        let now = (boot, seq);
        let last = match self
            .seen
            .get_mut(from)
            .and_then(|by_channel| by_channel.get_mut(channel))
        {
            Some(seen) => Some(std::mem::replace(seen, now)),
            None => self
                .seen
                .entry(from.to_string())
                .or_default()
                .insert(channel.to_string(), now),
        };
        last.filter(|&(last_boot, last)| last_boot == boot && seq > last + 1)
    }
}

/// Keeps the subscription alive; on (re)connection reloads the replica and restores our peers
/// in Redis (it may have restarted empty).
pub(super) async fn subscriber(shared: Arc<Shared>, ready: tokio::sync::oneshot::Sender<()>) {
    let mut ready = Some(ready);
    let mut backoff = Duration::from_millis(100);
    let node_channel = shared.keys.node(&shared.settings.node_id);
    let name = format!("gwc-{}-subscriber", shared.settings.node_id);
    let mut sequences = Sequences::default();
    loop {
        let subscribed = async {
            let mut sub = resp::Connection::connect(&shared.locate().await?, &name).await?;
            let channels = [shared.keys.presence.as_str(), node_channel.as_str()];
            tokio::time::timeout(
                shared.settings.redis_timeout,
                resp::subscribe(&mut sub, &channels),
            )
            .await
            .map_err(|_| resp::RespError::Timeout(shared.settings.redis_timeout))??;
            Ok::<_, resp::RespError>(sub)
        }
        .await;
        let mut sub = match subscribed {
            Ok(sub) => sub,
            Err(e) => {
                warn!(
                    retry_in_ms = backoff.as_millis() as u64,
                    "cannot subscribe to Redis: {e}"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let mut con = shared.con.lock().clone();
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
            // (registered before reading, so that a stall told meanwhile is not missed)
            let stalled = shared.stalled.notified();
            let read = sub.read_values(|value| match resp::message(&value) {
                Some((channel, payload)) => {
                    match (std::str::from_utf8(channel), std::str::from_utf8(payload)) {
                        (Ok(channel), Ok(text)) => shared.receive(&mut sequences, channel, text),
                        _ => warn!("non-text message on the cluster channel"),
                    }
                }
                None => debug!(?value, "ignoring a push that is not a message"),
            });
            tokio::select! {
                read = read => if let Err(e) = read {
                    break e.to_string();
                },
                // What Redis still holds for this connection would arrive late: drop it.
                _ = stalled => break "Redis stopped answering".to_string(),
            }
        };
        warn!("lost the Redis subscription ({lost}); reconnecting");
        crate::metrics::metrics().redis_reconnects.inc();
        shared.connected.store(false, Ordering::SeqCst);
    }
}

/// Loads the other nodes' peers into the replica and writes ours back (Redis may be new).
async fn resync(shared: &Shared, con: &mut ConnectionManager) -> redis::RedisResult<()> {
    let mut all = redis::cmd("HGETALL");
    all.arg(&shared.keys.peers);
    let stored = within(
        shared.settings.redis_timeout,
        all.query_async::<HashMap<String, String>>(con),
    )
    .await?;
    // Ours in Redis but gone here: they left while Redis could not hear it.
    let mut left = Vec::new();
    {
        let mut state = shared.state.lock();
        let mut out = Outbox::new();
        for (peer_id, json) in stored {
            let Ok(peer) = serde_json::from_str::<StoredPeer>(&json) else {
                continue;
            };
            if peer.node == shared.settings.node_id {
                // (a suspended one is the reaper's now: it expires it, or a node adopts it)
                if state.router.local_status(&peer_id).is_none() && peer.suspended_until.is_none() {
                    left.push(peer_id);
                }
                continue;
            }
            if peer.suspended_until.is_some() && state.router.is_suspended(&peer_id) {
                continue; // we hold it already, with what was sent to it
            }
            let change = match peer.status.peer_id {
                None => StatusChange::Joined,
                Some(_) => StatusChange::Changed,
            };
            let body = PeerStatusBody::new(peer_id, peer.status, change);
            state.router.remote_status(&peer.node, body, &mut out);
        }
        for body in state.router.local_statuses() {
            out.push(Effect::Announce(body));
        }
        shared.flush(&state, out);
    }
    if !left.is_empty() {
        let mut hdel = redis::cmd("HDEL");
        hdel.arg(&shared.keys.peers).arg(&left);
        within(shared.settings.redis_timeout, hdel.query_async::<i64>(con)).await?;
    }
    Ok(())
}

impl Shared {
    /// Age past which a message between nodes is dropped rather than delivered: twice the
    /// Redis timeout, since a message published just before Redis stopped answering is
    /// refused only once that has been noticed. (The nodes' clocks must agree to well within
    /// this, as NTP keeps them.)
    fn late_after(&self) -> Duration {
        self.settings.redis_timeout * 2
    }

    /// One envelope from the subscription: a message, or a batch of them.
    fn receive(self: &Arc<Self>, sequences: &mut Sequences, channel: &str, text: &str) {
        let env = match Received::parse(text) {
            Ok(env) => env,
            Err(e) => return warn!(channel, "dropping envelope: {e}"),
        };
        if env.from == self.settings.node_id {
            // Our own presence announcements come back to us; our barriers too.
            for msg in env.messages {
                if let Ok(Some(NodeMessage::Barrier(b))) = msg {
                    self.barriers.fire(b.id);
                }
            }
            return;
        }
        let age = now_ms().saturating_sub(env.at);
        // What a replaced incarnation wrote before it was cut off, delivered only now (its
        // socket's retransmission after a partition healed): neither news nor true state. (A
        // fresh one is let through: a node restarted after its clock stepped back.)
        if sequences.superseded(&env.from, env.boot) && age > self.late_after().as_millis() as u64 {
            return warn!(
                from = env.from,
                boot = env.boot,
                age_ms = age,
                kind = env.kind,
                "dropping an envelope of an earlier incarnation of its node"
            );
        }
        // Every envelope counts for gap detection, whatever it carries.
        let gap = sequences.gap(&env.from, channel, env.boot, env.seq);
        let m = crate::metrics::metrics();
        if let Some((_, last)) = gap {
            m.envelope_gaps
                .inc_by(env.seq.saturating_sub(last + 1).max(1));
        }
        if env.at != 0 {
            m.cross_node_latency.observe(age as f64 / 1000.0);
        }
        let directed = channel != self.keys.presence;
        // Held up on the way (a stalled Redis, a partition): delivered now it would be taken
        // for new. Presence is state, not news: a late one is still true, and applied.
        let late = directed && env.at != 0 && age > self.late_after().as_millis() as u64;
        let mut state = self.state.lock();
        let mut out = Outbox::new();
        state.down.remove(&env.from); // alive after all (or restarted)
        if late {
            warn!(
                from = env.from,
                age_ms = age,
                kind = env.kind,
                "dropping messages that arrived too late: ending sessions with node"
            );
            state.router.end_sessions_with(&env.from, true, &mut out);
            return self.flush(&state, out);
        }
        if let Some(last) = gap.filter(|_| directed) {
            // A directed message was lost: the sessions with that node may be broken.
            warn!(
                from = env.from,
                last_seq = last.1,
                seq = env.seq,
                "message gap: ending sessions with node"
            );
            state.router.end_sessions_with(&env.from, true, &mut out);
        }
        for msg in env.messages {
            match msg {
                Ok(Some(msg)) => self.apply(&mut state, &env.from, msg, &mut out),
                Ok(None) => debug!(kind = env.kind, "ignoring a message of a newer kind"),
                Err(e) => warn!(kind = env.kind, "dropping a message: {e}"),
            }
        }
        self.flush(&state, out);
    }

    /// One message from node `from`: every kind, and who handles it.
    fn apply(
        self: &Arc<Self>,
        state: &mut State,
        from: &NodeId,
        msg: NodeMessage,
        out: &mut Outbox,
    ) {
        // the operations API (admin.rs)
        let msg = match msg {
            NodeMessage::Admin(op) => return self.admin_here(state, from, op, out),
            NodeMessage::AdminReply(body) => return self.admin_reply(body),
            other => other,
        };
        let router = &mut state.router;
        match msg {
            NodeMessage::Admin(_) | NodeMessage::AdminReply(_) => {}
            // presence and sessions: the router (routing/replica.rs, routing/cross_node.rs)
            NodeMessage::PeerStatus(body) => router.remote_status(from, body, out),
            NodeMessage::SessionStart(body) => router.remote_session_start(from, body, out),
            // how loaded another node's producers are, for placement (routing/placement.rs)
            NodeMessage::ProducerLoad(body) => {
                let load = crate::routing::Load {
                    sessions: body.sessions,
                    away: body.away,
                };
                router.remote_load(from, &body.peer_id, load)
            }
            NodeMessage::SessionEnd(body) => router.remote_session_end(from, body, out),
            NodeMessage::Relay(body) => router.remote_relay(from, body, out),
            // a node's death and its suspended peers (liveness.rs, routing/suspension.rs)
            NodeMessage::NodeDown(body) => self.node_down(state, body, out),
            NodeMessage::SessionAdopt(body) => {
                router.adopted(&body.peer_id, &body.node, &body.old_node, out)
            }
            NodeMessage::AdoptAck(body) => self.adopt_ack(state, from, body),
            NodeMessage::SuspendExpired(body) => {
                router.expire(&body.peer_id, out);
            }
            // a live peer moving between nodes (handover.rs, routing/moving.rs)
            NodeMessage::ResumeClaim(claim) => self.answer_claim(from.clone(), claim),
            NodeMessage::ResumeGrant(grant) => self.take_grant(state, from, grant, out),
            NodeMessage::SessionMoved(body) => router.session_moved(body, out),
            NodeMessage::MoveAck(body) => router.move_acked(body, out),
            NodeMessage::MoveFence(body) => router.release_fence(&body.session_id, out),
            // from another node: a no-op whose number reveals a gap at once (`publisher.rs`)
            NodeMessage::Barrier(_) => debug!(from, "sequence check"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Sequences;

    #[test]
    fn a_gap_is_a_missing_number_of_the_same_boot_and_channel() {
        let mut s = Sequences::default();
        assert_eq!(s.gap("a", "c", 1, 1), None);
        assert_eq!(s.gap("a", "c", 1, 2), None);
        assert_eq!(s.gap("a", "c", 1, 4), Some((1, 2)));
        assert_eq!(s.gap("a", "other", 1, 9), None, "first on a channel");
        assert_eq!(s.gap("a", "c", 2, 1), None, "a new boot counts again");
    }

    #[test]
    fn a_boot_older_than_one_heard_is_superseded() {
        let mut s = Sequences::default();
        assert!(!s.superseded("a", 5));
        assert!(!s.superseded("a", 5));
        assert!(!s.superseded("a", 7), "a newer boot");
        assert!(s.superseded("a", 5));
        assert!(!s.superseded("b", 1), "per sender");
    }
}
