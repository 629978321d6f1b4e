//! The operations API that acts: what one node does with an operator's request, whichever node
//! was asked (the asking node does its part and sends the request to every other node, which
//! do theirs: `bus/`). Ending a session (a member's node ends it for both), kicking a peer
//! (its node tells a v2 peer why and closes without a resume), draining a node (the same drain
//! as SIGTERM), and listing the sessions a node takes part in. The HTTP side is `server.rs`.

use std::collections::HashMap;
use std::sync::OnceLock;

use proto::envelope::{AdminBody, SessionRow};
use proto::{EndReason, PeerId};
use tokio::sync::Notify;
use tracing::info;

use crate::mailbox::Mailbox;
use crate::routing::{Outbox, Router};

/// Signalled when an operator drains this node (`server.rs` drains as on SIGTERM).
pub fn drain_requested() -> &'static Notify {
    static DRAIN: OnceLock<Notify> = OnceLock::new();
    DRAIN.get_or_init(Notify::new)
}

/// `op` for the audit log: the action, what it names, and the reason given (a kick).
pub fn describe(op: &AdminBody) -> (&'static str, &str, Option<&str>) {
    match op {
        AdminBody::EndSession { session_id } => ("end-session", session_id, None),
        AdminBody::Kick { peer_id, reason } => ("kick", peer_id, Some(reason)),
        AdminBody::Drain { node } => ("drain", node, None),
        AdminBody::Sessions { .. } => ("sessions", "", None),
    }
}

/// This node's part of `op` (`me`: its id); for a listing, its sessions.
pub fn apply(
    router: &mut Router,
    mailboxes: &HashMap<PeerId, Mailbox>,
    me: &str,
    op: &AdminBody,
    out: &mut Outbox,
) -> Option<Vec<SessionRow>> {
    match op {
        AdminBody::EndSession { session_id } => {
            if router
                .session_rows(me)
                .iter()
                .any(|s| &s.session_id == session_id)
            {
                info!(session_id, "session ended by an operator");
                router.abort_session_for(session_id, true, Some(EndReason::Operator), out);
            }
            None
        }
        AdminBody::Kick { peer_id, reason } => {
            if let Some(mailbox) = mailboxes.get(peer_id) {
                info!(peer_id, reason, "peer kicked by an operator");
                mailbox.kick(reason);
            }
            None
        }
        AdminBody::Drain { node } => {
            if node == me {
                info!("drain requested by an operator");
                drain_requested().notify_one();
            }
            None
        }
        AdminBody::Sessions { .. } => Some(router.session_rows(me)),
    }
}
