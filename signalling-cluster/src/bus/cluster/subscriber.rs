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

use super::keys::StoredPeer;
use super::{Shared, State};
use crate::bus::resp;
use crate::routing::{Effect, NodeId, Outbox};

/// The last (boot, sequence number) seen per sender and channel.
#[derive(Default)]
struct Sequences {
    seen: HashMap<NodeId, HashMap<String, (u64, u64)>>,
}

impl Sequences {
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
pub(super) async fn subscriber(
    shared: Arc<Shared>,
    redis: redis::ConnectionInfo,
    mut con: ConnectionManager,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    let mut backoff = Duration::from_millis(100);
    let node_channel = shared.keys.node(&shared.settings.node_id);
    let name = format!("gwc-{}-subscriber", shared.settings.node_id);
    let mut sequences = Sequences::default();
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
                        (Ok(channel), Ok(text)) => shared.receive(&mut sequences, channel, text),
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
    Ok(())
}

impl Shared {
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
        // Every envelope counts for gap detection, whatever it carries.
        let gap = sequences.gap(&env.from, channel, env.boot, env.seq);
        let mut state = self.state.lock();
        let mut out = Outbox::new();
        state.down.remove(&env.from); // alive after all (or restarted)
        if let Some(last) = gap.filter(|_| channel != self.keys.presence) {
            // A directed message was lost: the sessions with that node may be broken.
            warn!(
                from = env.from,
                last = ?Some(last),
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
        let router = &mut state.router;
        match msg {
            // presence and sessions: the router (routing/replica.rs, routing/cross_node.rs)
            NodeMessage::PeerStatus(body) => router.remote_status(from, body, out),
            NodeMessage::SessionStart(body) => router.remote_session_start(from, body, out),
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
            // only ever sent to ourselves (see `receive`): another node's is a stray
            NodeMessage::Barrier(_) => debug!(from, "ignoring another node's barrier"),
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
}
