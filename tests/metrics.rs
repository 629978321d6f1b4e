//! The node's `/metrics`, read by the official Python Prometheus client's parser
//! (`tests/tools/promparse.py`): gauges that match what is connected, counters that grow by
//! what happened, on one node and across two. Real nodes, real Redis.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use cluster_tests::{http_get, Node, Peer, Redis};
use serde_json::{json, Value};

const V2: &str = "gstwebrtc-cluster.v2";

/// A scrape of `port`: every sample as (name, labels, value), parsed by prometheus_client.
async fn scrape(port: u16) -> Result<Vec<(String, Value, f64)>> {
    let (status, text) = http_get(port, "/metrics").await?;
    anyhow::ensure!(status == 200, "/metrics: {status}");
    let mut child = Command::new(cluster_tests::k8s::tool("venv/bin/python"))
        .arg(cluster_tests::manifest_dir().join("tools/promparse.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    use std::io::Write;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "the parser refused our /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let samples: Vec<(String, Value, f64)> = serde_json::from_slice(&out.stdout)?;
    Ok(samples)
}

/// The sum of the samples named `name` whose labels include `labels`.
fn sum(samples: &[(String, Value, f64)], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l[*k] == *v))
        .map(|(_, _, v)| v)
        .sum()
}

fn ice(session: &str, i: usize) -> Value {
    json!({"type": "peer", "sessionId": session, "ice": {"candidate": format!("c{i}"), "sdpMLineIndex": 0}})
}

#[tokio::test]
async fn connected_peers_sessions_and_relayed_messages_match_what_happened_on_two_nodes(
) -> Result<()> {
    let redis = Redis::start().await?;
    let a = Node::join(&redis, "node-a", &[]).await?;
    let b = Node::join(&redis, "node-b", &[]).await?;
    let mut producer = Peer::connect(&a.url()).await?;
    producer
        .set_status(&["producer"], json!({"name": "cam"}))
        .await?;
    let mut near = Peer::connect_with(&a.url(), Some(V2)).await?;
    let mut listener = Peer::connect(&a.url()).await?;
    listener.set_status(&["listener"], json!({})).await?;
    let mut far = Peer::connect(&b.url()).await?;
    let local = cluster_tests::start_session(&mut producer, &mut near).await?;
    let cross = cluster_tests::start_session(&mut producer, &mut far).await?;
    for i in 0..5 {
        near.send(ice(&local, i)).await?;
        producer.wait_for("peer").await?;
    }
    for i in 0..3 {
        far.send(ice(&cross, i)).await?;
        producer.wait_for("peer").await?;
    }
    producer.send(ice(&cross, 9)).await?;
    far.wait_for("peer").await?;

    // (the live nodes are refreshed every liveness tick)
    cluster_tests::eventually(Duration::from_secs(10), "two live nodes", || async {
        scrape(a.port)
            .await
            .is_ok_and(|s| sum(&s, "gwc_cluster_nodes", &[]) == 2.0)
    })
    .await?;
    let on_a = scrape(a.port).await?;
    assert_eq!(sum(&on_a, "gwc_connected_peers", &[]), 3.0, "{on_a:?}");
    assert_eq!(
        sum(&on_a, "gwc_connected_peers", &[("protocol", "v2")]),
        1.0
    );
    assert_eq!(
        sum(&on_a, "gwc_connected_peers", &[("role", "producer")]),
        1.0
    );
    assert_eq!(
        sum(&on_a, "gwc_connected_peers", &[("role", "listener")]),
        1.0
    );
    assert_eq!(sum(&on_a, "gwc_sessions", &[("scope", "local")]), 1.0);
    assert_eq!(sum(&on_a, "gwc_sessions", &[("scope", "cross_node")]), 1.0);
    // Counted where the message came in: 5 local, 1 sent to node B.
    let relayed = "gwc_relayed_messages_total";
    assert_eq!(sum(&on_a, relayed, &[("path", "local")]), 5.0);
    assert_eq!(sum(&on_a, relayed, &[("path", "cross_node")]), 1.0);
    assert!(sum(&on_a, "gwc_relayed_bytes_total", &[("path", "local")]) > 5.0 * 30.0);
    assert_eq!(
        sum(&on_a, "gwc_client_messages_total", &[("type", "peer")]),
        6.0
    );
    assert_eq!(sum(&on_a, "gwc_redis_up", &[]), 1.0);
    assert!(sum(&on_a, "process_resident_memory_bytes", &[]) > 1e6);
    let on_b = scrape(b.port).await?;
    assert_eq!(sum(&on_b, "gwc_connected_peers", &[]), 1.0);
    assert_eq!(sum(&on_b, relayed, &[("path", "cross_node")]), 3.0);
    assert_eq!(sum(&on_b, relayed, &[("path", "local")]), 0.0);
    Ok(())
}

#[tokio::test]
async fn errors_and_closes_are_counted_by_code_and_reason() -> Result<()> {
    let node = Node::start(&["--max-messages-per-sec", "5"]).await?;
    let mut p = Peer::connect_with(&node.url(), Some(V2)).await?;
    p.send(json!({"type": "startSession", "peerId": "nobody"}))
        .await?;
    p.wait_for("error").await?;
    for _ in 0..30 {
        if p.send(json!({"type": "list"})).await.is_err() {
            break;
        }
    }
    p.closed().await?;
    let mut q = Peer::connect(&node.url()).await?;
    q.send_text("not json".into()).await?;
    q.wait_for("error").await?;
    q.close().await;
    cluster_tests::eventually(Duration::from_secs(10), "the closes counted", || async {
        let s = scrape(node.port).await.unwrap_or_default();
        sum(
            &s,
            "gwc_connection_closes_total",
            &[("reason", "rate_limited")],
        ) == 1.0
            && sum(&s, "gwc_connection_closes_total", &[("reason", "client")]) == 1.0
    })
    .await?;
    let s = scrape(node.port).await?;
    assert_eq!(
        sum(&s, "gwc_errors_sent_total", &[("code", "unknown-peer")]),
        1.0
    );
    assert_eq!(
        sum(&s, "gwc_errors_sent_total", &[("code", "rate-limited")]),
        1.0
    );
    assert_eq!(
        sum(
            &s,
            "gwc_errors_sent_total",
            &[("code", "malformed-message")]
        ),
        1.0
    );
    assert_eq!(
        sum(&s, "gwc_client_messages_total", &[("type", "invalid")]),
        1.0
    );
    Ok(())
}

#[tokio::test]
async fn a_redis_restart_moves_redis_up_and_metrics_addr_moves_the_endpoint() -> Result<()> {
    let redis = Redis::start().await?;
    let port = redis.port;
    let metrics_port = cluster_tests::free_port();
    let addr = format!("127.0.0.1:{metrics_port}");
    let node = Node::join(
        &redis,
        "node-m",
        &["--metrics-addr", &addr, "--redis-timeout", "0.5"],
    )
    .await?;
    assert_eq!(
        http_get(node.port, "/metrics").await?.0,
        404,
        "not on the main port"
    );
    let up = |s: &[(String, Value, f64)]| sum(s, "gwc_redis_up", &[]);
    assert_eq!(up(&scrape(metrics_port).await?), 1.0);
    drop(redis);
    cluster_tests::eventually(Duration::from_secs(20), "redis_up 0", || async {
        scrape(metrics_port).await.is_ok_and(|s| up(&s) == 0.0)
    })
    .await?;
    let _again = Redis::start_on(port).await?;
    cluster_tests::eventually(Duration::from_secs(30), "redis_up 1", || async {
        scrape(metrics_port).await.is_ok_and(|s| up(&s) == 1.0)
    })
    .await?;
    let s = scrape(metrics_port).await?;
    assert!(sum(&s, "gwc_redis_reconnects_total", &[]) >= 1.0, "{s:?}");
    Ok(())
}

/// The agents' metrics are encoded as the nodes' are, and parse the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_metrics_parse_as_openmetrics_and_keep_their_names() -> Result<()> {
    let _one = cluster_tests::media::exclusive().await;
    let node = Node::start(&[]).await?;
    let port = cluster_tests::free_port();
    let addr = format!("127.0.0.1:{port}");
    let _producer = cluster_tests::agent::Agent::producer(&[
        "--server",
        &node.url(),
        "--name",
        "cam",
        "--metrics-addr",
        &addr,
    ])?;
    cluster_tests::eventually(
        Duration::from_secs(30),
        "the producer's metrics",
        || async {
            scrape(port)
                .await
                .is_ok_and(|s| s.iter().any(|(n, _, _)| n == "producer_info"))
        },
    )
    .await?;
    let samples = scrape(port).await?;
    // (a sum over no sample is 0 too: the series must be there)
    let consumers: Vec<_> = samples
        .iter()
        .filter(|(n, _, _)| n == "producer_consumers")
        .collect();
    assert_eq!(consumers.len(), 1, "{samples:?}");
    assert_eq!(consumers[0].2, 0.0, "{samples:?}");
    assert_eq!(
        sum(&samples, "producer_info", &[("name", "cam")]),
        1.0,
        "{samples:?}"
    );
    Ok(())
}

/// With nobody connected every label set of `gwc_connected_peers` reads 0 (not "no data"),
/// and the process' CPU time is the counter `process_cpu_seconds_total` dashboards `rate()`.
#[tokio::test]
async fn connected_peers_read_zero_when_nobody_is_connected_and_cpu_time_is_a_counter() -> Result<()>
{
    let node = Node::start(&[]).await?;
    let every = |s: &[(String, Value, f64)]| {
        let mut sets = Vec::new();
        for protocol in ["v1", "v2"] {
            for role in ["producer", "consumer", "listener", "none"] {
                let n = s
                    .iter()
                    .filter(|(n, l, _)| {
                        n == "gwc_connected_peers" && l["protocol"] == protocol && l["role"] == role
                    })
                    .map(|(_, _, v)| *v)
                    .collect::<Vec<_>>();
                sets.push(((protocol, role), n));
            }
        }
        sets
    };
    let samples = scrape(node.port).await?;
    for (set, values) in every(&samples) {
        assert_eq!(values, vec![0.0], "{set:?}: {samples:?}");
    }
    let mut producer = Peer::connect_with(&node.url(), Some(V2)).await?;
    producer
        .set_status(&["producer"], json!({"name": "cam"}))
        .await?;
    producer.sync().await?;
    let samples = scrape(node.port).await?;
    for ((protocol, role), values) in every(&samples) {
        let want = if (protocol, role) == ("v2", "producer") {
            1.0
        } else {
            0.0
        };
        assert_eq!(values, vec![want], "{protocol} {role}: {samples:?}");
    }
    producer.close().await;
    cluster_tests::eventually(Duration::from_secs(10), "back to zero", || async {
        scrape(node.port)
            .await
            .is_ok_and(|s| every(&s).iter().all(|(_, v)| v == &vec![0.0]))
    })
    .await?;

    let (_, text) = http_get(node.port, "/metrics").await?;
    assert!(
        text.contains("# TYPE process_cpu_seconds counter"),
        "{text}"
    );
    let samples = scrape(node.port).await?;
    let cpu: Vec<&f64> = samples
        .iter()
        .filter(|(n, _, _)| n.starts_with("process_cpu_seconds"))
        .map(|(n, _, v)| {
            assert_eq!(n, "process_cpu_seconds_total");
            v
        })
        .collect();
    assert!(cpu.len() == 1 && *cpu[0] >= 0.0, "{samples:?}");
    Ok(())
}
