//! One actor per connected peer.
//!
//! The actor reads the peer's WebSocket frames, turns them into [`ClientMessage`]s for the
//! [`Bus`] and answers bad input with an `error`. A separate writer task drains the peer's
//! [`Mailbox`] into the socket, so routing never waits on a peer's network. When a v2 peer's
//! connection drops without a close, the mailbox is parked for resume ([`crate::resume`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_ws::{AggregatedMessage, CloseCode, CloseReason, ProtocolError, Session};
use proto::{ClientMessage, ErrorCode, PeerId, ServerMessage};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::bus::Bus;
use crate::mailbox::{Mailbox, MailboxReceiver, Outbound};
use crate::resume::{Parked, ResumeRegistry, Sent};

/// Per-connection limits, from the node's configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_messages_per_sec: u32,
    pub ping_interval: Duration,
}

/// Everything logged while handling a peer's messages (router and bus included) carries the
/// node and peer ids through this span.
fn peer_span(node_id: &str, peer_id: &str) -> tracing::Span {
    info_span!("peer", node = %node_id, peer_id = %peer_id)
}

pub struct PeerConnection {
    id: PeerId,
    bus: Arc<dyn Bus>,
    mailbox: Mailbox,
    limits: Limits,
    last_seen: Instant,
    bucket: TokenBucket,
    /// v2 peers: the token under which a dropped connection is parked.
    resume_token: Option<String>,
    registry: Arc<ResumeRegistry>,
    /// The connection ended on purpose (a close frame, a limit): no resume.
    ended_cleanly: bool,
    /// The peer was handed over to a new connection: this one just goes away.
    handed_over: bool,
    writer: Option<Writer>,
    span: tracing::Span,
}

/// How to stop the writer and get the mailbox back from it.
struct Writer {
    stop: tokio::sync::oneshot::Sender<()>,
    done: tokio::task::JoinHandle<WriterEnd>,
}

/// What a new connection attaches to: a fresh peer, or a parked one it resumes.
pub struct Attach {
    pub id: PeerId,
    pub mailbox: Mailbox,
    pub receiver: MailboxReceiver,
    /// The `welcome`, sent first (not counted as a frame of the peer).
    pub welcome: String,
    /// Frames to send before the queued ones: what the client lost in flight, then what a
    /// dropped connection could not send.
    pub pending: Vec<String>,
    /// v2 peers: the numbering of written frames, for replay on resume.
    pub sent: Option<Sent>,
    pub resumed: bool,
    pub resume_token: Option<String>,
}

impl PeerConnection {
    /// Starts the actor and its writer for an upgraded connection.
    pub fn start(
        attach: Attach,
        node_id: &str,
        bus: Arc<dyn Bus>,
        registry: Arc<ResumeRegistry>,
        session: Session,
        stream: actix_ws::AggregatedMessageStream,
        limits: Limits,
    ) -> Addr<Self> {
        let span = peer_span(node_id, &attach.id);
        if !attach.resumed {
            let _entered = span.enter();
            bus.join(&attach.id, attach.mailbox.clone());
        }
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let actor = PeerConnection {
            id: attach.id,
            bus,
            mailbox: attach.mailbox,
            limits,
            last_seen: Instant::now(),
            bucket: TokenBucket::new(limits.max_messages_per_sec),
            resume_token: attach.resume_token,
            registry,
            ended_cleanly: false,
            handed_over: false,
            writer: None,
            span: span.clone(),
        };
        PeerConnection::create(|ctx| {
            ctx.add_stream(stream);
            let done = actix_rt::spawn(
                write_loop(
                    session,
                    attach.receiver,
                    (attach.welcome, attach.pending, attach.sent),
                    limits.ping_interval,
                    stopped,
                    ctx.address(),
                )
                .instrument(span),
            );
            PeerConnection {
                writer: Some(Writer { stop, done }),
                ..actor
            }
        })
    }

    fn reply_error(&self, code: ErrorCode, details: String) {
        debug!(peer_id = %self.id, %code, "{details}");
        let _ = self.mailbox.deliver(&ServerMessage::error(code, details));
    }

    /// Queues a close frame for the writer and stops reading from this peer.
    fn close(&mut self, ctx: &mut Context<Self>, code: CloseCode, reason: &str) {
        self.ended_cleanly = true;
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
        if let Some(token) = &self.resume_token {
            self.registry.connected(token, ctx.address());
        }
        // A peer silent for three ping intervals (no pong either) is gone.
        let interval = self.limits.ping_interval;
        ctx.run_interval(interval, move |act, ctx| {
            if act.last_seen.elapsed() > interval * 3 {
                warn!(peer_id = %act.id, "peer silent for too long, disconnecting");
                act.close(ctx, CloseCode::Away, "timeout");
            }
        });
    }

    fn stopped(&mut self, ctx: &mut Self::Context) {
        let span = self.span.clone();
        let _entered = span.enter();
        if let Some(token) = &self.resume_token {
            self.registry.disconnected(token, &ctx.address());
        }
        if self.handed_over {
            return; // the peer lives on in another connection
        }
        let resumable = !self.ended_cleanly && self.registry.enabled();
        match (resumable, self.resume_token.take(), self.writer.take()) {
            (true, Some(token), Some(writer)) => {
                // Take the mailbox back from the writer and park it under the token.
                let (id, mailbox, bus, registry) = (
                    self.id.clone(),
                    self.mailbox.clone(),
                    self.bus.clone(),
                    self.registry.clone(),
                );
                actix_rt::spawn(async move {
                    let _ = writer.stop.send(());
                    match writer.done.await {
                        Ok(end) if !end.stuck => registry.park(
                            token,
                            Parked {
                                peer_id: id,
                                mailbox,
                                receiver: end.receiver,
                                unsent: end.unsent,
                                sent: end.sent.unwrap_or_default(),
                            },
                            bus,
                        ),
                        _ => bus.leave(&id),
                    }
                });
            }
            _ => {
                info!(peer_id = %self.id, "peer disconnected");
                self.bus.leave(&self.id);
            }
        }
    }
}

impl StreamHandler<Result<AggregatedMessage, ProtocolError>> for PeerConnection {
    fn handle(&mut self, item: Result<AggregatedMessage, ProtocolError>, ctx: &mut Context<Self>) {
        let span = self.span.clone();
        let _entered = span.enter();
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
            Err(ProtocolError::Io(e)) => {
                // The socket died without a close: a v2 peer may come back and resume.
                info!(peer_id = %self.id, "connection dropped: {e}");
                ctx.stop();
            }
            Err(err) => {
                info!(peer_id = %self.id, "protocol error: {err}");
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

/// A reconnection with this peer's token takes the peer over: stop the writer, hand back the
/// queue, close this connection without removing the peer.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Handover(pub tokio::sync::oneshot::Sender<Option<Parked>>);

impl Handler<Handover> for PeerConnection {
    type Result = ();
    fn handle(&mut self, Handover(reply): Handover, ctx: &mut Context<Self>) {
        let Some(writer) = self.writer.take() else {
            let _ = reply.send(None);
            return;
        };
        info!(peer_id = %self.id, "handing the peer over to its new connection");
        self.handed_over = true;
        let (peer_id, mailbox) = (self.id.clone(), self.mailbox.clone());
        actix_rt::spawn(async move {
            let _ = writer.stop.send(());
            let parked = writer.done.await.ok().map(|end| Parked {
                peer_id,
                mailbox,
                receiver: end.receiver,
                unsent: end.unsent,
                sent: end.sent.unwrap_or_default(),
            });
            let _ = reply.send(parked);
        });
        ctx.stop();
    }
}

/// The writer task stopped by itself (socket gone, or peer stuck).
#[derive(Message)]
#[rtype(result = "()")]
struct WriterDone {
    stuck: bool,
}

impl Handler<WriterDone> for PeerConnection {
    type Result = ();
    fn handle(&mut self, done: WriterDone, ctx: &mut Context<Self>) {
        if done.stuck {
            self.ended_cleanly = true; // a peer that does not read is not kept
        }
        ctx.stop();
    }
}

/// What the writer hands back when it ends.
struct WriterEnd {
    receiver: MailboxReceiver,
    /// A frame taken from the queue that could not be written.
    unsent: Vec<String>,
    sent: Option<Sent>,
    stuck: bool,
}

/// Sends the welcome and the pending frames, then drains the mailbox into the socket; pings
/// when idle. Ends when the socket or the queue closes, when the peer is stuck, or when told
/// to stop; hands the queue back either way, so a suspended peer loses nothing still queued.
async fn write_loop(
    mut session: Session,
    mut mailbox: MailboxReceiver,
    (welcome, pending, mut sent): (String, Vec<String>, Option<Sent>),
    ping_interval: Duration,
    mut stop: tokio::sync::oneshot::Receiver<()>,
    actor: Addr<PeerConnection>,
) -> WriterEnd {
    let stuck = mailbox.stuck.clone();
    let mut unsent: Vec<String> = Vec::new();
    let mut pending = pending.into_iter();
    let mut told = false;
    let outcome = async {
        if session.text(welcome).await.is_err() {
            unsent.extend(pending.by_ref());
            return;
        }
        // Frames not yet handed to the socket stay in `unsent` until written.
        for frame in pending.by_ref() {
            if session.text(frame.clone()).await.is_err() {
                unsent.push(frame);
                unsent.extend(pending.by_ref());
                return;
            }
            if let Some(sent) = sent.as_mut() {
                sent.record(&frame);
            }
        }
        loop {
            let next = tokio::time::timeout(ping_interval, mailbox.rx.recv()).await;
            let result = match next {
                Err(_idle) => session.ping(b"").await,
                Ok(Some(Outbound::Text(text))) => {
                    let r = session.text(text.clone()).await;
                    match (&r, sent.as_mut()) {
                        (Err(_), _) => unsent.push(text),
                        (Ok(()), Some(sent)) => sent.record(&text),
                        (Ok(()), None) => {}
                    }
                    r
                }
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
            if result.is_err() {
                return;
            }
        }
    };
    let mut is_stuck = false;
    tokio::select! {
        _ = outcome => {}
        _ = stuck.notified() => {
            warn!("outgoing queue full: dropping the connection");
            is_stuck = true;
        }
        // (a dropped sender is no request to stop: the writer then finishes its queue)
        Ok(()) = &mut stop => told = true,
    }
    if !told {
        actor.do_send(WriterDone { stuck: is_stuck });
    }
    WriterEnd {
        receiver: mailbox,
        unsent,
        sent,
        stuck: is_stuck,
    }
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
