//! Measures the signalling relay round trip: a producer and a consumer in a session
//! ping-pong ICE-sized `peer` messages through the node(s) and print percentiles.
//!
//!     relay-rtt PRODUCER_URL CONSUMER_URL [ROUNDS]
//!
//! Give the same URL twice for a same-node round trip, or two nodes of a cluster for a
//! cross-node one. A first step towards the load generator of the benchmark issue.

use std::time::Instant;

use anyhow::{Context, Result};
use cluster_tests::{Peer, Topo};
use serde_json::{json, Value};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (p_url, c_url) = (
        args.get(1)
            .context("usage: relay-rtt PRODUCER_URL CONSUMER_URL [ROUNDS]")?,
        args.get(2)
            .context("usage: relay-rtt PRODUCER_URL CONSUMER_URL [ROUNDS]")?,
    );
    let rounds: usize = args.get(3).map_or(Ok(2000), |r| r.parse())?;

    let mut p = Peer::connect(p_url).await?;
    p.set_status(&["producer"], Value::Null).await?;
    let mut c = Peer::connect(c_url).await?;
    Topo::visible(&mut c, &p.id, false).await?;
    c.send(json!({"type": "startSession", "peerId": p.id}))
        .await?;
    let sid = c.expect("sessionStarted").await?["sessionId"].clone();
    p.expect("startSession").await?;

    // a realistic ICE candidate, about 150 bytes on the wire
    let candidate = "candidate:842163049 1 udp 1677729535 192.0.2.17 49203 typ srflx raddr 10.0.0.5 rport 49203 generation 0";
    let mut samples = Vec::with_capacity(rounds);
    for i in 0..rounds + 100 {
        let start = Instant::now();
        p.send(json!({"type": "peer", "sessionId": sid, "ice": {"candidate": candidate, "sdpMLineIndex": 0}}))
            .await?;
        c.expect("peer").await?;
        c.send(json!({"type": "peer", "sessionId": sid, "ice": {"candidate": candidate, "sdpMLineIndex": 0}}))
            .await?;
        p.expect("peer").await?;
        if i >= 100 {
            samples.push(start.elapsed().as_micros() as u64); // after warm-up
        }
    }
    samples.sort_unstable();
    let pct = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    println!(
        "{}",
        json!({"rounds": rounds, "rtt_us": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "max": pct(1.0)}})
    );
    Ok(())
}
