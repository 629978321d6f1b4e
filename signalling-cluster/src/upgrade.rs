//! WebSocket upgrades: the handshake is answered here, then the connection itself goes to a
//! [`PeerConnection`], and the HTTP side of the node lets go of it.
//!
//! The HTTP/1 dispatcher hands over every request announcing `Upgrade: websocket` (any path:
//! stock clients use `/`) with its connection and any bytes read past the request: a client
//! may send its first frame in the same packet as the handshake.

use std::io;
use std::time::Duration;

use actix_codec::{AsyncRead, AsyncWrite, Framed};
use actix_http::body::BodySize;
use actix_http::header::{self, HeaderName, HeaderValue};
use actix_http::{h1, ws, Request, Response, StatusCode};
use actix_web::web;
use bytes::{Bytes, BytesMut};
use futures::SinkExt as _;
use proto::{ProtocolVersion, ServerMessage, WelcomeV2};
use tracing::{info, warn};

use std::sync::Arc;

use crate::auth::{token_of, AuthError};
use crate::bus::new_peer_id;
use crate::grants::Grants;
use crate::guards::{remote, Full};
use crate::mailbox::Mailbox;
use crate::node::NodeState;
use crate::peer::{Attach, Limits, PeerConnection};
use crate::resume::{new_token, token_node, Sent};
use crate::turn::{Renewal, Turn};

/// The connection broke while the handshake was answered.
#[derive(Debug, thiserror::Error)]
#[error("cannot answer the WebSocket upgrade: {0}")]
pub struct UpgradeError(#[from] io::Error);

/// (What the HTTP service would answer on a connection that is broken anyway.)
impl From<UpgradeError> for Response<actix_http::body::BoxBody> {
    fn from(_: UpgradeError) -> Self {
        Response::internal_server_error()
    }
}

/// Answers the upgrade request `req` on `framed` and starts the peer.
pub async fn upgrade<T>(
    state: web::Data<NodeState>,
    req: Request,
    mut framed: Framed<T, h1::Codec>,
) -> Result<(), UpgradeError>
where
    T: AsyncRead + AsyncWrite + Unpin + 'static,
{
    if let Err(e) = ws::verify_handshake(req.head()) {
        warn!(remote = %remote(req.peer_addr()), "WebSocket handshake failed: {e}");
        let body = format!("bad WebSocket upgrade: {e}\n");
        return refuse(&mut framed, StatusCode::BAD_REQUEST, body).await;
    }
    if state.bus.joining() {
        // Its peers would be invisible to the cluster until it has joined.
        let body = "this node has not joined its cluster yet (waiting for Redis); try again \
                    shortly or connect to another node\n";
        return refuse(&mut framed, StatusCode::SERVICE_UNAVAILABLE, body.into()).await;
    }
    if state.bus.fenced() {
        // Its peers would be invisible to the cluster: better another node.
        let body = "this node is cut off from its cluster; connect to another node\n";
        return refuse(&mut framed, StatusCode::SERVICE_UNAVAILABLE, body.into()).await;
    }
    let ip = req.peer_addr().map(|a| a.ip());
    // Who it is (auth on), before anything is created or announced.
    let grants = match grants_of(&state, &req) {
        Ok(g) => g,
        Err(e) => {
            state.guards.refused(ip, true, &e);
            let body = format!("unauthorized: {e}\n");
            return refuse(&mut framed, StatusCode::UNAUTHORIZED, body).await;
        }
    };
    let slot = match state.guards.admit(ip) {
        Ok(slot) => slot,
        Err(full) => {
            state.guards.refused(ip, false, &full);
            let status = match full {
                Full::Node => StatusCode::SERVICE_UNAVAILABLE,
                Full::Address => StatusCode::TOO_MANY_REQUESTS,
            };
            return refuse(&mut framed, status, format!("{full}\n")).await;
        }
    };

    let offers = req
        .head()
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .filter_map(|v| v.to_str().ok());
    let (version, subprotocol) = ProtocolVersion::negotiate(offers);
    let mut res = ws::handshake_response(req.head()).finish().drop_body();
    if let Some(p) = subprotocol {
        res.headers_mut()
            .insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
    }
    add_affinity(&mut res, &state);

    let mut attach = attach(&state, &req, version, grants.clone()).await;
    if attach.resumed && !state.bus.regrant(&attach.id, grants) {
        // A resume is this peer's own: another tenant's token cannot take it.
        warn!(
            peer_id = attach.id,
            "resume with a token of another tenant: refused"
        );
        state.bus.leave(&attach.id);
        let body = "unauthorized: the token's tenant is not the peer's\n";
        return refuse(&mut framed, StatusCode::UNAUTHORIZED, body.into()).await;
    }
    attach.slot = Some(slot);
    if let Err(e) = framed.send(h1::Message::Item((res, BodySize::None))).await {
        // The peer starts all the same and ends as any dropped connection does: a peer that
        // was claimed for this connection is parked again, or leaves.
        info!(
            peer_id = attach.id,
            "connection lost during the handshake: {e}"
        );
    }
    let parts = framed.into_parts();
    // Bytes that came after the request are the client's first frames. (Copied, so that the
    // dispatcher's read buffer is freed rather than kept by the peer.)
    let read = match parts.read_buf.is_empty() {
        true => BytesMut::new(),
        false => BytesMut::from(&parts.read_buf[..]),
    };
    PeerConnection::start(
        attach,
        &state.node_id,
        state.bus.clone(),
        state.registry.clone(),
        parts.io,
        read,
        Limits {
            max_messages_per_sec: state.config.max_messages_per_sec,
            max_message_size: state.config.max_message_size,
            ping_interval: Duration::from_secs(state.config.ping_interval_secs.max(1)),
        },
    );
    Ok(())
}

/// Answers the upgrade request with `status` and a plain-text `body`, and closes.
async fn refuse<T>(
    framed: &mut Framed<T, h1::Codec>,
    status: StatusCode,
    body: String,
) -> Result<(), UpgradeError>
where
    T: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let body = Bytes::from(body);
    let mut res = Response::with_body(status, ());
    res.head_mut()
        .set_connection_type(actix_http::ConnectionType::Close);
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    // (one write: a client that reads the head may not wait for a second packet)
    framed
        .feed(h1::Message::Item((res, BodySize::Sized(body.len() as u64))))
        .await?;
    framed.send(h1::Message::Chunk(Some(body))).await?;
    Ok(())
}

/// What the request's token grants (everything when auth is off), or why it is refused.
pub fn grants_of(state: &NodeState, req: &Request) -> Result<Arc<Grants>, AuthError> {
    let Some(verifier) = &state.verifier else {
        return Ok(Arc::new(Grants::everything()));
    };
    let authorization = req
        .head()
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let token = token_of(authorization, req.uri().query()).ok_or(AuthError::Missing)?;
    verifier.verify(token).map(Arc::new)
}

/// The ICE servers of a peer (`turn.rs`): its TURN credential names it (`SUB:PEER` with a
/// token's subject). With auth on, only a peer whose token was verified gets any.
fn renewal(state: &NodeState, grants: &Grants, peer_id: &str) -> Option<Renewal> {
    let turn = state.turn.clone()?;
    let id = Turn::credential_id(state.verifier.is_some(), grants.sub.as_deref(), peer_id)?;
    Some(Renewal { turn, id })
}

/// The peer this connection is for: the one its resume token names, or a new one.
async fn attach(
    state: &NodeState,
    req: &Request,
    version: ProtocolVersion,
    grants: Arc<Grants>,
) -> Attach {
    let query = |key: &str| {
        req.uri()
            .query()?
            .split('&')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
    };
    let resume = query("resume").filter(|_| version >= ProtocolVersion::V2);
    // frames the client says it received (after the welcome), to replay what it lost
    let last = query("last").and_then(|n| n.parse::<u64>().ok());
    let welcome = |peer_id: &str, token: &str, resumed: bool| {
        ServerMessage::Welcome {
            peer_id: peer_id.to_string(),
            v2: Some(WelcomeV2 {
                protocol_version: version.number(),
                node_id: state.node_id.clone(),
                resume_token: token.to_string(),
                resumed,
                ice_servers: renewal(state, &grants, peer_id)
                    .map(|r| r.servers())
                    .unwrap_or_default(),
            }),
        }
        .encode(version)
        .unwrap_or_default()
    };
    let resumed = match resume {
        Some(token) => resume_peer(state, token, last, version, &welcome).await,
        None => None,
    }
    .map(|a| Attach {
        grants: grants.clone(),
        ..a
    });
    let attach = resumed.unwrap_or_else(|| {
        // A v1 peer, a v2 peer without a token, or one whose token is unknown (expired, or
        // its node is gone): a new peer.
        let peer_id = new_peer_id();
        let (mailbox, receiver) = Mailbox::new(state.config.peer_queue, version);
        let token = (version >= ProtocolVersion::V2).then(|| new_token(&state.node_id));
        let first = match &token {
            Some(t) => welcome(&peer_id, t, false),
            None => ServerMessage::Welcome {
                peer_id: peer_id.clone(),
                v2: None,
            }
            .encode(version)
            .unwrap_or_default(),
        };
        let sub = grants.sub.as_deref().unwrap_or("");
        info!(peer_id, remote = %remote(req.peer_addr()), version = version.number(), sub, tenant = grants.tenant, "new WebSocket connection");
        Attach {
            grants: grants.clone(),
            slot: None,
            renewal: None,
            id: peer_id,
            mailbox,
            receiver,
            welcome: first,
            pending: Vec::new(),
            sent: token.is_some().then(Sent::default),
            resumed: false,
            resume_token: token,
        }
    });
    if let Some(token) = &attach.resume_token {
        state.bus.resume_token(&attach.id, token);
    }
    Attach {
        // (v1 has no message to carry fresh credentials)
        renewal: (version >= ProtocolVersion::V2)
            .then(|| renewal(state, &grants, &attach.id))
            .flatten(),
        ..attach
    }
}

/// Claims the peer under `token`, here or from the node that issued it. The resumed peer gets a
/// new token (naming this node) in its `welcome`, then the frames it lost in flight (those after
/// `last`, if the client says), then what was queued for it. If frames it lost are no longer
/// kept, the resume fails and the peer leaves: better a clear end than a silent gap.
async fn resume_peer(
    state: &NodeState,
    token: &str,
    last: Option<u64>,
    version: ProtocolVersion,
    welcome: &impl Fn(&str, &str, bool) -> String,
) -> Option<Attach> {
    let new = new_token(&state.node_id);
    let parked = match token_node(token) == Some(state.node_id.as_str()) {
        true => state.registry.take(token).await,
        false => None,
    };
    // (a token of ours that the registry does not know goes to the bus: this node may have
    // restarted, and the peer be suspended in the cluster)
    if let Some(parked) = parked {
        let Some((replay, written)) = parked.sent.resume(last) else {
            warn!(
                peer_id = parked.peer_id,
                ?last,
                "cannot replay what the client lost; the peer leaves"
            );
            crate::metrics::resumed("refused");
            state.bus.leave(&parked.peer_id);
            return None;
        };
        info!(
            peer_id = parked.peer_id,
            replayed = replay.len(),
            "peer resumed"
        );
        crate::metrics::resumed("resumed");
        return Some(Attach {
            welcome: welcome(&parked.peer_id, &new, true),
            id: parked.peer_id,
            mailbox: parked.mailbox,
            receiver: parked.receiver,
            pending: replay,
            sent: Some(Sent::starting_at(written)),
            resumed: true,
            resume_token: Some(new),
            grants: Arc::new(Grants::everything()),
            slot: None,
            renewal: None,
        });
    }
    let (mailbox, receiver) = Mailbox::new(state.config.peer_queue, version);
    // (the bus bounds how long a claim takes)
    let claim = state.bus.claim(token, last, mailbox.clone())?;
    let Some((peer_id, written)) = claim.await else {
        crate::metrics::resumed("refused");
        return None;
    };
    crate::metrics::resumed("resumed_from_other_node");
    info!(
        peer_id,
        from = token_node(token),
        "peer resumed from another node"
    );
    Some(Attach {
        welcome: welcome(&peer_id, &new, true),
        id: peer_id,
        mailbox,
        receiver,
        pending: Vec::new(),
        sent: Some(Sent::starting_at(written)),
        resumed: true,
        resume_token: Some(new),
        grants: Arc::new(Grants::everything()),
        slot: None,
        renewal: None,
    })
}

/// Names this node in the upgrade response, for sticky load balancers.
fn add_affinity(res: &mut Response<()>, state: &NodeState) {
    let config = &state.config;
    if let (Ok(name), Ok(value)) = (
        HeaderName::try_from(config.affinity_header.as_str()),
        HeaderValue::try_from(state.node_id.as_str()),
    ) {
        res.headers_mut().insert(name, value);
    }
    if !config.affinity_cookie.is_empty() {
        let cookie = actix_web::cookie::Cookie::build(&config.affinity_cookie, &state.node_id)
            .path("/")
            .http_only(true)
            .finish();
        match HeaderValue::from_str(&cookie.to_string()) {
            Ok(value) => {
                res.headers_mut().append(header::SET_COOKIE, value);
            }
            Err(e) => warn!("cannot set the affinity cookie: {e}"),
        }
    }
}
