//! `loadgen --watch NAME@PORT`: light viewers of one producer (by `meta.name`) on a signalling
//! node, for a while, printing their figures as JSON lines (`viewers-stats`, like the agents'
//! stats lines) and, with `--frame-log-dir`, each viewer's frames as consumer-agent's
//! `--frame-log` writes them (`HASH UNIX_MICROS`). The tests compare it with a consumer-agent.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::light_viewer::{host_address, Via, Viewer};

pub struct WatchArgs {
    pub target: String,
    pub viewers: usize,
    pub seconds: f64,
    pub interval: f64,
    pub frame_log_dir: Option<PathBuf>,
}

fn line(viewers: &[Viewer], started: Instant) -> Value {
    let each: Vec<Value> = viewers
        .iter()
        .map(|v| {
            let s = v.stats.lock().unwrap();
            json!({
                "frames": s.tally.frames,
                "keyframes": s.tally.keyframes,
                "packets": s.tally.packets,
                "lost": s.tally.lost(),
                "incomplete_frames": s.tally.incomplete,
                "connected": s.connected,
                "first_frame_ms": s.first_frame_ms(),
                "ended": s.ended,
            })
        })
        .collect();
    json!({"type": "viewers-stats", "elapsed_ms": started.elapsed().as_millis() as u64, "viewers": each})
}

pub async fn run(args: WatchArgs) -> Result<()> {
    let (name, port) = args.target.rsplit_once('@').context("--watch NAME@PORT")?;
    let port: u16 = port.parse().context("--watch NAME@PORT: the port")?;
    let host = host_address()?;
    let via = Via::Node {
        port,
        producer: name.to_string(),
    };
    let hashing = args.frame_log_dir.is_some();
    let viewers: Vec<Viewer> = (0..args.viewers)
        .map(|_| Viewer::spawn(via.clone(), host, hashing))
        .collect();
    let started = Instant::now();
    let every = Duration::from_secs_f64(args.interval.max(0.05));
    while started.elapsed().as_secs_f64() < args.seconds {
        tokio::time::sleep(every).await;
        println!("{}", line(&viewers, started));
        std::io::stdout().flush()?;
    }
    if let Some(dir) = &args.frame_log_dir {
        std::fs::create_dir_all(dir)?;
        for (i, v) in viewers.iter().enumerate() {
            let log = v
                .stats
                .lock()
                .unwrap()
                .tally
                .log
                .clone()
                .unwrap_or_default();
            let mut out = String::new();
            for (h, at) in log {
                out += &format!("{h:016x} {at}\n");
            }
            std::fs::write(dir.join(format!("viewer-{i}.log")), out)?;
        }
    }
    println!("{}", line(&viewers, started));
    Ok(())
}
