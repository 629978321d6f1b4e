//! consumer-agent: finds a producer in a gst-webrtc-cluster (or any upstream-compatible
//! signalling server), receives it with `webrtcsrc`, and plays, records or counts it; finds
//! it again when it comes back.

mod depay;
mod quality;
mod report;
mod sink;

use std::cell::RefCell;
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_core::cli::{seconds, whole, IceArgs, OutputArgs, SignallingArgs};
use agent_core::events::{self, EventHandler, Registration, Stop};
use agent_core::exit::{self, Ending};
use agent_core::shutdown::Shutdown;
use agent_core::signaller::{EndedBy, Target};
use anyhow::{anyhow, Context};
use clap::Parser;
use gst::glib;
use gst::prelude::*;
use proto::ErrorCode;
use tracing::{info, warn};

use report::Shared;
use sink::{Container, Linker, Sink};

/// Receive a producer's stream with webrtcsrc: play, record or count it.
///
/// Exit codes: 0 done (--frames/--duration reached, or stopped by SIGINT/SIGTERM), 1 runtime
/// failure (signalling unreachable for --retry-for, no frame, pipeline error), 2 bad
/// arguments, 3 producer not found within --timeout, 4 refused by the server (the token
/// lacks `consume` for the producer, or `listen` to find it by name or first; a --token
/// refused; the server's certificate rejected), 5 stopped by an operator (kicked, unless
/// --reconnect-after-kick, or the session ended by one: not started again).
#[derive(Parser, Debug, Clone)]
#[command(version, about)]
pub struct Args {
    /// Producer to receive, by the `name` in its meta; found again when it comes back.
    #[arg(long, env = "CONSUMER_PRODUCER_NAME", group = "producer")]
    pub producer_name: Option<String>,
    /// Producer to receive, by peer id.
    #[arg(long, env = "CONSUMER_PRODUCER_ID", group = "producer")]
    pub producer_id: Option<String>,
    /// Receive the first producer listed (and the first one after it goes away).
    #[arg(long, group = "producer")]
    pub first: bool,
    /// Receive stream NAME from whichever of its members (the origin, or a relay) the node
    /// places this consumer on; placed again when that member goes away. Needs a cluster node
    /// (protocol v2).
    #[arg(long, env = "CONSUMER_STREAM", group = "producer")]
    pub stream: Option<String>,
    /// Where the streams go: `null` (decode and count), `encoded` (count the encoded frames,
    /// decoding nothing: what load tests use), `display`, `file:PATH` (.mkv or .mp4, recorded
    /// without re-encoding, finalized on SIGINT/SIGTERM) or `pipeline:'FRAGMENT'` (gets the
    /// decoded video).
    #[arg(long, env = "CONSUMER_SINK", default_value = "null")]
    pub sink: Sink,
    /// Exit 0 after this many video frames.
    #[arg(long, env = "CONSUMER_FRAMES", allow_negative_numbers = true, value_parser = whole::<u64>(1, u64::MAX))]
    pub frames: Option<u64>,
    /// Exit 0 after this many seconds.
    #[arg(long, env = "CONSUMER_DURATION", allow_negative_numbers = true, value_parser = seconds)]
    pub duration: Option<f64>,
    /// Seconds to wait for the producer (at start and after it went away), and for the first
    /// frame of a session: at least 1 (a session needs a moment to give its first frame).
    #[arg(long, env = "CONSUMER_TIMEOUT", default_value_t = 30, allow_negative_numbers = true, value_parser = whole::<u64>(1, 86_400))]
    pub timeout: u64,
    /// With --stream: when the media of a session that had frames stops for this many
    /// seconds, end the session and be placed again (the member may have died: its node
    /// keeps it for a resume and passes it over). Longer rides out an origin's restart behind
    /// a relay in the same session; shorter moves sooner off a dead relay.
    #[arg(long, env = "CONSUMER_STALL_TIMEOUT", default_value_t = 3.0, allow_negative_numbers = true, value_parser = seconds)]
    pub stall_timeout: f64,
    /// With `--sink encoded`: write `HASH UNIX_MICROS` per video frame to PATH (the relay
    /// benchmark matches two consumers' frames by hash to measure a hop's latency).
    #[arg(long, env = "CONSUMER_FRAME_LOG")]
    pub frame_log: Option<PathBuf>,
    /// Ask for video no taller than this many pixels (v2 `startSession.maxHeight`; a relay
    /// serves the highest layer within it). Sent only when the server speaks v2.
    #[arg(long, env = "CONSUMER_MAX_HEIGHT", allow_negative_numbers = true, value_parser = whole::<u32>(1, proto::MAX_HEIGHT_LIMIT as u64))]
    pub max_height: Option<u32>,
    #[command(flatten)]
    pub ice: IceArgs,
    #[command(flatten)]
    pub signalling: SignallingArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

impl Args {
    fn target(&self) -> Option<Target> {
        if let Some(stream) = &self.stream {
            return Some(Target::Stream(stream.clone()));
        }
        match (&self.producer_id, &self.producer_name, self.first) {
            (Some(id), _, _) => Some(Target::Id(id.clone())),
            (_, Some(name), _) => Some(Target::Name(name.clone())),
            (_, _, true) => Some(Target::First),
            _ => None,
        }
    }
}

/// The last line on stdout.
#[derive(serde::Serialize)]
struct Report {
    producer_id: Option<String>,
    /// Every session of the run, in order (one unless the producer was found again).
    session_ids: Vec<String>,
    frames: u64,
    /// From start to the first video frame.
    first_frame_ms: Option<u64>,
    /// From the start of the session that gave the first video frame to that frame (within
    /// the agent's 20 ms poll).
    session_to_first_frame_ms: Option<u64>,
    elapsed_ms: u64,
    reconnects: u64,
    recordings: Vec<PathBuf>,
    /// Decoders that decoded during the run, in any session (none with `--sink encoded` or
    /// `file:`).
    decoders: Vec<String>,
    /// Time the decoded video stood frozen over the whole run, ms (`quality.rs`).
    frozen_total_ms: u64,
    /// Changes of the received resolution over the run.
    switches: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    args.output.init_logging("consumer_agent", "CONSUMER_LOG");
    let Some(target) = args.target() else {
        eprintln!(
            "consumer-agent: one of --producer-name, --producer-id, --first or --stream is required"
        );
        return ExitCode::from(exit::USAGE);
    };
    let result = run(&args, target);
    agent_core::settle();
    args.output.exit_code("consumer-agent", result)
}

/// How one pipeline (one search and session) ended.
enum Outcome {
    /// --frames or --duration reached.
    Done,
    /// SIGINT/SIGTERM.
    Stopped,
    /// The producer (or our identity) went away: look again.
    SessionGone,
    /// The session's media stopped for --stall-timeout (--stream): be placed again.
    Stalled,
    /// The session ended before any frame: the producer refused us (e.g. --max-consumers).
    Refused,
    Failed(anyhow::Error),
}

struct Run {
    started: Instant,
    frames: Arc<AtomicU64>,
    shared: Arc<Shared>,
    quality: Arc<quality::Quality>,
    shutdown: Shutdown,
    session_ids: Vec<String>,
    recordings: Vec<PathBuf>,
    /// Decoders that put out a frame, recorded as they do (see `stats::record_working`).
    decoders: agent_core::stats::Worked,
    frame_log: Option<Arc<sink::FrameLog>>,
}

fn run(args: &Args, target: Target) -> anyhow::Result<()> {
    gstgwc::agent::init()?;
    let mut run = Run {
        started: Instant::now(),
        frames: Arc::new(AtomicU64::new(0)),
        shared: Arc::new(Shared::default()),
        quality: Default::default(),
        shutdown: Shutdown::install()?,
        session_ids: Vec::new(),
        recordings: Vec::new(),
        decoders: Default::default(),
        frame_log: args
            .frame_log
            .as_deref()
            .map(sink::FrameLog::create)
            .transpose()
            .map_err(|e| Ending::Usage(format!("--frame-log: {e:#}")))?,
    };
    let mut collector = report::Collector::new(
        run.started,
        run.frames.clone(),
        run.shared.clone(),
        run.quality.clone(),
    );
    // (stopped before the final report, which must be stdout's last line)
    let reporting = agent_core::reporting::start(
        &args.output,
        move || Some(collector.collect()),
        report::render,
    )?;
    let mut segment = 0;
    let mut refusals = 0;
    loop {
        match attempt(args, &target, &mut run, segment)? {
            Outcome::Done | Outcome::Stopped => break,
            Outcome::Failed(e) => return Err(e),
            Outcome::Refused => {
                refusals += 1;
                if refusals >= 3 {
                    return Err(anyhow!(
                        "the producer ended the session before any media {refusals} times in a row (it may already serve its --max-consumers)"
                    ));
                }
                warn!("the producer ended the session before any media; trying again");
                std::thread::sleep(Duration::from_secs(1));
                segment += 1;
                continue;
            }
            Outcome::Stalled => {
                refusals = 0;
                info!("the stream stalled; asking to be placed again");
                segment += 1;
            }
            Outcome::SessionGone => {
                refusals = 0;
                if matches!(target, Target::Id(_)) {
                    return Err(anyhow!("the producer ended the session"));
                }
                info!("the producer went away; looking for it again");
                segment += 1;
            }
        }
    }
    reporting.stop();
    let seen = run.quality.seen(Instant::now());
    let report = Report {
        producer_id: run.shared.producer_id.lock().unwrap().clone(),
        session_ids: run.session_ids,
        frames: run.frames.load(Ordering::Relaxed),
        first_frame_ms: *run.shared.first_frame_ms.lock().unwrap(),
        session_to_first_frame_ms: *run.shared.session_to_first_frame_ms.lock().unwrap(),
        elapsed_ms: run.started.elapsed().as_millis() as u64,
        reconnects: run.shared.reconnects.load(Ordering::Relaxed),
        recordings: run.recordings,
        decoders: run.decoders.lock().unwrap().iter().cloned().collect(),
        frozen_total_ms: seen.frozen.as_millis() as u64,
        switches: seen.switches,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

fn describe(target: &Target) -> String {
    match target {
        Target::Id(id) => format!("producer {id}"),
        Target::Name(name) => format!("producer named '{name}'"),
        Target::First | Target::Ingest => "producer".to_string(),
        Target::Stream(stream) => format!("stream '{stream}'"),
    }
}

/// Builds a pipeline with a new signaller, runs it until it ends, tears it down.
fn attempt(args: &Args, target: &Target, run: &mut Run, segment: u32) -> anyhow::Result<Outcome> {
    let (events_tx, events) = std::sync::mpsc::channel();
    let pipeline = gst::Pipeline::new();
    quality::watch(&pipeline, run.quality.clone());
    depay::like_a_browser(&pipeline);
    let decoders = run.decoders.clone();
    agent_core::stats::record_working(pipeline.upcast_ref(), "Codec/Decoder", decoders);
    let src = make_src(args, target, events_tx);
    pipeline.add(&src)?;
    *run.shared.src.lock().unwrap() = Some(src.upcast_ref::<gst::Element>().downgrade());
    let remote = src.downgrade();
    let (linker, recording) = Linker::new(
        &pipeline,
        &args.sink,
        segment,
        run.frames.clone(),
        Arc::new(move || remote.upgrade()?.cluster_signaller()?.remote_streams()),
        run.frame_log.clone(),
    )?;
    run.recordings.extend(recording);
    let entries = linker.entries.clone();
    link_streams(&pipeline, src.upcast_ref(), linker);

    let main_loop = glib::MainLoop::new(None, false);
    let end = End::new(&main_loop);
    let bus = pipeline.bus().context("pipeline has no bus")?;
    let _watch = watch_bus(&bus, end.clone())?;
    let follower = Follower::new(args, target, run, end.clone());
    let sessions = follower.sessions.clone();
    info!(
        "looking for {} on {}",
        follower.what,
        args.signalling.describe()
    );
    let shutdown = run.shutdown.clone();
    events::poll(Duration::from_millis(20), events, shutdown, follower);

    if let Err(e) = pipeline.set_state(gst::State::Playing) {
        let _ = pipeline.set_state(gst::State::Null);
        return Ok(Outcome::Failed(anyhow!("cannot start the pipeline: {e}")));
    }
    main_loop.run();
    // The poll stops itself (next time it runs, if the loop ended for another reason).
    run.session_ids.extend(sessions.take());
    let outcome = end.take().unwrap_or(Outcome::Stopped);
    finalize_recording(&bus, &entries.lock().unwrap());
    // Ends the session (webrtcsrc tells the signaller) and closes the connection.
    let _ = pipeline.set_state(gst::State::Null);
    *run.shared.src.lock().unwrap() = None;
    Ok(outcome)
}

/// The gwcwebrtcsrc (the element gst-launch users have: `gst-plugin/`) watching `target`
/// once, configured from the arguments; this agent decides what comes after its session.
fn make_src(
    args: &Args,
    target: &Target,
    events: std::sync::mpsc::Sender<agent_core::signaller::AgentEvent>,
) -> gstgwc::src::GwcWebRTCSrc {
    let src = gstgwc::agent::src(&args.signalling, &args.ice, target, args.max_height, events);
    if let Sink::File(path) = &args.sink {
        if let Some(codecs) = Container::of(path).ok().and_then(Container::video_codecs) {
            src.webrtcsrc()
                .set_property("video-codecs", gst::Array::new(codecs));
        }
    }
    src
}

/// Every stream webrtcsrc adds goes to the `--sink` through `linker`.
fn link_streams(pipeline: &gst::Pipeline, src: &gst::Element, linker: Linker) {
    let weak = pipeline.downgrade();
    src.connect_pad_added(move |_, pad| {
        let Some(pipeline) = weak.upgrade() else {
            return;
        };
        info!(pad = %pad.name(), "new stream");
        if let Err(e) = linker.link(&pipeline, pad) {
            warn!("cannot handle {}: {e:#}", pad.name());
        }
    });
}

/// A pipeline error is counted this long after it is posted: an element's error while its
/// session is torn down (the other side ended it) is that ending, whose event from the
/// signaller can reach the main loop a few milliseconds after the error (seen in CI: the
/// producer ended a session and `dtlsdec` failed reading 2 ms before the consumer handled the
/// end, which then counted as a failure and stopped the agent instead of looking again).
const ERROR_GRACE: Duration = Duration::from_millis(250);

/// A pipeline error ends the attempt as a failure, unless something else ended it within
/// [`ERROR_GRACE`] (the first outcome wins).
fn watch_bus(bus: &gst::Bus, end: End) -> anyhow::Result<gst::bus::BusWatchGuard> {
    Ok(bus.add_watch_local(move |_, msg| {
        if let gst::MessageView::Error(e) = msg.view() {
            let from = e.src().map(|s| s.name().to_string()).unwrap_or_default();
            let error = anyhow!("{from}: {}", e.error());
            let end = end.clone();
            glib::timeout_add_local_once(ERROR_GRACE, move || end.finish(Outcome::Failed(error)));
        }
        glib::ControlFlow::Continue
    })?)
}

/// How one attempt ends: the first outcome wins, and quits the main loop.
#[derive(Clone)]
struct End {
    main_loop: glib::MainLoop,
    outcome: Rc<RefCell<Option<Outcome>>>,
}

impl End {
    fn new(main_loop: &glib::MainLoop) -> Self {
        End {
            main_loop: main_loop.clone(),
            outcome: Default::default(),
        }
    }

    fn finish(&self, outcome: Outcome) {
        if self.outcome.borrow().is_none() {
            *self.outcome.borrow_mut() = Some(outcome);
        }
        self.main_loop.quit();
    }

    fn is_over(&self) -> bool {
        self.outcome.borrow().is_some()
    }

    fn take(&self) -> Option<Outcome> {
        self.outcome.borrow_mut().take()
    }
}

/// What the consumer does with its signaller's events during one attempt: follows the search
/// and the session, and ends the attempt when the session ends, the producer is not there,
/// no frame comes, or --frames/--duration is reached.
struct Follower {
    end: End,
    shared: Arc<Shared>,
    frames: Arc<AtomicU64>,
    started: Instant,
    frame_target: Option<u64>,
    duration: Option<Duration>,
    timeout: Duration,
    /// `producer named 'x'`, for messages.
    what: String,
    /// With a token: a producer it may not watch is invisible, which looks like no producer.
    invisible_hint: &'static str,
    servers: String,
    by_id: bool,
    /// The search clock starts once registered: an unreachable server is --retry-for's.
    searching_since: Option<Instant>,
    session_since: Option<Instant>,
    frames_at_session: u64,
    /// The sessions of this attempt, in order.
    sessions: Rc<RefCell<Vec<String>>>,
    last_progress: Instant,
    /// With --stream: how long a session's media may stop before being placed again.
    stall: Option<Duration>,
    /// The frame count when it last grew, and when.
    last_frames: (u64, Instant),
}

impl Follower {
    fn new(args: &Args, target: &Target, run: &Run, end: End) -> Self {
        Follower {
            end,
            shared: run.shared.clone(),
            frames: run.frames.clone(),
            started: run.started,
            frame_target: args.frames,
            duration: args.duration.map(Duration::from_secs_f64),
            timeout: Duration::from_secs(args.timeout),
            what: describe(target),
            invisible_hint: match args.signalling.has_token() {
                true => " (or none the token's `consume` covers)",
                false => "",
            },
            servers: args.signalling.describe(),
            by_id: matches!(target, Target::Id(_)),
            searching_since: None,
            session_since: None,
            frames_at_session: 0,
            sessions: Default::default(),
            last_progress: Instant::now(),
            stall: matches!(target, Target::Stream(_))
                .then(|| Duration::from_secs_f64(args.stall_timeout.max(0.1))),
            last_frames: (0, Instant::now()),
        }
    }

    fn finish(&self, outcome: Outcome) -> glib::ControlFlow {
        self.end.finish(outcome);
        glib::ControlFlow::Break
    }
}

impl EventHandler for Follower {
    fn reconnects(&self) -> &AtomicU64 {
        &self.shared.reconnects
    }

    fn stop(&mut self, why: Stop) {
        if why == Stop::Signal {
            info!("signal received, stopping");
        }
        self.end.finish(match why.into_error() {
            None => Outcome::Stopped,
            Some(e) => Outcome::Failed(e),
        });
    }

    fn registered(&mut self, r: Registration) {
        self.searching_since.get_or_insert_with(Instant::now);
        let (id, at) = (&r.peer_id, r.at());
        if r.resumed {
            info!(peer = %id, "resumed on {at}: session kept");
        } else {
            info!(peer = %id, "registered as {id} on {at} (protocol v{})", r.protocol());
        }
    }

    fn producer_chosen(&mut self, producer_id: String, _meta: Option<serde_json::Value>) {
        info!(producer = %producer_id, "found producer {producer_id}");
        *self.shared.producer_id.lock().unwrap() = Some(producer_id);
    }

    fn session_started(&mut self, session_id: String, producer: String) {
        info!(session = %session_id, "session {session_id} started with producer {producer}");
        self.shared.sessions.fetch_add(1, Ordering::Relaxed);
        *self.shared.session_id.lock().unwrap() = Some(session_id.clone());
        self.sessions.borrow_mut().push(session_id);
        self.session_since = Some(Instant::now());
        self.frames_at_session = self.frames.load(Ordering::Relaxed);
    }

    fn session_ended(&mut self, session_id: String, by: EndedBy) -> glib::ControlFlow {
        let how = match by {
            EndedBy::Other => " by the producer or the server",
            EndedBy::Us => "",
            EndedBy::Operator => {
                // An operator's decision: not undone by starting a new session.
                *self.shared.session_id.lock().unwrap() = None;
                let why = format!("session {session_id} was ended by an operator");
                return self.finish(Outcome::Failed(Ending::Operator(why).into()));
            }
        };
        info!(session = %session_id, "session {session_id} ended{how}");
        *self.shared.session_id.lock().unwrap() = None;
        let no_media = self.frames.load(Ordering::Relaxed) == self.frames_at_session;
        self.finish(if no_media {
            Outcome::Refused
        } else {
            Outcome::SessionGone
        })
    }

    fn server_error(&mut self, details: String, code: Option<ErrorCode>) -> glib::ControlFlow {
        // A startSession that failed: the producer is not (or no longer) there.
        let requested = self.shared.producer_id.lock().unwrap().is_some();
        if self.session_since.is_none() && requested {
            let gone = code == Some(ErrorCode::UnknownPeer) || details.contains("not found");
            if gone {
                let (what, servers) = (&self.what, &self.servers);
                return self.finish(if self.by_id {
                    let why = format!("no {what} on {servers}: {details}");
                    Outcome::Failed(Ending::NotFound(why).into())
                } else {
                    Outcome::SessionGone
                });
            }
        }
        warn!("server: {details}");
        glib::ControlFlow::Continue
    }

    fn tick(&mut self) -> glib::ControlFlow {
        let n = self.frames.load(Ordering::Relaxed);
        let timeout = self.timeout;
        match self.session_since {
            None if self.searching_since.is_some_and(|s| s.elapsed() > timeout) => {
                let (what, servers) = (&self.what, &self.servers);
                let msg = format!(
                    "no {what} appeared on {servers} within {} s{}",
                    timeout.as_secs(),
                    self.invisible_hint
                );
                return self.finish(Outcome::Failed(Ending::NotFound(msg).into()));
            }
            Some(since) if n == self.frames_at_session && since.elapsed() > timeout => {
                return self.finish(Outcome::Failed(anyhow!(
                    "no video frame within {} s of the session start",
                    timeout.as_secs()
                )));
            }
            _ => {}
        }
        if n != self.last_frames.0 {
            self.last_frames = (n, Instant::now());
        }
        let had_media = n > self.frames_at_session;
        if let Some(stall) = self
            .stall
            .filter(|_| had_media && self.session_since.is_some())
        {
            let quiet = self.last_frames.1.elapsed();
            if quiet > stall {
                warn!(
                    "no frame for {} ms: the member serving us may be gone",
                    quiet.as_millis()
                );
                return self.finish(Outcome::Stalled);
            }
        }
        if n > 0 && self.shared.first_frame_ms.lock().unwrap().is_none() {
            let ms = self.started.elapsed().as_millis() as u64;
            *self.shared.first_frame_ms.lock().unwrap() = Some(ms);
            let since_session = self.session_since.map(|s| s.elapsed().as_millis() as u64);
            *self.shared.session_to_first_frame_ms.lock().unwrap() = since_session;
            match since_session {
                Some(s) => info!("first frame after {ms} ms ({s} ms after the session started)"),
                None => info!("first frame after {ms} ms"),
            }
        }
        if self.last_progress.elapsed() >= Duration::from_secs(5) && n > 0 {
            self.last_progress = Instant::now();
            info!("{n} frames");
        }
        if self.frame_target.is_some_and(|t| n >= t)
            || self.duration.is_some_and(|d| self.started.elapsed() >= d)
        {
            return self.finish(Outcome::Done);
        }
        glib::ControlFlow::Continue
    }

    fn ended(&self) -> bool {
        self.end.is_over()
    }
}

/// Ends a recording so the file plays: no more data in, EOS through the muxer, wait for it.
fn finalize_recording(bus: &gst::Bus, entries: &[gst::Pad]) {
    if entries.is_empty() {
        return;
    }
    for entry in entries {
        if let Some(peer) = entry.peer() {
            peer.add_probe(gst::PadProbeType::DATA_DOWNSTREAM, |_, _| {
                agent_core::DISCARD
            });
        }
        entry.send_event(gst::event::Eos::new());
    }
    match bus.timed_pop_filtered(
        gst::ClockTime::from_seconds(5),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    ) {
        Some(m) if m.type_() == gst::MessageType::Eos => info!("recording finalized"),
        Some(m) => match m.view() {
            gst::MessageView::Error(e) => warn!("recording may be incomplete: {}", e.error()),
            _ => warn!("recording may be incomplete"),
        },
        None => warn!("recording may be incomplete: no end of stream within 5 s"),
    }
}
