//! The SFU benchmark's light viewer (`tests/loadgen/src/light_viewer.rs`, run as
//! `loadgen --watch`) checked against a consumer-agent on the same relay: both log every
//! frame's hash (consumer-agent's `--frame-log`), and over the time both watched they must
//! have the same frames. Real node, producer-agent, relay-agent and consumer-agent.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use cluster_tests::agent::Agent;
use cluster_tests::consumer::frames_now;
use cluster_tests::{eventually, Node};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(90);

/// `HASH UNIX_MICROS` lines.
fn frame_log(path: &Path) -> Result<Vec<(String, u64)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let (h, at) = l.split_once(' ')?;
            Some((h.to_string(), at.parse().ok()?))
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn light_viewers_get_the_frames_a_consumer_agent_gets_through_a_relay() -> Result<()> {
    let node = Node::start(&[]).await?;
    let url = node.url();
    let port = url
        .rsplit(':')
        .next()
        .context("port")?
        .trim_end_matches('/');
    // (640x360: frames of several packets, which the viewer must put together)
    let _origin = Agent::spawn(
        "producer-agent",
        &[
            "--server",
            &url,
            "--name",
            "lv",
            "--video-codec",
            "vp8",
            "--width",
            "640",
            "--height",
            "360",
        ],
    )?;
    let _relay = Agent::spawn(
        "relay-agent",
        &[
            "--server",
            &url,
            "--source-name",
            "lv",
            "--name",
            "lv-relay",
        ],
    )?;
    let dir = std::env::temp_dir().join(format!("light-viewer-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let consumer_log = dir.join("consumer.log");
    let consumer = Agent::consumer(&[
        "--server",
        &url,
        "--producer-name",
        "lv-relay",
        "--sink",
        "encoded",
        "--stats-interval",
        "0.2",
        "--frame-log",
        consumer_log.to_str().context("path")?,
    ])?;
    eventually(LONG, "frames at the consumer-agent", || async {
        frames_now(&consumer) > 0
    })
    .await?;
    let mut light = Agent::spawn(
        "loadgen",
        &[
            "--watch",
            &format!("lv-relay@{port}"),
            "--watch-viewers",
            "2",
            "--watch-seconds",
            "12",
            "--frame-log-dir",
            dir.to_str().context("path")?,
        ],
    )?;
    let code = light.exit_within(LONG).await?;
    assert_eq!(code, Some(0), "loadgen --watch: {}", light.stderr());
    drop(consumer);
    let last: Value = light
        .json_lines("viewers-stats")
        .pop()
        .context("no viewers-stats")?;
    let consumer_frames = frame_log(&consumer_log)?;
    let by_hash: HashMap<&str, u64> = consumer_frames
        .iter()
        .map(|(h, at)| (h.as_str(), *at))
        .collect();
    let (c_first, c_last) = (consumer_frames[0].1, consumer_frames.last().unwrap().1);
    for (i, v) in last["viewers"]
        .as_array()
        .context("viewers")?
        .iter()
        .enumerate()
    {
        assert!(v["ended"].is_null(), "viewer {i} ended: {v}");
        assert!(v["connected"] == true, "viewer {i}: {v}");
        // loopback: a retransmission repairs what little is lost
        let (packets, lost) = (v["packets"].as_u64().unwrap(), v["lost"].as_u64().unwrap());
        assert!(
            lost * 200 <= packets,
            "viewer {i} lost {lost} of {packets}: {v}"
        );
        assert!(v["first_frame_ms"].as_u64().is_some(), "viewer {i}: {v}");
        let frames = frame_log(&dir.join(format!("viewer-{i}.log")))?;
        // the frames both saw: from a second after the later start to a second before the
        // earlier end (a frame at the edge may reach one of them only)
        let (from, to) = (
            frames[0].1.max(c_first) + 1_000_000,
            frames.last().unwrap().1.min(c_last) - 1_000_000,
        );
        let mine: Vec<&(String, u64)> = frames
            .iter()
            .filter(|(_, at)| (from..=to).contains(at))
            .collect();
        let theirs = consumer_frames
            .iter()
            .filter(|(_, at)| (from..=to).contains(at))
            .count();
        assert!(
            mine.len() >= 100,
            "viewer {i}: only {} frames in 8 s",
            mine.len()
        );
        let matched = mine
            .iter()
            .filter(|(h, _)| by_hash.contains_key(h.as_str()))
            .count();
        // every frame the light viewer counted is one the consumer-agent got, and the counts
        // agree within 2 % (frames at the window's edges)
        assert!(
            matched * 100 >= mine.len() * 99,
            "viewer {i}: {matched} of {} frames known to the consumer-agent",
            mine.len()
        );
        let diff = (mine.len() as i64 - theirs as i64).unsigned_abs() as usize;
        assert!(
            diff * 50 <= theirs.max(1) + 100,
            "viewer {i}: {} frames, the consumer-agent {theirs} over the same time",
            mine.len()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
