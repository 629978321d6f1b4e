//! A peer's bounded outgoing queue.
//!
//! Whoever routes a message to a peer calls [`Mailbox::deliver`], which never waits: if the
//! peer does not read its socket and its queue fills, the peer is marked stuck and its
//! connection is dropped, so one slow reader never slows anyone else down.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use proto::{ProtocolVersion, ServerMessage};
use tokio::sync::{mpsc, Notify};

/// What the connection's writer sends next.
#[derive(Debug)]
pub enum Outbound {
    Text(String),
    /// Answer to the peer's ping.
    Pong(Vec<u8>),
    /// Close the WebSocket with this code and reason, then stop.
    Close(u16, String),
}

/// The sending side of a peer's queue; cheap to clone.
#[derive(Clone, Debug)]
pub struct Mailbox {
    tx: mpsc::Sender<Outbound>,
    version: ProtocolVersion,
    stuck: Arc<Notify>,
    /// An operator disconnected the peer (`kick`): its connection is not kept for a resume.
    kicked: Arc<AtomicBool>,
}

/// The receiving side, owned by the connection's writer.
pub struct MailboxReceiver {
    pub rx: mpsc::Receiver<Outbound>,
    /// Fires once when the queue overflowed and the connection must be dropped.
    pub stuck: Arc<Notify>,
}

/// The peer's queue is full (or its connection is gone).
#[derive(Debug, thiserror::Error)]
#[error("peer queue is full or closed")]
pub struct Undeliverable;

impl Mailbox {
    pub fn new(capacity: usize, version: ProtocolVersion) -> (Mailbox, MailboxReceiver) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let stuck = Arc::new(Notify::new());
        (
            Mailbox {
                tx,
                version,
                stuck: stuck.clone(),
                kicked: Arc::default(),
            },
            MailboxReceiver { rx, stuck },
        )
    }

    pub fn version(&self) -> ProtocolVersion {
        self.version
    }

    /// Disconnects the peer for an operator: a v2 peer is told why (`error`, code `kicked`),
    /// then the connection closes (4000) and is not kept for a resume.
    pub fn kick(&self, reason: &str) {
        self.kicked.store(true, Ordering::SeqCst);
        let why = format!("disconnected by an operator: {reason}");
        if self.version >= ProtocolVersion::V2 {
            let _ = self.deliver(&ServerMessage::error(proto::ErrorCode::Kicked, why));
        }
        let _ = self.send(Outbound::Close(4000, reason.chars().take(100).collect()));
    }

    pub fn kicked(&self) -> bool {
        self.kicked.load(Ordering::SeqCst)
    }

    /// Encodes `msg` for this peer's protocol version and queues it without waiting.
    pub fn deliver(&self, msg: &ServerMessage) -> Result<(), Undeliverable> {
        if let ServerMessage::Error { code, .. } = msg {
            let code = code.as_ref().map_or("internal", |c| c.as_str());
            let errors = &crate::metrics::metrics().errors_sent;
            errors
                .get_or_create(&crate::metrics::CodeLabel { code })
                .inc();
        }
        match msg.encode(self.version) {
            Some(text) => self.send(Outbound::Text(text)),
            None => Ok(()), // nothing to say to a peer of this version
        }
    }

    /// Queues a frame; on overflow, marks the peer stuck so its connection is dropped.
    pub fn send(&self, out: Outbound) -> Result<(), Undeliverable> {
        match self.tx.try_send(out) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.stuck.notify_one();
                Err(Undeliverable)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Undeliverable),
        }
    }
}
