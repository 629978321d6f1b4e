//! The HTTP API beside the WebSocket: the operations API (`/api/v1/*`: listings, and the
//! actions that end a session, kick a peer or drain a node, from any node) and `GET /place`.
//! Who may ask: a token with auth on ([`http_grants`]); the actions also need `--admin-api`
//! without auth. An action on an id that no node of the cluster knows is a 404; one that is
//! carried out is logged here with the token subject that asked. What each node then does:
//! `admin.rs`.

use std::collections::HashMap;

use actix_web::{http::header, web, HttpRequest, HttpResponse};
use proto::envelope::AdminBody;
use tracing::info;

use crate::auth::{token_of, AuthError};
use crate::grants::Grants;
use crate::guards::remote;
use crate::node::NodeState;
use crate::routing::Unplaced;

/// Why an HTTP request is refused.
enum Refused {
    Auth(AuthError),
    NotAdmin,
    /// Still waiting for Redis since the start: no cluster-wide answer yet.
    Joining,
}

impl Refused {
    fn response(&self) -> HttpResponse {
        match self {
            Refused::Auth(e) => {
                HttpResponse::Unauthorized().json(serde_json::json!({ "error": e.to_string() }))
            }
            Refused::NotAdmin => HttpResponse::Forbidden()
                .json(serde_json::json!({ "error": "the operations API needs an admin grant" })),
            Refused::Joining => HttpResponse::ServiceUnavailable().json(serde_json::json!({
                "error": "this node has not joined its cluster yet (waiting for Redis)"
            })),
        }
    }
}

/// With auth on, what the HTTP request's token grants (`Authorization: Bearer` or
/// `?token=`); without, everything.
fn http_grants(state: &NodeState, req: &HttpRequest) -> Result<Grants, Refused> {
    request_grants(state, req).map_err(Refused::Auth)
}

/// [`http_grants`]' token check, for every HTTP endpoint (WHIP and WHEP too): a refusal is
/// counted by the guards.
pub(crate) fn request_grants(state: &NodeState, req: &HttpRequest) -> Result<Grants, AuthError> {
    let Some(verifier) = &state.verifier else {
        return Ok(Grants::everything());
    };
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let verified = token_of(authorization, req.uri().query())
        .ok_or(AuthError::Missing)
        .and_then(|t| verifier.verify(t));
    verified.inspect_err(|e| {
        state
            .guards
            .refused(req.peer_addr().map(|a| a.ip()), true, e);
    })
}

/// The operations API needs an `admin` grant once auth is on, and a node that has joined its
/// cluster; what the caller's token grants.
fn admin(state: &NodeState, req: &HttpRequest) -> Result<Grants, Refused> {
    let grants = http_grants(state, req)?;
    if !grants.is_admin() {
        return Err(Refused::NotAdmin);
    }
    if state.bus.joining() {
        return Err(Refused::Joining);
    }
    Ok(grants)
}

/// `GET /place?stream=NAME`: the member of the stream (origin or relay) a new viewer should
/// start its session with, for clients that name producers by id (the web app, on the stock
/// gstwebrtc-api). v2 clients ask in `startSession` itself, which also counts the session at
/// once; between this answer and the session, a burst of viewers may all get one member.
/// 404: no producer of that stream (that the token may see); 503: none has room.
pub async fn place(
    state: web::Data<NodeState>,
    req: HttpRequest,
    query: web::Query<HashMap<String, String>>,
) -> HttpResponse {
    let grants = match http_grants(&state, &req) {
        Ok(g) => g,
        Err(refused) => return refused.response(),
    };
    if state.bus.joining() {
        return Refused::Joining.response();
    }
    let Some(stream) = query.get("stream").filter(|s| !s.is_empty()) else {
        return HttpResponse::BadRequest()
            .json(serde_json::json!({"error": "?stream=NAME is required"}));
    };
    match state.bus.place(stream, &grants) {
        Ok(peer_id) => HttpResponse::Ok()
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .json(serde_json::json!({"stream": stream, "peerId": peer_id})),
        Err(why) => {
            let mut answer = match why {
                Unplaced::UnknownStream(_) => HttpResponse::NotFound(),
                Unplaced::NoRoom(_) => HttpResponse::ServiceUnavailable(),
            };
            answer.json(serde_json::json!({"stream": stream, "error": why.to_string()}))
        }
    }
}

/// `GET /api/v1/ice-servers`: `{"iceServers": [...], "ttl": SECONDS}` for the web app and
/// other HTTP clients (`turn.rs`), in `RTCIceServer` shape. With auth on it needs a token, and
/// the TURN credential names its subject (`SUB:http-RANDOM`; a token without a subject gets
/// none); without, `http-RANDOM`. An empty list when the node has none to give.
pub async fn ice_servers(state: web::Data<NodeState>, req: HttpRequest) -> HttpResponse {
    let grants = match http_grants(&state, &req) {
        Ok(g) => g,
        Err(refused) => return refused.response(),
    };
    let Some(turn) = &state.turn else {
        return HttpResponse::Ok()
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .json(serde_json::json!({"iceServers": [], "ttl": 0}));
    };
    let client = format!("http-{}", &crate::bus::new_peer_id()[..8]);
    let auth = state.verifier.is_some();
    let servers = match crate::turn::Turn::credential_id(auth, grants.sub.as_deref(), &client) {
        Some(id) => turn.ice_servers(&id, std::time::SystemTime::now()),
        None => Vec::new(),
    };
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(serde_json::json!({"iceServers": servers, "ttl": turn.ttl().as_secs()}))
}

/// Every peer of the cluster: id, node, roles, name, protocol and token subject (this node's
/// peers), age.
pub async fn api_peers(state: web::Data<NodeState>, req: HttpRequest) -> HttpResponse {
    if let Err(refused) = admin(&state, &req) {
        return refused.response();
    }
    let peers = state.bus.peer_rows(&state.node_id);
    HttpResponse::Ok().json(serde_json::json!({ "peers": peers }))
}

/// Every session of the cluster (each node asked, a second at most).
pub async fn api_sessions(state: web::Data<NodeState>, req: HttpRequest) -> HttpResponse {
    if let Err(refused) = admin(&state, &req) {
        return refused.response();
    }
    let sessions = state.bus.session_rows(&state.node_id).await;
    HttpResponse::Ok().json(serde_json::json!({ "sessions": sessions }))
}

pub async fn api_nodes(state: web::Data<NodeState>, req: HttpRequest) -> HttpResponse {
    if let Err(refused) = admin(&state, &req) {
        return refused.response();
    }
    let nodes: Vec<_> = state
        .bus
        .nodes()
        .into_iter()
        .map(|n| {
            let this = n.id.is_none();
            serde_json::json!({
                "id": n.id.unwrap_or_else(|| state.node_id.clone()),
                "peers": n.peers,
                "self": this,
            })
        })
        .collect();
    HttpResponse::Ok().json(serde_json::json!({ "nodes": nodes }))
}

pub async fn api_producers(state: web::Data<NodeState>, req: HttpRequest) -> HttpResponse {
    if let Err(refused) = admin(&state, &req) {
        return refused.response();
    }
    HttpResponse::Ok().json(serde_json::json!({ "producers": state.bus.producers() }))
}

/// Why `op` names something no node of the cluster knows, if it does. Peers and nodes are in
/// this node's replica; sessions are asked of every node (the listing, a second at most: a
/// node that does not answer in time counts as not knowing).
async fn unknown(state: &NodeState, op: &AdminBody) -> Option<String> {
    let me = &state.node_id;
    match op {
        AdminBody::Kick { peer_id, .. } => {
            let known = state.bus.peer_rows(me).iter().any(|p| &p.id == peer_id);
            (!known).then(|| format!("no peer '{peer_id}' in the cluster"))
        }
        AdminBody::EndSession { session_id } => {
            let rows = state.bus.session_rows(me).await;
            let known = rows.iter().any(|s| &s.session_id == session_id);
            (!known).then(|| format!("no session '{session_id}' in the cluster"))
        }
        AdminBody::Drain { node } => {
            let known = state
                .bus
                .nodes()
                .iter()
                .any(|n| n.id.as_ref().unwrap_or(me) == node);
            (!known).then(|| format!("no live node '{node}' in the cluster"))
        }
        AdminBody::Sessions { .. } => None,
    }
}

/// An action of the operations API: needs `admin` with auth on, `--admin-api` without; 404 if
/// what it names is unknown; 202 once this node did its part and told the others.
async fn act(state: &NodeState, req: &HttpRequest, op: AdminBody) -> HttpResponse {
    if state.verifier.is_none() && !state.config.admin_api {
        return HttpResponse::Forbidden().json(serde_json::json!({
            "error": "actions need --admin-api (or auth on and an admin grant)"
        }));
    }
    let grants = match admin(state, req) {
        Ok(g) => g,
        Err(refused) => return refused.response(),
    };
    if let Some(why) = unknown(state, &op).await {
        return HttpResponse::NotFound().json(serde_json::json!({ "error": why }));
    }
    // The audit line: who asked (the token's subject), from where, for what.
    let operator = match (&state.verifier, grants.sub.as_deref()) {
        (None, _) => "(auth off)",
        (Some(_), None | Some("")) => "(token without sub)",
        (Some(_), Some(sub)) => sub,
    };
    let (action, target, reason) = crate::admin::describe(&op);
    info!(
        operator,
        remote = %remote(req.peer_addr()),
        action,
        target,
        reason,
        "operator action"
    );
    state.bus.act(&state.node_id, op);
    HttpResponse::Accepted().json(serde_json::json!({ "accepted": true }))
}

pub async fn api_end_session(
    state: web::Data<NodeState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> HttpResponse {
    let session_id = id.into_inner();
    act(&state, &req, AdminBody::EndSession { session_id }).await
}

pub async fn api_kick(
    state: web::Data<NodeState>,
    req: HttpRequest,
    id: web::Path<String>,
    query: web::Query<HashMap<String, String>>,
) -> HttpResponse {
    let reason = query
        .get("reason")
        .cloned()
        .unwrap_or_else(|| "kicked".into());
    let peer_id = id.into_inner();
    act(&state, &req, AdminBody::Kick { peer_id, reason }).await
}

pub async fn api_drain(
    state: web::Data<NodeState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> HttpResponse {
    let node = id.into_inner();
    act(&state, &req, AdminBody::Drain { node }).await
}
