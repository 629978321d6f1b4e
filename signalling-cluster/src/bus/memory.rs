//! The embedded, single-process bus: the node alone is a drop-in upstream server.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use proto::{ClientMessage, PeerId, PeerInfo, ServerMessage};

use super::{deliver, deliver_many, Bus, BusStats, NodeSummary, Pending};
use crate::grants::Grants;
use crate::mailbox::Mailbox;
use crate::routing::{Effect, Outbox, Router};

/// Routes between the peers of this process under one lock.
///
/// Deliveries are queued while the lock is held: `Mailbox::deliver` never blocks, and queuing
/// in routing order keeps every peer's messages in the order the router produced them.
#[derive(Default)]
pub struct MemoryBus {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    router: Router,
    mailboxes: HashMap<PeerId, Mailbox>,
}

impl MemoryBus {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Inner {
    fn flush(&self, out: Outbox) {
        for effect in out {
            // Alone, there is no other node to announce to or send to.
            match effect {
                Effect::Deliver(to, msg) => deliver(&self.mailboxes, &to, &msg),
                Effect::Broadcast(to, msg) => deliver_many(&self.mailboxes, &to, &msg),
                Effect::Announce(_) | Effect::ToNode(..) => {}
            }
        }
    }
}

impl Bus for MemoryBus {
    fn join(&self, peer_id: &str, mailbox: Mailbox, grants: Arc<Grants>) {
        let mut inner = self.inner.lock();
        inner
            .router
            .join_as(peer_id, mailbox.version(), grants, &mut Outbox::new());
        inner.mailboxes.insert(peer_id.to_string(), mailbox);
    }

    fn regrant(&self, peer_id: &str, grants: Arc<Grants>) -> bool {
        let mut inner = self.inner.lock();
        if inner.router.tenant_of(peer_id) != Some(grants.tenant.as_str()) {
            return false;
        }
        inner.router.regrant(peer_id, grants);
        true
    }

    fn handle(&self, from: &str, msg: ClientMessage) -> Option<Pending> {
        let mut out = Outbox::new();
        let mut inner = self.inner.lock();
        inner.router.handle(from, msg, &mut out);
        inner.flush(out);
        None
    }

    fn leave(&self, peer_id: &str) {
        let mut out = Outbox::new();
        let mut inner = self.inner.lock();
        inner.mailboxes.remove(peer_id);
        inner.router.leave(peer_id, &mut out);
        inner.flush(out);
    }

    fn census(&self) -> crate::routing::Census {
        self.inner.lock().router.census()
    }

    fn peer_rows(&self, me: &str) -> Vec<crate::routing::PeerRow> {
        self.inner.lock().router.peer_rows(me)
    }

    fn session_rows(
        &self,
        me: &str,
    ) -> futures::future::BoxFuture<'static, Vec<proto::envelope::SessionRow>> {
        let rows = self.inner.lock().router.session_rows(me);
        Box::pin(futures::future::ready(rows))
    }

    fn act(&self, me: &str, op: proto::envelope::AdminBody) {
        let mut out = Outbox::new();
        let mut inner = self.inner.lock();
        let Inner { router, mailboxes } = &mut *inner;
        crate::admin::apply(router, mailboxes, me, &op, &mut out);
        inner.flush(out);
    }

    fn place(&self, stream: &str, viewer: &Grants) -> Result<PeerId, crate::routing::Unplaced> {
        let inner = self.inner.lock();
        inner.router.place_for(viewer, stream)
    }

    fn away(&self, peer_id: &str, away: bool) {
        self.inner.lock().router.set_away(peer_id, away);
    }

    fn notify_local(&self, msg: &ServerMessage) {
        let inner = self.inner.lock();
        for mailbox in inner.mailboxes.values() {
            let _ = mailbox.deliver(msg);
        }
    }

    fn close_local(&self, code: u16, reason: &str) {
        let inner = self.inner.lock();
        for mailbox in inner.mailboxes.values() {
            let _ = mailbox.send(crate::mailbox::Outbound::Close(code, reason.into()));
        }
    }

    fn producers(&self) -> Vec<PeerInfo> {
        self.inner.lock().router.producers()
    }

    fn nodes(&self) -> Vec<NodeSummary> {
        vec![NodeSummary {
            id: None,
            peers: self.inner.lock().router.local_peer_count(),
        }]
    }

    fn stats(&self) -> BusStats {
        let inner = self.inner.lock();
        BusStats {
            peers: inner.router.local_peer_count(),
            sessions: inner.router.session_count(),
        }
    }
}
