//! Fencing: a node cut off from Redis for longer than the node TTL stops acting for the
//! cluster, and rejoins it as a new incarnation once Redis answers again.
//!
//! * **Fenced**: the last liveness refresh that went through is older than the node TTL (and
//!   a tick, so that the reaper goes first) while Redis is *silent* ([`is_silence`]). The
//!   other nodes will have reaped this one: its score expired, they ended its sessions and
//!   suspended its v2 peers for a resume. So it stops acting for the cluster: nothing more is
//!   published (the publisher drops it), new connections are refused with 503, v2 peers get
//!   `goAway` (they resume on another node, which adopts them from their suspension, sessions
//!   and all), every connection is closed with 1001, and the node forgets the cluster's state
//!   and its peers, none of which is parked for a resume here.
//! * **Rejoined**: when Redis answers again, the node starts over: a new boot id (receivers
//!   drop whatever of the old one still arrives, see `subscriber.rs`), nothing queued before
//!   now is published, the subscription and replica are made anew, and a `nodeDown` about
//!   itself tells
//!   every node to drop what it still held of ours (which matters when nobody could reap us:
//!   Redis hung for every node alike).
//!
//! A refused or closed connection does not fence: Redis is down or restarting, for every node
//! alike, nobody can reap anyone (see "Back" in `liveness.rs`), and sessions, whose media does
//! not pass through the signalling server, go on. A Redis that *hangs* for every node longer
//! than the TTL fences every node: from inside, that cannot be told from a partition.

use std::sync::atomic::Ordering;

use proto::ServerMessage;
use tracing::{info, warn};

use super::keys::now_ms;
use super::publisher::Outgoing;
use super::Shared;
use crate::mailbox::Outbound;
use crate::routing::Router;

/// Why a fenced node closes its connections (and sends v2 peers away).
const REASON: &str = "node cut off from the cluster";

/// Whether `e` is silence (nothing answers: a partition, a hung or paused Redis) rather than a
/// Redis that is there and says no, or is down for every node alike (refused, closed, an error
/// reply). Only silence can mean that the other nodes still reach Redis, and reap us.
pub(super) fn is_silence(e: &redis::RedisError) -> bool {
    e.is_timeout() || (e.is_io_error() && !e.is_connection_refusal() && !e.is_connection_dropped())
}

impl Shared {
    /// Whether the node is fenced (see the module documentation).
    pub(super) fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::SeqCst)
    }

    /// Stops acting for the cluster: every peer sent away and forgotten.
    pub(super) fn fence(&self) {
        if self.fenced.swap(true, Ordering::SeqCst) {
            return;
        }
        let mut state = self.state.lock();
        warn!(
            peers = state.mailboxes.len(),
            "cut off from Redis for longer than the node TTL: the cluster has reaped this node; \
             fencing (goAway to v2 peers, every connection closed) until Redis answers"
        );
        let away = ServerMessage::GoAway {
            reason: REASON.into(),
            reconnect_in_ms: Some(0),
        };
        for (_, mailbox) in state.mailboxes.drain() {
            let _ = mailbox.deliver(&away); // (v1 peers are sent nothing)
            let _ = mailbox.send(Outbound::Close(1001, REASON.into()));
        }
        // Whatever it held is the cluster's past: the other nodes ended it or moved it.
        state.router = Router::with_hold_limit(self.settings.hold_limit);
        state.tokens.clear();
        state.claims.clear(); // (their waiters hear a refusal)
        state.adoptions.clear();
        state.down.clear();
        self.registry.forget_all();
    }

    /// Redis answers again after a fence: start over as a new incarnation.
    pub(super) fn rejoin(&self) {
        let boot = now_ms().max(self.boot.load(Ordering::SeqCst) + 1);
        self.fresh_from.store(now_ms(), Ordering::SeqCst);
        self.boot.store(boot, Ordering::SeqCst);
        self.barriers.waiting.lock().1.clear();
        self.fenced.store(false, Ordering::SeqCst);
        info!(
            boot,
            "Redis answers again: rejoining the cluster as a new incarnation"
        );
        // A fresh subscription loads the replica anew (and publishes with the new boot).
        self.stalled.notify_waiters();
        self.publish(Outgoing::Restart);
    }
}
