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
//! what it relays (`stream`, `relay-of`, `depth`, `capacity`); viewers asking for the stream
//! are placed on it by the cluster (docs/relays.md).
//!
//! `--engine forward` replaces both sides by the `sfu` crate's packet-forwarding core, driven
//! by the same cluster signallers (`forward/`).
//!
//! | behaviour | file |
//! |---|---|
//! | the flags, the engine chosen; pipeline: the serving side (webrtcsink) and its consumers | `main.rs` |
//! | the meta both engines register with | `meta.rs` |
//! | both engines: a viewer joining, leaving, refused (counted, logged alike) | `viewers.rs` |
//! | pipeline: finding the origin, reattaching when it returns | `upstream.rs` |
//! | pipeline: the origin's streams into webrtcsink, held until all are there; the codec guard | `republish.rs` |
//! | forward: the run, reattach, the engine's events; signals → engine; stats | `forward/mod.rs`, `forward/wiring.rs`, `forward/stats.rs` |
//! | `relay-stats` and metrics | `report.rs` |

mod forward;
mod meta;
mod report;
mod republish;
mod upstream;
mod viewers;

use std::process::ExitCode;
use std::rc::Rc;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_core::cli::{whole, IceArgs, OutputArgs, SignallingArgs};
use agent_core::events::{self, EventHandler, Registration, Stop};
use agent_core::exit;
use agent_core::ice_servers::Policy;
use agent_core::keyframes::KeyframeCounts;
use agent_core::shutdown::Shutdown;
use agent_core::signaller::{AgentEvent, EndedBy, Target};
use anyhow::{anyhow, Context};
use clap::Parser;
use gst::glib;
use gst::prelude::*;
use tracing::info;

use republish::Republish;
use upstream::Source;

/// Relay a stream of the cluster without re-encoding it.
///
/// With --source-name, a relay whose origin goes away keeps its registration and consumers and
/// reattaches to the next producer of that name (same codec: the consumers' sessions go on).
///
/// Exit codes: 0 stopped by SIGINT/SIGTERM; 1 runtime failure (signalling unreachable for
/// --retry-for, the origin not found or not back within --timeout, a --source-id origin gone,
/// a returning origin with another codec, a pipeline error, the forward engine stopped); 2 bad
/// arguments; 4 refused by the server (the token lacks `produce` for the relay's name, or
/// `consume`/`listen` for its source; a --token refused; the server's certificate rejected);
/// 5 stopped by an operator (kicked, unless --reconnect-after-kick, or its source session
/// ended by one).
#[derive(Parser, Debug, Clone)]
#[command(version, about)]
pub struct Args {
    /// The stream to relay: the producer whose `meta.name` is this.
    #[arg(long, env = "RELAY_SOURCE_NAME", group = "source")]
    pub source_name: Option<String>,
    /// The stream to relay: the producer with this peer id.
    #[arg(long, env = "RELAY_SOURCE_ID", group = "source")]
    pub source_id: Option<String>,
    /// Be an ingest member: wait for the WHIP publication a node hands over (`POST
    /// /whip/{stream}`), answer the publisher's offer and serve its stream as its relay; one
    /// publication, then exit 0 (a Deployment starts it again). Forward engine only.
    #[arg(long, env = "RELAY_WHIP", group = "source")]
    pub whip: bool,
    /// The relay's own `meta.name` (default: `SOURCE relay`).
    #[arg(long, env = "RELAY_NAME")]
    pub name: Option<String>,
    /// Serve at most this many consumers (announced as the relay's `capacity`).
    #[arg(long, env = "RELAY_MAX_CONSUMERS", allow_negative_numbers = true, value_parser = whole::<u32>(1, u32::MAX as u64))]
    pub max_consumers: Option<u32>,
    /// Keyframe requests of the relay's consumers reach the origin at most once per this many
    /// milliseconds (a request in between waits for the end of it).
    #[arg(
        long = "min-keyframe-interval",
        env = "RELAY_MIN_KEYFRAME_INTERVAL",
        default_value_t = 250,
        allow_negative_numbers = true,
        value_parser = whole::<u64>(0, 60_000)
    )]
    pub min_keyframe_interval_ms: u64,
    /// Add forward error correction (ULPFEC, 50 %) to what the relay sends. Off by default:
    /// retransmissions (NACK/RTX) repair loss at a fraction of FEC's constant cost on every
    /// viewer.
    #[arg(long, env = "RELAY_FEC")]
    pub fec: bool,
    /// Seconds to wait for the origin (from registration, and after it went away): at least 1.
    #[arg(long, env = "RELAY_TIMEOUT", default_value_t = 30, allow_negative_numbers = true, value_parser = whole::<u64>(1, 86_400))]
    pub timeout: u64,
    /// `pipeline`: webrtcsrc → webrtcsink, a webrtcbin per viewer. `forward`: the packet
    /// forwarding core (`sfu`): one UDP port, no GStreamer chain per viewer.
    #[arg(long, value_enum, env = "RELAY_ENGINE", default_value = "forward")]
    pub engine: Engine,
    #[command(flatten)]
    pub forward: forward::ForwardArgs,
    #[command(flatten)]
    pub ice: IceArgs,
    #[command(flatten)]
    pub signalling: SignallingArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// How the relay serves its viewers (docs/relays.md "Two engines").
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    Pipeline,
    Forward,
}

impl Engine {
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Pipeline => "pipeline",
            Engine::Forward => "forward",
        }
    }
}

impl Args {
    /// Flags that mean nothing to the chosen engine: a usage error naming them.
    fn check_engine(&self) -> Result<(), String> {
        let given = self.forward.given();
        match self.engine {
            Engine::Pipeline if self.whip => {
                Err("--whip needs --engine forward (it answers the publisher's offer)".into())
            }
            Engine::Pipeline if !given.is_empty() => Err(format!(
                "{} only apply to --engine forward",
                given.join(", ")
            )),
            Engine::Forward if self.fec => {
                Err("--fec only applies to --engine pipeline (the forward engine sends what it receives)".into())
            }
            Engine::Forward if self.ice.ice_transport_policy == Policy::Relay => Err(
                "--ice-transport-policy relay only applies to --engine pipeline: the forward \
                 engine has no TURN client (it is reached directly, at --ice-address or \
                 --public-ip; its peers may relay through TURN)"
                    .into(),
            ),
            _ => Ok(()),
        }
    }

    fn target(&self) -> Option<Target> {
        match (&self.source_id, &self.source_name, self.whip) {
            (Some(id), _, _) => Some(Target::Id(id.clone())),
            (_, Some(name), _) => Some(Target::Name(name.clone())),
            (_, _, true) => Some(Target::Ingest),
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
        eprintln!("relay-agent: one of --source-name, --source-id or --whip is required");
        return ExitCode::from(exit::USAGE);
    };
    if let Err(e) = args.check_engine() {
        eprintln!("relay-agent: {e}");
        return ExitCode::from(exit::USAGE);
    }
    let result = match args.engine {
        Engine::Pipeline => run(&args, target),
        Engine::Forward => forward::run(&args, target),
    };
    agent_core::settle();
    args.output.exit_code("relay-agent", result)
}

/// What the relay's two sides share with the stats thread.
#[derive(Default)]
pub struct Shared {
    origin: Mutex<Option<String>>,
    upstream_session: Mutex<Option<String>>,
    /// Sessions with a source after the first.
    reattachments: AtomicU64,
    /// Encoded video frames, and media bytes, received from the source.
    frames_in: AtomicU64,
    bytes_in: AtomicU64,
    keyframes: Arc<KeyframeCounts>,
    reconnects_up: AtomicU64,
    reconnects_down: AtomicU64,
    sessions: AtomicU64,
}

fn run(args: &Args, target: Target) -> anyhow::Result<()> {
    gstgwc::agent::init()?;
    let shutdown = Shutdown::install()?;
    let shared = Arc::new(Shared::default());
    let pipeline = gst::Pipeline::new();
    let main_loop = glib::MainLoop::new(None, false);
    let failure = Arc::new(Mutex::new(None::<anyhow::Error>));

    let (down_tx, down_events) = std::sync::mpsc::channel();
    let (sink, webrtcsink) = make_sink(args, down_tx);
    let codec_changed: republish::CodecChanged = {
        let (failure, main_loop) = (failure.clone(), main_loop.clone());
        Arc::new(move |change| {
            // Its consumers negotiated the old codec: they end and are placed again.
            *failure.lock().unwrap() = Some(anyhow!(
                "the returning origin's codec changed ({change}): the relay's consumers cannot take it"
            ));
            main_loop.quit();
        })
    };
    let republish = Arc::new(Republish::new(
        &pipeline,
        sink.clone(),
        Duration::from_millis(args.min_keyframe_interval_ms),
        shared.clone(),
        codec_changed,
    ));
    let source = Rc::new(Source {
        pipeline: pipeline.downgrade(),
        args: args.clone(),
        target,
        republish,
        shared: shared.clone(),
        sink: sink.downgrade(),
        main_loop: main_loop.clone(),
        failure: failure.clone(),
        shutdown: shutdown.clone(),
        current: Default::default(),
    });

    let mut collector = report::Collector::new(shared.clone(), &webrtcsink);
    agent_core::reporting::start(
        &args.output,
        move || Some(collector.collect()),
        report::render,
    )?;

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
    source.attach()?;
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
) -> (gst::Element, gst::Element) {
    // the element gst-launch users have (`gst-plugin/`); the stock webrtcsink inside
    let element = gstgwc::agent::sink(&args.signalling, &args.ice, args.max_consumers, events);
    let sink = element.webrtcsink();
    element.set_property("meta", meta::initial(args));
    // The relay cannot change the bitrate of what it forwards: congestion control would only
    // add probing padding (measured: 4 Mbit/s out per viewer of a 2 Mbit/s stream with gcc,
    // 2 without), and FEC a constant overhead.
    sink.set_property_from_str("congestion-control", "disabled");
    sink.set_property("do-fec", args.fec);
    (element.upcast(), sink)
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
        if let Some(e) = why.into_error() {
            self.failure.lock().unwrap().get_or_insert(e);
        }
        self.main_loop.quit();
    }

    fn registered(&mut self, r: Registration) {
        crate::viewers::registered(r);
    }

    fn session_started(&mut self, session_id: String, consumer: String) {
        crate::viewers::session_started(&self.shared, session_id, consumer);
    }

    fn session_ended(&mut self, session_id: String, by: EndedBy) -> glib::ControlFlow {
        crate::viewers::session_ended(session_id, by)
    }

    fn consumer_refused(&mut self, consumer: String, limit: u32) {
        crate::viewers::consumer_refused(consumer, limit);
    }
}
