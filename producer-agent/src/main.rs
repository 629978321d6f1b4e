//! producer-agent: publishes a stream into a gst-webrtc-cluster (or any upstream-compatible
//! signalling server) through `webrtcsink`, and keeps publishing through signalling trouble.

mod report;
mod source;

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_core::cli::{parse_key_value, IceArgs, OutputArgs, SignallingArgs};
use agent_core::exit;
use agent_core::shutdown::Shutdown;
use agent_core::signaller::{AgentEvent, ClusterSignaller, Role, SignallerConfig};
use anyhow::{anyhow, Context};
use clap::Parser;
use gst::glib;
use gst::prelude::*;
use tracing::{error, info, warn};

use report::{Collector, Counters};
use source::{BadSource, Source, TestParams};

/// Publish a live stream into the cluster with webrtcsink.
///
/// Exit codes: 0 stopped by SIGINT/SIGTERM (or the source ended), 1 runtime failure
/// (signalling unreachable for --retry-for, pipeline error), 2 bad arguments (including a
/// fragment that does not parse or a URI that cannot be opened).
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
    #[arg(long, env = "PRODUCER_WIDTH", default_value_t = 640)]
    pub width: u32,
    #[arg(long, env = "PRODUCER_HEIGHT", default_value_t = 480)]
    pub height: u32,
    #[arg(long, env = "PRODUCER_FPS", default_value_t = 30)]
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
    /// Congestion control: gcc (rtpgccbwe), homegrown, or disabled. Default: webrtcsink's (gcc).
    #[arg(long, env = "PRODUCER_CONGESTION_CONTROL", value_parser = ["gcc", "homegrown", "disabled"])]
    pub congestion_control: Option<String>,
    /// Lowest video bitrate congestion control may choose, bits/s (webrtcsink default 1000).
    #[arg(long, env = "PRODUCER_MIN_BITRATE")]
    pub min_bitrate: Option<u32>,
    /// Highest video bitrate, bits/s (webrtcsink default 8192000).
    #[arg(long, env = "PRODUCER_MAX_BITRATE")]
    pub max_bitrate: Option<u32>,
    /// Starting video bitrate, bits/s (webrtcsink default 2048000).
    #[arg(long, env = "PRODUCER_START_BITRATE")]
    pub start_bitrate: Option<u32>,
    /// Forward error correction (webrtcsink default true).
    #[arg(long, env = "PRODUCER_FEC")]
    pub fec: Option<bool>,
    /// Retransmission (RTX) (webrtcsink default true).
    #[arg(long, env = "PRODUCER_RTX")]
    pub rtx: Option<bool>,
    /// Serve at most this many consumers; more are refused (their session ends at once)
    /// rather than degrading everyone's stream.
    #[arg(long, env = "PRODUCER_MAX_CONSUMERS", value_parser = clap::value_parser!(u32).range(1..))]
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

fn audio_codec(s: &str) -> Result<&'static str, String> {
    match s.to_ascii_lowercase().as_str() {
        "opus" => Ok("audio/x-opus"),
        _ => Err(format!("unknown audio codec '{s}' (opus)")),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    args.output.init_logging("producer_agent", "PRODUCER_LOG");
    match run(&args) {
        Ok(()) => ExitCode::from(exit::OK),
        Err(e) => {
            error!("{e:#}");
            eprintln!("producer-agent: {e:#}");
            let usage = e.downcast_ref::<BadSource>().is_some();
            ExitCode::from(if usage { exit::USAGE } else { exit::FAILURE })
        }
    }
}

/// The webrtcsink, configured from the arguments, with our signaller.
fn make_sink(
    args: &Args,
    events: std::sync::mpsc::Sender<AgentEvent>,
) -> anyhow::Result<gst::Element> {
    let signaller = ClusterSignaller::new(SignallerConfig {
        client: args.signalling.client_config(),
        role: Role::Producer {
            max_sessions: args.max_consumers,
        },
        events,
    });
    let sink = gst::ElementFactory::make("webrtcsink")
        .name("ws")
        .property("signaller", &signaller)
        .build()
        .context("webrtcsink is not available")?;
    let mut meta = gst::Structure::builder("meta").field("name", &args.name);
    for (k, v) in &args.meta {
        meta = meta.field(k.as_str(), v);
    }
    sink.set_property("meta", meta.build());
    args.ice.apply(&sink);
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
    Ok(sink)
}

fn run(args: &Args) -> anyhow::Result<()> {
    if let (Some(min), Some(max)) = (args.min_bitrate, args.max_bitrate) {
        if min > max {
            return Err(
                BadSource(format!("--min-bitrate {min} is above --max-bitrate {max}")).into(),
            );
        }
    }
    agent_core::init_gstreamer()?;
    let shutdown = Shutdown::install()?;
    let (events_tx, events) = std::sync::mpsc::channel();
    let pipeline = gst::Pipeline::new();
    let sink = make_sink(args, events_tx)?;
    pipeline.add(&sink)?;

    let counters = Arc::new(Counters::default());
    let nav = counters.clone();
    let on_stream = move |pad: &gst::Pad| {
        // Navigation events travel upstream out of webrtcsink into our chain: count them.
        let nav = nav.clone();
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
    };
    let test = TestParams {
        width: args.width,
        height: args.height,
        fps: args.fps,
        audio: args.audio,
    };
    source::add(&pipeline, &sink, &args.source, &test, on_stream)?;

    let peer_id = Arc::new(Mutex::new(None::<String>));
    let consumers = Arc::new(Mutex::new(HashMap::<String, String>::new()));
    let collector = Arc::new(Mutex::new(Collector::new(
        args.name.clone(),
        counters.clone(),
        peer_id.clone(),
        consumers.clone(),
    )));
    let weak_sink = sink.downgrade();
    agent_core::reporting::start(
        &args.output,
        move || Some(collector.lock().unwrap().collect(&weak_sink.upgrade()?)),
        report::render,
    )?;

    let main_loop = glib::MainLoop::new(None, false);
    let looper = Looper::new(
        &pipeline,
        matches!(&args.source, Source::Uri(u) if u.starts_with("file://")) && !args.no_loop,
    );
    let failure = Arc::new(Mutex::new(None::<anyhow::Error>));
    let streams_linked = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let bus = pipeline.bus().context("pipeline has no bus")?;
    let _watch = {
        let (main_loop, failure, weak) = (main_loop.clone(), failure.clone(), pipeline.downgrade());
        let streams_linked = streams_linked.clone();
        let looper = looper.clone();
        bus.add_watch_local(move |_, msg| {
            match msg.view() {
                gst::MessageView::Error(e) => {
                    let from = e
                        .src()
                        .map(|s| s.path_string().to_string())
                        .unwrap_or_default();
                    let text = format!("{from}: {}", e.error());
                    // Failing before the source gave any stream means the source is unusable.
                    let is_source = from.contains("/source");
                    *failure.lock().unwrap() =
                        Some(if is_source && !streams_linked.load(Ordering::Relaxed) {
                            BadSource(format!("cannot open the source: {}", e.error())).into()
                        } else {
                            anyhow!(text)
                        });
                    main_loop.quit();
                }
                gst::MessageView::SegmentDone(_) => {
                    if let Some(p) = weak.upgrade() {
                        info!("end of file, looping");
                        if p.seek_simple(gst::SeekFlags::SEGMENT, gst::ClockTime::ZERO)
                            .is_err()
                        {
                            warn!("cannot seek back to the start; stopping");
                            main_loop.quit();
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
                    main_loop.quit();
                }
                gst::MessageView::StreamStart(_) => streams_linked.store(true, Ordering::Relaxed),
                _ => {}
            }
            glib::ControlFlow::Continue
        })?
    };

    {
        let (main_loop, failure) = (main_loop.clone(), failure.clone());
        let name = args.name.clone();
        let counters = counters.clone();
        let looper = looper.clone();
        glib::timeout_add_local(Duration::from_millis(50), move || {
            if shutdown.requested() {
                info!("signal received, ending sessions");
                main_loop.quit();
                return glib::ControlFlow::Break;
            }
            while let Ok(event) = events.try_recv() {
                match event {
                    AgentEvent::Registered {
                        server,
                        peer_id: id,
                        node_id,
                        v2,
                        resumed,
                    } => {
                        let node = node_id.map(|n| format!(" node {n}")).unwrap_or_default();
                        if resumed {
                            info!(peer = %id, "resumed as {id} on {server}{node}: sessions kept");
                        } else {
                            info!(peer = %id, "registered '{name}' as {id} on {server}{node} (protocol v{})", if v2 { 2 } else { 1 });
                        }
                        *peer_id.lock().unwrap() = Some(id);
                        // webrtcsink registers once its codec discovery is done: a flushing
                        // seek from now on cannot disturb it.
                        looper.arm();
                    }
                    AgentEvent::Reconnecting { server, reason } => {
                        counters.reconnects.fetch_add(1, Ordering::Relaxed);
                        warn!("lost {server} ({reason}); reconnecting");
                    }
                    AgentEvent::SessionStarted {
                        session_id,
                        peer_id: consumer,
                    } => {
                        counters.sessions_started.fetch_add(1, Ordering::Relaxed);
                        info!(session = %session_id, "consumer {consumer} connected (session {session_id})");
                        consumers.lock().unwrap().insert(session_id, consumer);
                    }
                    AgentEvent::SessionEnded {
                        session_id,
                        by_peer,
                    } => {
                        let who = consumers
                            .lock()
                            .unwrap()
                            .remove(&session_id)
                            .unwrap_or_default();
                        info!(session = %session_id, "consumer {who} left (session {session_id}{})", if by_peer { "" } else { ", ended by us" });
                    }
                    AgentEvent::ConsumerRefused {
                        peer_id: consumer,
                        limit,
                    } => {
                        counters.consumers_refused.fetch_add(1, Ordering::Relaxed);
                        warn!(
                            "refused consumer {consumer}: already serving --max-consumers {limit}"
                        );
                    }
                    AgentEvent::ServerError { details, .. } => warn!("server: {details}"),
                    AgentEvent::GaveUp { error } => {
                        *failure.lock().unwrap() = Some(anyhow!(error));
                        main_loop.quit();
                        return glib::ControlFlow::Break;
                    }
                    AgentEvent::ProducerChosen { .. } => {}
                }
            }
            glib::ControlFlow::Continue
        });
    }

    info!(
        "publishing '{}' to {} (Ctrl-C to stop)",
        args.name,
        args.signalling.describe()
    );
    if pipeline.set_state(gst::State::Playing).is_err() {
        // The bus says why; give it a moment to arrive.
        let reason = bus
            .timed_pop_filtered(gst::ClockTime::from_seconds(2), &[gst::MessageType::Error])
            .and_then(|m| match m.view() {
                gst::MessageView::Error(e) => Some(e.error().to_string()),
                _ => None,
            })
            .unwrap_or_else(|| "cannot start the pipeline".into());
        let _ = pipeline.set_state(gst::State::Null);
        return Err(BadSource(format!("cannot start the source: {reason}")).into());
    }
    main_loop.run();
    // Ends every session (webrtcsink tells the signaller) and closes the connection.
    let _ = pipeline.set_state(gst::State::Null);
    let failure = failure.lock().unwrap().take();
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
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
