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
        // webrtcsrc blocks on its own tokio runtime while stopping, which panics on a thread
        // that drives a runtime (the async tests'): stop it from a plain thread.
        let pipeline = self.pipeline.clone();
        let (done, stopped) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = pipeline.set_state(gst::State::Null);
            let _ = done.send(());
        });
        // The stock signaller can deadlock on its own mutex while a session ends during the
        // stop (seen once here: gst-plugins-rs signaller end_session, one thread waiting on
        // another that waits on it). What the test asserts is done by then; a stop that never
        // finishes must not hang the suite, so it is left behind, and said.
        if stopped.recv_timeout(STOP_WITHIN).is_err() {
            eprintln!(
                "pipeline {} did not stop within {STOP_WITHIN:?} (a deadlock inside the stock \
                 elements' shutdown); left behind",
                self.pipeline.name()
            );
        }
    }
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
    init();
    let pipeline = gst::Pipeline::new();
    let src = gst::ElementFactory::make("webrtcsrc")
        .property("stun-server", None::<String>)
        .build()?;
    let signaller = src.property::<gst::glib::Object>("signaller");
    signaller.set_property("uri", url);
    signaller.set_property("producer-peer-id", producer_id);
    bearer(&signaller, token);
    pipeline.add(&src)?;
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
