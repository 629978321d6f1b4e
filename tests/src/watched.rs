//! What a viewer saw over a window of its run, from a consumer-agent's `consumer-stats` lines:
//! frames, frame rate, frozen time, the height it decodes. Shared by the tests
//! (`cluster_tests::watched`) and the load generator's `adaptive` scenario (`tests/loadgen`,
//! which includes this file by path): std and serde_json only.

use serde_json::Value;

fn frames_of(v: &Value) -> u64 {
    v["frames"].as_u64().unwrap_or(0)
}

/// What a viewer saw over a window of its run, from its stats lines (the frame counter at
/// each line, `elapsed_ms` since it started).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Watched {
    /// Frames decoded (or counted) in the window.
    pub frames: u64,
    pub fps: f64,
    /// Time without a new frame: each gap between stats lines whose frame count stood
    /// still, summed. With lines 0.2 s apart, a freeze under 0.2 s may go unseen and one
    /// longer is counted to within 0.2 s (consumer-agent's own `frozen_ms`, where it reports
    /// one, is finer).
    pub frozen_ms: u64,
    /// The longest of those freezes.
    pub longest_freeze_ms: u64,
    /// The window's length.
    pub window_ms: u64,
}

/// [`Watched`] of `lines` (`consumer-stats`) between `from_ms` and `to_ms` of the viewer's
/// run.
pub fn watched(lines: &[Value], from_ms: u64, to_ms: u64) -> Watched {
    let points: Vec<(u64, u64)> = lines
        .iter()
        .map(|l| (l["elapsed_ms"].as_u64().unwrap_or(0), frames_of(l)))
        .filter(|(t, _)| (from_ms..=to_ms).contains(t))
        .collect();
    let (mut frozen, mut longest, mut run) = (0, 0, 0);
    for pair in points.windows(2) {
        let ((t0, f0), (t1, f1)) = (pair[0], pair[1]);
        if f1 == f0 {
            frozen += t1 - t0;
            run += t1 - t0;
            longest = longest.max(run);
        } else {
            run = 0;
        }
    }
    let (first, last) = match (points.first(), points.last()) {
        (Some(a), Some(b)) => (*a, *b),
        _ => ((from_ms, 0), (from_ms, 0)),
    };
    let window_ms = last.0 - first.0;
    let frames = last.1 - first.1;
    Watched {
        frames,
        fps: if window_ms > 0 {
            frames as f64 * 1000.0 / window_ms as f64
        } else {
            0.0
        },
        frozen_ms: frozen,
        longest_freeze_ms: longest,
        window_ms,
    }
}

impl Watched {
    pub fn to_json(self) -> Value {
        serde_json::json!({
            "frames": self.frames,
            "fps": (self.fps * 10.0).round() / 10.0,
            "frozen_ms": self.frozen_ms,
            "longest_freeze_ms": self.longest_freeze_ms,
            "window_ms": self.window_ms,
        })
    }
}

/// The height of the frames a consumer-agent decodes, from a stats line (absent before the
/// first frame, and with sinks that decode nothing).
pub fn height_of(line: &Value) -> Option<u64> {
    line["height"].as_u64()
}

/// Frozen time (ms) of a viewer between `from_ms` and `to_ms` of its run: the larger of
/// consumer-agent's own per-interval figure, where it measures one (a decoding sink: its
/// lines give the height it decodes; finer, but it needs two frames to know the frame
/// interval, so a viewer that got fewer shows none), and the frame counter's ([`watched`]);
/// never more than the window.
pub fn frozen_between(lines: &[Value], from_ms: u64, to_ms: u64) -> u64 {
    let within: Vec<&Value> = lines
        .iter()
        .filter(|l| (from_ms..=to_ms).contains(&l["elapsed_ms"].as_u64().unwrap_or(0)))
        .collect();
    let measured = !within.is_empty() && within.iter().all(|l| height_of(l).is_some());
    let reported: Option<u64> = within.iter().map(|l| l["frozen_ms"].as_u64()).sum();
    let counted = watched(lines, from_ms, to_ms);
    let frozen = match reported {
        Some(ms) if measured => ms.max(counted.frozen_ms),
        _ => counted.frozen_ms,
    };
    frozen.min(counted.window_ms)
}
