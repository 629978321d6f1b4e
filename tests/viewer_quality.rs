//! What a consumer-agent reports of the video it receives (issue 26), with real agents: the
//! resolution, fps, bitrate and frozen time of each interval; the frozen total and the number
//! of switches (changes of the received resolution) in its final line; and its
//! `--max-height` reaching the producer side.

use std::time::Duration;

use anyhow::{Context, Result};
use cluster_tests::agent::{quick, Agent};
use cluster_tests::consumer::{frames_now, stop_cleanly};
use cluster_tests::{media, Node, Peer};
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(90);

fn stats(c: &Agent) -> Vec<Value> {
    c.json_lines("consumer-stats")
}

fn frozen_ms(lines: &[Value]) -> u64 {
    lines.iter().filter_map(|l| l["frozen_ms"].as_u64()).sum()
}

fn producer(node: &Node, name: &str, width: u32, height: u32) -> Result<Agent> {
    Agent::spawn(
        "producer-agent",
        &[
            "--server",
            &node.url(),
            "--name",
            name,
            "--width",
            &width.to_string(),
            "--height",
            &height.to_string(),
        ],
    )
}

fn consumer(node: &Node, name: &str) -> Result<Agent> {
    Agent::consumer(&[
        "--server",
        &node.url(),
        "--producer-name",
        name,
        "--stats-interval",
        "0.25",
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_time_rises_while_the_producer_is_stopped_and_stays_near_zero_while_it_flows(
) -> Result<()> {
    let _one = media::exclusive().await;
    let node = Node::start(&[]).await?;
    let producer = producer(&node, "quality-freeze", 320, 240)?;
    let mut consumer = consumer(&node, "quality-freeze")?;
    consumer
        .wait(LONG, "90 frames", |c| frames_now(c) >= 90)
        .await?;
    // flowing: resolution, fps and bitrate every interval, and (almost) never frozen
    let flowing = stats(&consumer);
    let last = flowing.last().context("no stats")?.clone();
    assert_eq!(
        (last["width"].as_u64(), last["height"].as_u64()),
        (Some(320), Some(240)),
        "{last}"
    );
    assert!(last["fps"].as_f64().unwrap_or(0.0) > 0.0, "{last}");
    assert!(
        last["video_bitrate_bps"].as_f64().unwrap_or(0.0) > 0.0,
        "{last}"
    );
    let before = frozen_ms(&flowing);
    // (a loaded machine may hold a frame back now and then; a stopped producer is seconds)
    assert!(
        before < 1000,
        "frozen {before} ms while flowing: {flowing:?}"
    );

    // the producer's media stops for a while: the intervals show the freeze as it lasts
    producer.signal(libc::SIGSTOP);
    let stopped = stats(&consumer).len();
    let frozen_since = |c: &Agent| frozen_ms(&stats(c)[stopped..]);
    let waited = consumer
        .wait(LONG, "2 s frozen", |c| frozen_since(c) >= 2000)
        .await;
    producer.signal(libc::SIGCONT);
    waited?;
    let frames = frames_now(&consumer);
    consumer
        .wait(LONG, "frames again", |c| frames_now(c) >= frames + 60)
        .await?;

    stop_cleanly(&mut consumer).await?;
    let report = consumer.report()?;
    let total = report["frozen_total_ms"]
        .as_u64()
        .context("frozen_total_ms")?;
    assert!(total >= 2000, "{report}");
    assert_eq!(report["switches"], 0, "{report}");
    Ok(())
}

/// The producer of the name is replaced by one of another resolution: the consumer finds it
/// again and receives the new size, one switch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_of_the_received_resolution_counts_as_a_switch() -> Result<()> {
    let _one = media::exclusive().await;
    let node = Node::start(&[]).await?;
    let mut first = producer(&node, "quality-switch", 320, 240)?;
    let mut consumer = consumer(&node, "quality-switch")?;
    let height_now = |c: &Agent| stats(c).last().and_then(|l| l["height"].as_u64());
    consumer
        .wait(LONG, "240 lines", |c| height_now(c) == Some(240))
        .await?;
    assert_eq!(stats(&consumer).last().unwrap()["switches"], 0);
    first.signal(libc::SIGINT);
    first.exit_within(LONG).await?;
    let _second = producer(&node, "quality-switch", 160, 120)?;
    consumer
        .wait(LONG, "120 lines", |c| height_now(c) == Some(120))
        .await?;
    let last = stats(&consumer).last().unwrap().clone();
    assert_eq!(
        (last["width"].as_u64(), last["switches"].as_u64()),
        (Some(160), Some(1)),
        "{last}"
    );
    stop_cleanly(&mut consumer).await?;
    let report = consumer.report()?;
    assert_eq!(report["switches"], 1, "{report}");
    Ok(())
}

/// `--max-height` is what the producer side is given (a v2 raw peer as the producer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_height_reaches_the_producer_side() -> Result<()> {
    let node = Node::start(&[]).await?;
    let mut p = Peer::connect_with(&node.url(), Some("gstwebrtc-cluster.v2")).await?;
    p.set_status(&["producer"], json!({"name": "capped"}))
        .await?;
    let mut consumer = Agent::consumer(&[
        "--server",
        &node.url(),
        "--producer-name",
        "capped",
        "--max-height",
        "360",
    ])?;
    let start = tokio::time::timeout(LONG, p.wait_for("startSession")).await??;
    assert_eq!(start["maxHeight"], 360, "{start}");
    consumer.signal(libc::SIGINT);
    consumer.exit_within(LONG).await?;
    for bad in ["0", "8193", "-1", "1.5"] {
        let (code, stderr) = quick("consumer-agent", &["--first", "--max-height", bad]).await?;
        assert_eq!(code, Some(2), "{bad}: {stderr}");
        assert!(stderr.contains("--max-height"), "{bad}: {stderr}");
    }
    Ok(())
}

/// `--sink encoded` (count frames without decoding) of an origin that also sends audio: the
/// audio pad gets its own sink and the session keeps going (the audio sink's description once
/// started with caps, which gst_parse reads as an element: "no element audio", and the
/// unlinked pad stopped the stream with "Internal data stream error").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encoded_sink_counts_frames_of_an_origin_with_audio() -> Result<()> {
    let _one = media::exclusive().await;
    let node = Node::start(&[]).await?;
    let url = node.url();
    let _producer = Agent::spawn(
        "producer-agent",
        &["--server", &url, "--name", "encoded-audio", "--audio"],
    )?;
    let mut consumer = Agent::consumer(&[
        "--server",
        &url,
        "--producer-name",
        "encoded-audio",
        "--sink",
        "encoded",
        "--stats-interval",
        "0.25",
    ])?;
    consumer
        .wait(LONG, "60 frames counted", |c| frames_now(c) >= 60)
        .await?;
    assert!(
        !consumer.stderr().contains("cannot handle audio"),
        "{}",
        consumer.stderr()
    );
    stop_cleanly(&mut consumer).await?;
    Ok(())
}
