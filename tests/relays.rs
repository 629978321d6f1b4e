//! relay-agent: a stream received once and served again without re-encoding, across nodes of
//! a real cluster (real Redis, real agents).

use std::time::Duration;

use anyhow::{Context, Result};
use cluster_tests::agent::Agent;
use cluster_tests::{media, Node, Peer, Redis, Topo};

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

/// A relay of a relay (depth 2) delivers frames, and says in its meta what it relays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_of_a_relay_delivers_frames_and_names_its_depth() -> Result<()> {
    let _one = media::exclusive().await;
    let redis = Redis::start().await?;
    let a = Node::join(&redis, "node-a", &[]).await?;
    let b = Node::join(&redis, "node-b", &[]).await?;
    let _origin = Agent::producer(&["--server", &a.url(), "--name", "tree"])?;
    let relay = |node: &Node, source: &str, name: &str| {
        Agent::spawn(
            "relay-agent",
            &[
                "--server",
                &node.url(),
                "--source-name",
                source,
                "--name",
                name,
                "--max-consumers",
                "10",
            ],
        )
    };
    let first = relay(&b, "tree", "tree-1")?;
    let second = relay(&a, "tree-1", "tree-2")?;
    let viewer = Agent::consumer(&[
        "--server",
        &b.url(),
        "--producer-name",
        "tree-2",
        "--sink",
        "encoded",
        "--stats-interval",
        "0.2",
    ])?;
    viewer
        .wait(LONG, "30 frames two relays down", |v| frames_now(v) >= 30)
        .await?;
    // What a stock client listing producers sees.
    let mut lister = Peer::connect(&a.url()).await?;
    let list = Topo::list_until(&mut lister, false, |l| {
        l["producers"].as_array().map(Vec::len) == Some(3)
    })
    .await?;
    let meta_of = |name: &str| {
        list["producers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["meta"]["name"] == name)
            .map(|p| (p["id"].clone(), p["meta"].clone()))
            .with_context(|| format!("{name} not listed: {list}"))
    };
    let (origin_id, _) = meta_of("tree")?;
    let (first_id, first_meta) = meta_of("tree-1")?;
    let (_, second_meta) = meta_of("tree-2")?;
    assert_eq!(first_meta["relay-of"], origin_id, "{list}");
    assert_eq!(first_meta["depth"], "1", "{list}");
    assert_eq!(second_meta["relay-of"], first_id, "{list}");
    assert_eq!(second_meta["depth"], "2", "{list}");
    assert_eq!(
        second_meta["stream"], "tree",
        "the stream is the origin's: {list}"
    );
    assert_eq!(second_meta["capacity"], "10", "{list}");
    drop((first, second));
    Ok(())
}

/// Viewers asking for a stream by name (`consumer-agent --stream`) are spread over two relays
/// of capacity 2 on other nodes; the origin serves the relays only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_asking_for_a_stream_are_spread_over_its_relays_not_the_origin() -> Result<()> {
    let _one = media::exclusive().await;
    let redis = Redis::start().await?;
    let a = Node::join(&redis, "node-a", &[]).await?;
    let b = Node::join(&redis, "node-b", &[]).await?;
    let c = Node::join(&redis, "node-c", &[]).await?;
    let origin = Agent::producer(&[
        "--server",
        &a.url(),
        "--name",
        "show",
        "--encoding",
        "shared",
        "--stats-interval",
        "0.2",
    ])?;
    let relays: Vec<Agent> = [("show-1", &b), ("show-2", &c)]
        .iter()
        .map(|(name, node)| {
            Agent::spawn(
                "relay-agent",
                &[
                    "--server",
                    &node.url(),
                    "--source-name",
                    "show",
                    "--name",
                    name,
                    "--max-consumers",
                    "2",
                    "--stats-interval",
                    "0.2",
                ],
            )
        })
        .collect::<Result<_>>()?;
    let mut lister = Peer::connect(&c.url()).await?;
    Topo::list_until(&mut lister, false, |l| {
        l["producers"].as_array().map(Vec::len) == Some(3)
    })
    .await?;
    let viewers: Vec<Agent> = (0..4)
        .map(|_| {
            Agent::consumer(&[
                "--server",
                &c.url(),
                "--stream",
                "show",
                "--sink",
                "encoded",
                "--stats-interval",
                "0.2",
            ])
        })
        .collect::<Result<_>>()?;
    for v in &viewers {
        v.wait(LONG, "30 frames of the stream", |v| frames_now(v) >= 30)
            .await?;
    }
    for r in &relays {
        r.wait(LONG, "two viewers on each relay", |r| {
            r.json_lines("relay-stats")
                .last()
                .is_some_and(|s| s["consumers"].as_u64() == Some(2))
        })
        .await?;
    }
    let served = origin
        .json_lines("producer-stats")
        .pop()
        .context("no origin stats")?;
    assert_eq!(
        served["consumers"].as_array().map(Vec::len),
        Some(2),
        "the origin serves the two relays only: {served}"
    );
    Ok(())
}
