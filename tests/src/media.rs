//! Real GStreamer pipelines with the stock `webrtcsink` and `webrtcsrc`, registered statically.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};

use anyhow::{anyhow, Context};
use gst::prelude::*;

/// One media test at a time in a process: two webrtcsink/webrtcsrc pairs tearing down at
/// once crashed the test process about once in ten runs (inside the elements' shutdown), and
/// the tests are about our server, not about that.
pub async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// Initializes GStreamer and registers the webrtc and rtp plugins from this binary.
pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        gst::init().expect("GStreamer init");
        gstrswebrtc::plugin_register_static().expect("register webrtc plugin");
        gstrsrtp::plugin_register_static().expect("register rtp plugin");
    });
}

/// A pipeline stopped when dropped; collects the first error its bus reports.
pub struct Running {
    pub pipeline: gst::Pipeline,
    error: Arc<Mutex<Option<String>>>,
}

/// Pipelines of this test process left behind, stopping forever, each for the known deadlock
/// (see `Drop`): counted, and said.
static LEFT_BEHIND: AtomicU64 = AtomicU64::new(0);

impl Running {
    pub fn start(pipeline: gst::Pipeline) -> anyhow::Result<Running> {
        let error = Arc::new(Mutex::new(None));
        let bus = pipeline.bus().context("pipeline without bus")?;
        let err = error.clone();
        bus.set_sync_handler(move |_, msg| {
            if let gst::MessageView::Error(e) = msg.view() {
                let mut slot = err.lock().unwrap();
                if slot.is_none() {
                    *slot = Some(format!(
                        "{}: {} ({:?})",
                        e.src()
                            .map(|s| s.path_string().to_string())
                            .unwrap_or_default(),
                        e.error(),
                        e.debug()
                    ));
                }
            }
            gst::BusSyncReply::Drop
        });
        pipeline
            .set_state(gst::State::Playing)
            .map_err(|e| anyhow!("cannot start pipeline: {e}"))?;
        Ok(Running { pipeline, error })
    }

    /// The first error the pipeline posted, if any.
    pub fn error(&self) -> Option<String> {
        self.error.lock().unwrap().clone()
    }
}

/// Longest a test waits for a pipeline to stop once its assertions are done.
const STOP_WITHIN: std::time::Duration = std::time::Duration::from_secs(15);

impl Drop for Running {
    fn drop(&mut self) {
        // (found before the stop: nothing of the pipeline is touched while it may be stuck)
        let signallers = signallers(&self.pipeline);
        // webrtcsrc blocks on its own tokio runtime while stopping, which panics on a thread
        // that drives a runtime (the async tests'): stop it from a plain thread.
        let pipeline = self.pipeline.clone();
        let (done, stopped) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = pipeline.set_state(gst::State::Null);
            let _ = done.send(());
        });
        if stopped.recv_timeout(STOP_WITHIN).is_ok() {
            return;
        }
        // A stop that never finishes must not hang the suite, and is only let go for the one
        // known cause, a deadlock in the stock signaller (gst-plugin-webrtc 0.15.4,
        // src/signaller/imp.rs; unchanged on gst-plugins-rs main): `stop()` locks its `state`
        // and, holding it, `RUNTIME.block_on`s the end of its receive task. If that task is
        // just handling an `endSession` from the server (the other pipeline stopped first),
        // it emits `session-ended`, and webrtcsrc's handler (`remove_session`,
        // src/webrtcsrc/imp.rs) calls `end_session()`, which locks `state`: each waits for
        // the other, and aborting a task blocked on a mutex does nothing. Seen here once in
        // many runs. The evidence, read now: the signaller's `state` is still locked (reading
        // its `client-id` property, which takes that lock, blocks).
        let stuck: Vec<String> = signallers
            .iter()
            .filter(|(_, s)| state_lock_held(s))
            .map(|(element, _)| element.clone())
            .collect();
        let name = self.pipeline.name();
        if stuck.is_empty() {
            let why = format!(
                "pipeline {name} did not stop within {STOP_WITHIN:?}, and not for the known \
                 deadlock (no stock signaller holds its state lock)"
            );
            match std::thread::panicking() {
                false => panic!("{why}"),
                true => eprintln!("{why}"),
            }
            return;
        }
        let n = LEFT_BEHIND.fetch_add(1, Ordering::Relaxed) + 1;
        eprintln!(
            "pipeline {name} did not stop within {STOP_WITHIN:?}: the stock signaller's \
             deadlock (the signaller of {stuck:?} holds its state lock); left behind ({n} in \
             this process)"
        );
    }
}

/// The stock signallers of `pipeline`'s webrtcsink/webrtcsrc elements, with their names.
fn signallers(pipeline: &gst::Pipeline) -> Vec<(String, gst::glib::Object)> {
    pipeline
        .iterate_recurse()
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.find_property("signaller").is_some())
        .filter_map(|e| {
            let s = e.property::<gst::glib::Object>("signaller");
            s.find_property("client-id")
                .map(|_| (e.name().to_string(), s))
        })
        .collect()
}

/// Whether reading `signaller`'s `client-id` (under its `state` lock) blocks for 2 s. The
/// reading thread is left behind with the pipeline if it does.
fn state_lock_held(signaller: &gst::glib::Object) -> bool {
    /// The signaller, to be read from another thread.
    struct Shared(gst::glib::Object);
    // SAFETY: GObject reference counts are atomic, and the stock signaller guards its state
    // with mutexes: its properties are read from any thread (webrtcsink's do so).
    unsafe impl Send for Shared {}
    let (done, read) = std::sync::mpsc::channel();
    let shared = Shared(signaller.clone());
    std::thread::spawn(move || {
        let shared = shared;
        let _ = shared.0.property::<Option<String>>("client-id");
        let _ = done.send(());
    });
    read.recv_timeout(std::time::Duration::from_secs(2))
        .is_err()
}

/// The stock signaller's `headers`: `Authorization: Bearer TOKEN` on its upgrade.
fn bearer(signaller: &gst::glib::Object, token: Option<&str>) {
    if let Some(token) = token {
        let headers = gst::Structure::builder("headers")
            .field("Authorization", format!("Bearer {token}"))
            .build();
        signaller.set_property("headers", headers);
    }
}

/// `videotestsrc ! webrtcsink` publishing to `url` with `meta.name = name`, default signaller.
pub fn stock_producer(url: &str, name: &str) -> anyhow::Result<Running> {
    stock_producer_with(url, name, None)
}

/// The same, sending `token` in the signaller's `headers`.
pub fn stock_producer_with(url: &str, name: &str, token: Option<&str>) -> anyhow::Result<Running> {
    init();
    let pipeline = gst::parse::launch(&format!(
        "videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=30/1 \
         ! webrtcsink name=ws meta=\"meta,name={name}\""
    ))?
    .downcast::<gst::Pipeline>()
    .map_err(|_| anyhow!("not a pipeline"))?;
    let ws = pipeline.by_name("ws").context("no webrtcsink")?;
    // No STUN server can be reached here: host candidates only.
    ws.set_property("stun-server", None::<String>);
    let signaller = ws.property::<gst::glib::Object>("signaller");
    signaller.set_property("uri", url);
    bearer(&signaller, token);
    Running::start(pipeline)
}

/// Decoded video frames seen by a consumer, and the caps of the first one.
#[derive(Default)]
pub struct Frames {
    pub frames: AtomicU64,
    pub caps: Mutex<Option<gst::Caps>>,
}

impl Frames {
    pub fn count(&self) -> u64 {
        self.frames.load(Ordering::Relaxed)
    }
}

/// `webrtcsrc` (default signaller) consuming `producer_id` from `url`, counting decoded video
/// frames into the returned counter.
pub fn stock_consumer(url: &str, producer_id: &str) -> anyhow::Result<(Running, Arc<Frames>)> {
    stock_consumer_with(url, producer_id, None)
}

/// The same, sending `token` in the signaller's `headers`.
pub fn stock_consumer_with(
    url: &str,
    producer_id: &str,
    token: Option<&str>,
) -> anyhow::Result<(Running, Arc<Frames>)> {
    let (pipeline, src, signaller) = webrtcsrc_of(url, producer_id)?;
    bearer(&signaller, token);
    let frames = Arc::new(Frames::default());
    let counter = frames.clone();
    let weak = pipeline.downgrade();
    src.connect_pad_added(move |_, pad| {
        let Some(pipeline) = weak.upgrade() else {
            return;
        };
        let is_video = pad.name().starts_with("video");
        // raw caps force webrtcsrc to decode: we count decoded frames, not RTP packets
        let desc = if is_video {
            "videoconvert ! video/x-raw ! fakesink name=sink sync=false"
        } else {
            "audioconvert ! fakesink sync=false"
        };
        let bin = gst::parse::bin_from_description(desc, true).expect("sink bin");
        if is_video {
            let counter = counter.clone();
            let pad = bin
                .by_name("sink")
                .and_then(|s| s.static_pad("sink"))
                .expect("sink pad");
            pad.add_probe(gst::PadProbeType::BUFFER, move |pad, _| {
                if counter.frames.fetch_add(1, Ordering::Relaxed) == 0 {
                    *counter.caps.lock().unwrap() = pad.current_caps();
                }
                gst::PadProbeReturn::Ok
            });
        }
        pipeline.add(&bin).expect("add sink");
        bin.sync_state_with_parent().expect("sink state");
        pad.link(&bin.static_pad("sink").expect("bin pad"))
            .expect("link decoded pad");
    });
    Ok((Running::start(pipeline)?, frames))
}

/// A pipeline holding a stock `webrtcsrc` (no STUN server) whose default signaller is aimed
/// at producer `producer_id` on `url`: the pipeline, the element, its signaller.
fn webrtcsrc_of(
    url: &str,
    producer_id: &str,
) -> anyhow::Result<(gst::Pipeline, gst::Element, gst::glib::Object)> {
    init();
    let pipeline = gst::Pipeline::new();
    let src = gst::ElementFactory::make("webrtcsrc")
        .property("stun-server", None::<String>)
        .build()?;
    let signaller = src.property::<gst::glib::Object>("signaller");
    signaller.set_property("uri", url);
    signaller.set_property("producer-peer-id", producer_id);
    pipeline.add(&src)?;
    Ok((pipeline, src, signaller))
}

/// Encoded video frames a consumer received, and whether the first was a keyframe.
#[derive(Default)]
pub struct EncodedFrames {
    pub frames: AtomicU64,
    /// Whether the first frame was a keyframe (a buffer not flagged as a delta unit).
    pub first_is_keyframe: Mutex<Option<bool>>,
}

impl EncodedFrames {
    pub fn count(&self) -> u64 {
        self.frames.load(Ordering::Relaxed)
    }

    pub fn first_is_keyframe(&self) -> Option<bool> {
        *self.first_is_keyframe.lock().unwrap()
    }
}

/// Video caps webrtcsrc hands out without decoding.
const ENCODED_VIDEO: &str = "video/x-vp8;video/x-vp9;video/x-h264;video/x-h265;video/x-av1";

/// `webrtcsrc` (default signaller) consuming `producer_id` from `url` without decoding
/// (`capsfilter(encoded) ! parsebin`, H.264 as access units): each video frame counted, the
/// first one's keyframe flag kept.
pub fn encoded_consumer(
    url: &str,
    producer_id: &str,
) -> anyhow::Result<(Running, Arc<EncodedFrames>)> {
    let (pipeline, src, _) = webrtcsrc_of(url, producer_id)?;
    let frames = Arc::new(EncodedFrames::default());
    let (weak, counter) = (pipeline.downgrade(), frames.clone());
    src.connect_pad_added(move |_, pad| {
        let Some(pipeline) = weak.upgrade() else {
            return;
        };
        if !pad.name().starts_with("video") {
            let sink = gst::ElementFactory::make("fakesink")
                .property("sync", false)
                .build()
                .expect("fakesink");
            pipeline.add(&sink).expect("add fakesink");
            sink.sync_state_with_parent().expect("fakesink state");
            let _ = pad.link(&sink.static_pad("sink").expect("fakesink pad"));
            return;
        }
        // (separate elements of the pipeline: parsebin's pads link to what is added next)
        let filter = gst::ElementFactory::make("capsfilter")
            .property("caps", ENCODED_VIDEO.parse::<gst::Caps>().expect("caps"))
            .build()
            .expect("capsfilter");
        let parse = gst::ElementFactory::make("parsebin")
            .build()
            .expect("parsebin");
        pipeline.add_many([&filter, &parse]).expect("add parsing");
        filter.link(&parse).expect("link parsing");
        let (weak, counter) = (pipeline.downgrade(), counter.clone());
        parse.connect_pad_added(move |_, parsed| {
            let Some(pipeline) = weak.upgrade() else {
                return;
            };
            let h264 = parsed
                .current_caps()
                .and_then(|c| c.structure(0).map(|s| s.name() == "video/x-h264"))
                .unwrap_or(false);
            let desc = match h264 {
                true => "h264parse ! video/x-h264,alignment=au ! fakesink name=count sync=false",
                false => "fakesink name=count sync=false",
            };
            let sink = gst::parse::bin_from_description(desc, true).expect("counting bin");
            let counter = counter.clone();
            sink.by_name("count")
                .and_then(|s| s.static_pad("sink"))
                .expect("fakesink pad")
                .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
                    if let Some(gst::PadProbeData::Buffer(buffer)) = &info.data {
                        if counter.frames.fetch_add(1, Ordering::Relaxed) == 0 {
                            let key = !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT);
                            *counter.first_is_keyframe.lock().unwrap() = Some(key);
                        }
                    }
                    gst::PadProbeReturn::Ok
                });
            pipeline.add(&sink).expect("add counting bin");
            sink.sync_state_with_parent().expect("counting state");
            let _ = parsed.link(&sink.static_pad("sink").expect("counting pad"));
        });
        filter.sync_state_with_parent().expect("capsfilter state");
        parse.sync_state_with_parent().expect("parsebin state");
        pad.link(&filter.static_pad("sink").expect("capsfilter pad"))
            .expect("link encoded pad");
    });
    Ok((Running::start(pipeline)?, frames))
}
