//! producer-agent: publishes a stream into a gst-webrtc-cluster (or any upstream-compatible
//! signalling server) through `webrtcsink`, and keeps publishing through signalling trouble.

mod chain;
mod encoding;
mod halve;
mod ladder;
mod report;
mod source;

use std::cell::RefCell;
use std::collections::HashMap;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_core::cli::{parse_key_value, whole, IceArgs, OutputArgs, SignallingArgs};
use agent_core::events::{self, EventHandler, Registration, Stop};
use agent_core::exit::Ending;
use agent_core::shutdown::Shutdown;
use agent_core::signaller::{AgentEvent, EndedBy};
use anyhow::{anyhow, Context};
use clap::Parser;
use gst::glib;
use gst::prelude::*;
use tracing::{info, warn};

use chain::Chain;
use encoding::Encoding;
use report::{Collector, Counters};
use source::{Source, TestParams};

/// Publish a live stream into the cluster with webrtcsink.
///
/// Exit codes: 0 stopped by SIGINT/SIGTERM (or the source ended), 1 runtime failure
/// (signalling unreachable for --retry-for, pipeline error), 2 bad arguments (including a
/// fragment that does not parse or a URI that cannot be opened), 4 refused by the server
/// (the token does not cover --name, a --token refused, the server's certificate
/// rejected), 5 kicked by an operator (unless --reconnect-after-kick).
#[derive(Parser, Debug, Clone)]
#[command(version, about)]
pub struct Args {
    /// Name announced in the producer's meta (`meta.name`); consumers find it by this.
    #[arg(long, env = "PRODUCER_NAME")]
    pub name: String,
    /// What to publish: `test` (test pattern), `uri:URI` (file://, rtsp://, http://; files
    /// loop) or `pipeline:'FRAGMENT'` (gst-launch fragment ending in raw video/audio).
    #[arg(long, env = "PRODUCER_SOURCE", default_value = "test")]
    pub source: Source,
    /// With `--source test`: also publish a test tone.
    #[arg(long, env = "PRODUCER_AUDIO")]
    pub audio: bool,
    /// With `--source test`: picture width, 16 to 7680.
    #[arg(long, env = "PRODUCER_WIDTH", default_value_t = 640, allow_negative_numbers = true, value_parser = whole::<u32>(16, 7680))]
    pub width: u32,
    /// With `--source test`: picture height, 16 to 4320.
    #[arg(long, env = "PRODUCER_HEIGHT", default_value_t = 480, allow_negative_numbers = true, value_parser = whole::<u32>(16, 4320))]
    pub height: u32,
    /// With `--source test`: frames per second, 1 to 120.
    #[arg(long, env = "PRODUCER_FPS", default_value_t = 30, allow_negative_numbers = true, value_parser = whole::<u32>(1, 120))]
    pub fps: u32,
    /// With `--source uri:file://…`: stop at the end of the file instead of looping.
    #[arg(long, env = "PRODUCER_NO_LOOP")]
    pub no_loop: bool,

    /// Video codecs offered, in order of preference (vp8, vp9, h264, h265, av1).
    /// Default: webrtcsink's (every codec it can encode).
    #[arg(long, env = "PRODUCER_VIDEO_CODECS", value_delimiter = ',', value_parser = video_codec)]
    pub video_codec: Vec<&'static str>,
    /// Audio codecs offered (opus). Default: webrtcsink's.
    #[arg(long, env = "PRODUCER_AUDIO_CODECS", value_delimiter = ',', value_parser = audio_codec)]
    pub audio_codec: Vec<&'static str>,
    /// How the streams are encoded: `per-consumer` (webrtcsink's own way: an encoder per
    /// consumer, each at the bitrate its congestion control picks) or `shared` (one encoder
    /// per stream, whose output every consumer gets: encode once, serve many; the video codec
    /// is the first of --video-codec, VP8 by default). See docs/agents.md.
    #[arg(long, env = "PRODUCER_ENCODING", value_enum, default_value_t = Encoding::PerConsumer)]
    pub encoding: Encoding,
    /// With `--encoding shared`: the video encoder's target bitrate, bits/s (default 2000000).
    /// With gcc congestion control (webrtcsink's default) it is the start: the bitrate then
    /// follows the consumers' estimates (their 20th percentile) within --min-bitrate and
    /// --max-bitrate.
    #[arg(long, env = "PRODUCER_BITRATE", allow_negative_numbers = true, value_parser = bitrate())]
    pub bitrate: Option<u32>,
    /// With `--encoding shared`: at most one keyframe is forced per this many milliseconds,
    /// however many consumers ask for one (joining, or on loss); a request in between is
    /// served at the end of the interval.
    #[arg(
        long = "min-keyframe-interval",
        env = "PRODUCER_MIN_KEYFRAME_INTERVAL",
        default_value_t = 250,
        allow_negative_numbers = true,
        value_parser = whole::<u64>(0, 60_000)
    )]
    pub min_keyframe_interval_ms: u64,
    /// With `--encoding shared`: encode the picture this many times (1 to 4), each layer half
    /// the size of the one above, at --bitrate, 0.25x, 0.05x, 0.015x of it; each layer is a
    /// video stream of its own (msid gwc-layer-K) for relays to pick from. `--source test`
    /// only (the picture size must be known): otherwise use --ladder. Default 1.
    #[arg(long, env = "PRODUCER_LAYERS", allow_negative_numbers = true, value_parser = whole::<u32>(1, ladder::MAX_LAYERS as u64))]
    pub layers: Option<u32>,
    /// With `--encoding shared`: the layers, explicitly, `WxH@KBPS` top first, e.g.
    /// `1280x720@2000,640x360@500,320x180@100`.
    #[arg(long, env = "PRODUCER_LADDER", value_parser = ladder_arg)]
    pub ladder: Option<proto::layers::Ladder>,
    /// With a ladder: also force a keyframe on every layer together every this many seconds
    /// (0: only at the start, and when a consumer asks, per layer).
    #[arg(long, env = "PRODUCER_KEYFRAME_INTERVAL", default_value_t = 0, allow_negative_numbers = true, value_parser = whole::<u64>(0, 3600))]
    pub keyframe_interval: u64,
    /// Congestion control: gcc (rtpgccbwe), homegrown, or disabled. Default: webrtcsink's (gcc).
    #[arg(long, env = "PRODUCER_CONGESTION_CONTROL", value_parser = ["gcc", "homegrown", "disabled"])]
    pub congestion_control: Option<String>,
    /// Lowest video bitrate congestion control may choose, bits/s (webrtcsink default 1000).
    #[arg(long, env = "PRODUCER_MIN_BITRATE", allow_negative_numbers = true, value_parser = bitrate())]
    pub min_bitrate: Option<u32>,
    /// Highest video bitrate, bits/s (webrtcsink default 8192000).
    #[arg(long, env = "PRODUCER_MAX_BITRATE", allow_negative_numbers = true, value_parser = bitrate())]
    pub max_bitrate: Option<u32>,
    /// Starting video bitrate, bits/s (webrtcsink default 2048000).
    #[arg(long, env = "PRODUCER_START_BITRATE", allow_negative_numbers = true, value_parser = bitrate())]
    pub start_bitrate: Option<u32>,
    /// Forward error correction (webrtcsink default true).
    #[arg(long, env = "PRODUCER_FEC")]
    pub fec: Option<bool>,
    /// Retransmission (RTX) (webrtcsink default true).
    #[arg(long, env = "PRODUCER_RTX")]
    pub rtx: Option<bool>,
    /// Serve at most this many consumers; more are refused (their session ends at once)
    /// rather than degrading everyone's stream.
    #[arg(long, env = "PRODUCER_MAX_CONSUMERS", allow_negative_numbers = true, value_parser = whole::<u32>(1, u32::MAX as u64))]
    pub max_consumers: Option<u32>,
    /// Extra metadata `KEY=VALUE` published with the producer (repeatable).
    #[arg(long = "meta", value_parser = parse_key_value)]
    pub meta: Vec<(String, String)>,
    /// Accept mouse/keyboard events from consumers over data channels (webrtcsink's
    /// navigation and control channels; gstwebrtc-api's remote controller uses the latter).
    #[arg(long, env = "PRODUCER_NAVIGATION")]
    pub navigation: bool,
    #[command(flatten)]
    pub ice: IceArgs,
    #[command(flatten)]
    pub signalling: SignallingArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

fn video_codec(s: &str) -> Result<&'static str, String> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "vp8" => "video/x-vp8",
        "vp9" => "video/x-vp9",
        "h264" => "video/x-h264",
        "h265" => "video/x-h265",
        "av1" => "video/x-av1",
        _ => {
            return Err(format!(
                "unknown video codec '{s}' (vp8, vp9, h264, h265, av1)"
            ))
        }
    })
}

/// Bits/s every encoder takes (x264enc's kbit/s from 1, vp8enc's `i32`), as webrtcsink's 1000
/// default minimum.
fn bitrate() -> impl Fn(&str) -> Result<u32, String> + Clone + Send + Sync {
    whole::<u32>(1000, 2_000_000_000)
}

fn ladder_arg(s: &str) -> Result<proto::layers::Ladder, String> {
    s.parse().map_err(|e| format!("{e}"))
}

fn audio_codec(s: &str) -> Result<&'static str, String> {
    match s.to_ascii_lowercase().as_str() {
        "opus" => Ok("audio/x-opus"),
        _ => Err(format!("unknown audio codec '{s}' (opus)")),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    args.output.init_logging("producer_agent", "PRODUCER_LOG");
    let result = run(&args);
    agent_core::settle();
    args.output.exit_code("producer-agent", result)
}

/// The gwcwebrtcsink (the element gst-launch users have: `gst-plugin/`), configured from the
/// arguments, and the stock webrtcsink inside it.
fn make_sink(
    args: &Args,
    ladder: Option<&proto::layers::Ladder>,
    events: std::sync::mpsc::Sender<AgentEvent>,
) -> anyhow::Result<(gst::Element, gst::Element)> {
    let element = gstgwc::agent::sink(&args.signalling, &args.ice, args.max_consumers, events);
    let sink = element.webrtcsink();
    let mut meta = gst::Structure::builder("meta").field("name", &args.name);
    if let Some(ladder) = ladder {
        meta = meta.field(proto::layers::META_KEY, ladder.to_string());
    }
    for (k, v) in &args.meta {
        meta = meta.field(k.as_str(), v);
    }
    sink.set_property("meta", meta.build());
    if !args.video_codec.is_empty() {
        sink.set_property(
            "video-caps",
            args.video_codec.join(";").parse::<gst::Caps>()?,
        );
    }
    if !args.audio_codec.is_empty() {
        sink.set_property(
            "audio-caps",
            args.audio_codec.join(";").parse::<gst::Caps>()?,
        );
    }
    if let Some(cc) = &args.congestion_control {
        sink.set_property_from_str("congestion-control", cc);
    }
    if let Some(v) = args.min_bitrate {
        sink.set_property("min-bitrate", v);
    }
    if let Some(v) = args.max_bitrate {
        sink.set_property("max-bitrate", v);
    }
    if let Some(v) = args.start_bitrate {
        sink.set_property("start-bitrate", v);
    }
    if let Some(v) = args.fec {
        sink.set_property("do-fec", v);
    }
    if let Some(v) = args.rtx {
        sink.set_property("do-retransmission", v);
    }
    // Both channels: gstwebrtc-api 3 sends its remote controller's events over the "control"
    // channel; older clients use the "input" navigation channel.
    sink.set_property("enable-data-channel-navigation", args.navigation);
    sink.set_property("enable-control-data-channel", args.navigation);
    Ok((element.upcast(), sink))
}

fn run(args: &Args) -> anyhow::Result<()> {
    check_bitrates(args)?;
    let ladder = ladder_of(args)?;
    gstgwc::agent::init()?;
    halve::register().context("cannot register gwchalve")?;
    let shutdown = Shutdown::install()?;
    let (events_tx, events) = std::sync::mpsc::channel();
    let pipeline = gst::Pipeline::new();
    let (element, sink) = make_sink(args, ladder.as_ref(), events_tx)?;
    pipeline.add(&element)?;
    let counters = Arc::new(Counters::default());
    let shared = Arc::new(encoding::Stats::default());
    let settings = encoding::Settings {
        video_codec: args.video_codec.first().copied().unwrap_or("video/x-vp8"),
        bitrate: args.bitrate.unwrap_or(2_000_000),
        min_keyframe_interval: Duration::from_millis(args.min_keyframe_interval_ms),
        follow: follows_audience(args),
    };
    let ladder_stats = ladder
        .as_ref()
        .map(|l| Arc::new(ladder::Stats::new(l, shared.keyframes.clone())));
    let chain = match (args.encoding, &ladder_stats) {
        (Encoding::PerConsumer, _) => Chain::Raw,
        (Encoding::Shared, None) => Chain::Shared(settings, shared.clone()),
        (Encoding::Shared, Some(stats)) => {
            stats.describe_top(&settings, &shared);
            let every = Duration::from_secs(args.keyframe_interval);
            Chain::Ladder(
                encoding::Settings {
                    follow: None,
                    ..settings
                },
                stats.clone(),
                Some(every),
            )
        }
    };
    let test = TestParams {
        width: args.width,
        height: args.height,
        fps: args.fps,
        audio: args.audio,
    };
    source::add(
        &pipeline,
        &element,
        &args.source,
        &test,
        &chain,
        count_navigation(counters.clone()),
    )?;

    let peer_id = Arc::new(Mutex::new(None::<String>));
    let consumers = Arc::new(Mutex::new(HashMap::<String, String>::new()));
    let collector = Arc::new(Mutex::new(Collector::new(
        args.name.clone(),
        counters.clone(),
        peer_id.clone(),
        consumers.clone(),
        (args.encoding == Encoding::Shared).then_some(shared.clone()),
        ladder_stats,
    )));
    let weak_sink = sink.downgrade();
    agent_core::reporting::start(
        &args.output,
        move || Some(collector.lock().unwrap().collect(&weak_sink.upgrade()?)),
        report::render,
    )?;

    if args.encoding == Encoding::Shared && ladder.is_none() {
        follow_audience(&sink, shared.clone());
    }
    let main_loop = glib::MainLoop::new(None, false);
    let end = End::new(&main_loop);
    let looper = Looper::new(
        &pipeline,
        matches!(&args.source, Source::Uri(u) if u.starts_with("file://")) && !args.no_loop,
    );
    let bus = pipeline.bus().context("pipeline has no bus")?;
    let _watch = watch_bus(&bus, &pipeline, end.clone(), looper.clone())?;
    let publisher = Publisher {
        name: args.name.clone(),
        counters,
        peer_id,
        consumers,
        looper,
        end: end.clone(),
    };
    events::poll(Duration::from_millis(50), events, shutdown, publisher);

    info!(
        "publishing '{}' to {} (Ctrl-C to stop)",
        args.name,
        args.signalling.describe()
    );
    start(&pipeline, &bus)?;
    main_loop.run();
    // Ends every session (webrtcsink tells the signaller) and closes the connection.
    let _ = pipeline.set_state(gst::State::Null);
    end.result()
}

/// In shared mode with webrtcsink's gcc congestion control, the shared encoder's bitrate
/// follows the consumers' estimates within --min-bitrate/--max-bitrate (300 kbit/s and
/// webrtcsink's 8192000 unless given); otherwise it stays at --bitrate.
fn follows_audience(args: &Args) -> Option<(u32, u32)> {
    let gcc = matches!(args.congestion_control.as_deref(), None | Some("gcc"));
    gcc.then(|| {
        (
            args.min_bitrate.unwrap_or(300_000),
            args.max_bitrate.unwrap_or(8_192_000),
        )
    })
}

/// Every second, the shared encoder's bitrate follows the estimates of the consumers'
/// congestion control (each consumer's webrtcbin, kept from webrtcsink's signals).
fn follow_audience(sink: &gst::Element, shared: Arc<encoding::Stats>) {
    let webrtcbins = Arc::new(Mutex::new(
        HashMap::<String, glib::WeakRef<gst::Element>>::new(),
    ));
    let added = webrtcbins.clone();
    sink.connect("consumer-added", false, move |values| {
        if let (Ok(peer), Ok(webrtcbin)) =
            (values[1].get::<String>(), values[2].get::<gst::Element>())
        {
            added.lock().unwrap().insert(peer, webrtcbin.downgrade());
        }
        None
    });
    let removed = webrtcbins.clone();
    sink.connect("consumer-removed", false, move |values| {
        if let Ok(peer) = values[1].get::<String>() {
            removed.lock().unwrap().remove(&peer);
        }
        None
    });
    glib::timeout_add_seconds_local(1, move || {
        let live: Vec<gst::Element> = webrtcbins
            .lock()
            .unwrap()
            .values()
            .filter_map(|w| w.upgrade())
            .collect();
        shared.follow_audience(&live);
        glib::ControlFlow::Continue
    });
}

fn check_bitrates(args: &Args) -> Result<(), Ending> {
    if args.bitrate.is_some() && args.encoding != Encoding::Shared {
        return Err(Ending::Usage(
            "--bitrate is the shared encoder's: with per-consumer encoding use --start-bitrate, --min-bitrate and --max-bitrate".into(),
        ));
    }
    match (args.min_bitrate, args.max_bitrate) {
        (Some(min), Some(max)) if min > max => Err(Ending::Usage(format!(
            "--min-bitrate {min} is above --max-bitrate {max}"
        ))),
        _ => Ok(()),
    }
}

/// The ladder the flags ask for (`None`: one layer, as without them), checked (`ladder.rs`).
fn ladder_of(args: &Args) -> Result<Option<proto::layers::Ladder>, Ending> {
    let ladder = ladder::Request {
        layers: args.layers,
        ladder: args.ladder.as_ref(),
        shared: args.encoding == Encoding::Shared,
        bitrate: args.bitrate,
        follow_bounds: args.min_bitrate.is_some() || args.max_bitrate.is_some(),
        capture: (args.source == Source::Test).then_some((args.width, args.height)),
    }
    .resolve()?;
    if ladder.is_none() && args.keyframe_interval > 0 {
        return Err(Ending::Usage(
            "--keyframe-interval aligns the keyframes of a ladder's layers: it needs --layers 2 or more, or --ladder".into(),
        ));
    }
    Ok(ladder)
}

/// Navigation events travel upstream out of webrtcsink into our chain: count them.
fn count_navigation(counters: Arc<Counters>) -> impl Fn(&gst::Pad) + Send + Sync + Clone {
    move |pad: &gst::Pad| {
        let nav = counters.clone();
        pad.add_probe(gst::PadProbeType::EVENT_UPSTREAM, move |_, info| {
            if let Some(gst::PadProbeData::Event(ev)) = &info.data {
                if ev.type_() == gst::EventType::Navigation {
                    let n = nav.navigation_events.fetch_add(1, Ordering::Relaxed) + 1;
                    let what = ev.structure().map(|s| s.to_string()).unwrap_or_default();
                    info!(count = n, event = %what, "navigation event");
                }
            }
            gst::PadProbeReturn::Ok
        });
    }
}

/// How the run ends: quits the main loop, with the failure if there is one.
#[derive(Clone)]
struct End {
    main_loop: glib::MainLoop,
    failure: Rc<RefCell<Option<anyhow::Error>>>,
}

impl End {
    fn new(main_loop: &glib::MainLoop) -> Self {
        End {
            main_loop: main_loop.clone(),
            failure: Default::default(),
        }
    }

    fn quit(&self) {
        self.main_loop.quit();
    }

    fn fail(&self, error: anyhow::Error) {
        *self.failure.borrow_mut() = Some(error);
        self.main_loop.quit();
    }

    fn result(&self) -> anyhow::Result<()> {
        match self.failure.borrow_mut().take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Pipeline errors end the run; a file source loops (or ends the run) at its end.
fn watch_bus(
    bus: &gst::Bus,
    pipeline: &gst::Pipeline,
    end: End,
    looper: Looper,
) -> anyhow::Result<gst::bus::BusWatchGuard> {
    let weak = pipeline.downgrade();
    let mut streams_linked = false;
    Ok(bus.add_watch_local(move |_, msg| {
        match msg.view() {
            gst::MessageView::Error(e) => {
                let from = e
                    .src()
                    .map(|s| s.path_string().to_string())
                    .unwrap_or_default();
                // Failing before the source gave any stream means the source is unusable.
                let is_source = from.contains("/source");
                end.fail(if is_source && !streams_linked {
                    Ending::Usage(format!("cannot open the source: {}", e.error())).into()
                } else {
                    anyhow!("{from}: {}", e.error())
                });
            }
            gst::MessageView::SegmentDone(_) => {
                if let Some(p) = weak.upgrade() {
                    info!("end of file, looping");
                    if p.seek_simple(gst::SeekFlags::SEGMENT, gst::ClockTime::ZERO)
                        .is_err()
                    {
                        warn!("cannot seek back to the start; stopping");
                        end.quit();
                    }
                }
            }
            gst::MessageView::Eos(_) => {
                // The file ended before the loop was armed (it is shorter than webrtcsink's
                // start-up): arm it now.
                if looper.arm() {
                    return glib::ControlFlow::Continue;
                }
                info!("the source ended");
                end.quit();
            }
            gst::MessageView::StreamStart(_) => streams_linked = true,
            _ => {}
        }
        glib::ControlFlow::Continue
    })?)
}

/// Sets the pipeline playing; a source that cannot start is a usage error (exit 2).
fn start(pipeline: &gst::Pipeline, bus: &gst::Bus) -> anyhow::Result<()> {
    if pipeline.set_state(gst::State::Playing).is_ok() {
        return Ok(());
    }
    // The bus says why; give it a moment to arrive.
    let reason = bus
        .timed_pop_filtered(gst::ClockTime::from_seconds(2), &[gst::MessageType::Error])
        .and_then(|m| match m.view() {
            gst::MessageView::Error(e) => Some(e.error().to_string()),
            _ => None,
        })
        .unwrap_or_else(|| "cannot start the pipeline".into());
    let _ = pipeline.set_state(gst::State::Null);
    Err(Ending::Usage(format!("cannot start the source: {reason}")).into())
}

/// What the producer does with its signaller's events: logs them, keeps the counters and the
/// consumer list the stats report, arms the file loop once registered.
struct Publisher {
    name: String,
    counters: Arc<Counters>,
    peer_id: Arc<Mutex<Option<String>>>,
    /// session id → consumer peer id.
    consumers: Arc<Mutex<HashMap<String, String>>>,
    looper: Looper,
    end: End,
}

impl EventHandler for Publisher {
    fn reconnects(&self) -> &AtomicU64 {
        &self.counters.reconnects
    }

    fn stop(&mut self, why: Stop) {
        if why == Stop::Signal {
            info!("signal received, ending sessions");
        }
        match why.into_error() {
            None => self.end.quit(),
            Some(e) => self.end.fail(e),
        }
    }

    fn registered(&mut self, r: Registration) {
        let (id, at, name) = (&r.peer_id, r.at(), &self.name);
        if r.resumed {
            info!(peer = %id, "resumed as {id} on {at}: sessions kept");
        } else {
            info!(peer = %id, "registered '{name}' as {id} on {at} (protocol v{})", r.protocol());
        }
        *self.peer_id.lock().unwrap() = Some(r.peer_id);
        // webrtcsink registers once its codec discovery is done: a flushing seek from now on
        // cannot disturb it.
        self.looper.arm();
    }

    fn session_started(&mut self, session_id: String, consumer: String) {
        self.counters
            .sessions_started
            .fetch_add(1, Ordering::Relaxed);
        info!(session = %session_id, "consumer {consumer} connected (session {session_id})");
        self.consumers.lock().unwrap().insert(session_id, consumer);
    }

    fn session_ended(&mut self, session_id: String, by: EndedBy) -> glib::ControlFlow {
        let who = self
            .consumers
            .lock()
            .unwrap()
            .remove(&session_id)
            .unwrap_or_default();
        let how = match by {
            EndedBy::Other => "",
            EndedBy::Us => ", ended by us",
            EndedBy::Operator => ", ended by an operator",
        };
        info!(session = %session_id, "consumer {who} left (session {session_id}{how})");
        glib::ControlFlow::Continue
    }

    fn consumer_refused(&mut self, consumer: String, limit: u32) {
        self.counters
            .consumers_refused
            .fetch_add(1, Ordering::Relaxed);
        warn!("refused consumer {consumer}: already serving --max-consumers {limit}");
    }
}

/// Loops a file source with segment seeks: they keep the running time going, so webrtcsink's
/// consumers see one endless stream (a flushing seek back to 0 at each end would make them
/// drop everything as late). Arming takes one flushing segment seek, done once webrtcsink's
/// codec discovery is over (a flush during discovery can stall it).
#[derive(Clone)]
struct Looper {
    pipeline: gst::glib::WeakRef<gst::Pipeline>,
    wanted: bool,
    armed: std::rc::Rc<std::cell::Cell<bool>>,
}

impl Looper {
    fn new(pipeline: &gst::Pipeline, wanted: bool) -> Self {
        Looper {
            pipeline: pipeline.downgrade(),
            wanted,
            armed: Default::default(),
        }
    }

    /// Arms the loop if wanted and not yet done; true if it did.
    fn arm(&self) -> bool {
        if !self.wanted || self.armed.replace(true) {
            return false;
        }
        let Some(p) = self.pipeline.upgrade() else {
            return false;
        };
        let flags = gst::SeekFlags::FLUSH | gst::SeekFlags::SEGMENT;
        if p.seek_simple(flags, gst::ClockTime::ZERO).is_err() {
            warn!("the source cannot seek: it will not loop");
            return false;
        }
        true
    }
}
