//! What WHIP (`whip.rs`) and WHEP (`whep.rs`) share: the request as an in-process peer of the
//! [`Bus`](crate::bus::Bus) ([`HttpPeer`]: its mailbox read here, the other side's answer and
//! the candidates trickling beside it gathered into one complete answer), the errors as HTTP
//! answers with a short text, CORS, the token's grants, and RFC 9725's `Link: rel="ice-server"`
//! headers with TURN credentials minted for the peer (`turn.rs`).

use std::time::Duration;

use actix_web::{http::header, HttpRequest, HttpResponse};
use proto::envelope::AdminBody;
use serde_json::Value;
use tokio::time::{timeout_at, Instant};
use tracing::warn;

use crate::mailbox::{MailboxReceiver, Outbound};
use crate::node::NodeState;
use crate::sdp::with_candidates;

/// How long the member has to answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);
/// After the answer, candidates are waited for until none came for this long (libnice sends
/// its host candidates within milliseconds of the answer)...
const CANDIDATES_QUIET: Duration = Duration::from_millis(250);
/// ...or this long at most.
const CANDIDATES_AT_MOST: Duration = Duration::from_secs(2);
/// Why a WHIP or WHEP request fails: its status and short text.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
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
    #[error("no such resource: {0}")]
    UnknownResource(String),
    /// WHIP: the stream already has a publisher (409).
    #[error("{0}")]
    Conflict(String),
}

impl HttpError {
    pub fn response(&self) -> HttpResponse {
        let mut answer = match self {
            HttpError::BadOffer(_) => HttpResponse::BadRequest(),
            HttpError::ContentType => HttpResponse::UnsupportedMediaType(),
            HttpError::Unauthorized(_) => HttpResponse::Unauthorized(),
            HttpError::Forbidden(_) => HttpResponse::Forbidden(),
            HttpError::UnknownStream(_) | HttpError::UnknownResource(_) => HttpResponse::NotFound(),
            HttpError::Unavailable(_) => HttpResponse::ServiceUnavailable(),
            HttpError::Conflict(_) => HttpResponse::Conflict(),
        };
        cors(&mut answer);
        answer.content_type("text/plain").body(format!("{self}\n"))
    }
}

/// Browsers' players are on other origins.
pub fn cors(answer: &mut actix_web::HttpResponseBuilder) {
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

/// The grants of the request's token (everything with auth off), as every HTTP endpoint
/// checks it (`http_api.rs`).
pub fn grants(state: &NodeState, req: &HttpRequest) -> Result<crate::grants::Grants, HttpError> {
    crate::http_api::request_grants(state, req).map_err(|e| HttpError::Unauthorized(e.to_string()))
}

/// RFC 9725 section 4.6: the node's STUN/TURN servers, TURN credentials minted for this
/// peer (`turn.rs`).
pub fn ice_server_links(state: &NodeState, sub: Option<&str>, peer_id: &str) -> Vec<String> {
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

/// `201 Created` for `peer` with `sdp` (the other side's complete answer): its resource at
/// `{kind}/{stream}/{peer id}`, the ICE servers as `Link` headers; the peer stays joined until
/// its session ends or it is kicked (`DELETE`), then leaves.
pub fn created(
    state: &NodeState,
    peer: HttpPeer,
    sub: Option<&str>,
    resource: &str,
    sdp: String,
) -> HttpResponse {
    let mut reply = HttpResponse::Created();
    cors(&mut reply);
    reply
        .insert_header((header::LOCATION, format!("{resource}/{}", peer.peer_id)))
        .insert_header((header::CACHE_CONTROL, "no-store"));
    for link in ice_server_links(state, sub, &peer.peer_id) {
        reply.append_header((header::LINK, link));
    }
    let bus = state.bus.clone();
    let mut peer = peer;
    actix_web::rt::spawn(async move {
        peer.wait_for_the_end().await;
        bus.leave(&peer.peer_id);
    });
    reply.content_type("application/sdp").body(sdp)
}

/// What `POST` does with a refusal: logged, answered.
pub fn refused(what: &str, stream: &str, e: HttpError) -> HttpResponse {
    tracing::info!(stream, "{what} refused: {e}");
    e.response()
}

/// `Content-Type: application/sdp`, or 415.
pub fn sdp_content(req: &HttpRequest) -> Result<(), HttpError> {
    let sdp_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    match sdp_type.is_some_and(|t| t.starts_with("application/sdp")) {
        true => Ok(()),
        false => Err(HttpError::ContentType),
    }
}

/// `DELETE` of resource `path`: peer `id` (one of ours if it starts with `prefix`) is kicked
/// where it is, on any node, which ends its session (and a WHIP publisher's registration).
pub fn delete(
    state: &NodeState,
    req: &HttpRequest,
    prefix: &str,
    path: &str,
    id: String,
) -> HttpResponse {
    if let Err(e) = grants(state, req) {
        return e.response();
    }
    let known = id.starts_with(prefix)
        && state
            .bus
            .peer_rows(&state.node_id)
            .iter()
            .any(|p| p.id == id);
    if !known {
        return HttpError::UnknownResource(path.to_string()).response();
    }
    let reason = "resource deleted".to_string();
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

/// The other side's answer and the candidates that came with it.
pub struct Answer {
    pub session_id: String,
    pub sdp: String,
}

/// The in-process peer standing for one WHIP publisher or WHEP player.
pub struct HttpPeer {
    pub peer_id: String,
    pub inbox: MailboxReceiver,
}

impl HttpPeer {
    /// The next message for the peer as JSON (`None`: its queue closed, it was kicked).
    pub async fn next(&mut self, until: Instant) -> Option<Option<Value>> {
        match timeout_at(until, self.inbox.rx.recv()).await {
            Err(_) => None,
            Ok(Some(Outbound::Text(text))) => Some(serde_json::from_str(&text).ok()),
            Ok(Some(Outbound::Pong(_))) => Some(None),
            Ok(Some(Outbound::Close(..)) | None) => Some(Some(Value::Null)),
        }
    }

    /// Waits for the answer and the candidates (and, WHEP, for `sessionStarted` first;
    /// WHIP knows its session from the `startSession` it was sent).
    pub async fn answer(&mut self, session_id: Option<String>) -> Result<Answer, HttpError> {
        let deadline = Instant::now() + ANSWER_WITHIN;
        let mut session_id = session_id;
        let mut sdp = None::<String>;
        let mut candidates = Vec::new();
        let mut until = deadline;
        let mut answered: Option<Instant> = None;
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
                        return Err(HttpError::Unavailable(
                            "the other side sent no answer".into(),
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
                    return Err(HttpError::Unavailable(
                        "the other side ended the session before answering".into(),
                    ))
                }
                "" if msg.is_null() => return Err(HttpError::Unavailable("disconnected".into())),
                _ => {}
            }
            if sdp.is_some() {
                // Each candidate restarts the quiet period, up to the cap from the answer.
                let answered = *answered.get_or_insert_with(Instant::now);
                let cap = deadline.min(answered + CANDIDATES_AT_MOST);
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
                Err(HttpError::Unavailable(format!(
                    "no answer within {} s",
                    ANSWER_WITHIN.as_secs()
                )))
            }
        }
    }

    /// Until the session ends or the peer is kicked (`DELETE`).
    pub async fn wait_for_the_end(&mut self) {
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
pub fn refusal(msg: &Value) -> HttpError {
    let details = msg
        .get("details")
        .and_then(Value::as_str)
        .unwrap_or("refused")
        .to_string();
    match msg.get("code").and_then(Value::as_str) {
        Some("forbidden") => HttpError::Forbidden(details),
        _ if details.starts_with("unknown stream") => HttpError::UnknownStream(details),
        _ => HttpError::Unavailable(details),
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
        assert!(matches!(unknown, HttpError::UnknownStream(_)));
        let full = error("unknown-peer", "no producer of stream 'x' has room");
        assert!(matches!(full, HttpError::Unavailable(_)));
        let forbidden = error("forbidden", "Not allowed to consume 'x'");
        assert!(matches!(forbidden, HttpError::Forbidden(_)));
        assert_eq!(full.response().status(), 503);
        assert_eq!(unknown.response().status(), 404);
    }
}
