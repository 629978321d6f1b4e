//! A measure of the forward engine's CPU per viewer (not the benchmark, which runs
//! `./dev bench` with real processes): one str0m origin at ~2 Mbit/s (200 video packets/s of
//! 1,200 bytes, and 50 audio packets/s), K str0m viewers (real peers: SRTP, RTCP, TWCC, NACK)
//! driven by their own threads (`VIEWER_THREADS`), the engine on one worker thread (`sfu-0`)
//! whose CPU time alone is read from /proc over a window. Prints per K the engine's CPU, the
//! packets it sent and µs per packet sent, then the fitted cost per added viewer.
//! Run: `cargo run --release -p sfu --example fanout_cost -- 10 50 100`.

#[path = "../tests/harness/mod.rs"]
mod harness;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
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

/// A 2 Mbit/s viewer: ~210 video packets/s of 1,200 bytes and 50 Opus packets/s.
const VIEWER_PACKETS: f64 = 260.0;

/// Threads that drive the viewers (each pumps its share every millisecond).
const VIEWER_THREADS: usize = 2;

/// This process's resident memory, KB (engine and test viewers together: an upper bound of
/// the engine's own).
fn rss_kb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn main() {
    let counts: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let counts = if counts.is_empty() {
        vec![10, 50, 100]
    } else {
        counts
    };
    // FANOUT_WINDOW: seconds measured per K (default 10; longer to attach `perf` to sfu-0).
    let window = Duration::from_secs(
        std::env::var("FANOUT_WINDOW")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10),
    );
    println!("viewers\tengine CPU %\tpackets sent/s\tµs/packet\tprocess RSS MB");
    let mut points = Vec::new();
    let mut rss_points = Vec::new();
    for k in counts {
        let (fwd, rx) = forwarder(1);
        let (mut origin, offer) = Node::origin(1);
        origin.frame_interval = Duration::from_millis(5);
        origin.padding = 1_200;
        origin.accept_answer(&fwd.origin_offer("origin", &offer, None).expect("an answer"));
        let mut evs = Vec::new();
        until(&mut [&mut origin], "OriginReady", |_| {
            evs.extend(events(&rx));
            evs.iter()
                .any(|e| matches!(e, ForwardEvent::OriginReady { .. }))
        });
        let stop = Arc::new(AtomicBool::new(false));
        let (feeds, threads): (Vec<_>, Vec<_>) = (0..VIEWER_THREADS)
            .map(|_| {
                let stop = Arc::clone(&stop);
                let (tx, rx) = std::sync::mpsc::channel::<Node>();
                let t = std::thread::spawn(move || {
                    let mut nodes = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        nodes.extend(rx.try_iter());
                        for n in nodes.iter_mut() {
                            n.pump();
                            n.got.clear();
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                });
                (tx, t)
            })
            .unzip();
        let fed = |n: usize| {
            let s = fwd.stats();
            s.viewers.iter().filter(|v| v.packets > 50).count() >= n
        };
        // Viewers join in batches (as they would), each batch connected before the next: a
        // burst of hundreds of handshakes at once is another test.
        for i in 0..k {
            let name = format!("v{i}");
            let (v, a) = Node::viewer(&fwd.viewer_offer(&name, None).expect("an offer"));
            fwd.viewer_answer(&name, &a).expect("the answer");
            let _ = feeds[i % VIEWER_THREADS].send(v);
            if (i + 1) % 10 == 0 || i + 1 == k {
                until(&mut [&mut origin], "a batch of viewers receives", |_| {
                    fed(i + 1)
                });
            }
        }
        let lost: Vec<_> = events(&rx)
            .into_iter()
            .filter(|e| matches!(e, ForwardEvent::ViewerLost { .. }))
            .collect();
        assert!(lost.is_empty(), "{lost:?}");
        let sent0: u64 = fwd.stats().viewers.iter().map(|v| v.packets).sum();
        eprintln!("window of {window:?} starts");
        let cpu0 = thread_cpu("sfu-0");
        let t0 = Instant::now();
        until(&mut [&mut origin], "the window", |_| t0.elapsed() >= window);
        let secs = t0.elapsed().as_secs_f64();
        let cpu = (thread_cpu("sfu-0") - cpu0) / secs * 100.0;
        let sent = fwd.stats().viewers.iter().map(|v| v.packets).sum::<u64>() - sent0;
        let rate = sent as f64 / secs;
        let rss = rss_kb();
        println!(
            "{k}\t{cpu:.1}\t{rate:.0}\t{:.1}\t{:.1}",
            cpu / 100.0 / rate.max(1.0) * 1e6,
            rss / 1024.0
        );
        rss_points.push((k as f64, rss));
        points.push((rate, cpu));
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            let _ = t.join();
        }
        fwd.stop();
    }
    if rss_points.len() >= 2 {
        let ((k0, r0), (k1, r1)) = (rss_points[0], rss_points[rss_points.len() - 1]);
        println!(
            "process RSS per added viewer (engine + test viewer, an upper bound): {:.0} KB",
            (r1 - r0) / (k1 - k0)
        );
    }
    if points.len() >= 2 {
        // Least squares: CPU % = a + b * packets sent per second (the origin's rate varies
        // with the machine's load, so the fit is per packet, then scaled to a viewer).
        let n = points.len() as f64;
        let (sx, sy) = points
            .iter()
            .fold((0.0, 0.0), |(sx, sy), (x, y)| (sx + x, sy + y));
        let (mx, my) = (sx / n, sy / n);
        let (sxy, sxx) = points.iter().fold((0.0, 0.0), |(a, b), (x, y)| {
            (a + (x - mx) * (y - my), b + (x - mx) * (x - mx))
        });
        let per_packet = sxy / sxx / 100.0; // core-seconds per packet
        let per_viewer = per_packet * VIEWER_PACKETS * 100.0;
        println!(
            "per added packet: {:.1} µs; per added viewer at 2 Mbit/s ({VIEWER_PACKETS} packets/s): {per_viewer:.3} % of a core ({:.0} viewers per core)",
            per_packet * 1e6,
            100.0 / per_viewer
        );
    }
}
