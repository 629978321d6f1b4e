//! Keyframe requests for one encoded stream that many consumers share (a shared encoder in
//! producer-agent, the origin's stream in relay-agent), coalesced.
//!
//! webrtcsink asks for a keyframe on every frame until a joining consumer gets one, and
//! consumers ask on loss (PLI/FIR). A request is passed on at once if none was in the last
//! `interval`; otherwise at the end of that interval, unless a keyframe went out meanwhile
//! (which satisfies every consumer waiting then). So at most one request per interval reaches
//! the source, and none waits longer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gst::prelude::*;
use tracing::debug;

/// What the coalescing counts.
#[derive(Default, Debug)]
pub struct KeyframeCounts {
    /// Requests from downstream, before coalescing.
    pub requests: AtomicU64,
    /// Requests passed on to the source (forced keyframes).
    pub forced: AtomicU64,
    /// Keyframes that went downstream, asked for or not.
    pub sent: AtomicU64,
}

/// Coalesces the keyframe requests that reach `out` (a src pad feeding webrtcsink) from
/// downstream. The first of an interval goes on upstream from `out` as it is; a deferred one is
/// handed to `pass_on`, which sends it where `out`'s requests go, past this probe.
pub fn coalesce(
    out: &gst::Pad,
    interval: Duration,
    counts: Arc<KeyframeCounts>,
    pass_on: impl Fn(gst::Event) + Send + Sync + 'static,
) {
    let keyframes = Arc::new(Keyframes {
        interval,
        counts,
        pass_on: Box::new(pass_on),
        state: Mutex::default(),
    });
    let k = keyframes.clone();
    out.add_probe(
        gst::PadProbeType::EVENT_UPSTREAM,
        move |_, info| match info.event() {
            Some(ev) if gst_video::UpstreamForceKeyUnitEvent::parse(ev).is_ok() => k.request(),
            _ => gst::PadProbeReturn::Ok,
        },
    );
    out.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        if let Some(buffer) = info.buffer() {
            if !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT) {
                keyframes.went_out();
            }
        }
        gst::PadProbeReturn::Ok
    });
}

struct Keyframes {
    interval: Duration,
    counts: Arc<KeyframeCounts>,
    pass_on: Box<dyn Fn(gst::Event) + Send + Sync>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    last_forced: Option<Instant>,
    /// A request is waiting for the end of the interval.
    deferred: bool,
}

impl Keyframes {
    /// A keyframe request from downstream: let it through, defer it, or drop it.
    fn request(self: &Arc<Self>) -> gst::PadProbeReturn {
        self.counts.requests.fetch_add(1, Ordering::Relaxed);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let wait = state
            .last_forced
            .map(|t| self.interval.saturating_sub(now - t))
            .unwrap_or_default();
        if wait.is_zero() {
            state.last_forced = Some(now);
            self.counts.forced.fetch_add(1, Ordering::Relaxed);
            debug!("passing a keyframe request on");
            return gst::PadProbeReturn::Ok;
        }
        if !state.deferred {
            state.deferred = true;
            let k = self.clone();
            std::thread::spawn(move || {
                std::thread::sleep(wait);
                k.deferred_due();
            });
        }
        crate::DISCARD
    }

    /// The end of the interval a request was deferred to.
    fn deferred_due(&self) {
        {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if !state.deferred {
                return; // a keyframe went out meanwhile
            }
            state.deferred = false;
            state.last_forced = Some(Instant::now());
        }
        self.counts.forced.fetch_add(1, Ordering::Relaxed);
        debug!("passing a deferred keyframe request on");
        (self.pass_on)(
            gst_video::UpstreamForceKeyUnitEvent::builder()
                .all_headers(true)
                .build(),
        );
    }

    /// A keyframe passed: whoever was waiting has it.
    fn went_out(&self) {
        self.counts.sent.fetch_add(1, Ordering::Relaxed);
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .deferred = false;
    }
}
