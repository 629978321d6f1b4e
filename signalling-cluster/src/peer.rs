//! One actor per connected peer.
//!
//! The actor owns the read half of the peer's connection: it decodes the WebSocket messages
//! ([`FrameStream`]), turns them into [`ClientMessage`]s for the [`Bus`] and answers bad input
//! with an `error`. A separate writer task owns the write half and drains the peer's
//! [`Mailbox`] straight into the socket ([`FrameWriter`]), so routing never waits on a peer's
//! network. When a v2 peer's connection drops without a close, the mailbox is parked for
//! resume ([`crate::resume`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_codec::{AsyncRead, AsyncWrite};
use actix_http::ws::{CloseCode, CloseReason};
use bytes::BytesMut;
use proto::{ClientMessage, ErrorCode, PeerId, ServerMessage};
use tokio::sync::oneshot;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::bus::Bus;
use crate::grants::Grants;
use crate::guards::Slot;
use crate::mailbox::{Mailbox, MailboxReceiver, Outbound};
use crate::resume::{Handover, Parked, ResumeRegistry, Sent};
use crate::turn::Renewal;
use crate::websocket::{FrameStream, FrameWriter, Incoming, ReadError};

/// At most this much is encoded for one write (and numbered before it is known to be written,
/// see [`write_loop`]); well within what [`Sent`] keeps for replay.
const BATCH_FRAMES: usize = 64;
const BATCH_BYTES: usize = 64 * 1024;

/// How long a connection we close waits for the peer to close too (see [`FrameWriter::linger`]).
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Per-connection limits, from the node's configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_messages_per_sec: u32,
    /// Largest message (frame, or fragments joined) a peer may send; above: close 1009.
    pub max_message_size: usize,
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
    /// When the connection's token expires (UNIX seconds): the connection closes then.
    expires_at: Option<u64>,
    renewal: Option<Renewal>,
    _slot: Option<Slot>,
}

/// How to stop the writer and get the mailbox back from it.
struct Writer {
    stop: oneshot::Sender<()>,
    done: tokio::task::JoinHandle<WriterEnd>,
}

/// What a new connection attaches to: a fresh peer, or a parked one it resumes.
pub struct Attach {
    pub id: PeerId,
    pub mailbox: Mailbox,
    pub receiver: MailboxReceiver,
    /// The `welcome`, sent first (not counted as a frame of the peer).
    pub welcome: String,
    /// Frames to send before the queued ones: what the client lost in flight.
    pub pending: Vec<String>,
    /// v2 peers: the numbering of written frames, for replay on resume.
    pub sent: Option<Sent>,
    pub resumed: bool,
    pub resume_token: Option<String>,
    /// What the connection's token grants (everything without auth).
    pub grants: Arc<Grants>,
    /// Its place under the connection limits, given back when it ends.
    pub slot: Option<Slot>,
    /// v2 peers given TURN credentials: how to send them fresh ones.
    pub renewal: Option<Renewal>,
}

impl PeerConnection {
    /// Starts the actor and its writer on an upgraded connection `io`; `read` holds the bytes
    /// that arrived with the handshake.
    pub fn start<T>(
        attach: Attach,
        node_id: &str,
        bus: Arc<dyn Bus>,
        registry: Arc<ResumeRegistry>,
        io: T,
        read: BytesMut,
        limits: Limits,
    ) -> Addr<Self>
    where
        T: AsyncRead + AsyncWrite + Unpin + 'static,
    {
        let span = peer_span(node_id, &attach.id);
        {
            let _entered = span.enter();
            match attach.resumed {
                false => bus.join(&attach.id, attach.mailbox.clone(), attach.grants.clone()),
                true => bus.away(&attach.id, false),
            }
        }
        let (stop, stopped) = oneshot::channel();
        let (read_half, write_half) = tokio::io::split(io);
        // the read half comes back to the writer when the actor is done with it
        let (give_back, read_half_back) = oneshot::channel();
        let stream = FrameStream::new(read_half, read, limits.max_message_size, give_back);
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
            expires_at: attach.grants.expires_at,
            renewal: attach.renewal,
            _slot: attach.slot,
        };
        PeerConnection::create(|ctx| {
            ctx.add_stream(stream);
            let done = actix_rt::spawn(
                write_loop(
                    FrameWriter::new(write_half),
                    read_half_back,
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

    /// A v2 peer is told its token expires (a tenth of its life before, 30 s at most), and the
    /// connection closes when it does (1008): resuming with a fresh token keeps the peer.
    fn expire_at(&mut self, at: u64, ctx: &mut Context<Self>) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let left = Duration::from_secs(at.saturating_sub(now));
        let warn_before = (left / 10).min(Duration::from_secs(30));
        ctx.run_later(left - warn_before, move |act, _| {
            let _ = act
                .mailbox
                .deliver(&ServerMessage::TokenExpiring { expires_at: at });
        });
        ctx.run_later(left, |act, ctx| {
            info!(peer_id = %act.id, "token expired, disconnecting");
            crate::metrics::closed("token_expired");
            // (not `close`: a v2 peer may resume with a fresh token)
            let _ = act.mailbox.send(Outbound::Close(
                CloseCode::Policy.into(),
                "token expired".into(),
            ));
            ctx.stop();
        });
    }

    fn reply_error(&self, code: ErrorCode, details: String) {
        debug!(peer_id = %self.id, %code, "{details}");
        let _ = self.mailbox.deliver(&ServerMessage::error(code, details));
    }

    /// Queues a close frame for the writer and stops reading from this peer; `label` is the
    /// reason in `gwc_connection_closes_total`.
    fn close(
        &mut self,
        ctx: &mut Context<Self>,
        code: CloseCode,
        reason: &str,
        label: &'static str,
    ) {
        crate::metrics::closed(label);
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
            self.close(ctx, CloseCode::Policy, "rate limit", "rate_limited");
            return;
        }
        let parsed = ClientMessage::parse_as(text, self.mailbox.version());
        let kind = parsed.as_ref().map_or("invalid", ClientMessage::kind);
        crate::metrics::client_message(kind);
        match parsed {
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
            self.registry.connected(token, ctx.address().recipient());
        }
        if let Some(at) = self.expires_at {
            self.expire_at(at, ctx);
        }
        if let Some(renewal) = &self.renewal {
            // Fresh TURN credentials before those of the welcome expire (`turn.rs`).
            ctx.run_interval(renewal.every(), |act, _| {
                if let Some(r) = &act.renewal {
                    let ice_servers = r.servers();
                    let _ = act
                        .mailbox
                        .deliver(&ServerMessage::IceServers { ice_servers });
                }
            });
        }
        // A peer silent for three ping intervals (no pong either) is gone.
        let interval = self.limits.ping_interval;
        ctx.run_interval(interval, move |act, ctx| {
            if act.last_seen.elapsed() > interval * 3 {
                warn!(peer_id = %act.id, "peer silent for too long, disconnecting");
                act.close(ctx, CloseCode::Away, "timeout", "ping_timeout");
            }
        });
    }

    fn stopped(&mut self, ctx: &mut Self::Context) {
        let span = self.span.clone();
        let _entered = span.enter();
        if self.handed_over {
            return; // the peer lives on in another connection
        }
        let resumable = !self.ended_cleanly && !self.mailbox.kicked() && self.registry.enabled();
        if self.mailbox.kicked() {
            crate::metrics::closed("kicked");
        }
        let (token, writer) = (self.resume_token.take(), self.writer.take());
        if let Some(token) = &token {
            // Until it is parked, a reconnection with the token waits for it.
            let parking = resumable && writer.is_some();
            self.registry
                .disconnected(token, &ctx.address().recipient(), parking);
        }
        match (resumable, token, writer) {
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
                                sent: end.sent.unwrap_or_default(),
                            },
                            bus,
                        ),
                        _ => {
                            registry.abandon(&token);
                            bus.leave(&id);
                        }
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

impl StreamHandler<Result<Incoming, ReadError>> for PeerConnection {
    fn handle(&mut self, item: Result<Incoming, ReadError>, ctx: &mut Context<Self>) {
        let span = self.span.clone();
        let _entered = span.enter();
        self.last_seen = Instant::now();
        match item {
            Ok(Incoming::Text(text)) => match std::str::from_utf8(&text) {
                Ok(text) => self.on_text(text, ctx),
                Err(_) => {
                    info!(peer_id = %self.id, "text message that is not UTF-8, closing");
                    self.close(ctx, CloseCode::Invalid, "text is not UTF-8", "invalid_utf8");
                }
            },
            Ok(Incoming::Binary) => self.reply_error(
                ErrorCode::BinaryFrame,
                "binary frames are not part of the protocol; send JSON text".into(),
            ),
            Ok(Incoming::Ping(data)) => {
                let _ = self.mailbox.send(Outbound::Pong(data.to_vec()));
            }
            Ok(Incoming::Pong) => {}
            Ok(Incoming::Close(reason)) => {
                let (code, why) =
                    reason.map_or((None, None), |r| (Some(u16::from(r.code)), r.description));
                debug!(peer_id = %self.id, code, why, "peer closed the connection");
                self.close(ctx, CloseCode::Normal, "", "client");
            }
            Err(ReadError::TooBig) => self.too_big(ctx),
            Err(ReadError::Io(e)) => {
                // The socket died without a close: a v2 peer may come back and resume.
                info!(peer_id = %self.id, "connection dropped: {e}");
                crate::metrics::closed("dropped");
                ctx.stop();
            }
            Err(err @ ReadError::Protocol(_)) => {
                info!(peer_id = %self.id, "{err}");
                self.close(ctx, CloseCode::Protocol, "protocol error", "protocol_error");
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
        self.close(ctx, CloseCode::Size, "message too big", "too_large");
    }
}

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
    sent: Option<Sent>,
    stuck: bool,
}

/// How the writer's work ended.
enum Ending {
    /// A close frame went out: the connection ends once the peer closes too.
    Closed,
    /// The connection broke.
    Dropped,
}

/// Sends the welcome and the pending frames, then drains the mailbox into the socket, all that
/// is queued in one write; pings every ping interval. Ends when the
/// socket or the queue closes, when the peer is stuck, or when told to stop; hands the queue
/// back either way, so a parked peer loses nothing still queued.
///
/// A v2 peer's frames are numbered ([`Sent`]) as they are handed to the socket: if the
/// connection breaks, the client's `last` tells which of them it got.
async fn write_loop<W, R>(
    mut out: FrameWriter<W>,
    read_half: oneshot::Receiver<R>,
    mut mailbox: MailboxReceiver,
    (welcome, pending, mut sent): (String, Vec<String>, Option<Sent>),
    ping_interval: Duration,
    mut stop: oneshot::Receiver<()>,
    actor: Addr<PeerConnection>,
) -> WriterEnd
where
    W: AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
{
    let stuck = mailbox.stuck.clone();
    let mut told = false;
    let outcome = async {
        out.text(&welcome);
        for frame in pending {
            out.text(&frame);
            record(&mut sent, frame);
        }
        if out.write().await.is_err() {
            return Ending::Dropped;
        }
        // One timer for the connection's life, not one per frame.
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + ping_interval, ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                next = mailbox.rx.recv() => {
                    let mut next = next;
                    let mut frames = 0;
                    let mut closed = false;
                    if next.is_none() {
                        out.close(None);
                        closed = true;
                    }
                    while let Some(item) = next.take() {
                        match item {
                            Outbound::Text(text) => {
                                out.text(&text);
                                record(&mut sent, text);
                            }
                            Outbound::Pong(data) => out.pong(&data),
                            Outbound::Close(code, reason) => {
                                out.close(Some(CloseReason {
                                    code: code.into(),
                                    description: (!reason.is_empty()).then_some(reason),
                                }));
                                closed = true;
                                break;
                            }
                        }
                        frames += 1;
                        if frames < BATCH_FRAMES && out.buffered() < BATCH_BYTES {
                            next = mailbox.rx.try_recv().ok();
                        }
                    }
                    if out.write().await.is_err() {
                        return Ending::Dropped;
                    }
                    if closed {
                        return Ending::Closed;
                    }
                }
                // Every interval, busy or not: a peer that only listens is judged by its pongs
                // (it would be silent, and cut off, if pings waited for a quiet moment).
                _ = ping.tick() => {
                    out.ping();
                    if out.write().await.is_err() {
                        return Ending::Dropped;
                    }
                }
            }
        }
    };
    let mut is_stuck = false;
    let mut ending = Ending::Dropped;
    tokio::select! {
        end = outcome => ending = end,
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
    if let Ending::Closed = ending {
        out.linger(read_half, CLOSE_LINGER).await;
    }
    WriterEnd {
        receiver: mailbox,
        sent,
        stuck: is_stuck,
    }
}

fn record(sent: &mut Option<Sent>, frame: String) {
    if let Some(sent) = sent.as_mut() {
        sent.record(frame);
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
