//! What the viewer sees of the video (issue 26): the resolution of the decoded frames, the
//! time it stood frozen and how often the resolution changed (a relay switching layers). It is
//! read from the decoded frames' arrival: a probe on the sink pad of the element that counts
//! decoded frames (named `count` by `sink.rs`: sinks `null`, `display`, `pipeline:`), hooked
//! as that element joins the pipeline. `encoded` and `file:` decode nothing: no quality.
//!
//! Frozen: no new frame for more than [`FREEZE_INTERVALS`] frame intervals, and at least
//! [`FREEZE_MARGIN`] more than one (webrtc-stats' `freezeCount` definition, which browsers
//! report: without the margin, frames a decoder hands out in a burst, as at a session's start,
//! make the next ordinary gaps look like freezes). The whole gap counts, and a gap still open
//! counts up to now, so a report during a freeze shows it. The frame interval is the first
//! gap, then a running average of the gaps that were not freezes (a stream's frame rate, without trusting the
//! caps: decoded WebRTC caps often say `framerate=0/1`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gst::prelude::*;

/// A gap longer than this many frame intervals is a freeze (issue 26's definition).
pub const FREEZE_INTERVALS: f64 = 3.0;
/// Added to one frame interval, the shortest gap that is a freeze (webrtc-stats).
pub const FREEZE_MARGIN: Duration = Duration::from_millis(150);
/// Weight of a new gap in the running average: about the last 16 frames.
const AVERAGE_WEIGHT: f64 = 1.0 / 16.0;

/// Shared between the probe (streaming thread) and the reports.
#[derive(Default)]
pub struct Quality(Mutex<State>);

#[derive(Default)]
struct State {
    last_frame: Option<Instant>,
    /// Running average of the gaps between frames that were not freezes, seconds.
    interval: Option<f64>,
    size: Option<(u32, u32)>,
    switches: u64,
    /// Frozen time of gaps that ended.
    frozen: Duration,
}

/// What a report shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub size: Option<(u32, u32)>,
    pub switches: u64,
    /// Frozen time so far, the gap still open included.
    pub frozen: Duration,
}

impl State {
    /// The longest gap that is no freeze; none before the first gap gave an interval.
    fn threshold(&self) -> Duration {
        let Some(interval) = self.interval else {
            return Duration::MAX;
        };
        Duration::from_secs_f64(FREEZE_INTERVALS * interval)
            .max(Duration::from_secs_f64(interval) + FREEZE_MARGIN)
    }

    fn frame(&mut self, at: Instant, size: Option<(u32, u32)>) {
        if let Some(last) = self.last_frame {
            let gap = at.saturating_duration_since(last);
            if gap > self.threshold() {
                self.frozen += gap;
            } else {
                let gap = gap.as_secs_f64();
                self.interval = Some(match self.interval {
                    None => gap,
                    Some(avg) => avg + AVERAGE_WEIGHT * (gap - avg),
                });
            }
        }
        self.last_frame = Some(at);
        if let Some(size) = size {
            if self.size.is_some_and(|before| before != size) {
                self.switches += 1;
            }
            self.size = Some(size);
        }
    }

    fn seen(&self, now: Instant) -> Seen {
        let open = self
            .last_frame
            .map(|last| now.saturating_duration_since(last))
            .filter(|gap| *gap > self.threshold())
            .unwrap_or_default();
        Seen {
            size: self.size,
            switches: self.switches,
            frozen: self.frozen + open,
        }
    }
}

impl Quality {
    /// A decoded frame of `size` arrived at `at`.
    pub fn frame(&self, at: Instant, size: Option<(u32, u32)>) {
        self.0.lock().unwrap().frame(at, size)
    }

    pub fn seen(&self, now: Instant) -> Seen {
        self.0.lock().unwrap().seen(now)
    }
}

/// Watches the decoded frames of every `count` element that joins `pipeline`.
pub fn watch(pipeline: &gst::Pipeline, quality: Arc<Quality>) {
    pipeline.connect_deep_element_added(move |_, _, element| {
        if element.name() != "count" {
            return;
        }
        let Some(pad) = element.static_pad("sink") else {
            return;
        };
        let quality = quality.clone();
        pad.add_probe(gst::PadProbeType::BUFFER, move |pad, _| {
            quality.frame(Instant::now(), size_of(pad));
            gst::PadProbeReturn::Ok
        });
    });
}

/// The width and height of raw video on `pad`.
fn size_of(pad: &gst::Pad) -> Option<(u32, u32)> {
    let caps = pad.current_caps()?;
    let s = caps.structure(0)?;
    let w = s.get::<i32>("width").ok()?;
    let h = s.get::<i32>("height").ok()?;
    Some((u32::try_from(w).ok()?, u32::try_from(h).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_steady_stream_is_never_frozen_and_a_long_gap_is() {
        let t0 = Instant::now();
        let mut s = State::default();
        for i in 0..30 {
            s.frame(t0 + ms(33 * i), Some((640, 360)));
        }
        let last = t0 + ms(33 * 29);
        assert_eq!(s.seen(last + ms(150)).frozen, Duration::ZERO);
        // at 5 fps, 3 intervals (600 ms) is the bound, not the margin
        let mut slow = State::default();
        for i in 0..20 {
            slow.frame(t0 + ms(200 * i), None);
        }
        assert_eq!(slow.seen(t0 + ms(3800 + 500)).frozen, Duration::ZERO);
        assert_eq!(slow.seen(t0 + ms(3800 + 700)).frozen, ms(700));
        // one frame gives no interval: nothing is judged yet
        let mut one = State::default();
        one.frame(t0, None);
        assert_eq!(one.seen(t0 + ms(5000)).frozen, Duration::ZERO);
        // no frame for 1 s: frozen up to now while it lasts, the whole gap once it ends
        assert_eq!(s.seen(last + ms(1000)).frozen, ms(1000));
        s.frame(last + ms(1200), Some((640, 360)));
        assert_eq!(s.seen(last + ms(1210)).frozen, ms(1200));
        // the gap did not change the frame interval: a normal gap after it is no freeze
        s.frame(last + ms(1233), Some((640, 360)));
        assert_eq!(s.seen(last + ms(1240)).frozen, ms(1200));
        assert_eq!(s.switches, 0);
    }

    #[test]
    fn each_change_of_resolution_is_one_switch() {
        let t0 = Instant::now();
        let mut s = State::default();
        let sizes = [
            (1280, 720),
            (1280, 720),
            (640, 360),
            (640, 360),
            (1280, 720),
        ];
        for (i, size) in sizes.into_iter().enumerate() {
            s.frame(t0 + ms(33 * i as u64), Some(size));
        }
        let seen = s.seen(t0 + ms(200));
        assert_eq!(seen.switches, 2);
        assert_eq!(seen.size, Some((1280, 720)));
    }
}
