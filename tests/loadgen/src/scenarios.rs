//! The scenarios. Each returns its figures as JSON; every one is bounded in count (its
//! parameters) and time (`client::STEP` per awaited message, fixed polling deadlines).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::stream::{self, StreamExt, TryStreamExt};
use serde_json::{json, Value};
use tokio::sync::Barrier;

use crate::client::Peer;
use crate::procs::{cpu_us, Topo};

/// Connections opened at once.
const CONNECT_CONCURRENCY: usize = 256;

/// A realistic trickled ICE candidate: with the envelope about 150 bytes on the wire.
const CANDIDATE: &str = "candidate:842163049 1 udp 1677729535 192.0.2.17 49203 typ srflx raddr 10.0.0.5 rport 49203 generation 0";

fn self_cpu_us() -> u64 {
    cpu_us(std::process::id())
}

/// CPU counters of everything involved, for a before/after difference.
struct Cpu {
    server: u64,
    redis: Option<u64>,
    gen: u64,
}

impl Cpu {
    fn now(topo: &Topo) -> Cpu {
        Cpu {
            server: topo.server_cpu_us(),
            redis: topo.redis_cpu_us(),
            gen: self_cpu_us(),
        }
    }

    /// `{server_cpu_us, redis_cpu_us, generator_cpu_us}` spent since `self`, plus the same per
    /// `unit` (message, delivery) under `{prefix}_per_{unit}`.
    fn since(&self, topo: &Topo, count: u64, unit: &str) -> Value {
        let now = Cpu::now(topo);
        let server = now.server - self.server;
        let gen = now.gen - self.gen;
        let redis = now.redis.zip(self.redis).map(|(a, b)| a - b);
        let per = |v: u64| round2(v as f64 / count.max(1) as f64);
        json!({
            "server_cpu_us": server,
            "redis_cpu_us": redis,
            "generator_cpu_us": gen,
            format!("server_cpu_us_per_{unit}"): per(server),
            format!("redis_cpu_us_per_{unit}"): redis.map(per),
            format!("generator_cpu_us_per_{unit}"): per(gen),
        })
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// Percentile of sorted samples (nearest rank below).
fn pct(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * q) as usize]
}

fn merge(a: &mut Value, b: Value) {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
}

/// Connects `n` peers, peer `i` to `topo.port(i + shift)`, registering each with `roles`
/// (none: stays unregistered).
async fn connect_many(topo: &Topo, n: usize, shift: usize, roles: &[&str]) -> Result<Vec<Peer>> {
    let ports: Vec<u16> = (0..n).map(|i| topo.port(i + shift)).collect();
    let roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
    stream::iter(ports)
        .map(|port| {
            let roles = roles.clone();
            async move {
                let mut p = Peer::connect(port).await?;
                if !roles.is_empty() {
                    let r: Vec<&str> = roles.iter().map(String::as_str).collect();
                    p.set_status(&r).await?;
                }
                anyhow::Ok(p)
            }
        })
        .buffered(CONNECT_CONCURRENCY)
        .try_collect()
        .await
}

/// Waits until `list` (or `listConsumers`) on every node shows at least `n` entries; returns
/// the smallest count seen.
async fn visible_everywhere(
    topo: &Topo,
    n: usize,
    consumers: bool,
    within: Duration,
) -> Result<usize> {
    let mut min = usize::MAX;
    for i in 0..topo.nodes() {
        let mut probe = Peer::connect(topo.port(i)).await?;
        min = min.min(probe.count_until(consumers, n, within).await?);
    }
    Ok(min)
}

/// P producers, P consumers, every pair in a session (across nodes in a cluster).
async fn pairs(topo: &Topo, p: usize) -> Result<Vec<(Peer, Peer, String)>> {
    let producers = connect_many(topo, p, 0, &["producer"]).await?;
    // consumer i sits on the node after producer i's: every session crosses nodes
    let consumers = connect_many(topo, p, 1, &[]).await?;
    let seen = visible_everywhere(topo, p, false, Duration::from_secs(30)).await?;
    anyhow::ensure!(seen >= p, "only {seen} of {p} producers visible");
    stream::iter(producers.into_iter().zip(consumers))
        .map(|(mut prod, mut cons)| async move {
            cons.send(json!({"type": "startSession", "peerId": prod.id}))
                .await?;
            let sid = cons.wait_for("sessionStarted").await?["sessionId"]
                .as_str()
                .context("sessionStarted without sessionId")?
                .to_string();
            prod.wait_for("startSession").await?;
            anyhow::Ok((prod, cons, sid))
        })
        .buffered(CONNECT_CONCURRENCY)
        .try_collect()
        .await
}

/// Ping-pong of ICE messages between P pairs for R rounds from a common start.
pub async fn relay(topo: &Topo, p: usize, rounds: usize) -> Result<Value> {
    let pairs = pairs(topo, p).await?;
    // Every pair warm, then (the servers' counters and CPU read) all start together.
    let (warm, go) = (Arc::new(Barrier::new(p + 1)), Arc::new(Barrier::new(p + 1)));
    let mut tasks = Vec::new();
    for (mut prod, mut cons, sid) in pairs {
        let (warm, go) = (warm.clone(), go.clone());
        let msg = json!({"type": "peer", "sessionId": sid, "ice": {"candidate": CANDIDATE, "sdpMLineIndex": 0}})
            .to_string();
        tasks.push(tokio::spawn(async move {
            let mut rtts = Vec::with_capacity(rounds);
            // two unmeasured rounds first: connections warm, buffers allocated
            for _ in 0..2 {
                prod.send_text(msg.clone()).await?;
                cons.recv_text().await?;
                cons.send_text(msg.clone()).await?;
                prod.recv_text().await?;
            }
            warm.wait().await;
            go.wait().await;
            for _ in 0..rounds {
                let start = Instant::now();
                prod.send_text(msg.clone()).await?;
                let got = cons.recv_text().await?;
                anyhow::ensure!(got.contains("\"peer\""), "consumer got {got}");
                cons.send_text(msg.clone()).await?;
                let got = prod.recv_text().await?;
                anyhow::ensure!(got.contains("\"peer\""), "producer got {got}");
                rtts.push(start.elapsed().as_micros() as u64);
            }
            anyhow::Ok((rtts, prod, cons))
        }));
    }
    warm.wait().await;
    let relayed = topo.relayed().await?;
    let cpu = Cpu::now(topo);
    go.wait().await;
    let t0 = Instant::now();
    let mut rtts = Vec::with_capacity(p * rounds);
    let mut keep = Vec::new();
    for t in tasks {
        let (r, a, b) = t.await??;
        rtts.extend(r);
        keep.push((a, b));
    }
    let secs = t0.elapsed().as_secs_f64();
    let msgs = (2 * p * rounds) as u64;
    let mut out = cpu.since(topo, msgs, "msg");
    // What the servers say they relayed meanwhile (ours count; upstream does not).
    let server_relayed = match (relayed, topo.relayed().await?) {
        (Some(before), Some(after)) => Some(after.saturating_sub(before)),
        _ => None,
    };
    rtts.sort_unstable();
    merge(
        &mut out,
        json!({
            "pairs": p, "rounds": rounds, "messages": msgs, "server_relayed": server_relayed,
            "seconds": round2(secs),
            "msgs_per_sec": (msgs as f64 / secs).round(),
            "rtt_us": {"p50": pct(&rtts, 0.5), "p99": pct(&rtts, 0.99), "p999": pct(&rtts, 0.999), "max": pct(&rtts, 1.0)},
        }),
    );
    drop(keep);
    Ok(out)
}

/// N idle peers registered as consumers: memory per peer, connection rate, listConsumers.
pub async fn idle(topo: &Topo, n: usize) -> Result<Value> {
    let rss0 = topo.server_rss_kb();
    let redis0 = topo.redis_rss_kb();
    let cpu = Cpu::now(topo);
    let t0 = Instant::now();
    let peers = connect_many(topo, n, 0, &["consumer"]).await?;
    let connect_secs = t0.elapsed().as_secs_f64();
    // keep every peer read (pings answered, nothing piles up) while we look
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut readers = Vec::with_capacity(n);
    for mut p in peers {
        let mut stop = stop_rx.clone();
        readers.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    m = p.ws.next() => if m.is_none() { break },
                }
            }
            p
        }));
    }
    let t1 = Instant::now();
    let seen = visible_everywhere(topo, n, true, Duration::from_secs(60)).await;
    let visible_secs = t1.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss1 = topo.server_rss_kb();
    let redis1 = topo.redis_rss_kb();
    let mut out = cpu.since(topo, n as u64, "peer");
    let (seen, seen_err) = match seen {
        Ok(s) => (Some(s), None),
        Err(e) => (None, Some(format!("{e:#}"))),
    };
    merge(
        &mut out,
        json!({
            "peers": n,
            "connect_seconds": round2(connect_secs),
            "connections_per_sec": (n as f64 / connect_secs).round(),
            "server_rss_kb_before": rss0, "server_rss_kb_after": rss1,
            "rss_bytes_per_peer": ((rss1.saturating_sub(rss0)) as f64 * 1024.0 / n as f64).round(),
            "redis_rss_kb_growth": redis1.zip(redis0).map(|(a, b)| a.saturating_sub(b)),
            "list_consumers_seen": seen,
            "list_consumers_error": seen_err,
            "list_consumers_all": seen == Some(n),
            "list_consumers_seconds": round2(visible_secs),
        }),
    );
    let _ = stop_tx.send(true);
    for r in readers {
        drop(r.await);
    }
    Ok(out)
}

/// L listeners, K producers registering at once: peerStatusChanged deliveries per second and
/// time until every listener saw every producer.
/// What a listener reads of a `peerStatusChanged`.
#[derive(serde::Deserialize)]
struct Status<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(rename = "peerId", borrow, default)]
    peer_id: Option<&'a str>,
    #[serde(borrow, default)]
    roles: Vec<&'a str>,
}

pub async fn presence(topo: &Topo, l: usize, k: usize) -> Result<Value> {
    let producers = connect_many(topo, k, 0, &[]).await?;
    let mut listeners = connect_many(topo, l, 1, &["listener"]).await?;
    // every listener registered (on its own node) before the producers start
    listeners = stream::iter(listeners)
        .map(|mut p| async move {
            p.sync().await?;
            anyhow::Ok(p)
        })
        .buffered(CONNECT_CONCURRENCY)
        .try_collect()
        .await?;
    let barrier = Arc::new(Barrier::new(l + 1));
    let mut tasks = Vec::new();
    for mut lis in listeners {
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let t0 = Instant::now();
            let mut seen = HashSet::new();
            while seen.len() < k {
                // (read into a small borrowed struct, not a JSON tree: at hundreds of thousands
                // of deliveries per second the generator's parsing would bound the figure)
                let text = lis.recv_text().await?;
                let status: Status = serde_json::from_str(&text)?;
                if status.kind == "peerStatusChanged" && status.roles.contains(&"producer") {
                    seen.insert(status.peer_id.unwrap_or_default().to_string());
                }
            }
            anyhow::Ok((t0.elapsed().as_micros() as u64, lis))
        }));
    }
    let cpu = Cpu::now(topo);
    barrier.wait().await;
    let t0 = Instant::now();
    let producers: Vec<Peer> = stream::iter(producers)
        .map(|mut p| async move {
            p.set_status(&["producer"]).await?;
            anyhow::Ok(p)
        })
        .buffer_unordered(k.max(1))
        .try_collect()
        .await?;
    let mut done = Vec::with_capacity(l);
    let mut keep = Vec::new();
    for t in tasks {
        let (us, lis) = t.await??;
        done.push(us);
        keep.push(lis);
    }
    let secs = t0.elapsed().as_secs_f64();
    let deliveries = (l * k) as u64;
    done.sort_unstable();
    let mut out = cpu.since(topo, deliveries, "delivery");
    merge(
        &mut out,
        json!({
            "listeners": l, "producers": k, "deliveries": deliveries,
            "seconds_all_seen": round2(secs),
            "deliveries_per_sec": (deliveries as f64 / secs).round(),
            "listener_done_ms": {"p50": pct(&done, 0.5) / 1000, "max": pct(&done, 1.0) / 1000},
        }),
    );
    drop((producers, keep));
    Ok(out)
}

/// startSession -> both sides notified, `sessions` times per pair, pairs concurrently.
pub async fn setup(topo: &Topo, p: usize, sessions: usize) -> Result<Value> {
    let producers = connect_many(topo, p, 0, &["producer"]).await?;
    let consumers = connect_many(topo, p, 1, &[]).await?;
    let seen = visible_everywhere(topo, p, false, Duration::from_secs(30)).await?;
    anyhow::ensure!(seen >= p, "only {seen} of {p} producers visible");
    let barrier = Arc::new(Barrier::new(p + 1));
    let mut tasks = Vec::new();
    for (mut prod, mut cons) in producers.into_iter().zip(consumers) {
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut samples = Vec::with_capacity(sessions);
            for _ in 0..sessions {
                let t = Instant::now();
                cons.send(json!({"type": "startSession", "peerId": prod.id}))
                    .await?;
                let sid = cons.wait_for("sessionStarted").await?["sessionId"].clone();
                prod.wait_for("startSession").await?;
                samples.push(t.elapsed().as_micros() as u64);
                cons.send(json!({"type": "endSession", "sessionId": sid}))
                    .await?;
                prod.wait_for("endSession").await?;
            }
            anyhow::Ok((samples, prod, cons))
        }));
    }
    barrier.wait().await;
    let mut all = Vec::new();
    let mut keep = Vec::new();
    for t in tasks {
        let (s, a, b) = t.await??;
        all.extend(s);
        keep.push((a, b));
    }
    all.sort_unstable();
    drop(keep);
    Ok(json!({
        "pairs": p, "sessions_per_pair": sessions, "samples": all.len(),
        "setup_us": {"p50": pct(&all, 0.5), "p99": pct(&all, 0.99), "max": pct(&all, 1.0)},
    }))
}
