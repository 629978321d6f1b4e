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

use actix_web::{web, HttpRequest, HttpResponse};
use proto::{ClientMessage, ProtocolVersion};
use tracing::info;

use crate::http_peer::{created, grants, refused, HttpError, HttpPeer};
use crate::mailbox::Mailbox;
use crate::node::NodeState;
use crate::sdp::check_offer;

/// WHEP peers' ids start so: `DELETE /whep/…` kicks only them.
const PREFIX: &str = "whep-";

/// `POST /whep/{stream}`.
pub async fn post(
    state: web::Data<NodeState>,
    req: HttpRequest,
    stream: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    match play(&state, &req, &stream, &body).await {
        Ok(answer) => answer,
        Err(e) => refused("WHEP", &stream, e),
    }
}

async fn play(
    state: &NodeState,
    req: &HttpRequest,
    stream: &str,
    body: &[u8],
) -> Result<HttpResponse, HttpError> {
    crate::http_peer::sdp_content(req)?;
    let grants = grants(state, req)?;
    if !grants.may_consume(Some(stream)) {
        return Err(HttpError::Forbidden(format!(
            "the token's grants do not cover watching '{stream}'"
        )));
    }
    let offer = check_offer(body, crate::sdp::Wants::Receive)?;
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
    let mut viewer = HttpPeer { peer_id, inbox };
    let answer = match viewer.answer(None).await {
        Ok(answer) => answer,
        Err(e) => {
            state.bus.leave(&viewer.peer_id);
            return Err(e);
        }
    };
    info!(stream, peer = %viewer.peer_id, session = %answer.session_id, "WHEP viewer playing");
    let resource = format!("/whep/{stream}");
    Ok(created(
        state,
        viewer,
        sub.as_deref(),
        &resource,
        answer.sdp,
    ))
}

/// `DELETE /whep/{stream}/{id}`, on any node: the viewer's peer is kicked where it is, which
/// ends its session.
pub async fn delete(
    state: web::Data<NodeState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> HttpResponse {
    let (stream, id) = path.into_inner();
    crate::http_peer::delete(&state, &req, PREFIX, &format!("/whep/{stream}/{id}"), id)
}
