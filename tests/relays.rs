//! relay-agent: a stream received once and served again without re-encoding, across nodes of
//! a real cluster (real Redis, real agents).

use std::time::Duration;

use anyhow::{Context, Result};
use cluster_tests::agent::Agent;
use cluster_tests::{media, Node, Redis};

const LONG: Duration = Duration::from_secs(90);

fn frames_now(c: &Agent) -> u64 {
    c.json_lines("consumer-stats")
        .last()
        .and_then(|l| l["frames"].as_u64())
        .unwrap_or(0)
}

/// The origin on node A, a relay on node B, four viewers of the relay on node C: every viewer
/// gets frames, the origin serves one session (the relay's), the relay decodes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_on_another_node_serves_four_viewers_from_one_origin_session() -> Result<()> {
    let _one = media::exclusive().await;
    let redis = Redis::start().await?;
    let a = Node::join(&redis, "node-a", &[]).await?;
    let b = Node::join(&redis, "node-b", &[]).await?;
    let c = Node::join(&redis, "node-c", &[]).await?;
    let origin = Agent::producer(&[
        "--server",
        &a.url(),
        "--name",
        "stage",
        "--stats-interval",
        "0.2",
    ])?;
    let relay = Agent::spawn(
        "relay-agent",
        &[
            "--server",
            &b.url(),
            "--source-name",
            "stage",
            "--name",
            "stage-relay",
            "--stats-interval",
            "0.2",
        ],
    )?;
    let viewers: Vec<Agent> = (0..4)
        .map(|_| {
            Agent::consumer(&[
                "--server",
                &c.url(),
                "--producer-name",
                "stage-relay",
                "--sink",
                "encoded",
                "--stats-interval",
                "0.2",
            ])
        })
        .collect::<Result<_>>()?;
    for v in &viewers {
        v.wait(LONG, "30 frames through the relay", |v| frames_now(v) >= 30)
            .await?;
    }
    relay
        .wait(LONG, "four consumers of the relay", |r| {
            r.json_lines("relay-stats")
                .last()
                .is_some_and(|s| s["consumers"].as_u64() == Some(4))
        })
        .await?;
    let stats = relay
        .json_lines("relay-stats")
        .pop()
        .context("no relay stats")?;
    assert!(stats["frames_in"].as_u64() > Some(30), "{stats}");
    assert!(stats["keyframe_requests"].as_u64() >= Some(1), "{stats}");
    let served = origin
        .json_lines("producer-stats")
        .pop()
        .context("no origin stats")?;
    assert_eq!(
        served["consumers"].as_array().map(Vec::len),
        Some(1),
        "the origin serves the relay only: {served}"
    );
    assert_eq!(stats["origin_id"], served["peer_id"], "{stats} {served}");
    Ok(())
}
