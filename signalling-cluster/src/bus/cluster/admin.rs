//! The operations API across nodes (`crate::admin` does one node's part): an action goes to
//! every other live node, which does its part; a listing of sessions asks them all and takes
//! the answers that come within a second.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use proto::envelope::{AdminBody, AdminReplyBody, NodeMessage, SessionRow};
use tokio::sync::mpsc;

use super::publisher::Outgoing;
use super::{Shared, State};
use crate::routing::{NodeId, Outbox};

/// How long a listing waits for the other nodes.
const ANSWER_WITHIN: Duration = Duration::from_secs(1);

/// Listings waiting for other nodes' answers, by request id.
#[derive(Default)]
pub(super) struct AdminRequests {
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, mpsc::UnboundedSender<Vec<SessionRow>>>>,
}

impl Shared {
    fn other_nodes(&self) -> Vec<NodeId> {
        let me = &self.settings.node_id;
        self.live_nodes
            .lock()
            .iter()
            .filter(|n| *n != me)
            .cloned()
            .collect()
    }

    /// An operator's action: our part, then every other node's.
    pub(super) fn act(&self, op: AdminBody) {
        let mut out = Outbox::new();
        {
            let mut state = self.state.lock();
            let State {
                router, mailboxes, ..
            } = &mut *state;
            crate::admin::apply(router, mailboxes, &self.settings.node_id, &op, &mut out);
            self.flush(&state, out);
        }
        for node in self.other_nodes() {
            self.publish(Outgoing::ToNode(node, NodeMessage::Admin(op.clone())));
        }
    }

    /// The sessions of the cluster: ours, and the other nodes' answers.
    pub(super) async fn sessions(self: Arc<Self>) -> Vec<SessionRow> {
        let me = self.settings.node_id.clone();
        let mut rows = self.state.lock().router.session_rows(&me);
        let others = self.other_nodes();
        if others.is_empty() {
            return rows;
        }
        let request = self.admin.next.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.admin.waiting.lock().insert(request, tx);
        for node in &others {
            let ask = NodeMessage::Admin(AdminBody::Sessions { request });
            self.publish(Outgoing::ToNode(node.clone(), ask));
        }
        let deadline = tokio::time::Instant::now() + ANSWER_WITHIN;
        for _ in 0..others.len() {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(theirs)) => rows.extend(theirs),
                _ => break,
            }
        }
        self.admin.waiting.lock().remove(&request);
        // (a session across two nodes is listed by both)
        let mut seen = std::collections::HashSet::new();
        rows.retain(|r| seen.insert(r.session_id.clone()));
        rows
    }

    /// Node `from` asks: our part, and for a listing, the answer.
    pub(super) fn admin_here(
        &self,
        state: &mut State,
        from: &NodeId,
        op: AdminBody,
        out: &mut Outbox,
    ) {
        let State {
            router, mailboxes, ..
        } = state;
        let rows = crate::admin::apply(router, mailboxes, &self.settings.node_id, &op, out);
        if let (AdminBody::Sessions { request }, Some(sessions)) = (op, rows) {
            let reply = NodeMessage::AdminReply(AdminReplyBody { request, sessions });
            self.publish(Outgoing::ToNode(from.clone(), reply));
        }
    }

    /// Another node's answer to one of our listings.
    pub(super) fn admin_reply(&self, body: AdminReplyBody) {
        if let Some(tx) = self.admin.waiting.lock().get(&body.request) {
            let _ = tx.send(body.sessions);
        }
    }
}
