//! `--engine forward`: the relay without a GStreamer chain. The `sfu` crate's
//! [`Forwarder`] receives the origin (it answers the origin's webrtcsink offer) and serves
//! every viewer from one UDP port (it offers, as webrtcsink does); the agents' own
//! [`ClusterSignaller`] carries the SDP both ways, as it does for webrtcsrc and webrtcsink
//! (failover, resume, tokens, a source asked for by name), wired to the engine in
//! `wiring.rs`.
//!
//! ```text
//! origin ──► ClusterSignaller (consumer) ─ offer ─► Forwarder ─ offer ─► ClusterSignaller (producer) ──► viewers
//!                                         ◄ answer ─           ◄ answer ─
//! ```
//!
//! What the pipeline engine does holds here: the relay registers once the origin's media
//! flows ([`ForwardEvent::OriginReady`]), with the same meta (`crate::meta`); a `--source-name`
//! relay whose origin's session ends (in signalling, or [`ForwardEvent::OriginLost`]: the
//! engine saw its media stop) keeps its registration and viewers and looks for the name
//! again; the engine switches its viewers to the returning origin at its first keyframe, so
//! their sessions continue. A returning origin answered with another codec ends the relay
//! (exit 1), as with the pipeline engine.

mod stats;
mod wiring;

use std::cell::{Cell, RefCell};
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use agent_core::cli::whole;
use agent_core::events::{self, EventHandler, Registration, Stop};
use agent_core::shutdown::Shutdown;
use agent_core::signaller::{ClusterSignaller, EndedBy, Role, SignallerConfig, Target};
use anyhow::anyhow;
use gst::glib;
use gstrswebrtc::signaller::prelude::*;
use sfu::forwarder::{ForwardConfig, ForwardEvent, Forwarder};
use tracing::{info, warn};

use crate::{Args, Shared};

/// The forward engine's flags (refused under `--engine pipeline`, where they mean nothing).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ForwardArgs {
    /// Forward engine: the first UDP port (worker thread i listens on PORT+i), so one
    /// Service or firewall rule fronts the relay; 0: any free port.
    #[arg(long, env = "RELAY_UDP_PORT", allow_negative_numbers = true, value_parser = whole::<u16>(0, 65_535))]
    pub udp_port: Option<u16>,
    /// Forward engine: a local address to announce as a host candidate (repeatable, or
    /// comma-separated; default: the host's non-loopback addresses).
    #[arg(
        long = "ice-address",
        env = "RELAY_ICE_ADDRESSES",
        value_delimiter = ','
    )]
    pub ice_addresses: Vec<IpAddr>,
    /// Forward engine: the address viewers reach the relay at through a 1:1 NAT (a node's
    /// external address), announced as well.
    #[arg(long, env = "RELAY_PUBLIC_IP")]
    pub public_ip: Option<IpAddr>,
    /// Forward engine: worker threads the viewers are sharded over (0: one per core).
    #[arg(long, env = "RELAY_THREADS", allow_negative_numbers = true, value_parser = whole::<usize>(0, 1024))]
    pub threads: Option<usize>,
}

impl ForwardArgs {
    /// The flags given (on the command line or in the environment).
    pub fn given(&self) -> Vec<&'static str> {
        let mut given = Vec::new();
        for (flag, set) in [
            ("--udp-port", self.udp_port.is_some()),
            ("--ice-address", !self.ice_addresses.is_empty()),
            ("--public-ip", self.public_ip.is_some()),
            ("--threads", self.threads.is_some()),
        ] {
            if set {
                given.push(flag);
            }
        }
        given
    }

    fn config(&self) -> ForwardConfig {
        ForwardConfig {
            udp_port: self.udp_port.unwrap_or(0),
            ice_addresses: self.ice_addresses.clone(),
            public_ip: self.public_ip,
            threads: self.threads.unwrap_or(0),
        }
    }
}

/// What the relay's parts share on the main thread.
struct Relay {
    args: Args,
    target: Target,
    forwarder: Forwarder,
    shared: Arc<Shared>,
    meta: wiring::Meta,
    /// The producer side, started once the origin's media flows.
    viewers: ClusterSignaller,
    serving: Cell<bool>,
    /// The consumer side of the current attachment.
    upstream: RefCell<Option<ClusterSignaller>>,
    guard: Arc<wiring::CodecGuard>,
    /// The source's layers (its meta's `layers`), for the engine's answer to its offer.
    ladder: crate::meta::SourceLadder,
    main_loop: glib::MainLoop,
    failure: Arc<Mutex<Option<anyhow::Error>>>,
    shutdown: Shutdown,
}

pub fn run(args: &Args, target: Target) -> anyhow::Result<()> {
    gst::init()?;
    // No STUN/TURN server, ours or the node's (v2 `welcome.iceServers`): str0m has no TURN
    // client. Viewers and origins behind NATs reach the engine's public candidates through
    // their own TURN allocations (docs/networking.md).
    if args.ice.stun_server.is_some() || !args.ice.turn_servers.is_empty() {
        // (GWC_STUN_SERVER may be set for every agent of a deployment: not an error)
        warn!("the forward engine uses no STUN/TURN server: it announces --ice-address and --public-ip");
    }
    let shutdown = Shutdown::install()?;
    let (forwarder, engine_events) = Forwarder::start(args.forward.config())
        .map_err(|e| anyhow!("cannot start the forward engine: {e}"))?;
    info!(addresses = ?forwarder.local_addresses(), "forward engine listening");
    let main_loop = glib::MainLoop::new(None, false);
    let failure = Arc::new(Mutex::new(None::<anyhow::Error>));
    let fail: wiring::Fail = {
        let (failure, main_loop) = (failure.clone(), main_loop.clone());
        Arc::new(move |e| {
            failure.lock().unwrap().get_or_insert(e);
            main_loop.quit();
        })
    };
    let shared = Arc::new(Shared::default());
    let meta: wiring::Meta = Arc::new(Mutex::new(crate::meta::initial(args)));
    let (down_tx, down_events) = mpsc::channel();
    let viewers = ClusterSignaller::new(SignallerConfig {
        client: args.signalling.client_config(),
        role: Role::Producer {
            max_sessions: args.max_consumers,
        },
        events: down_tx,
    });
    wiring::serve_viewers(&viewers, forwarder.clone(), meta.clone(), fail.clone());
    let relay = Rc::new(Relay {
        args: args.clone(),
        target,
        forwarder: forwarder.clone(),
        shared: shared.clone(),
        meta,
        viewers: viewers.clone(),
        serving: Cell::new(false),
        upstream: RefCell::new(None),
        guard: Arc::new(wiring::CodecGuard::new(fail.clone())),
        ladder: crate::meta::SourceLadder::default(),
        main_loop: main_loop.clone(),
        failure: failure.clone(),
        shutdown: shutdown.clone(),
    });
    let mut collector = stats::Collector::new(shared.clone(), forwarder.clone());
    agent_core::reporting::start(
        &args.output,
        move || Some(collector.collect()),
        crate::report::render,
    )?;
    events::poll(
        Duration::from_millis(50),
        down_events,
        shutdown,
        Downstream {
            relay: relay.clone(),
        },
    );
    let engine = relay.clone();
    glib::timeout_add_local(Duration::from_millis(20), move || {
        while let Ok(event) = engine_events.try_recv() {
            engine.on_engine_event(event);
        }
        glib::ControlFlow::Continue
    });
    info!(
        "relaying {} on {} (forward engine)",
        args.stream(),
        args.signalling.describe()
    );
    relay.attach();
    main_loop.run();
    if let Some(up) = relay.upstream.borrow_mut().take() {
        up.stop();
    }
    if relay.serving.get() {
        viewers.stop();
    }
    forwarder.stop();
    let failed = failure.lock().unwrap().take();
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

impl Relay {
    /// A consumer signaller looking for the source, its offers answered by the engine.
    fn attach(self: &Rc<Self>) {
        let (events_tx, events) = mpsc::channel();
        let signaller = ClusterSignaller::new(SignallerConfig {
            client: self.args.signalling.client_config(),
            role: Role::Consumer {
                target: self.target.clone(),
            },
            events: events_tx,
        });
        wiring::receive_origin(
            &signaller,
            self.forwarder.clone(),
            self.guard.clone(),
            self.ladder.clone(),
        );
        signaller.start();
        *self.upstream.borrow_mut() = Some(signaller);
        events::poll(
            Duration::from_millis(20),
            events,
            self.shutdown.clone(),
            Upstream {
                relay: self.clone(),
                since: None,
                done: false,
            },
        );
    }

    /// The source's session ended: a new consumer signaller looks for it again.
    fn reattach(self: &Rc<Self>) {
        *self.shared.upstream_session.lock().unwrap() = None;
        if let Some(old) = self.upstream.borrow_mut().take() {
            old.stop();
        }
        self.shared.reattachments.fetch_add(1, Ordering::Relaxed);
        self.attach();
    }

    fn fail(&self, e: anyhow::Error) {
        self.failure.lock().unwrap().get_or_insert(e);
        self.main_loop.quit();
    }

    fn on_engine_event(&self, event: ForwardEvent) {
        match event {
            ForwardEvent::OriginReady { session } => {
                info!(session = %session, "the origin's media flows");
                if !self.serving.replace(true) {
                    info!("serving the origin's stream");
                    self.viewers.start();
                }
            }
            ForwardEvent::OriginLost { session, reason } => {
                warn!(session = %session, "lost the origin's media: {reason}");
                // Ending it in signalling reaches `Upstream::session_ended` (reattach or exit),
                // as when the origin ends it.
                let current = self.upstream.borrow().clone();
                if let Some(up) = current {
                    up.end_session(&session);
                }
            }
            ForwardEvent::ViewerConnected { session } => {
                info!(session = %session, "viewer connected (ICE, DTLS)");
            }
            ForwardEvent::ViewerLost { session, reason } => {
                warn!(session = %session, "lost viewer: {reason}; ending its session");
                self.viewers.end_session(&session);
                self.forwarder.end(&session);
            }
        }
    }
}

/// One attachment's signaller events (as `upstream.rs` for the pipeline engine).
struct Upstream {
    relay: Rc<Relay>,
    /// Registered, searching for the source since.
    since: Option<Instant>,
    done: bool,
}

impl Upstream {
    fn fail(&mut self, e: anyhow::Error) -> glib::ControlFlow {
        self.done = true;
        self.relay.fail(e);
        glib::ControlFlow::Break
    }
}

impl EventHandler for Upstream {
    fn reconnects(&self) -> &AtomicU64 {
        &self.relay.shared.reconnects_up
    }

    fn stop(&mut self, why: Stop) {
        if why == Stop::Signal {
            info!("signal received, stopping");
        }
        self.done = true;
        match why.into_error() {
            None => self.relay.main_loop.quit(),
            Some(e) => self.relay.fail(e),
        }
    }

    fn registered(&mut self, r: Registration) {
        self.since.get_or_insert_with(Instant::now);
        info!(peer = %r.peer_id, "upstream: registered on {}", r.at());
    }

    fn producer_chosen(&mut self, producer_id: String, meta: Option<serde_json::Value>) {
        let mut m = self.relay.meta.lock().unwrap();
        let depth = crate::meta::follow_source(&mut m, &producer_id, meta.as_ref());
        let ladder = crate::meta::ladder(meta.as_ref());
        info!(origin = %producer_id, depth, layers = ladder.as_ref().map_or(1, |l| l.0.len()), "relaying producer {producer_id}");
        *self.relay.ladder.lock().unwrap() = ladder;
        *self.relay.shared.origin.lock().unwrap() = Some(producer_id);
    }

    fn session_started(&mut self, session_id: String, _producer: String) {
        info!(session = %session_id, "upstream session {session_id} started");
        *self.relay.shared.upstream_session.lock().unwrap() = Some(session_id);
    }

    fn session_ended(&mut self, session_id: String, by: EndedBy) -> glib::ControlFlow {
        if self.relay.target == Target::Ingest && by != EndedBy::Operator {
            // One publication per ingest member: its stream's viewers end with it.
            info!(session = %session_id, "the WHIP publication ended");
            self.done = true;
            self.relay.main_loop.quit();
            return glib::ControlFlow::Break;
        }
        if let Some(e) = crate::upstream::after_source_ended(&self.relay.target, &session_id, by) {
            return self.fail(e);
        }
        self.done = true;
        let relay = self.relay.clone();
        glib::idle_add_local_once(move || relay.reattach());
        glib::ControlFlow::Break
    }

    fn tick(&mut self) -> glib::ControlFlow {
        let waiting = self.relay.shared.upstream_session.lock().unwrap().is_none();
        let timeout = Duration::from_secs(self.relay.args.timeout);
        if waiting && self.since.is_some_and(|s| s.elapsed() > timeout) {
            return self.fail(anyhow!("no origin appeared within {} s", timeout.as_secs()));
        }
        glib::ControlFlow::Continue
    }

    fn ended(&self) -> bool {
        self.done
    }
}

/// The relay's side as a producer for its viewers.
struct Downstream {
    relay: Rc<Relay>,
}

impl EventHandler for Downstream {
    fn reconnects(&self) -> &AtomicU64 {
        &self.relay.shared.reconnects_down
    }

    fn stop(&mut self, why: Stop) {
        match why.into_error() {
            Some(e) => self.relay.fail(e),
            None => self.relay.main_loop.quit(),
        }
    }

    fn registered(&mut self, r: Registration) {
        crate::viewers::registered(r);
    }

    fn session_started(&mut self, session_id: String, consumer: String) {
        crate::viewers::session_started(&self.relay.shared, session_id, consumer);
    }

    fn session_ended(&mut self, session_id: String, by: EndedBy) -> glib::ControlFlow {
        crate::viewers::session_ended(session_id, by)
    }

    fn consumer_refused(&mut self, consumer: String, limit: u32) {
        crate::viewers::consumer_refused(consumer, limit);
    }
}
