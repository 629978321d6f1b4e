//! What the tests read of a consumer-agent: its frame count, sessions and stalls from its
//! stats lines and report; one watching a producer by name; a clean stop.

use std::time::Duration;

use anyhow::Result;
use serde_json::Value;

use crate::agent::Agent;

/// How many sessions a consumer report lists.
pub fn sessions_of(report: &Value) -> Option<usize> {
    report["session_ids"].as_array().map(Vec::len)
}

/// The frame count of a stats line or report.
pub fn frames_of(v: &Value) -> u64 {
    v["frames"].as_u64().unwrap_or(0)
}

/// Latest frame count a consumer printed in its stats lines.
pub fn frames_now(c: &Agent) -> u64 {
    c.json_lines("consumer-stats")
        .last()
        .map(frames_of)
        .unwrap_or(0)
}

/// A consumer-agent finding producer `name` through `servers`, with stats every 0.2 s.
pub fn watching(servers: &str, name: &str) -> Result<Agent> {
    Agent::consumer(&[
        "--server",
        servers,
        "--producer-name",
        name,
        "--stats-interval",
        "0.2",
    ])
}

/// Stops a consumer with SIGINT; it must exit 0 (with its report last on stdout).
pub async fn stop_cleanly(consumer: &mut Agent) -> Result<()> {
    consumer.signal(libc::SIGINT);
    let code = consumer.exit_within(Duration::from_secs(30)).await?;
    anyhow::ensure!(code == Some(0), "exit {code:?}: {}", consumer.stderr());
    Ok(())
}

/// Longest time (ms) the consumer's frame counter stood still after `from_ms` (from its
/// stats lines, `elapsed_ms` since the consumer started).
pub fn longest_stall_ms(c: &Agent, from_ms: u64) -> u64 {
    let lines = c.json_lines("consumer-stats");
    let mut longest = 0;
    let mut last_change: Option<(u64, u64)> = None; // (elapsed_ms, frames)
    for l in lines {
        let (t, f) = (l["elapsed_ms"].as_u64().unwrap_or(0), frames_of(&l));
        match last_change {
            Some((t0, f0)) if f == f0 => {
                if t >= from_ms {
                    longest = longest.max(t - t0.max(from_ms));
                }
            }
            _ => last_change = Some((t, f)),
        }
    }
    longest
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
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "frames": self.frames,
            "fps": (self.fps * 10.0).round() / 10.0,
            "frozen_ms": self.frozen_ms,
            "longest_freeze_ms": self.longest_freeze_ms,
            "window_ms": self.window_ms,
        })
    }
}
