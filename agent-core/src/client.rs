//! The signalling connection of an agent: one WebSocket at a time to one of several servers,
//! replaced when it is lost, resumed (same peer id and sessions) when the server speaks v2.
//!
//! The client knows the protocol's framing (welcome, resume token, `goAway`), not the roles: it
//! hands every other server message to its owner (the [`crate::signaller`]) as a
//! [`ClientEvent`] and sends what the owner queues.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use proto::{ErrorCode, ServerMessage, SUBPROTOCOL_V1, SUBPROTOCOL_V2};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::{Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use tracing::{debug, info, warn};
use url::Url;

use crate::tls;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Resumes asked for in a row before the agent accepts a new identity. A refused resume is
/// most often a race that a moment later is won: the old node still handing the peer over
/// (a drain, a rolling restart), a cluster that just lost Redis. A new identity ends every
/// session, so it is worth a few tries.
const RESUME_TRIES: u32 = 3;

/// Wait before the next resume after a refusal, times the refusals so far.
const RESUME_RETRY_DELAY: Duration = Duration::from_millis(200);

/// Which protocol version to ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ProtocolChoice {
    /// v2 when the server offers it, v1 otherwise.
    #[default]
    Auto,
    /// Always v1 (no resume), as a stock webrtcsink/webrtcsrc would.
    V1,
}

/// The bearer token: given, or read from a file at every connection (Secret rotation).
#[derive(Debug, Clone)]
pub enum Token {
    Value(String),
    File(std::path::PathBuf),
}

impl Token {
    /// The token to send now (`None`: the file cannot be read; the node will refuse).
    pub fn current(&self) -> Option<String> {
        match self {
            Token::Value(t) => Some(t.clone()),
            Token::File(path) => match read_token_file(path) {
                Ok(t) => Some(t),
                Err(e) => {
                    warn!("{e}; connecting without a token");
                    None
                }
            },
        }
    }
}

/// The token in `path` (trimmed): an error names the file. The agents check it at start
/// (exit 2), and read it again at every connection.
pub fn read_token_file(path: &std::path::Path) -> Result<String, String> {
    let shown = path.display();
    match std::fs::read_to_string(path) {
        Ok(t) if t.trim().is_empty() => Err(format!("the token file {shown} is empty")),
        Ok(t) => Ok(t.trim().to_string()),
        Err(e) => Err(format!("cannot read the token file {shown}: {e}")),
    }
}

/// Everything needed to reach the signalling servers.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Tried in order, moving on after every failure or loss.
    pub servers: Vec<Url>,
    /// Extra HTTP headers of the WebSocket upgrade (sticky-session cookies, …).
    pub headers: Vec<(String, String)>,
    /// Sent as `Authorization: Bearer …`.
    pub token: Option<Token>,
    pub cafile: Option<std::path::PathBuf>,
    pub insecure_tls: bool,
    pub protocol: ProtocolChoice,
    /// Give up when no server could be reached for this long.
    pub retry_for: Duration,
    /// Upper bound of the exponential backoff between attempts.
    pub backoff_max: Duration,
    /// Kicked by an operator: register anew instead of stopping.
    pub reconnect_after_kick: bool,
}

/// What the connection tells its owner, in order.
#[derive(Debug, Clone)]
pub enum ClientEvent {
    /// A `welcome` arrived. `resumed`: same peer id as before, sessions kept.
    Connected {
        url: Url,
        peer_id: String,
        node_id: Option<String>,
        v2: bool,
        resumed: bool,
        /// The node's STUN/TURN servers for us (v2 `welcome.iceServers`; none in v1).
        ice_servers: Vec<proto::IceServer>,
    },
    /// Any other server message.
    Message(ServerMessage),
    /// The connection is gone; the client is reconnecting.
    Lost { url: Url, reason: String },
    /// No server could be reached for `retry_for`: the client stopped.
    GaveUp { error: String },
    /// Refused for good at the door (a fixed token, or none, refused with 401; the server's
    /// certificate rejected; a token file refused for `retry_for`): the client stopped.
    Refused { error: String },
    /// An operator disconnected us (v2 `error` code `kicked`, or close code 4000). The client
    /// stopped, unless `reconnect_after_kick`: then it registers anew (no resume: the server
    /// keeps nothing of a kicked peer).
    Kicked { reason: String },
}

/// Errors the first connection can end with.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot connect to {url}: {reason}")]
    Unreachable { url: Url, reason: String },
    #[error("invalid header '{0}'")]
    InvalidHeader(String),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// Handle on a running client; dropping it does not stop the client, [`Client::close`] does.
pub struct Client {
    outgoing: mpsc::UnboundedSender<String>,
    stop: watch::Sender<bool>,
    done: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

impl Client {
    /// Starts connecting on `runtime`; events go to `on_event` (called from the runtime).
    pub fn spawn(
        runtime: &tokio::runtime::Runtime,
        config: ClientConfig,
        on_event: Arc<dyn Fn(ClientEvent) + Send + Sync>,
    ) -> Result<Client, ConnectError> {
        let connector = tls::connector(config.cafile.as_deref(), config.insecure_tls)?;
        for (k, v) in &config.headers {
            if HeaderName::from_bytes(k.as_bytes()).is_err() || HeaderValue::from_str(v).is_err() {
                return Err(ConnectError::InvalidHeader(format!("{k}={v}")));
            }
        }
        let (outgoing, rx) = mpsc::unbounded_channel();
        let (stop, stop_rx) = watch::channel(false);
        let (done_tx, done) = std::sync::mpsc::channel();
        let task = Task {
            config,
            connector,
            on_event,
            outgoing: rx,
            stop: stop_rx,
            token: None,
            received: 0,
            v1_only: Default::default(),
            refusals: 0,
        };
        runtime.spawn(async move {
            task.run().await;
            let _ = done_tx.send(());
        });
        Ok(Client {
            outgoing,
            stop,
            done: std::sync::Mutex::new(done),
        })
    }

    /// Queues a text frame. While reconnecting, frames wait; a reconnection that could not
    /// resume drops them (they belonged to sessions that are gone).
    pub fn send(&self, text: String) {
        let _ = self.outgoing.send(text);
    }

    /// Sends what is queued, closes the WebSocket (a close frame: the server forgets the peer
    /// at once) and waits up to `timeout` for it. Safe to call from any thread, including the
    /// runtime's own (it never blocks on the runtime).
    pub fn close(&self, timeout: Duration) {
        let _ = self.stop.send(true);
        if let Ok(done) = self.done.lock() {
            let _ = done.recv_timeout(timeout);
        }
    }
}

struct Task {
    config: ClientConfig,
    connector: Option<Connector>,
    on_event: Arc<dyn Fn(ClientEvent) + Send + Sync>,
    outgoing: mpsc::UnboundedReceiver<String>,
    stop: watch::Receiver<bool>,
    /// Resume token of the current identity (v2 only).
    token: Option<String>,
    /// Frames received since the identity began (welcomes excluded): `last=` on resume.
    received: u64,
    /// Servers that refused the v2 subprotocol (stock servers): asked for v1 from then on.
    v1_only: std::collections::HashSet<Url>,
    /// Resumes refused in a row (see [`RESUME_TRIES`]).
    refusals: u32,
}

/// Why a connection ended.
enum End {
    /// We closed it (stop requested).
    Closed,
    Lost(String),
    /// The server did not resume our peer; we closed at once, to try again.
    ResumeRefused,
    /// Kicked by an operator, and not to reconnect.
    Kicked,
}

impl Task {
    async fn run(mut self) {
        let n = self.config.servers.len().max(1);
        let mut index = 0usize;
        let mut failures = 0u32;
        let mut unreachable_since = Instant::now();
        loop {
            if *self.stop.borrow() {
                return;
            }
            let url = self.config.servers[index % n].clone();
            match self.connect(&url).await {
                Ok((ws, v2_offered)) => {
                    failures = 0;
                    match self.serve(ws, &url, v2_offered).await {
                        End::Closed | End::Kicked => return,
                        End::Lost(reason) => {
                            warn!(server = %url, %reason, "signalling connection lost, reconnecting");
                            (self.on_event)(ClientEvent::Lost {
                                url: url.clone(),
                                reason,
                            });
                        }
                        End::ResumeRefused => {
                            let delay = RESUME_RETRY_DELAY * self.refusals;
                            tokio::select! {
                                _ = tokio::time::sleep(delay) => {}
                                _ = self.stop.changed() => return,
                            }
                        }
                    }
                    unreachable_since = Instant::now();
                    index += 1;
                    continue; // the first retry goes out at once, to the next server
                }
                Err(AttemptError::Stopped) => return,
                Err(AttemptError::Final(reason)) => {
                    (self.on_event)(ClientEvent::Refused {
                        error: format!("cannot connect to {url}: {reason}"),
                    });
                    return;
                }
                Err(e) => {
                    if matches!(e, AttemptError::RefusedV2) {
                        // A stock server: same server again at once, v1 this time.
                        info!(server = %url, "server does not speak v2, using v1");
                        self.v1_only.insert(url);
                        continue;
                    }
                    debug!(server = %url, error = %e, "connection attempt failed");
                    failures += 1;
                    index += 1;
                    if unreachable_since.elapsed() >= self.config.retry_for {
                        let tried: Vec<String> =
                            self.config.servers.iter().map(Url::to_string).collect();
                        let error = format!(
                            "cannot connect to {} (for {} s; last error: {e})",
                            tried.join(", "),
                            self.config.retry_for.as_secs()
                        );
                        // Refused to the end: the token file never held a token the server took.
                        (self.on_event)(match e {
                            AttemptError::Unauthorized(_) => ClientEvent::Refused { error },
                            _ => ClientEvent::GaveUp { error },
                        });
                        return;
                    }
                    warn!(server = %url, error = %e, attempt = failures, "cannot connect, retrying");
                }
            }
            let delay = backoff(failures, self.config.backoff_max);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.stop.changed() => return,
            }
        }
    }

    async fn connect(&mut self, url: &Url) -> Result<(Ws, bool), AttemptError> {
        let mut target = url.clone();
        let offer_v2 = self.config.protocol == ProtocolChoice::Auto && !self.v1_only.contains(url);
        if let (true, Some(token)) = (offer_v2, &self.token) {
            target
                .query_pairs_mut()
                .append_pair("resume", token)
                .append_pair("last", &self.received.to_string());
        }
        let mut req = target
            .as_str()
            .into_client_request()
            .map_err(|e| AttemptError::Other(e.to_string()))?;
        let headers = req.headers_mut();
        for (k, v) in &self.config.headers {
            if let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                headers.append(k, v);
            }
        }
        if let Some(token) = self.config.token.as_ref().and_then(Token::current) {
            if let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}")) {
                headers.insert("authorization", v);
            }
        }
        if offer_v2 {
            // v2 first; naming v1 too lets a server that only knows v1 pick it explicitly.
            if let Ok(v) = HeaderValue::from_str(&format!("{SUBPROTOCOL_V2}, {SUBPROTOCOL_V1}")) {
                headers.insert("sec-websocket-protocol", v);
            }
        }
        info!(server = %url, resume = self.token.is_some() && offer_v2, "connecting");
        let attempt = tokio_tungstenite::connect_async_tls_with_config(
            req,
            None,
            true,
            self.connector.clone(),
        );
        let mut stop = self.stop.clone();
        let result = tokio::select! {
            r = tokio::time::timeout(Duration::from_secs(10), attempt) => r,
            _ = stop.changed() => return Err(AttemptError::Stopped),
        };
        match result {
            Err(_) => Err(AttemptError::Other("timed out".into())),
            Ok(Err(WsError::Protocol(ProtocolError::SecWebSocketSubProtocolError(_)))) => {
                Err(AttemptError::RefusedV2)
            }
            Ok(Err(WsError::Http(response))) => Err(self.refusal(&response)),
            Ok(Err(e)) => Err(match rejected_certificate(&e) {
                Some(why) => AttemptError::Final(format!(
                    "the server's certificate was rejected ({why}); not retrying: give --cafile the CA that signed it"
                )),
                None => AttemptError::Other(e.to_string()),
            }),
            Ok(Ok((ws, response))) => {
                let v2 = response
                    .headers()
                    .get("sec-websocket-protocol")
                    .and_then(|v| v.to_str().ok())
                    == Some(SUBPROTOCOL_V2);
                Ok((ws, v2))
            }
        }
    }

    /// What an HTTP answer to the upgrade means: the node's reason (its body) is shown. A 401
    /// is final unless the token comes from a file, which may hold a valid one by the next
    /// attempt (a rotated Secret).
    fn refusal(
        &self,
        response: &tokio_tungstenite::tungstenite::http::Response<Option<Vec<u8>>>,
    ) -> AttemptError {
        let status = response.status();
        let body = response
            .body()
            .as_deref()
            .map(|b| String::from_utf8_lossy(b).trim().to_string())
            .filter(|b| !b.is_empty());
        let what = match body {
            Some(body) => format!("HTTP {}: {body}", status.as_u16()),
            None => format!("HTTP {status}"),
        };
        if status != tokio_tungstenite::tungstenite::http::StatusCode::UNAUTHORIZED {
            return AttemptError::Other(what);
        }
        match &self.config.token {
            Some(Token::File(path)) => AttemptError::Unauthorized(format!(
                "{what} (the token of {}: the file is read again at every attempt)",
                path.display()
            )),
            Some(Token::Value(_)) => {
                AttemptError::Final(format!("the server refused the --token given: {what}"))
            }
            None => AttemptError::Final(format!(
                "the server wants a token (--token or --token-file): {what}"
            )),
        }
    }

    /// An operator disconnected us: the owner hears why; we stop, or (told to) register anew.
    fn kicked(&mut self, reason: String) -> Option<End> {
        (self.on_event)(ClientEvent::Kicked { reason });
        // A kicked peer is not kept for a resume.
        self.token = None;
        (!self.config.reconnect_after_kick).then_some(End::Kicked)
    }

    /// Runs one connection: welcome, then messages both ways until it ends.
    async fn serve(&mut self, mut ws: Ws, url: &Url, v2_offered: bool) -> End {
        let welcome = tokio::select! {
            w = tokio::time::timeout(Duration::from_secs(10), next_text(&mut ws)) => w,
            _ = self.stop.changed() => return self.close(ws).await,
        };
        let (peer_id, v2) = match welcome {
            Ok(Some(text)) => match ServerMessage::parse(&text) {
                Ok(ServerMessage::Welcome { peer_id, v2 }) => (peer_id, v2),
                Ok(other) => return End::Lost(format!("expected welcome, got {}", other.kind())),
                Err(e) => return End::Lost(format!("bad welcome: {e}")),
            },
            Ok(None) => return End::Lost("closed before welcome".into()),
            Err(_) => return End::Lost("no welcome within 10 s".into()),
        };
        let resumed = v2.as_ref().is_some_and(|w| w.resumed);
        let asked = v2_offered && v2.is_some() && self.token.is_some();
        if asked && !resumed && self.refusals + 1 < RESUME_TRIES {
            self.refusals += 1;
            info!(server = %url, refusals = self.refusals, "resume refused; trying again before registering anew");
            // A close frame: the server forgets the peer it has just made for us.
            let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
            return End::ResumeRefused;
        }
        self.refusals = 0;
        if !resumed {
            // A new identity: what was queued for the old one's sessions is void.
            self.received = 0;
            while self.outgoing.try_recv().is_ok() {}
        }
        self.token = v2.as_ref().map(|w| w.resume_token.clone());
        (self.on_event)(ClientEvent::Connected {
            url: url.clone(),
            peer_id,
            node_id: v2.as_ref().map(|w| w.node_id.clone()),
            v2: v2_offered && v2.is_some(),
            resumed,
            ice_servers: v2.map(|w| w.ice_servers).unwrap_or_default(),
        });

        let mut kicked = false;
        loop {
            tokio::select! {
                frame = ws.next() => match frame {
                    Some(Ok(Message::Text(text))) => {
                        self.received += 1;
                        tracing::trace!(frame = %text.as_str(), "received");
                        match ServerMessage::parse(text.as_str()) {
                            Ok(ServerMessage::GoAway { reason, .. }) => {
                                // Leave without a close frame: the server keeps our identity
                                // for the resume on the next server.
                                info!(server = %url, %reason, "server asked us to move");
                                return End::Lost(format!("goAway: {reason}"));
                            }
                            Ok(ServerMessage::TokenExpiring { .. })
                                if matches!(self.config.token, Some(Token::File(_))) =>
                            {
                                // The file may hold a fresh token by now: resume with it.
                                info!(server = %url, "token expiring; resuming with the token file's");
                                return End::Lost("token expiring".into());
                            }
                            Ok(ServerMessage::Error { code: Some(ErrorCode::Kicked), details }) => {
                                kicked = true;
                                if let Some(end) = self.kicked(details) {
                                    return end;
                                }
                            }
                            Ok(msg) => (self.on_event)(ClientEvent::Message(msg)),
                            Err(e) => warn!(error = %e, "unreadable message from server, ignored"),
                        }
                    }
                    Some(Ok(Message::Close(frame))) => {
                        let (code, reason) = frame.map(|f| (u16::from(f.code), f.reason.to_string())).unwrap_or_default();
                        // 4000: kicked (what a v1 peer hears of it; a v2 one was told first).
                        if code == KICKED && !kicked {
                            if let Some(end) = self.kicked(format!("disconnected by an operator: {reason}")) {
                                return end;
                            }
                        }
                        return End::Lost(format!("closed by server: {code} {reason}"));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return End::Lost(e.to_string()),
                    None => return End::Lost("connection closed".into()),
                },
                out = self.outgoing.recv() => match out {
                    Some(text) => {
                        tracing::trace!(frame = %text, "sending");
                        if let Err(e) = ws.send(Message::text(text)).await {
                            return End::Lost(e.to_string());
                        }
                    }
                    None => return self.close(ws).await,
                },
                _ = self.stop.changed() => return self.close(ws).await,
            }
        }
    }

    /// Flushes what is queued and closes with a close frame.
    async fn close(&mut self, mut ws: Ws) -> End {
        while let Ok(text) = self.outgoing.try_recv() {
            if ws.send(Message::text(text)).await.is_err() {
                return End::Closed;
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
        End::Closed
    }
}

/// The close code of a kicked peer (docs/protocol.md).
const KICKED: u16 = 4000;

#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error("server refused the v2 subprotocol")]
    RefusedV2,
    #[error("stopped")]
    Stopped,
    /// Trying again cannot help.
    #[error("{0}")]
    Final(String),
    /// Our token file's token refused (401): retried, the file read again.
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Other(String),
}

/// rustls' reason when the server's certificate was not accepted (unknown issuer, expired,
/// wrong name, …): a setup to fix, not a failure to retry.
fn rejected_certificate(e: &WsError) -> Option<String> {
    let WsError::Io(io) = e else {
        return None;
    };
    match io.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::InvalidCertificate(_) => Some(io.to_string()),
        _ => None,
    }
}

async fn next_text(ws: &mut Ws) -> Option<String> {
    while let Some(frame) = ws.next().await {
        match frame {
            Ok(Message::Text(t)) => return Some(t.as_str().to_owned()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
    None
}

/// Capped exponential backoff with full jitter: 0 before the first retry after a loss, then
/// up to 250 ms, 500 ms, … `max`.
pub fn backoff(failures: u32, max: Duration) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let ceiling = Duration::from_millis(250)
        .saturating_mul(1u32 << (failures - 1).min(16))
        .min(max);
    // Half fixed, half random: spreads agents that lost the same node without ever waiting 0.
    ceiling / 2 + ceiling.mul_f64(fastrand::f64() / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let max = Duration::from_secs(5);
        assert_eq!(backoff(0, max), Duration::ZERO);
        for failures in 1..40 {
            let d = backoff(failures, max);
            let ceiling = Duration::from_millis(250)
                .saturating_mul(1 << (failures - 1).min(16))
                .min(max);
            assert!(d >= ceiling / 2 && d <= ceiling, "{failures}: {d:?}");
        }
        assert!(backoff(30, max) >= Duration::from_millis(2500));
    }
}
