//! The HTTP side of a node: WebSocket upgrades on any path (stock clients use `/`), health
//! endpoints, optional TLS.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::{http::header, web, App, HttpRequest, HttpResponse, HttpServer};
use anyhow::Context as _;
use proto::{ProtocolVersion, ServerMessage, WelcomeV2};
use tracing::{info, warn};

use crate::bus::{new_peer_id, Bus};
use crate::config::Config;
use crate::mailbox::Mailbox;
use crate::peer::{Attach, Limits, PeerConnection};
use crate::resume::{new_token, token_node, ResumeRegistry, Sent};

/// What every HTTP worker shares.
pub struct NodeState {
    pub node_id: String,
    pub bus: Arc<dyn Bus>,
    pub config: Config,
    /// Set on SIGTERM: `/readyz` fails so load balancers stop sending new peers.
    pub draining: AtomicBool,
    /// v2 peers whose connection dropped, waiting to resume.
    pub registry: Arc<ResumeRegistry>,
}

/// Runs the node until SIGINT/SIGTERM.
pub async fn run(
    config: Config,
    bus: Arc<dyn Bus>,
    registry: Arc<ResumeRegistry>,
) -> anyhow::Result<()> {
    let node_id = config.resolved_node_id();
    let state = web::Data::new(NodeState {
        node_id: node_id.clone(),
        bus,
        config: config.clone(),
        draining: AtomicBool::new(false),
        registry,
    });
    let shared = state.clone();
    let addr = (config.host.as_str(), config.port);
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .route("/api/v1/nodes", web::get().to(api_nodes))
            .route("/api/v1/producers", web::get().to(api_producers))
            .default_service(web::to(websocket_or_index))
    });
    // Signals are ours: drain first, then stop (see `drain`).
    // Signalling is small frames each waiting for an answer: without TCP_NODELAY, Nagle holds
    // a frame behind the previous one's ACK, which the client delays up to 40 ms.
    server = server.disable_signals().tcp_nodelay(true);
    if let Some(workers) = config.workers {
        server = server.workers(workers);
    }
    let server = match (&config.cert, &config.key) {
        (Some(cert), Some(key)) => {
            let tls = crate::tls::server_config(cert, key)?;
            server
                .bind_rustls_0_23(addr, tls)
                .with_context(|| format!("cannot listen on {}:{}", config.host, config.port))?
        }
        _ => server
            .bind(addr)
            .with_context(|| format!("cannot listen on {}:{}", config.host, config.port))?,
    };
    for a in server.addrs() {
        info!(node_id, "listening on {a}");
    }
    let server = server.run();
    actix_web::rt::spawn(drain(shared, server.handle()));
    server.await.context("HTTP server failed")
}

/// On the first SIGTERM/SIGINT: fail readiness, stop accepting, send `goAway` to v2 peers and
/// wait up to the drain timeout for peers to leave; then close what is left and stop. A second
/// signal stops at once.
async fn drain(state: web::Data<NodeState>, server: actix_web::dev::ServerHandle) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        warn!("cannot install signal handlers; stop the node with SIGKILL");
        return;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    let timeout = Duration::from_secs(state.config.drain_timeout_secs);
    info!(
        node_id = state.node_id,
        peers = state.bus.stats().peers,
        ?timeout,
        "draining"
    );
    state.draining.store(true, Ordering::SeqCst);
    server.pause().await;
    state.bus.notify_local(&ServerMessage::GoAway {
        reason: "node shutting down".into(),
        reconnect_in_ms: Some(0),
    });
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let peers = state.bus.stats().peers;
        if peers == 0 {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                info!(peers, "drain timeout: closing the remaining connections");
                break;
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    state.bus.shutdown().await;
    server.stop(false).await;
}

async fn readyz(state: web::Data<NodeState>) -> HttpResponse {
    if state.draining.load(Ordering::SeqCst) {
        HttpResponse::ServiceUnavailable().json(serde_json::json!({"status": "draining"}))
    } else if !state.bus.ready() {
        HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({"status": "cluster unavailable"}))
    } else {
        healthz(state).await
    }
}

async fn healthz(state: web::Data<NodeState>) -> HttpResponse {
    let stats = state.bus.stats();
    HttpResponse::Ok().json(serde_json::json!({
        "status": "ok",
        "nodeId": state.node_id,
        "peers": stats.peers,
        "sessions": stats.sessions,
    }))
}

async fn websocket_or_index(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<NodeState>,
) -> actix_web::Result<HttpResponse> {
    let is_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !is_upgrade {
        // Browsers get the web app; stock elements connect the WebSocket on the same paths.
        if req.method() != actix_web::http::Method::GET
            && req.method() != actix_web::http::Method::HEAD
        {
            return Ok(HttpResponse::MethodNotAllowed().finish());
        }
        let assets = crate::web::Assets::new(state.config.web_root.clone());
        return Ok(match assets.get(req.path()) {
            Some((body, content_type)) => HttpResponse::Ok()
                .content_type(content_type)
                .insert_header((header::CACHE_CONTROL, "no-cache"))
                .body(body.into_owned()),
            None => HttpResponse::NotFound()
                .content_type("text/plain")
                .body("not found\n"),
        });
    }

    let offers = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .filter_map(|v| v.to_str().ok());
    let (version, subprotocol) = ProtocolVersion::negotiate(offers);
    let (mut response, session, stream) = match subprotocol {
        Some(p) => actix_ws::handle_with_protocols(&req, body, &[p]),
        None => actix_ws::handle(&req, body),
    }
    .inspect_err(|e| warn!("WebSocket handshake failed: {e}"))?;

    add_affinity(&mut response, &state);

    let limit = state.config.max_message_size;
    let stream = stream
        .max_frame_size(limit)
        .aggregate_continuations()
        .max_continuation_size(limit);

    let query = |key: &str| {
        req.query_string()
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
            }),
        }
        .encode(version)
        .unwrap_or_default()
    };
    let attach = match resume {
        Some(token) => resume_peer(&state, token, last, version, &welcome).await,
        None => None,
    };
    let attach = attach.unwrap_or_else(|| {
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
        info!(peer_id, remote = ?req.peer_addr(), version = version.number(), "new WebSocket connection");
        Attach {
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
    PeerConnection::start(
        attach,
        &state.node_id,
        state.bus.clone(),
        state.registry.clone(),
        session,
        stream,
        Limits {
            max_messages_per_sec: state.config.max_messages_per_sec,
            ping_interval: Duration::from_secs(state.config.ping_interval_secs.max(1)),
        },
    );
    Ok(response)
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
        true => state.registry.claim(token).await,
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
            state.bus.leave(&parked.peer_id);
            return None;
        };
        info!(
            peer_id = parked.peer_id,
            replayed = replay.len(),
            "peer resumed"
        );
        let mut pending = replay;
        pending.extend(parked.unsent);
        return Some(Attach {
            welcome: welcome(&parked.peer_id, &new, true),
            id: parked.peer_id,
            mailbox: parked.mailbox,
            receiver: parked.receiver,
            pending,
            sent: Some(Sent::starting_at(written)),
            resumed: true,
            resume_token: Some(new),
        });
    }
    let (mailbox, receiver) = Mailbox::new(state.config.peer_queue, version);
    // (the bus bounds how long a claim takes)
    let claim = state.bus.claim(token, last, mailbox.clone())?;
    let (peer_id, written) = claim.await?;
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
    })
}

/// Names this node in the upgrade response, for sticky load balancers.
fn add_affinity(response: &mut HttpResponse, state: &NodeState) {
    use actix_web::http::header::{HeaderName, HeaderValue};
    let config = &state.config;
    if let (Ok(name), Ok(value)) = (
        HeaderName::try_from(config.affinity_header.as_str()),
        HeaderValue::try_from(state.node_id.as_str()),
    ) {
        response.headers_mut().insert(name, value);
    }
    if !config.affinity_cookie.is_empty() {
        let cookie = actix_web::cookie::Cookie::build(&config.affinity_cookie, &state.node_id)
            .path("/")
            .http_only(true)
            .finish();
        if let Err(e) = response.add_cookie(&cookie) {
            warn!("cannot set the affinity cookie: {e}");
        }
    }
}

async fn api_nodes(state: web::Data<NodeState>) -> HttpResponse {
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

async fn api_producers(state: web::Data<NodeState>) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "producers": state.bus.producers() }))
}
