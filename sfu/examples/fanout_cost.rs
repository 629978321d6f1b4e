//! A rough measure of the forward engine's CPU per viewer (not the benchmark, which
//! runs `./dev bench` with real processes): one str0m origin at ~2 Mbit/s (200 packets/s of
//! 1,200 bytes), K str0m viewers driven by this thread, the engine on one worker thread whose
//! CPU time is read from /proc. Run: `cargo run --release -p sfu --example fanout_cost`.

#[path = "../tests/harness/mod.rs"]
mod harness;

use std::time::{Duration, Instant};

use harness::{events, forwarder, until, Node};
use sfu::forwarder::ForwardEvent;

/// CPU seconds of this process's thread named `name`.
fn thread_cpu(name: &str) -> f64 {
    let tick = 100.0; // USER_HZ on Linux
    let mut total = 0.0;
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // Fields after the ")" of the command: state is field 3; utime 14, stime 15.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ut: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        let st: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        total += (ut + st) / tick;
    }
    total
}

fn main() {
    let counts: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let counts = if counts.is_empty() {
        vec![5, 20, 40]
    } else {
        counts
    };
    let window = Duration::from_secs(5);
    println!("viewers\tengine CPU %\tpackets sent/s");
    for k in counts {
        let (fwd, rx) = forwarder(1);
        let (mut origin, offer) = Node::origin(1);
        origin.frame_interval = Duration::from_millis(5);
        origin.padding = 1_200;
        origin.accept_answer(&fwd.origin_offer("origin", &offer).expect("an answer"));
        let mut evs = Vec::new();
        until(&mut [&mut origin], "OriginReady", |_| {
            evs.extend(events(&rx));
            evs.iter()
                .any(|e| matches!(e, ForwardEvent::OriginReady { .. }))
        });
        let mut viewers: Vec<Node> = (0..k)
            .map(|i| {
                let name = format!("v{i}");
                let (v, a) = Node::viewer(&fwd.viewer_offer(&name).expect("an offer"));
                fwd.viewer_answer(&name, &a).expect("the answer");
                v
            })
            .collect();
        {
            let mut nodes: Vec<&mut Node> = std::iter::once(&mut origin)
                .chain(viewers.iter_mut())
                .collect();
            until(&mut nodes, "every viewer receives", |n| {
                n[1..].iter().all(|v| v.video().len() > 10)
            });
        }
        let sent0: u64 = fwd.stats().viewers.iter().map(|v| v.packets).sum();
        let cpu0 = thread_cpu("sfu-0");
        let t0 = Instant::now();
        {
            let mut nodes: Vec<&mut Node> = std::iter::once(&mut origin)
                .chain(viewers.iter_mut())
                .collect();
            until(&mut nodes, "the window", |n| {
                for v in n[1..].iter_mut() {
                    v.got.clear();
                }
                t0.elapsed() >= window
            });
        }
        let secs = t0.elapsed().as_secs_f64();
        let cpu = (thread_cpu("sfu-0") - cpu0) / secs * 100.0;
        let sent: u64 = fwd.stats().viewers.iter().map(|v| v.packets).sum::<u64>() - sent0;
        println!("{k}\t{cpu:.1}\t{:.0}", sent as f64 / secs);
        fwd.stop();
    }
}
