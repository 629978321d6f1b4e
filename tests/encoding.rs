//! Shared encoding (`producer-agent --encoding shared`): one encoder for every consumer, its
//! bitrate following the consumers' estimates (one of them behind a narrow link in a network
//! namespace), keyframe requests coalesced, and `consumer-agent --sink encoded`, which counts
//! frames without decoding. Real agents (webrtcsink, webrtcsrc) on a real node.

use std::time::Duration;

use anyhow::{Context, Result};
use cluster_tests::agent::Agent;
use cluster_tests::netns::Namespace;
use cluster_tests::{bin, free_port, media, Node};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(90);

/// A consumer-agent of producer `name` on `node` with `sink`, stats every 0.2 s.
fn consumer(node: &Node, name: &str, sink: &str) -> Result<Agent> {
    Agent::consumer(&[
        "--server",
        &node.url(),
        "--producer-name",
        name,
        "--sink",
        sink,
        "--stats-interval",
        "0.2",
    ])
}

fn frames_now(c: &Agent) -> u64 {
    c.json_lines("consumer-stats")
        .last()
        .and_then(|l| l["frames"].as_u64())
        .unwrap_or(0)
}

/// Waits until `c` counted `n` frames.
async fn frames(c: &Agent, n: u64) -> Result<()> {
    c.wait(LONG, &format!("{n} frames"), |c| frames_now(c) >= n)
        .await
}

/// The producer's latest stats line once it serves `n` consumers.
async fn serving(p: &Agent, n: usize) -> Result<Value> {
    p.wait(LONG, &format!("{n} consumers in the stats"), |p| {
        p.json_lines("producer-stats")
            .last()
            .and_then(|l| l["consumers"].as_array().map(Vec::len))
            == Some(n)
    })
    .await?;
    p.json_lines("producer-stats")
        .pop()
        .context("no producer stats")
}

/// Stops `c` with SIGINT and returns its report.
async fn report(c: &mut Agent) -> Result<Value> {
    c.signal(libc::SIGINT);
    assert_eq!(c.exit_within(LONG).await?, Some(0), "{}", c.stderr());
    c.report()
}

/// Three consumers of one shared encoder, the third joining a running stream: all get
/// frames, the producer's pipeline holds one video encoder and webrtcsink none per consumer,
/// and the late one's first frame is a keyframe forced for it.
async fn three_consumers_share_one_encoder(
    codec: &str,
    encoder: &str,
    decoder: &str,
) -> Result<()> {
    let _one = media::exclusive().await;
    let node = Node::start(&[]).await?;
    let name = format!("shared-{codec}");
    let producer = Agent::producer(&[
        "--server",
        &node.url(),
        "--name",
        &name,
        "--encoding",
        "shared",
        "--video-codec",
        codec,
        "--bitrate",
        "500000",
        "--min-bitrate",
        "300000",
        "--max-bitrate",
        "800000",
        "--stats-interval",
        "0.2",
    ])?;
    let mut first = consumer(&node, &name, "encoded")?;
    // One decodes, to show what the encoded sink leaves out.
    let mut decoding = consumer(&node, &name, "null")?;
    frames(&first, 30).await?;
    frames(&decoding, 30).await?;
    let before = serving(&producer, 2).await?;
    // The late one: a stock webrtcsrc keeping what it receives encoded, which sees whether
    // its first frame is a keyframe (no delta frame before it: nothing it could decode).
    let producer_id = before["peer_id"].as_str().context("producer id")?;
    let (_late, late) = media::encoded_consumer(&node.url(), producer_id)?;
    cluster_tests::eventually(LONG, "30 frames at the late consumer", || async {
        late.count() >= 30
    })
    .await?;
    assert_eq!(
        late.first_is_keyframe(),
        Some(true),
        "the late consumer's first frame is not a keyframe"
    );

    let stats = serving(&producer, 3).await?;
    assert_eq!(stats["encoding"], "shared", "{stats}");
    assert_eq!(
        stats["pipeline_encoders"],
        serde_json::json!([encoder]),
        "one encoder in the producer's pipeline: {stats}"
    );
    for c in stats["consumers"].as_array().into_iter().flatten() {
        assert_eq!(
            c["encoders"],
            serde_json::json!([]),
            "webrtcsink encodes nothing: {stats}"
        );
        assert!(c["packets_sent"].as_u64() > Some(0), "{stats}");
    }
    let shared = &stats["shared_encoder"];
    assert_eq!(shared["codec"], format!("video/x-{codec}"), "{stats}");
    let forced = |s: &Value| {
        s["shared_encoder"]["keyframes_forced"]
            .as_u64()
            .unwrap_or(0)
    };
    assert!(
        forced(&stats) > forced(&before),
        "none forced for the late one: {stats}"
    );

    let r = report(&mut first).await?;
    assert_eq!(r["decoders"], serde_json::json!([]), "nothing decoded: {r}");
    assert!(r["frames"].as_u64() >= Some(30), "{r}");
    let r = report(&mut decoding).await?;
    let decoders: Vec<&str> = r["decoders"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    assert!(decoders.contains(&decoder), "the null sink decodes: {r}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vp8_consumers_share_one_encoder_and_a_late_one_gets_a_keyframe() -> Result<()> {
    three_consumers_share_one_encoder("vp8", "vp8enc", "vp8dec").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h264_consumers_share_one_encoder_and_a_late_one_gets_a_keyframe() -> Result<()> {
    three_consumers_share_one_encoder("h264", "x264enc", "avdec_h264").await
}

/// The shared encoder's bitrate follows its consumers' congestion-control estimates: at the
/// --max-bitrate bound while both links are fast, then down with the estimate of the consumer
/// whose link narrows. That one runs in a network namespace of its own (libnice leaves
/// loopback out, so its media crosses the namespace's veth link), and a token bucket on the
/// link caps what reaches it; the source is noise, which the encoder cannot make smaller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_bitrate_follows_a_consumer_whose_link_narrows() -> Result<()> {
    let _one = media::exclusive().await;
    let ns = Namespace::create()?;
    let cmd = std::process::Command::new(bin("signalling-cluster"));
    let node = Node::spawn(cmd, &ns.host_address(), free_port(), &[], &[], false).await?;
    let producer = Agent::producer(&[
        "--server",
        &node.url(),
        "--name",
        "narrow",
        "--source",
        "pipeline:videotestsrc is-live=true pattern=snow ! video/x-raw,width=320,height=240,framerate=30/1",
        "--encoding",
        "shared",
        "--bitrate",
        "500000",
        "--min-bitrate",
        "100000",
        "--max-bitrate",
        "800000",
        "--stats-interval",
        "0.2",
    ])?;
    let near = consumer(&node, "narrow", "encoded")?;
    let mut far = ns.command(&bin("consumer-agent"));
    far.args(["--server", &node.url(), "--producer-name", "narrow"])
        .args(["--sink", "encoded", "--stats-interval", "0.2"]);
    let far = Agent::spawn_command(far, "consumer-agent (in the namespace)")?;
    frames(&near, 30).await?;
    frames(&far, 30).await?;
    let shared = |p: &Agent| {
        let last = p.json_lines("producer-stats").pop();
        let e = last
            .map(|s| s["shared_encoder"].clone())
            .unwrap_or_default();
        let bitrate = e["bitrate_bps"].as_u64().unwrap_or(0);
        let estimates: Vec<u64> = e["estimates_bps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_u64)
            .collect();
        (bitrate, estimates)
    };
    producer
        .wait(
            LONG,
            "the shared bitrate at the bound, two estimates",
            |p| matches!(shared(p), (800_000, e) if e.len() == 2),
        )
        .await?;
    // 300 kbit/s into the namespace: the far consumer's estimate falls, and the bitrate (the
    // weakest of two sets the pace) with it.
    ns.limit_inbound(300)?;
    producer
        .wait(
            LONG,
            "the shared bitrate down with the narrowed estimate",
            |p| matches!(shared(p), (b, e) if b <= 500_000 && e.iter().any(|e| *e <= 500_000)),
        )
        .await?;
    let (bitrate, estimates) = shared(&producer);
    eprintln!("narrowed to 300 kbit/s: shared bitrate {bitrate}, estimates {estimates:?}");
    Ok(())
}

/// Consumers joining together ask for many keyframes (webrtcsink asks on every frame until
/// each gets one); the shared encoder forces at most one per --min-keyframe-interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_joining_at_once_force_few_keyframes() -> Result<()> {
    let _one = media::exclusive().await;
    let node = Node::start(&[]).await?;
    let producer = Agent::producer(&[
        "--server",
        &node.url(),
        "--name",
        "crowd",
        "--encoding",
        "shared",
        "--min-keyframe-interval",
        "1000",
        "--stats-interval",
        "0.2",
    ])?;
    let mut warm = consumer(&node, "crowd", "encoded")?;
    frames(&warm, 10).await?;
    let before = serving(&producer, 1).await?["shared_encoder"].clone();
    let crowd: Vec<Agent> = (0..6)
        .map(|_| consumer(&node, "crowd", "encoded"))
        .collect::<Result<_>>()?;
    for c in &crowd {
        frames(c, 10).await?;
    }
    let after = serving(&producer, 7).await?;
    let count = |v: &Value, k: &str| v[k].as_u64().unwrap_or(0);
    let shared = &after["shared_encoder"];
    let requests = count(shared, "keyframe_requests") - count(&before, "keyframe_requests");
    let forced = count(shared, "keyframes_forced") - count(&before, "keyframes_forced");
    let spread = after["uptime_s"].as_f64().unwrap_or(0.0);
    eprintln!("6 consumers joining: {requests} keyframe requests, {forced} keyframes forced");
    assert!(requests >= 6, "every consumer asked: {after}");
    // At most one a second, since the producer started (a bound that holds however slowly
    // the crowd joins on a loaded machine), and far fewer than asked.
    assert!(
        forced as f64 <= spread + 1.0,
        "{forced} forced in {spread} s: {after}"
    );
    assert!(forced < requests, "{after}");
    report(&mut warm).await?;
    Ok(())
}
