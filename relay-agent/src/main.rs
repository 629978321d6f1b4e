//! relay-agent: receives a stream once, like a consumer (webrtcsrc, stopping at the encoded
//! caps: nothing is decoded), and publishes it again through webrtcsink as pre-encoded input,
//! so that each of its consumers costs payloading and encryption only. The relay's own
//! consumers' keyframe requests are coalesced and go upstream as one PLI to the origin.
//!
//! ```text
//! origin (producer-agent) ──► relay-agent: webrtcsrc ─ encoded ─► webrtcsink ──► viewers
//! ```
//!
//! The relay registers as a producer once the origin's streams have arrived, with meta naming
//! what it relays (`stream`, `relay-of`, `depth`, `capacity`). Placement of viewers, relays
//! of relays and reattaching to a returning origin are not done yet (docs/relays.md).

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_core::cli::{IceArgs, OutputArgs, SignallingArgs};
use agent_core::events::{self, EventHandler, Registration, Stop};
use agent_core::exit;
use agent_core::keyframes::{self, KeyframeCounts};
use agent_core::metrics::write_metric;
use agent_core::shutdown::Shutdown;
use agent_core::signaller::{
    producer_sink, AgentEvent, ClusterSignaller, Role, SignallerConfig, Target,
};
use anyhow::{anyhow, Context};
use clap::Parser;
use gst::glib;
use gst::prelude::*;
use serde::Serialize;
use tracing::{error, info, warn};

/// Relay a stream of the cluster without re-encoding it.
///
/// Exit codes: 0 stopped by SIGINT/SIGTERM; 1 runtime failure (signalling unreachable for
/// --retry-for, the origin not found or gone, a pipeline error); 2 bad arguments.
#[derive(Parser, Debug, Clone)]
#[command(version, about)]
pub struct Args {
    /// The stream to relay: the producer whose `meta.name` is this.
    #[arg(long, env = "RELAY_SOURCE_NAME", group = "source")]
    pub source_name: Option<String>,
    /// The stream to relay: the producer with this peer id.
    #[arg(long, env = "RELAY_SOURCE_ID", group = "source")]
    pub source_id: Option<String>,
    /// The relay's own `meta.name` (default: `SOURCE relay`).
    #[arg(long, env = "RELAY_NAME")]
    pub name: Option<String>,
    /// Serve at most this many consumers (announced as the relay's `capacity`).
    #[arg(long, env = "RELAY_MAX_CONSUMERS", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_consumers: Option<u32>,
    /// Keyframe requests of the relay's consumers reach the origin at most once per this many
    /// milliseconds (a request in between waits for the end of it).
    #[arg(
        long = "min-keyframe-interval",
        env = "RELAY_MIN_KEYFRAME_INTERVAL",
        default_value_t = 250
    )]
    pub min_keyframe_interval_ms: u64,
    /// Seconds to wait for the origin (from registration) and for its streams.
    #[arg(long, env = "RELAY_TIMEOUT", default_value_t = 30)]
    pub timeout: u64,
    #[command(flatten)]
    pub ice: IceArgs,
    #[command(flatten)]
    pub signalling: SignallingArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

impl Args {
    fn target(&self) -> Option<Target> {
        match (&self.source_id, &self.source_name) {
            (Some(id), _) => Some(Target::Id(id.clone())),
            (_, Some(name)) => Some(Target::Name(name.clone())),
            _ => None,
        }
    }

    fn stream(&self) -> String {
        self.source_name
            .clone()
            .or_else(|| self.source_id.clone())
            .unwrap_or_default()
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    args.output.init_logging("relay_agent", "RELAY_LOG");
    let Some(target) = args.target() else {
        eprintln!("relay-agent: one of --source-name or --source-id is required");
        return ExitCode::from(exit::USAGE);
    };
    let result = run(&args, target);
    agent_core::settle();
    match result {
        Ok(()) => ExitCode::from(exit::OK),
        Err(e) => {
            error!("{e:#}");
            eprintln!("relay-agent: {e:#}");
            ExitCode::from(exit::FAILURE)
        }
    }
}

/// What the relay's two sides share with the stats thread.
#[derive(Default)]
struct Shared {
    origin: Mutex<Option<String>>,
    upstream_session: Mutex<Option<String>>,
    /// Encoded video frames received from the origin.
    frames_in: AtomicU64,
    keyframes: Arc<KeyframeCounts>,
    reconnects_up: AtomicU64,
    reconnects_down: AtomicU64,
    sessions: AtomicU64,
}

fn run(args: &Args, target: Target) -> anyhow::Result<()> {
    agent_core::init_gstreamer()?;
    let shutdown = Shutdown::install()?;
    let shared = Arc::new(Shared::default());
    let pipeline = gst::Pipeline::new();

    let (up_tx, up_events) = std::sync::mpsc::channel();
    let upstream = ClusterSignaller::new(SignallerConfig {
        client: args.signalling.client_config(),
        role: Role::Consumer { target },
        events: up_tx,
    });
    let src = gst::ElementFactory::make("webrtcsrc")
        .property("signaller", &upstream)
        .build()
        .context("webrtcsrc is not available")?;
    args.ice.apply(&src);
    pipeline.add(&src)?;

    let (down_tx, down_events) = std::sync::mpsc::channel();
    let sink = make_sink(args, down_tx)?;
    let republish = Republish::new(
        &pipeline,
        sink.clone(),
        Duration::from_millis(args.min_keyframe_interval_ms),
        shared.clone(),
        {
            let upstream = upstream.clone();
            Arc::new(move || upstream.remote_streams())
        },
    );
    src.connect_pad_added(move |_, pad| {
        if let Err(e) = republish.add(pad) {
            warn!("cannot relay {}: {e:#}", pad.name());
        }
    });

    let weak_sink = sink.downgrade();
    let stats = shared.clone();
    agent_core::reporting::start(
        &args.output,
        move || Some(snapshot(&stats, weak_sink.upgrade().as_ref())),
        render,
    )?;

    let main_loop = glib::MainLoop::new(None, false);
    let failure = Arc::new(Mutex::new(None::<anyhow::Error>));
    let up = Upstream {
        main_loop: main_loop.clone(),
        sink: sink.downgrade(),
        failure: failure.clone(),
        shared: shared.clone(),
        timeout: Duration::from_secs(args.timeout),
        since: None,
    };
    events::poll(Duration::from_millis(20), up_events, shutdown.clone(), up);
    let down = Downstream {
        main_loop: main_loop.clone(),
        failure: failure.clone(),
        shared: shared.clone(),
    };
    events::poll(Duration::from_millis(50), down_events, shutdown, down);
    let bus = pipeline.bus().context("pipeline has no bus")?;
    let errors = failure.clone();
    let quit = main_loop.clone();
    let _watch = bus.add_watch_local(move |_, msg| {
        if let gst::MessageView::Error(e) = msg.view() {
            let from = e.src().map(|s| s.name().to_string()).unwrap_or_default();
            *errors.lock().unwrap() = Some(anyhow!("{from}: {}", e.error()));
            quit.quit();
        }
        glib::ControlFlow::Continue
    })?;
    info!(
        "relaying {} on {}",
        args.stream(),
        args.signalling.describe()
    );
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| anyhow!("cannot start the pipeline: {e}"))?;
    main_loop.run();
    let _ = pipeline.set_state(gst::State::Null);
    let failed = failure.lock().unwrap().take();
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The webrtcsink that serves the relay's consumers, with meta naming what it relays (its
/// `relay-of` is filled in once the origin is known).
fn make_sink(
    args: &Args,
    events: std::sync::mpsc::Sender<AgentEvent>,
) -> anyhow::Result<gst::Element> {
    let sink = producer_sink(args.signalling.client_config(), args.max_consumers, events)?;
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("{} relay", args.stream()));
    let mut meta = gst::Structure::builder("meta")
        .field("name", name)
        .field("stream", args.stream());
    if let Some(n) = args.max_consumers {
        meta = meta.field("capacity", n.to_string());
    }
    sink.set_property("meta", meta.build());
    args.ice.apply(&sink);
    Ok(sink)
}

/// Links the origin's streams, as webrtcsrc adds them, into webrtcsink: each stopped at its
/// encoded caps and held until every stream of the origin is there, since webrtcsink
/// negotiates its consumers' streams from the inputs it has when it starts.
struct Republish {
    pipeline: glib::WeakRef<gst::Pipeline>,
    sink: gst::Element,
    interval: Duration,
    shared: Arc<Shared>,
    expected: Arc<dyn Fn() -> Option<usize> + Send + Sync>,
    /// (kind, the held chain's src pad, its blocking probe) of the streams so far.
    held: Mutex<Vec<(&'static str, gst::Pad, gst::PadProbeId)>>,
}

impl Republish {
    fn new(
        pipeline: &gst::Pipeline,
        sink: gst::Element,
        interval: Duration,
        shared: Arc<Shared>,
        expected: Arc<dyn Fn() -> Option<usize> + Send + Sync>,
    ) -> Self {
        Republish {
            pipeline: pipeline.downgrade(),
            sink,
            interval,
            shared,
            expected,
            held: Mutex::default(),
        }
    }

    /// A stream of the origin: `pad ! capsfilter(encoded) ! queue`, held.
    fn add(&self, pad: &gst::Pad) -> anyhow::Result<()> {
        let pipeline = self.pipeline.upgrade().context("no pipeline")?;
        let video = pad.name().starts_with("video");
        let caps = if video {
            "video/x-vp8;video/x-vp9;video/x-h264;video/x-h265;video/x-av1"
        } else {
            "audio/x-opus"
        };
        let chain = gst::parse::bin_from_description(
            &format!("capsfilter caps=\"{caps}\" name=entry ! queue"),
            true,
        )?;
        pipeline.add(&chain)?;
        chain.sync_state_with_parent()?;
        let out = chain.static_pad("src").context("chain src")?;
        let block =
            gst::PadProbeType::BLOCK | gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST;
        let probe = out
            .add_probe(block, |_, _| gst::PadProbeReturn::Ok)
            .context("cannot hold the stream")?;
        if video {
            let frames = self.shared.clone();
            out.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
                frames.frames_in.fetch_add(1, Ordering::Relaxed);
                gst::PadProbeReturn::Ok
            });
            // One request upstream (a PLI to the origin) per interval, however many ask.
            let entry = chain.static_pad("sink").context("chain sink")?;
            keyframes::coalesce(
                &out,
                self.interval,
                self.shared.keyframes.clone(),
                move |event| {
                    entry.push_event(event);
                },
            );
        }
        pad.link(&chain.static_pad("sink").context("chain sink")?)
            .map_err(|e| anyhow!("cannot link {}: {e:?}", pad.name()))?;
        let mut held = self.held.lock().unwrap();
        held.push((if video { "video" } else { "audio" }, out, probe));
        let expected = (self.expected)().unwrap_or(1);
        if held.len() >= expected {
            self.start(&pipeline, &mut held)?;
        }
        Ok(())
    }

    /// Every stream is there: webrtcsink joins the pipeline with one input per stream.
    fn start(
        &self,
        pipeline: &gst::Pipeline,
        held: &mut Vec<(&'static str, gst::Pad, gst::PadProbeId)>,
    ) -> anyhow::Result<()> {
        pipeline.add(&self.sink)?;
        for (kind, out, probe) in held.drain(..) {
            let input = self
                .sink
                .request_pad_simple(&format!("{kind}_%u"))
                .ok_or_else(|| anyhow!("webrtcsink gave no {kind} pad"))?;
            out.link(&input)
                .map_err(|e| anyhow!("cannot link to webrtcsink: {e:?}"))?;
            out.remove_probe(probe);
        }
        self.sink.sync_state_with_parent()?;
        info!("the origin's streams are here: serving them");
        Ok(())
    }
}

/// The relay's side as a consumer of the origin.
struct Upstream {
    main_loop: glib::MainLoop,
    /// The serving side, whose meta learns what it relays.
    sink: glib::WeakRef<gst::Element>,
    failure: Arc<Mutex<Option<anyhow::Error>>>,
    shared: Arc<Shared>,
    timeout: Duration,
    /// Registered, searching for the origin since.
    since: Option<std::time::Instant>,
}

impl Upstream {
    fn fail(&self, e: anyhow::Error) -> glib::ControlFlow {
        *self.failure.lock().unwrap() = Some(e);
        self.main_loop.quit();
        glib::ControlFlow::Break
    }
}

impl EventHandler for Upstream {
    fn reconnects(&self) -> &AtomicU64 {
        &self.shared.reconnects_up
    }

    fn stop(&mut self, why: Stop) {
        match why {
            Stop::Signal => {
                info!("signal received, stopping");
                self.main_loop.quit();
            }
            Stop::GaveUp(e) => {
                self.fail(anyhow!(e));
            }
        }
    }

    fn registered(&mut self, r: Registration) {
        self.since.get_or_insert_with(std::time::Instant::now);
        info!(peer = %r.peer_id, "upstream: registered on {}", r.at());
    }

    fn producer_chosen(&mut self, producer_id: String, meta: Option<serde_json::Value>) {
        // A relay of a relay is one deeper than its source (an origin has no depth: 0).
        let depth = meta
            .as_ref()
            .and_then(|m| m.get("depth"))
            .and_then(|d| {
                d.as_str()
                    .and_then(|d| d.parse::<u32>().ok())
                    .or(d.as_u64().map(|d| d as u32))
            })
            .unwrap_or(0)
            + 1;
        info!(origin = %producer_id, depth, "relaying producer {producer_id}");
        if let Some(sink) = self.sink.upgrade() {
            let mut m = sink.property::<gst::Structure>("meta");
            m.set("relay-of", producer_id.as_str());
            m.set("depth", depth.to_string());
            // The stream a relay of a relay serves is its source's stream.
            if let Some(stream) = meta.as_ref().and_then(|m| m.get("stream")?.as_str()) {
                m.set("stream", stream);
            }
            sink.set_property("meta", m);
        }
        *self.shared.origin.lock().unwrap() = Some(producer_id);
    }

    fn session_started(&mut self, session_id: String, _producer: String) {
        info!(session = %session_id, "upstream session {session_id} started");
        *self.shared.upstream_session.lock().unwrap() = Some(session_id);
    }

    fn session_ended(&mut self, session_id: String, _by_peer: bool) -> glib::ControlFlow {
        // (reattaching to a returning origin is not done yet)
        self.fail(anyhow!(
            "the origin's session {session_id} ended: its producer went away"
        ))
    }

    fn tick(&mut self) -> glib::ControlFlow {
        let waiting = self.shared.upstream_session.lock().unwrap().is_none();
        if waiting && self.since.is_some_and(|s| s.elapsed() > self.timeout) {
            return self.fail(anyhow!(
                "no origin appeared within {} s",
                self.timeout.as_secs()
            ));
        }
        glib::ControlFlow::Continue
    }
}

/// The relay's side as a producer for its consumers.
struct Downstream {
    main_loop: glib::MainLoop,
    failure: Arc<Mutex<Option<anyhow::Error>>>,
    shared: Arc<Shared>,
}

impl EventHandler for Downstream {
    fn reconnects(&self) -> &AtomicU64 {
        &self.shared.reconnects_down
    }

    fn stop(&mut self, why: Stop) {
        match why {
            Stop::Signal => self.main_loop.quit(),
            Stop::GaveUp(e) => {
                *self.failure.lock().unwrap() = Some(anyhow!(e));
                self.main_loop.quit();
            }
        }
    }

    fn registered(&mut self, r: Registration) {
        info!(peer = %r.peer_id, "serving as {} on {}", r.peer_id, r.at());
    }

    fn session_started(&mut self, session_id: String, consumer: String) {
        self.shared.sessions.fetch_add(1, Ordering::Relaxed);
        info!(session = %session_id, "consumer {consumer} connected");
    }

    fn session_ended(&mut self, session_id: String, _by_peer: bool) -> glib::ControlFlow {
        info!(session = %session_id, "consumer left (session {session_id})");
        glib::ControlFlow::Continue
    }

    fn consumer_refused(&mut self, consumer: String, limit: u32) {
        warn!("refused consumer {consumer}: already serving --max-consumers {limit}");
    }
}

/// One stats line (`relay-stats`).
#[derive(Serialize, Clone, Debug)]
struct Snapshot {
    #[serde(rename = "type")]
    kind: &'static str,
    origin_id: Option<String>,
    upstream_session: Option<String>,
    /// Encoded video frames received from the origin.
    frames_in: u64,
    consumers: usize,
    sessions_started: u64,
    /// Keyframe requests of the relay's consumers, and those passed on to the origin.
    keyframe_requests: u64,
    keyframes_requested_upstream: u64,
    reconnects: u64,
}

fn snapshot(shared: &Shared, sink: Option<&gst::Element>) -> Snapshot {
    let consumers = sink
        .map(|s| s.property::<gst::Structure>("stats").n_fields())
        .unwrap_or(0);
    Snapshot {
        kind: "relay-stats",
        origin_id: shared.origin.lock().unwrap().clone(),
        upstream_session: shared.upstream_session.lock().unwrap().clone(),
        frames_in: shared.frames_in.load(Ordering::Relaxed),
        consumers,
        sessions_started: shared.sessions.load(Ordering::Relaxed),
        keyframe_requests: shared.keyframes.requests.load(Ordering::Relaxed),
        keyframes_requested_upstream: shared.keyframes.forced.load(Ordering::Relaxed),
        reconnects: shared.reconnects_up.load(Ordering::Relaxed)
            + shared.reconnects_down.load(Ordering::Relaxed),
    }
}

fn render(s: &Snapshot) -> String {
    let mut out = String::new();
    let labels: Vec<(&str, String)> = vec![("origin", s.origin_id.clone().unwrap_or_default())];
    for (name, kind, help, v) in [
        (
            "relay_consumers",
            "gauge",
            "Consumers the relay serves.",
            s.consumers as f64,
        ),
        (
            "relay_frames_in_total",
            "counter",
            "Encoded video frames received from the origin.",
            s.frames_in as f64,
        ),
        (
            "relay_keyframe_requests_total",
            "counter",
            "Keyframe requests of the relay's consumers.",
            s.keyframe_requests as f64,
        ),
        (
            "relay_keyframes_requested_upstream_total",
            "counter",
            "Keyframe requests passed on to the origin.",
            s.keyframes_requested_upstream as f64,
        ),
        (
            "relay_upstream_connected",
            "gauge",
            "1 while a session with the origin is up.",
            s.upstream_session.is_some() as u8 as f64,
        ),
    ] {
        write_metric(&mut out, name, kind, help, &[(labels.clone(), v)]);
    }
    out
}
