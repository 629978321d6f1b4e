//! The HTTP side of a node: WebSocket upgrades on any path (stock clients use `/`), health
//! endpoints, the operations API and the web app, optional TLS.
//!
//! actix-http's HTTP/1 service answers every connection; a WebSocket upgrade request is handed,
//! with its connection, to [`crate::upgrade`], after which no HTTP machinery is involved. All
//! other requests go to an actix-web `App`.

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_http::{HttpService, KeepAlive};
use actix_service::{fn_service, map_config, IntoServiceFactory as _, ServiceFactoryExt as _};
use actix_web::dev::AppConfig;
use actix_web::{http::header, web, App, HttpRequest, HttpResponse};
use anyhow::Context as _;
use proto::ServerMessage;
use tracing::{info, warn};

use crate::bus::Bus;
use crate::config::Config;
use crate::node::NodeState;
use crate::resume::ResumeRegistry;

/// Pending connections the kernel keeps per listener (as actix-web's default).
const BACKLOG: i32 = 1024;

/// The HTTP/1 service for one listener, over plain TCP or TLS (`$finish` is `tcp()` or
/// `rustls_0_23(config)`): upgrades go to [`crate::upgrade`], the rest to the `App`.
macro_rules! http_service {
    ($state:expr, $addr:expr, $($finish:tt)+) => {{
        let state: web::Data<NodeState> = $state;
        let app = App::new()
            .app_data(state.clone())
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .route("/api/v1/nodes", web::get().to(crate::http_api::api_nodes))
            .route("/api/v1/producers", web::get().to(crate::http_api::api_producers))
            .route("/api/v1/peers", web::get().to(crate::http_api::api_peers))
            .route("/api/v1/sessions", web::get().to(crate::http_api::api_sessions))
            .route("/api/v1/sessions/{id}/end", web::post().to(crate::http_api::api_end_session))
            .route("/api/v1/peers/{id}/kick", web::post().to(crate::http_api::api_kick))
            .route("/api/v1/nodes/{id}/drain", web::post().to(crate::http_api::api_drain))
            .route("/place", web::get().to(crate::http_api::place))
            .route("/api/v1/ice-servers", web::get().to(crate::http_api::ice_servers))
            .service(
                web::resource("/whip/{stream}")
                    .app_data(web::PayloadConfig::new(crate::sdp::MAX_OFFER_BYTES))
                    .route(web::post().to(crate::whip::post))
                    .route(web::method(actix_web::http::Method::OPTIONS).to(crate::http_peer::options)),
            )
            .service(
                web::resource("/whip/{stream}/{id}")
                    .route(web::delete().to(crate::whip::delete))
                    .route(web::patch().to(crate::http_peer::patch))
                    .route(web::method(actix_web::http::Method::OPTIONS).to(crate::http_peer::options)),
            )
            .service(
                web::resource("/whep/{stream}")
                    .app_data(web::PayloadConfig::new(crate::sdp::MAX_OFFER_BYTES))
                    .route(web::post().to(crate::whep::post))
                    .route(web::method(actix_web::http::Method::OPTIONS).to(crate::http_peer::options)),
            )
            .service(
                web::resource("/whep/{stream}/{id}")
                    .route(web::delete().to(crate::whep::delete))
                    .route(web::patch().to(crate::http_peer::patch))
                    .route(web::method(actix_web::http::Method::OPTIONS).to(crate::http_peer::options)),
            )
            .route("/metrics", web::get().to(metrics_here))
            .default_service(web::to(web_app))
            .into_factory()
            .map_err(|e: actix_web::Error| e.error_response());
        HttpService::build()
            .keep_alive(KeepAlive::Timeout(Duration::from_secs(5)))
            // (a connection that has not sent its whole request, upgrade included, by then is
            // closed: half-open and slow clients hold nothing for long)
            .client_request_timeout(Duration::from_secs_f64(
                state.config.handshake_timeout_secs.max(0.1),
            ))
            .client_disconnect_timeout(Duration::from_secs(1))
            // Signalling is small frames each waiting for an answer: without TCP_NODELAY,
            // Nagle holds a frame behind the previous one's ACK, which the client delays up
            // to 40 ms.
            .tcp_nodelay(true)
            .local_addr($addr)
            .upgrade(fn_service(move |(req, framed)| {
                crate::upgrade::upgrade(state.clone(), req, framed)
            }))
            .finish(map_config(app, |_| AppConfig::default()))
            .$($finish)+
    }};
}

/// Runs the node until SIGINT/SIGTERM.
pub async fn run(
    config: Config,
    bus: Arc<dyn Bus>,
    registry: Arc<ResumeRegistry>,
) -> anyhow::Result<()> {
    let node_id = config.resolved_node_id();
    let verifier = crate::auth::Verifier::new(config.auth()).map_err(|e| anyhow::anyhow!(e))?;
    if verifier.is_some() {
        info!(
            node_id,
            "auth on: every connection needs a token (docs/security.md)"
        );
    }
    let turn = crate::turn::Turn::new(config.turn())?.map(Arc::new);
    let state = web::Data::new(NodeState {
        node_id: node_id.clone(),
        bus,
        config: config.clone(),
        draining: AtomicBool::new(false),
        registry,
        verifier,
        guards: crate::guards::Guards::new(config.max_connections, config.max_connections_per_ip),
        turn,
    });
    if let Some(addr) = config.metrics_addr {
        serve_metrics(state.clone(), addr)?;
    }
    let tls = match (&config.cert, &config.key) {
        (Some(cert), Some(key)) => Some(crate::tls::server_config(cert, key)?),
        _ => None,
    };
    let listeners = listen(&config.host, config.port)
        .with_context(|| format!("cannot listen on {}:{}", config.host, config.port))?;
    if config.workers == 0 {
        return serve_here(state, listeners, tls).await;
    }
    // Signals are ours: drain first, then stop (see `drain`).
    let mut server = actix_server::Server::build()
        .disable_signals()
        .workers(config.workers);
    for listener in listeners {
        let addr = listener.local_addr()?;
        info!(node_id, "listening on {addr}");
        let (name, state) = (format!("signalling-{addr}"), state.clone());
        server = match tls.clone() {
            Some(tls) => server.listen(name, listener, move || {
                http_service!(state.clone(), addr, rustls_0_23(tls.clone()))
            })?,
            None => server.listen(name, listener, move || {
                http_service!(state.clone(), addr, tcp())
            })?,
        };
    }
    let server = server.run();
    actix_web::rt::spawn(drain(state, Serving::Workers(server.handle())));
    server.await.context("HTTP server failed")
}

/// How `drain` stops taking connections, then stops the node.
enum Serving {
    /// actix-server's worker threads.
    Workers(actix_server::ServerHandle),
    /// This thread's accept loops (see [`serve_here`]).
    Here {
        pause: tokio::sync::watch::Sender<bool>,
        stop: std::rc::Rc<tokio::sync::Notify>,
    },
}

impl Serving {
    async fn pause(&self) {
        match self {
            Serving::Workers(server) => server.pause().await,
            // (the accept loops end and close their listeners)
            Serving::Here { pause, .. } => {
                let _ = pause.send(true);
            }
        }
    }

    async fn stop(&self) {
        match self {
            Serving::Workers(server) => server.stop(false).await,
            Serving::Here { stop, .. } => stop.notify_one(),
        }
    }
}

/// Serves every listener on this thread, the one that runs the cluster bus: a relayed message
/// is read, routed, published or delivered, and written without waking another thread. Runs
/// until `drain` stops the node.
async fn serve_here(
    state: web::Data<NodeState>,
    listeners: Vec<TcpListener>,
    tls: Option<rustls::ServerConfig>,
) -> anyhow::Result<()> {
    use actix_service::ServiceFactory as _;
    let (pause, paused) = tokio::sync::watch::channel(false);
    for listener in listeners {
        let addr = listener.local_addr()?;
        info!(node_id = state.node_id, "listening on {addr}");
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let cannot = || anyhow::anyhow!("cannot start the HTTP service on {addr}");
        match tls.clone() {
            Some(tls) => {
                let service = http_service!(state.clone(), addr, rustls_0_23(tls))
                    .new_service(())
                    .await
                    .map_err(|_| cannot())?;
                actix_web::rt::spawn(accept_loop(listener, service, paused.clone()));
            }
            None => {
                let service = http_service!(state.clone(), addr, tcp())
                    .new_service(())
                    .await
                    .map_err(|_| cannot())?;
                actix_web::rt::spawn(accept_loop(listener, service, paused.clone()));
            }
        }
    }
    let stop = std::rc::Rc::new(tokio::sync::Notify::new());
    actix_web::rt::spawn(drain(
        state,
        Serving::Here {
            pause,
            stop: stop.clone(),
        },
    ));
    stop.notified().await;
    Ok(())
}

/// Accepts connections and serves each in a task of its own, until paused.
async fn accept_loop<S>(
    listener: tokio::net::TcpListener,
    service: S,
    mut paused: tokio::sync::watch::Receiver<bool>,
) where
    S: actix_service::Service<tokio::net::TcpStream> + 'static,
{
    let service = std::rc::Rc::new(service);
    loop {
        tokio::select! {
            _ = paused.wait_for(|p| *p) => return,
            accepted = listener.accept() => match accepted {
                Ok((io, _)) => {
                    let service = service.clone();
                    actix_web::rt::spawn(async move {
                        let _ = service.call(io).await;
                    });
                }
                Err(e) => {
                    // (out of file descriptors, most likely: let some close)
                    warn!("cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// Listens on every address `host` resolves to (at least one must work).
fn listen(host: &str, port: u16) -> std::io::Result<Vec<TcpListener>> {
    let mut listeners = Vec::new();
    let mut error = None;
    for addr in (host, port).to_socket_addrs()? {
        match listener(addr) {
            Ok(l) => listeners.push(l),
            Err(e) => error = Some(e),
        }
    }
    match (listeners.is_empty(), error) {
        (true, Some(e)) => Err(e),
        (true, None) => Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the host resolves to no address",
        )),
        (false, _) => Ok(listeners),
    }
}

fn listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // (a restarted node must not wait for the old connections' TIME_WAIT)
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Why the node closes the connections it still has when it stops (close code 1001).
const SHUTTING_DOWN: &str = "node shutting down";

/// Longest the node waits for its clients to answer its close frames (they linger 2 s at
/// most, `peer.rs`) before it stops.
const CLOSE_WAIT: Duration = Duration::from_secs(3);

/// On the first SIGTERM/SIGINT (or an operator's drain): fail readiness, stop accepting, send
/// `goAway` to v2 peers. A cluster node then waits up to the drain timeout for its peers to
/// leave (v2 peers resume on other nodes); a standalone node has nowhere to send them, so it
/// waits for nothing. Then every remaining connection is closed with 1001 (a standalone node
/// keeps none for a resume) and the node stops. A second signal stops at once.
async fn drain(state: web::Data<NodeState>, server: Serving) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        warn!("cannot install signal handlers; stop the node with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
        // an operator asked, on any node (`admin.rs`)
        _ = crate::admin::drain_requested().notified() => {},
    }
    let standalone = state.config.standalone();
    // (alone there is no other node to move to: nothing to wait for)
    let timeout = match standalone {
        true => Duration::ZERO,
        false => Duration::from_secs(state.config.drain_timeout_secs),
    };
    info!(
        node_id = state.node_id,
        peers = state.bus.stats().peers,
        timeout_secs = timeout.as_secs(),
        standalone,
        "draining"
    );
    state.draining.store(true, Ordering::SeqCst);
    server.pause().await;
    state.bus.notify_local(&ServerMessage::GoAway {
        reason: SHUTTING_DOWN.into(),
        reconnect_in_ms: Some(0),
    });
    let mut signalled = false;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let peers = state.bus.stats().peers;
        if peers == 0 || standalone {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                info!(peers, "drain timeout: closing the remaining connections");
                break;
            }
            _ = term.recv() => { signalled = true; break }
            _ = int.recv() => { signalled = true; break }
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    if standalone {
        state.registry.close();
    }
    state.bus.close_local(1001, SHUTTING_DOWN);
    // (the close frames go out, and the clients answer, before the node stops)
    let closed = tokio::time::Instant::now() + CLOSE_WAIT;
    while !signalled && state.guards.connections() > 0 && tokio::time::Instant::now() < closed {
        tokio::select! {
            _ = term.recv() => signalled = true,
            _ = int.recv() => signalled = true,
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    state.bus.shutdown().await;
    server.stop().await;
}

async fn readyz(state: web::Data<NodeState>) -> HttpResponse {
    if state.draining.load(Ordering::SeqCst) {
        HttpResponse::ServiceUnavailable().json(serde_json::json!({"status": "draining"}))
    } else if state.bus.joining() {
        HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({"status": "joining the cluster: waiting for Redis"}))
    } else if !state.bus.ready() {
        HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({"status": "cluster unavailable"}))
    } else {
        healthz(state).await
    }
}

async fn healthz(state: web::Data<NodeState>) -> HttpResponse {
    let stats = state.bus.stats();
    let guards = &state.guards;
    HttpResponse::Ok().json(serde_json::json!({
        "status": "ok",
        "nodeId": state.node_id,
        "peers": stats.peers,
        "sessions": stats.sessions,
        "connections": guards.connections(),
        "refused": {
            "auth": guards.refused_auth.load(Ordering::Relaxed),
            "limits": guards.refused_full.load(Ordering::Relaxed),
        },
    }))
}

/// The OpenMetrics text of a scrape.
fn scrape(state: &NodeState) -> HttpResponse {
    let census = state.bus.census();
    let text = crate::metrics::render(&census, state.bus.ready(), state.guards.connections());
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(text)
}

/// `GET /metrics` on the main port, unless `--metrics-addr` moved it.
async fn metrics_here(state: web::Data<NodeState>) -> HttpResponse {
    match state.config.metrics_addr {
        Some(_) => HttpResponse::NotFound().body("metrics are on --metrics-addr\n"),
        None => scrape(&state),
    }
}

/// `--metrics-addr`: a listener of its own that serves `GET /metrics` only.
fn serve_metrics(state: web::Data<NodeState>, addr: SocketAddr) -> anyhow::Result<()> {
    let server = actix_web::HttpServer::new(move || {
        App::new().app_data(state.clone()).route(
            "/metrics",
            web::get().to(|state: web::Data<NodeState>| async move { scrape(&state) }),
        )
    })
    .workers(1)
    .disable_signals()
    .bind(addr)
    .with_context(|| format!("cannot listen on {addr} for metrics"))?
    .run();
    info!("metrics on http://{addr}/metrics");
    actix_web::rt::spawn(server);
    Ok(())
}

/// Browsers get the web app; stock elements connect the WebSocket on the same paths (upgrades
/// never get here, see [`crate::upgrade`]).
async fn web_app(req: HttpRequest, state: web::Data<NodeState>) -> HttpResponse {
    if req.method() != actix_web::http::Method::GET && req.method() != actix_web::http::Method::HEAD
    {
        return HttpResponse::MethodNotAllowed().finish();
    }
    let assets = crate::web::Assets::new(state.config.web_root.clone());
    match assets.get(req.path()) {
        Some((body, content_type)) => HttpResponse::Ok()
            .content_type(content_type)
            .insert_header((header::CACHE_CONTROL, "no-cache"))
            .body(body.into_owned()),
        None => HttpResponse::NotFound()
            .content_type("text/plain")
            .body("not found\n"),
    }
}
