//! WHEP playback (`POST /whep/{stream}`): any WHEP player watches any stream of the cluster.
//!
//! The request becomes a peer of the [`Bus`](crate::bus::Bus) like any WebSocket peer, only
//! in-process: it joins with the grants of its bearer token, asks `startSession` by stream
//! with the player's offer (v2 placement picks the member: the origin or a relay with room, so
//! the viewer counts for placement and capacity like any other), and waits for the member's
//! answer and the candidates trickling beside it, which go into the one answer the player gets
//! (`201`, `Location`, `Link: rel="ice-server"`). The peer then stays joined while the session
//! lasts; `DELETE` on its resource, from any node, kicks it (the operations API's cluster-wide
//! kick), which ends the session. Trickle ICE from the player is not taken: `PATCH` is 405.
//!
//! Errors, each with a short text body, and nothing left joined after any of them: 400 not an
//! offer we can answer, 401/403 token, 404 unknown stream, 503 no member with room (or none
//! answered in time), 413 (actix's payload limit, [`crate::sdp::MAX_OFFER_BYTES`]).

use std::sync::Arc;
use std::time::Duration;

use actix_web::{http::header, web, HttpRequest, HttpResponse};
use proto::envelope::AdminBody;
use proto::{ClientMessage, ProtocolVersion};
use serde_json::Value;
use tokio::time::{timeout_at, Instant};
use tracing::{info, warn};

use crate::auth::token_of;
use crate::mailbox::{Mailbox, MailboxReceiver, Outbound};
use crate::node::NodeState;
use crate::sdp::{check_offer, with_candidates};

/// How long the member has to answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);
/// After the answer, candidates are waited for until none came for this long (libnice sends
/// its host candidates within milliseconds of the answer)...
const CANDIDATES_QUIET: Duration = Duration::from_millis(250);
/// ...or this long at most.
const CANDIDATES_AT_MOST: Duration = Duration::from_secs(2);
/// WHEP peers' ids start so: `DELETE` kicks only them.
const PREFIX: &str = "whep-";

/// Why a WHEP request fails: its status and short text.
#[derive(Debug, thiserror::Error)]
pub enum WhepError {
    #[error("{0}")]
    BadOffer(#[from] crate::sdp::BadOffer),
    #[error("Content-Type must be application/sdp")]
    ContentType,
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    UnknownStream(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("no WHEP resource {0}")]
    UnknownResource(String),
}

impl WhepError {
    fn response(&self) -> HttpResponse {
        let mut answer = match self {
            WhepError::BadOffer(_) => HttpResponse::BadRequest(),
            WhepError::ContentType => HttpResponse::UnsupportedMediaType(),
            WhepError::Unauthorized(_) => HttpResponse::Unauthorized(),
            WhepError::Forbidden(_) => HttpResponse::Forbidden(),
            WhepError::UnknownStream(_) | WhepError::UnknownResource(_) => HttpResponse::NotFound(),
            WhepError::Unavailable(_) => HttpResponse::ServiceUnavailable(),
        };
        cors(&mut answer);
        answer.content_type("text/plain").body(format!("{self}\n"))
    }
}

/// Browsers' players are on other origins.
fn cors(answer: &mut actix_web::HttpResponseBuilder) {
    answer
        .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"))
        .insert_header((header::ACCESS_CONTROL_EXPOSE_HEADERS, "Location, Link"));
}

/// `OPTIONS`: the CORS preflight of a browser's POST (its `Authorization` and
/// `Content-Type: application/sdp` make the request non-simple).
pub async fn options() -> HttpResponse {
    let mut answer = HttpResponse::NoContent();
    cors(&mut answer);
    answer
        .insert_header((
            header::ACCESS_CONTROL_ALLOW_METHODS,
            "POST, DELETE, OPTIONS",
        ))
        .insert_header((
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            "Authorization, Content-Type",
        ))
        .insert_header((header::ACCESS_CONTROL_MAX_AGE, "600"))
        .finish()
}

/// `PATCH` (trickle ICE, ICE restart): not taken, the answer is complete.
pub async fn patch() -> HttpResponse {
    let mut answer = HttpResponse::MethodNotAllowed();
    cors(&mut answer);
    answer
        .insert_header((header::ALLOW, "DELETE, OPTIONS"))
        .content_type("text/plain")
        .body("trickle ICE is not taken: the answer carries every candidate\n")
}

/// The grants of the request's bearer token (everything with auth off).
fn grants(state: &NodeState, req: &HttpRequest) -> Result<crate::grants::Grants, WhepError> {
    let Some(verifier) = &state.verifier else {
        return Ok(crate::grants::Grants::everything());
    };
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let token = token_of(authorization, None)
        .ok_or_else(|| WhepError::Unauthorized("a bearer token is required".into()))?;
    verifier.verify(token).map_err(|e| {
        let ip = req.peer_addr().map(|a| a.ip());
        state.guards.refused(ip, true, &e);
        WhepError::Unauthorized(e.to_string())
    })
}

/// `POST /whep/{stream}`.
pub async fn post(
    state: web::Data<NodeState>,
    req: HttpRequest,
    stream: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    match play(&state, &req, &stream, &body).await {
        Ok(answer) => answer,
        Err(e) => {
            info!(stream = %stream, "WHEP refused: {e}");
            e.response()
        }
    }
}

async fn play(
    state: &NodeState,
    req: &HttpRequest,
    stream: &str,
    body: &[u8],
) -> Result<HttpResponse, WhepError> {
    let sdp_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    if !sdp_type.is_some_and(|t| t.starts_with("application/sdp")) {
        return Err(WhepError::ContentType);
    }
    let grants = grants(state, req)?;
    if !grants.may_consume(Some(stream)) {
        return Err(WhepError::Forbidden(format!(
            "the token's grants do not cover watching '{stream}'"
        )));
    }
    let offer = check_offer(body)?;
    let peer_id = format!("{PREFIX}{}", crate::bus::new_peer_id());
    let (mailbox, inbox) = Mailbox::new(256, ProtocolVersion::V2);
    let sub = grants.sub.clone();
    state.bus.join(&peer_id, mailbox, Arc::new(grants));
    let ask = ClientMessage::PlaceSession {
        stream: stream.to_string(),
        offer: Some(offer.to_string()),
        max_height: None,
    };
    if let Some(pending) = state.bus.handle(&peer_id, ask) {
        pending.await;
    }
    let mut viewer = Viewer { peer_id, inbox };
    let answer = match viewer.answer().await {
        Ok(answer) => answer,
        Err(e) => {
            state.bus.leave(&viewer.peer_id);
            return Err(e);
        }
    };
    info!(stream, peer = %viewer.peer_id, session = %answer.session_id, "WHEP viewer playing");
    let location = format!("/whep/{stream}/{}", viewer.peer_id);
    let mut reply = HttpResponse::Created();
    cors(&mut reply);
    reply
        .insert_header((header::LOCATION, location))
        .insert_header((header::CACHE_CONTROL, "no-store"));
    for link in ice_server_links(state, sub.as_deref(), &viewer.peer_id) {
        reply.append_header((header::LINK, link));
    }
    let bus = state.bus.clone();
    actix_web::rt::spawn(async move {
        viewer.wait_for_the_end().await;
        bus.leave(&viewer.peer_id);
    });
    Ok(reply.content_type("application/sdp").body(answer.sdp))
}

/// RFC 9725 section 4.6: the node's STUN/TURN servers, TURN credentials minted for this
/// viewer (`turn.rs`).
fn ice_server_links(state: &NodeState, sub: Option<&str>, peer_id: &str) -> Vec<String> {
    let Some(turn) = &state.turn else {
        return Vec::new();
    };
    let auth = state.verifier.is_some();
    let Some(id) = crate::turn::Turn::credential_id(auth, sub, peer_id) else {
        return Vec::new();
    };
    let quote = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let mut links = Vec::new();
    for server in turn.ice_servers(&id, std::time::SystemTime::now()) {
        for url in &server.urls {
            let mut link = format!("<{url}>; rel=\"ice-server\"");
            if let (Some(user), Some(credential)) = (&server.username, &server.credential) {
                link.push_str(&format!(
                    "; username=\"{}\"; credential=\"{}\"; credential-type=\"password\"",
                    quote(user),
                    quote(credential)
                ));
            }
            links.push(link);
        }
    }
    links
}

/// `DELETE /whep/{stream}/{id}`, on any node: the viewer's peer is kicked where it is, which
/// ends its session.
pub async fn delete(
    state: web::Data<NodeState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> HttpResponse {
    let (stream, id) = path.into_inner();
    if let Err(e) = grants(&state, &req) {
        return e.response();
    }
    let known = id.starts_with(PREFIX)
        && state
            .bus
            .peer_rows(&state.node_id)
            .iter()
            .any(|p| p.id == id);
    if !known {
        return WhepError::UnknownResource(format!("/whep/{stream}/{id}")).response();
    }
    let reason = "WHEP resource deleted".to_string();
    state.bus.act(
        &state.node_id,
        AdminBody::Kick {
            peer_id: id,
            reason,
        },
    );
    let mut answer = HttpResponse::Ok();
    cors(&mut answer);
    answer.finish()
}

/// The member's answer and the candidates that came with it.
struct Answer {
    session_id: String,
    sdp: String,
}

/// The in-process peer standing for one WHEP player.
struct Viewer {
    peer_id: String,
    inbox: MailboxReceiver,
}

impl Viewer {
    /// The next message for the peer as JSON (`None`: its queue closed, it was kicked).
    async fn next(&mut self, until: Instant) -> Option<Option<Value>> {
        match timeout_at(until, self.inbox.rx.recv()).await {
            Err(_) => None,
            Ok(Some(Outbound::Text(text))) => Some(serde_json::from_str(&text).ok()),
            Ok(Some(Outbound::Pong(_))) => Some(None),
            Ok(Some(Outbound::Close(..)) | None) => Some(Some(Value::Null)),
        }
    }

    /// Waits for `sessionStarted`, the answer, and the candidates.
    async fn answer(&mut self) -> Result<Answer, WhepError> {
        let deadline = Instant::now() + ANSWER_WITHIN;
        let mut session_id = None;
        let mut sdp = None::<String>;
        let mut candidates = Vec::new();
        let mut until = deadline;
        loop {
            let Some(msg) = self.next(until).await else {
                break; // the deadline, or the candidates went quiet
            };
            let Some(msg) = msg else { continue };
            let kind = msg.get("type").and_then(Value::as_str).unwrap_or_default();
            let text = |key: &str| msg.get(key).and_then(Value::as_str).map(str::to_string);
            match kind {
                "sessionStarted" => session_id = text("sessionId"),
                "peer" if msg.get("sdp").is_some() => {
                    let s = &msg["sdp"];
                    if s.get("type").and_then(Value::as_str) != Some("answer") {
                        return Err(WhepError::Unavailable(
                            "the stream's member sent no answer".into(),
                        ));
                    }
                    sdp = s.get("sdp").and_then(Value::as_str).map(str::to_string);
                }
                "peer" => {
                    let ice = &msg["ice"];
                    let line = ice.get("sdpMLineIndex").and_then(Value::as_u64);
                    let candidate = ice.get("candidate").and_then(Value::as_str);
                    if let (Some(line), Some(candidate)) = (line, candidate) {
                        candidates.push((line as u32, candidate.to_string()));
                    }
                }
                "error" => return Err(refusal(&msg)),
                "endSession" => {
                    return Err(WhepError::Unavailable(
                        "the stream's member ended the session before answering".into(),
                    ))
                }
                "" if msg.is_null() => {
                    return Err(WhepError::Unavailable("the viewer was disconnected".into()))
                }
                _ => {}
            }
            if sdp.is_some() {
                // Each candidate restarts the quiet period, up to the cap.
                let cap = deadline.min(Instant::now() + CANDIDATES_AT_MOST);
                until = cap.min(Instant::now() + CANDIDATES_QUIET);
            }
        }
        match (session_id, sdp) {
            (Some(session_id), Some(sdp)) => Ok(Answer {
                session_id,
                sdp: with_candidates(&sdp, &candidates),
            }),
            _ => {
                warn!(peer = %self.peer_id, "no answer within {ANSWER_WITHIN:?}");
                Err(WhepError::Unavailable(format!(
                    "the stream's member did not answer within {} s",
                    ANSWER_WITHIN.as_secs()
                )))
            }
        }
    }

    /// Until the session ends or the peer is kicked (`DELETE`).
    async fn wait_for_the_end(&mut self) {
        let forever = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        while let Some(msg) = self.next(forever).await {
            let kind = msg.as_ref().and_then(|m| m.get("type")?.as_str());
            if matches!(msg, Some(Value::Null)) || kind == Some("endSession") {
                return;
            }
        }
    }
}

/// The node's `error` for our `startSession`, as an HTTP error.
fn refusal(msg: &Value) -> WhepError {
    let details = msg
        .get("details")
        .and_then(Value::as_str)
        .unwrap_or("refused")
        .to_string();
    match msg.get("code").and_then(Value::as_str) {
        Some("forbidden") => WhepError::Forbidden(details),
        _ if details.starts_with("unknown stream") => WhepError::UnknownStream(details),
        _ => WhepError::Unavailable(details),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_routers_refusals_become_their_http_errors() {
        let error = |code: &str, details: &str| {
            refusal(&serde_json::json!({"type": "error", "code": code, "details": details}))
        };
        let unknown = error(
            "unknown-peer",
            "unknown stream 'x': no producer of it is connected",
        );
        assert!(matches!(unknown, WhepError::UnknownStream(_)));
        let full = error("unknown-peer", "no producer of stream 'x' has room");
        assert!(matches!(full, WhepError::Unavailable(_)));
        let forbidden = error("forbidden", "Not allowed to consume 'x'");
        assert!(matches!(forbidden, WhepError::Forbidden(_)));
        assert_eq!(full.response().status(), 503);
        assert_eq!(unknown.response().status(), 404);
    }
}
