//! One actor per connected peer.
//!
//! The actor reads the peer's WebSocket frames, turns them into [`ClientMessage`]s for the
//! [`Bus`] and answers bad input with an `error`. A separate writer task drains the peer's
//! [`Mailbox`] into the socket, so routing never waits on a peer's network.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_ws::{AggregatedMessage, CloseCode, CloseReason, ProtocolError, Session};
use proto::{ClientMessage, ErrorCode, PeerId, ServerMessage};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::bus::Bus;
use crate::mailbox::{Mailbox, MailboxReceiver, Outbound};

/// Per-connection limits, from the node's configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_messages_per_sec: u32,
    pub ping_interval: Duration,
}

pub struct PeerConnection {
    id: PeerId,
    bus: Arc<dyn Bus>,
    mailbox: Mailbox,
    limits: Limits,
    last_seen: Instant,
    bucket: TokenBucket,
}

impl PeerConnection {
    /// Starts the actor and its writer for an upgraded connection. The caller has queued the
    /// `welcome` in `mailbox` already, so it is the first thing the peer reads.
    pub fn start(
        id: PeerId,
        bus: Arc<dyn Bus>,
        (mailbox, receiver): (Mailbox, MailboxReceiver),
        session: Session,
        stream: actix_ws::AggregatedMessageStream,
        limits: Limits,
    ) -> Addr<Self> {
        let span = info_span!("peer", peer_id = %id);
        bus.join(&id, mailbox.clone());
        let actor = PeerConnection {
            id,
            bus,
            mailbox,
            limits,
            last_seen: Instant::now(),
            bucket: TokenBucket::new(limits.max_messages_per_sec),
        };
        let addr = PeerConnection::create(|ctx| {
            ctx.add_stream(stream);
            actor
        });
        actix_rt::spawn(
            write_loop(session, receiver, limits.ping_interval, addr.clone()).instrument(span),
        );
        addr
    }

    fn reply_error(&self, code: ErrorCode, details: String) {
        debug!(peer_id = %self.id, %code, "{details}");
        let _ = self.mailbox.deliver(&ServerMessage::error(code, details));
    }

    /// Queues a close frame for the writer and stops reading from this peer.
    fn close(&self, ctx: &mut Context<Self>, code: CloseCode, reason: &str) {
        let _ = self
            .mailbox
            .send(Outbound::Close(code.into(), reason.to_string()));
        ctx.stop();
    }

    fn on_text(&mut self, text: &str, ctx: &mut Context<Self>) {
        if !self.bucket.take() {
            warn!(peer_id = %self.id, "message rate above limit, disconnecting");
            self.reply_error(
                ErrorCode::RateLimited,
                format!(
                    "more than {} messages per second, closing",
                    self.limits.max_messages_per_sec
                ),
            );
            self.close(ctx, CloseCode::Policy, "rate limit");
            return;
        }
        match ClientMessage::parse(text) {
            Ok(msg) => {
                if let Some(pending) = self.bus.handle(&self.id, msg) {
                    ctx.wait(actix::fut::wrap_future(pending));
                }
            }
            Err(err) => self.reply_error(err.code(), err.to_string()),
        }
    }
}

impl Actor for PeerConnection {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        info!(peer_id = %self.id, version = self.mailbox.version().number(), "peer connected");
        // A peer silent for three ping intervals (no pong either) is gone.
        let interval = self.limits.ping_interval;
        ctx.run_interval(interval, move |act, ctx| {
            if act.last_seen.elapsed() > interval * 3 {
                warn!(peer_id = %act.id, "peer silent for too long, disconnecting");
                act.close(ctx, CloseCode::Away, "timeout");
            }
        });
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        info!(peer_id = %self.id, "peer disconnected");
        self.bus.leave(&self.id);
    }
}

impl StreamHandler<Result<AggregatedMessage, ProtocolError>> for PeerConnection {
    fn handle(&mut self, item: Result<AggregatedMessage, ProtocolError>, ctx: &mut Context<Self>) {
        self.last_seen = Instant::now();
        match item {
            Ok(AggregatedMessage::Text(text)) => self.on_text(&text, ctx),
            Ok(AggregatedMessage::Binary(_)) => self.reply_error(
                ErrorCode::BinaryFrame,
                "binary frames are not part of the protocol; send JSON text".into(),
            ),
            Ok(AggregatedMessage::Ping(data)) => {
                let _ = self.mailbox.send(Outbound::Pong(data.to_vec()));
            }
            Ok(AggregatedMessage::Pong(_)) => {}
            Ok(AggregatedMessage::Close(reason)) => {
                debug!(peer_id = %self.id, ?reason, "peer closed the connection");
                self.close(ctx, CloseCode::Normal, "");
            }
            Err(ProtocolError::Overflow) => self.too_big(ctx),
            Err(ProtocolError::Io(e)) if e.to_string().contains("maximum continuation size") => {
                self.too_big(ctx)
            }
            Err(err) => {
                info!(peer_id = %self.id, "connection dropped: {err}");
                self.close(ctx, CloseCode::Protocol, "protocol error");
            }
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl PeerConnection {
    fn too_big(&mut self, ctx: &mut Context<Self>) {
        warn!(peer_id = %self.id, "message above the size limit, closing with 1009");
        self.close(ctx, CloseCode::Size, "message too big");
    }
}

/// The writer task stopped (socket gone or peer stuck).
#[derive(Message)]
#[rtype(result = "()")]
struct WriterDone;

impl Handler<WriterDone> for PeerConnection {
    type Result = ();
    fn handle(&mut self, _: WriterDone, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

/// Drains the mailbox into the socket; pings when idle; gives up when the peer is stuck.
async fn write_loop(
    mut session: Session,
    mut mailbox: MailboxReceiver,
    ping_interval: Duration,
    actor: Addr<PeerConnection>,
) {
    let stuck = mailbox.stuck.clone();
    let outcome = async {
        loop {
            let next = tokio::time::timeout(ping_interval, mailbox.rx.recv()).await;
            let sent = match next {
                Err(_idle) => session.ping(b"").await,
                Ok(Some(Outbound::Text(text))) => session.text(text).await,
                Ok(Some(Outbound::Pong(data))) => session.pong(&data).await,
                Ok(Some(Outbound::Close(code, reason))) => {
                    let reason = CloseReason {
                        code: code.into(),
                        description: (!reason.is_empty()).then_some(reason),
                    };
                    let _ = session.close(Some(reason)).await;
                    return;
                }
                Ok(None) => {
                    let _ = session.close(None).await;
                    return;
                }
            };
            if sent.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = outcome => {}
        _ = stuck.notified() => warn!("outgoing queue full: dropping the connection"),
    }
    actor.do_send(WriterDone);
}

/// Token bucket: `rate` tokens per second, bursts up to twice that.
struct TokenBucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    fn new(rate: u32) -> Self {
        let rate = f64::from(rate.max(1));
        TokenBucket {
            rate,
            tokens: rate * 2.0,
            at: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate)
            .min(self.rate * 2.0);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}
