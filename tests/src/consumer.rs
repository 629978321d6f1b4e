//! What the tests read of a consumer-agent: its frame count, sessions and stalls from its
//! stats lines and report; one watching a producer by name; a clean stop.

use std::time::Duration;

use anyhow::Result;
use serde_json::Value;

use crate::agent::Agent;
pub use crate::watched::{watched, Watched};

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
