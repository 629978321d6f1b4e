//! Resume across nodes: a v2 client that reconnects to this node with a resume token another
//! node issued gets its peer back here, with its sessions, under the same peer id.
//!
//! * The token's node is alive: we send it a `resumeClaim` ([`Shared::claim`]); it closes the
//!   old connection if there still is one, exports the peer (`routing/moving.rs`) and answers
//!   with a `resumeGrant` carrying its status, sessions and the frames the client has not had
//!   ([`Shared::answer_claim`]); we import it ([`Shared::take_grant`]).
//! * The token's node is dead (or dies while we wait): its peer is suspended
//!   (`liveness.rs`), and we *adopt* it if we win its key ([`adopt`]): every other node is
//!   asked for its sessions with it (`sessionAdopt`, answered by `adoptAck`), and what they
//!   held for it follows. Frames in flight on the dead node are lost.
//!
//! Both end in bounded time: the connection waits at most [`Shared::claim`]'s limit.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use proto::envelope::{
    AdoptAckBody, NodeMessage, ResumeClaimBody, ResumeGrantBody, SessionAdoptBody,
};
use proto::{PeerId, PeerStatus};
use tokio::sync::oneshot;
use tracing::{debug, info, warn, Instrument};

use super::keys::{now_ms, StoredPeer, SuspendedPeer};
use super::liveness::TICK;
use super::publisher::Outgoing;
use super::{within, Shared, State};
use crate::bus::Claim;
use crate::mailbox::{Mailbox, Outbound};
use crate::resume::{token_hash, token_node};
use crate::routing::{Effect, NodeId, Outbox};

/// Longest a resume claim waits for the other node's answer.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(3);

/// Longest an adopting node waits for the other nodes' sessions with the peer before it
/// welcomes the client.
const ADOPT_TIMEOUT: Duration = Duration::from_secs(2);

/// The answer to a claim: the peer's id and the number of the last frame accounted for.
type ClaimDone = oneshot::Sender<Option<(PeerId, u64)>>;

/// A claim we sent for a client that reconnected here with another node's token.
pub(super) struct PendingClaim {
    mailbox: Mailbox,
    done: ClaimDone,
    token: String,
    last: Option<u64>,
    /// Its node died: the peer is being adopted from its suspension instead.
    adopting: bool,
}

/// A peer we adopted, waiting for the other nodes' sessions with it.
pub(super) struct Adoption {
    waiting: HashSet<NodeId>,
    all_in: Option<oneshot::Sender<()>>,
}

impl Shared {
    /// A client reconnected here with `token` of another node (or of ours from before a
    /// restart), having received `last` frames: see [`crate::bus::Bus::claim`].
    pub(super) fn claim(
        self: &Arc<Self>,
        token: &str,
        last: Option<u64>,
        mailbox: Mailbox,
    ) -> Option<Claim> {
        let node = token_node(token)?.to_string();
        let me = &self.settings.node_id;
        // A token of ours that the registry does not know (we restarted), or of a node that
        // is dead: the peer may be suspended, waiting for adoption. A node missing from our
        // list of live nodes may instead have joined since our last liveness tick: Redis is
        // asked which before anything is decided ([`claim_or_adopt`]).
        let unlisted = {
            let live = self.live_nodes.lock();
            !live.is_empty() && !live.contains(&node)
        };
        let (done, answer) = oneshot::channel();
        let mut state = self.state.lock();
        let claim = state.next_claim;
        state.next_claim += 1;
        let adopting = node == *me || state.down.contains(&node);
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
        drop(state);
        // (in the cluster span: the adoption outlives the connection's request)
        let span = tracing::info_span!("cluster", node = %self.settings.node_id);
        if adopting {
            actix_rt::spawn(adopt(self.clone(), claim, token.to_string()).instrument(span));
        } else if unlisted {
            let work = claim_or_adopt(self.clone(), node, claim, token.to_string(), last);
            actix_rt::spawn(work.instrument(span));
        } else {
            self.send_claim(node, claim, token, last);
        }
        let shared = self.clone();
        // Long enough for a dead node to be reaped and its peer adopted.
        let limit = CLAIM_TIMEOUT + shared.settings.node_ttl + TICK + ADOPT_TIMEOUT;
        Some(Box::pin(async move {
            let answer = tokio::time::timeout(limit, answer).await;
            if answer.is_err() {
                shared.state.lock().claims.remove(&claim);
            }
            answer.ok().and_then(Result::ok).flatten()
        }))
    }

    /// Asks live `node` for the peer of `token`. If the node turns out dead, its reaping turns
    /// this into an adoption ([`Shared::adopt_instead`]).
    fn send_claim(&self, node: NodeId, claim: u64, token: &str, last: Option<u64>) {
        self.publish(Outgoing::ToNode(
            node,
            NodeMessage::ResumeClaim(ResumeClaimBody {
                claim,
                token: token.to_string(),
                last,
            }),
        ));
    }

    /// `node` died: our claims of its peers, unanswered, turn into adoptions of its suspended
    /// peers.
    pub(super) fn adopt_instead(self: &Arc<Self>, state: &mut State, node: &str) {
        for (id, claim) in state.claims.iter_mut() {
            if !claim.adopting && token_node(&claim.token) == Some(node) {
                claim.adopting = true;
                actix_rt::spawn(adopt(self.clone(), *id, claim.token.clone()).in_current_span());
            }
        }
    }

    /// Local v2 peer `peer_id` holds resume token `token` (its newest): its hash is stored
    /// with the peer, so that any node can adopt it should this node die.
    pub(super) fn resume_token(&self, peer_id: &str, token: &str) {
        let hash = token_hash(token);
        let mut state = self.state.lock();
        state.tokens.insert(peer_id.to_string(), hash.clone());
        // Already announced (a resumed peer): store the new hash now; a new peer's comes with
        // its first announcement.
        if let Some(status) = state.router.local_status(peer_id) {
            let stored = StoredPeer {
                node: self.settings.node_id.clone(),
                status,
                resume: Some(hash),
                suspended_until: None,
            };
            self.publish(Outgoing::Store(peer_id.to_string(), stored));
        }
    }

    /// Another node wants one of our peers: hand it over (after closing its connection here,
    /// if it still has one), with its sessions and what is queued for it.
    pub(super) fn answer_claim(self: &Arc<Self>, node: NodeId, claim: ResumeClaimBody) {
        let shared = self.clone();
        actix_rt::spawn(async move {
            let parked = shared.registry.take(&claim.token).await;
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
                        if let Outbound::Text(t) = out {
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
    pub(super) fn take_grant(
        &self,
        state: &mut State,
        from: &str,
        grant: ResumeGrantBody,
        out: &mut Outbox,
    ) {
        let Some(pending) = state.claims.remove(&grant.claim) else {
            return;
        };
        let Some(peer_id) = grant.peer_id else {
            let _ = pending.done.send(None);
            return;
        };
        for frame in grant.frames {
            let _ = pending.mailbox.send(Outbound::Text(frame));
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

    /// `from`'s sessions with a peer we adopt: the router takes them, and the adoption
    /// completes once every node answered.
    pub(super) fn adopt_ack(&self, state: &mut State, from: &NodeId, body: AdoptAckBody) {
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
}

/// Adopts the suspended peer under `token` for claim `claim`, if this node wins its key:
/// registers it here, asks every other node for its sessions with it, and answers the claim
/// once they all answered (or after [`ADOPT_TIMEOUT`]). Refuses if there is no such peer.
/// A claim for a token of `node`, which is not in our list of live nodes: live after all (it
/// joined since our last liveness tick: its heartbeat in Redis is fresh), it is asked; dead,
/// or Redis not answering, the peer is adopted from its suspension.
async fn claim_or_adopt(
    shared: Arc<Shared>,
    node: NodeId,
    claim: u64,
    token: String,
    last: Option<u64>,
) {
    let mut con = shared.con.lock().clone();
    let mut zscore = redis::cmd("ZSCORE");
    zscore.arg(&shared.keys.nodes).arg(&node);
    let expires = zscore.query_async::<Option<f64>>(&mut con);
    let live = match within(shared.settings.redis_timeout, expires).await {
        Ok(expires) => expires.is_some_and(|at| at > now_ms() as f64),
        Err(e) => {
            warn!(
                node,
                "cannot tell whether a resume token's node is alive: {e}"
            );
            false
        }
    };
    if live {
        debug!(
            node,
            "a resume token's node joined since the last liveness tick"
        );
        shared.send_claim(node, claim, &token, last);
        return;
    }
    let adopting_now = match shared.state.lock().claims.get_mut(&claim) {
        Some(pending) if !pending.adopting => {
            pending.adopting = true;
            true
        }
        // answered meanwhile (the connection gave up), or already adopting
        _ => false,
    };
    if adopting_now {
        adopt(shared, claim, token).await
    }
}

async fn adopt(shared: Arc<Shared>, claim: u64, token: String) {
    let key = shared.keys.suspended(&token_hash(&token));
    let mut con = shared.con.lock().clone();
    let mut getdel = redis::cmd("GETDEL");
    getdel.arg(&key);
    let taken = getdel.query_async::<Option<String>>(&mut con);
    let record = match within(shared.settings.redis_timeout, taken).await {
        Ok(r) => r.and_then(|json| serde_json::from_str::<SuspendedPeer>(&json).ok()),
        Err(e) => {
            warn!("cannot take the adoption key of a suspended peer: {e}");
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

/// With the key won (`record`): registers the peer here and asks the other nodes for their
/// sessions with it. Returns what [`adopt`] waits for, or `None` if there is nothing to
/// adopt (the claim is then answered).
fn begin_adoption(
    shared: &Arc<Shared>,
    claim: u64,
    record: Option<SuspendedPeer>,
) -> Option<(PeerId, ClaimDone, Option<u64>, oneshot::Receiver<()>)> {
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
    let others: HashSet<NodeId> = shared
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
    let (all_in, fired) = oneshot::channel();
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
