//! WHIP ingest (`POST /whip/{stream}`): any WHIP encoder (OBS, FFmpeg, `whipclientsink`, a
//! browser) publishes into the cluster.
//!
//! The request becomes an in-process peer of the bus (`http_peer.rs`) that registers as the
//! stream's producer, a stand-in for the publisher (`meta`: the stream's `name`, `ingest:
//! whip`, and `ingest-by`: the ingest member the node chose, a `relay-agent --whip` waiting as
//! a listener, `proto::ingest`). That member sees it, starts a session with it like a relay
//! with its origin, and is sent the publisher's offer; its forward engine answers (candidates
//! gathered into the one answer), and once the media flows it serves the stream as a relay of
//! the stand-in: placement passes over the stand-in, so viewers, relays of relays, grants and
//! TURN work as for any stream. `201` with the answer, `Location` and `Link` as WHEP;
//! `DELETE` on the resource, from any node, kicks the stand-in, which ends the publication.
//!
//! Errors as WHEP's, plus 409 when the stream already has a publisher and 503 when no ingest
//! member is free (or none answered); nothing is left registered after any of them.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use proto::{ingest, ClientMessage, PeerRole, PeerStatus, ProtocolVersion};
use serde_json::{json, Value};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::http_peer::{created, grants, refused, HttpError, HttpPeer};
use crate::mailbox::Mailbox;
use crate::node::NodeState;
use crate::sdp::{check_offer, Wants};

/// WHIP stand-ins' ids start so: `DELETE /whip/…` kicks only them.
const PREFIX: &str = "whip-";
/// How long the chosen member has to start its session.
const SESSION_WITHIN: Duration = Duration::from_secs(10);

/// `POST /whip/{stream}`.
pub async fn post(
    state: web::Data<NodeState>,
    req: HttpRequest,
    stream: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    match publish(&state, &req, &stream, &body).await {
        Ok(answer) => answer,
        Err(e) => refused("WHIP", &stream, e),
    }
}

async fn publish(
    state: &NodeState,
    req: &HttpRequest,
    stream: &str,
    body: &[u8],
) -> Result<HttpResponse, HttpError> {
    crate::http_peer::sdp_content(req)?;
    let grants = grants(state, req)?;
    if !grants.may_produce(Some(stream)) {
        return Err(HttpError::Forbidden(format!(
            "the token's grants do not cover publishing '{stream}'"
        )));
    }
    let offer = check_offer(body, Wants::Send)?;
    let member = choose_member(state, stream)?;
    let peer_id = format!("{PREFIX}{}", crate::bus::new_peer_id());
    let (mailbox, inbox) = Mailbox::new(256, ProtocolVersion::V2);
    let sub = grants.sub.clone();
    state.bus.join(&peer_id, mailbox, Arc::new(grants));
    let status = PeerStatus {
        roles: vec![PeerRole::Producer],
        meta: Some(json!({ "name": stream, ingest::KEY: ingest::WHIP, ingest::BY: member })),
        peer_id: None,
    };
    let _ = state
        .bus
        .handle(&peer_id, ClientMessage::SetPeerStatus(status));
    let mut publisher = HttpPeer { peer_id, inbox };
    let answer = match negotiate(state, &mut publisher, &member, offer).await {
        Ok(answer) => answer,
        Err(e) => {
            state.bus.leave(&publisher.peer_id);
            return Err(e);
        }
    };
    info!(stream, peer = %publisher.peer_id, member, session = %answer.session_id, "WHIP publishing");
    let resource = format!("/whip/{stream}");
    Ok(created(
        state,
        publisher,
        sub.as_deref(),
        &resource,
        answer.sdp,
    ))
}

/// A free ingest member, unless the stream has a publisher already (409): a listener named
/// [`ingest::MEMBER_NAME`] no current WHIP stand-in names.
fn choose_member(state: &NodeState, stream: &str) -> Result<String, HttpError> {
    let producers = state.bus.producers();
    let text = |meta: &Option<Value>, key: &str| {
        let value = meta.as_ref().and_then(|m| m.get(key)?.as_str());
        value.map(str::to_string)
    };
    let origin = producers.iter().any(|p| {
        text(&p.meta, "name").as_deref() == Some(stream) && text(&p.meta, "relay-of").is_none()
    });
    if origin {
        return Err(HttpError::Conflict(format!(
            "stream '{stream}' already has a publisher"
        )));
    }
    let busy: Vec<String> = producers
        .iter()
        .filter(|p| ingest::is_whip(p.meta.as_ref()))
        .filter_map(|p| text(&p.meta, ingest::BY))
        .collect();
    let rows = state.bus.peer_rows(&state.node_id);
    let free = rows.into_iter().find(|r| {
        r.name.as_deref() == Some(ingest::MEMBER_NAME)
            && r.roles.contains(&PeerRole::Listener)
            && !busy.contains(&r.id)
    });
    free.map(|r| r.id).ok_or_else(|| {
        HttpError::Unavailable("no ingest member is free (relay-agent --whip)".into())
    })
}

/// Waits for `member`'s session, sends it the publisher's offer, and returns its answer.
async fn negotiate(
    state: &NodeState,
    publisher: &mut HttpPeer,
    member: &str,
    offer: &str,
) -> Result<crate::http_peer::Answer, HttpError> {
    let deadline = Instant::now() + SESSION_WITHIN;
    let session_id = loop {
        let Some(msg) = publisher.next(deadline).await else {
            warn!(peer = %publisher.peer_id, member, "the ingest member started no session");
            return Err(HttpError::Unavailable(format!(
                "the ingest member did not take the publication within {} s",
                SESSION_WITHIN.as_secs()
            )));
        };
        let Some(msg) = msg else { continue };
        let text = |key: &str| msg.get(key).and_then(Value::as_str).map(str::to_string);
        match text("type").as_deref() {
            Some("startSession") => {
                let session = text("sessionId").unwrap_or_default();
                if text("peerId").as_deref() == Some(member) {
                    break session;
                }
                // Someone else asking the stand-in for media it does not have.
                let end = ClientMessage::EndSession {
                    session_id: session,
                };
                let _ = state.bus.handle(&publisher.peer_id, end);
            }
            Some("error") => return Err(crate::http_peer::refusal(&msg)),
            None if msg.is_null() => {
                return Err(HttpError::Unavailable("disconnected".into()));
            }
            _ => {}
        }
    };
    let sdp =
        json!({"type": "peer", "sessionId": session_id, "sdp": {"type": "offer", "sdp": offer}});
    let message = ClientMessage::parse(&sdp.to_string())
        .map_err(|e| HttpError::Unavailable(format!("cannot relay the offer: {e}")))?;
    let _ = state.bus.handle(&publisher.peer_id, message);
    publisher.answer(Some(session_id)).await
}

/// `DELETE /whip/{stream}/{id}`, on any node: the publication ends.
pub async fn delete(
    state: web::Data<NodeState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> HttpResponse {
    let (stream, id) = path.into_inner();
    crate::http_peer::delete(&state, &req, PREFIX, &format!("/whip/{stream}/{id}"), id)
}
