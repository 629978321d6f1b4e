//! Nodes joined over a real `redis-server`: peers on different nodes see, list and session
//! with each other as on one upstream server; a killed node's peers and sessions go away.

use std::time::{Duration, Instant};

use anyhow::Result;
use cluster_tests::{eventually, start_session, Node, Peer, Redis, Topo};
use serde_json::{json, Value};

const QUIET: Duration = Duration::from_millis(300);

/// Three nodes on one Redis, each knowing the others.
async fn cluster(redis: &Redis, extra: &[&str]) -> Result<Vec<Node>> {
    let mut nodes = Vec::new();
    for name in ["node-a", "node-b", "node-c"] {
        nodes.push(Node::join(redis, name, extra).await?);
    }
    for node in &nodes {
        node.wait_cluster(3).await?;
    }
    Ok(nodes)
}

/// A v2 producer on `pn` in a session with a v1 consumer on `cn` (the consumer started it).
async fn v2_producer_in_session(pn: &Node, cn: &Node) -> Result<(Peer, Peer, String)> {
    producer_in_session(pn, cn, Some("gstwebrtc-cluster.v2")).await
}

/// A producer on `pn` (speaking `subprotocol`, v1 if none) in a session with a v1 consumer on
/// `cn` (the consumer started it).
async fn producer_in_session(
    pn: &Node,
    cn: &Node,
    subprotocol: Option<&str>,
) -> Result<(Peer, Peer, String)> {
    let mut p = Peer::connect_with(&pn.url(), subprotocol).await?;
    p.set_status(&["producer"], Value::Null).await?;
    let mut c = Peer::connect(&cn.url()).await?;
    let sid = start_session(&mut p, &mut c).await?;
    Ok((p, c, sid))
}

/// Waits until `list` on `peer`'s node names `producer`.
async fn until_listed(peer: &mut Peer, producer: &str) -> Result<()> {
    Topo::visible(peer, producer, false).await.map(drop)
}

#[tokio::test]
async fn presence_is_cluster_wide() -> Result<()> {
    let redis = Redis::start().await?;
    let nodes = cluster(&redis, &[]).await?;
    let mut l = Peer::connect(&nodes[1].url()).await?;
    l.set_status(&["listener"], Value::Null).await?;
    l.expect("peerStatusChanged").await?;

    let mut p = Peer::connect(&nodes[0].url()).await?;
    p.set_status(&["producer"], json!({"name": "cam-a"}))
        .await?;
    let seen = l.expect("peerStatusChanged").await?;
    assert_eq!(
        seen,
        json!({"type": "peerStatusChanged", "roles": ["producer"], "meta": {"name": "cam-a"}, "peerId": p.id})
    );
    let mut c = Peer::connect(&nodes[2].url()).await?;
    until_listed(&mut c, &p.id).await?;
    c.send(json!({"type": "list"})).await?;
    assert_eq!(
        c.expect("list").await?["producers"],
        json!([{"id": p.id, "meta": {"name": "cam-a"}}])
    );

    // consumers too, for producer-initiated sessions
    let mut passive = Peer::connect(&nodes[2].url()).await?;
    passive
        .set_status(&["consumer"], json!({"name": "rec"}))
        .await?;
    l.expect("peerStatusChanged").await?;
    p.send(json!({"type": "listConsumers"})).await?;
    let consumers = p.expect("listConsumers").await?;
    assert_eq!(
        consumers["consumers"],
        json!([{"id": passive.id, "meta": {"name": "rec"}}])
    );

    // a node that joins later loads what is already there
    let late = Node::join(&redis, "node-d", &[]).await?;
    let mut d = Peer::connect(&late.url()).await?;
    d.send(json!({"type": "list"})).await?;
    assert_eq!(d.expect("list").await?["producers"][0]["id"], p.id.as_str());

    // leaving is cluster-wide as well
    let pid = p.id.clone();
    p.close().await;
    let gone = l.wait_until(|v| v["peerId"] == pid.as_str()).await?;
    assert_eq!(gone["roles"], json!([]));
    Ok(())
}

#[tokio::test]
async fn sessions_relay_across_nodes_in_order() -> Result<()> {
    let redis = Redis::start().await?;
    let nodes = cluster(&redis, &[]).await?;
    let mut p = Peer::connect(&nodes[0].url()).await?;
    p.set_status(&["producer"], Value::Null).await?;
    let mut c = Peer::connect(&nodes[1].url()).await?;
    until_listed(&mut c, &p.id).await?;

    c.send(json!({"type": "startSession", "peerId": p.id}))
        .await?;
    let started = c.expect("sessionStarted").await?;
    let sid = started["sessionId"].as_str().unwrap().to_string();
    assert_eq!(started["peerId"], p.id.as_str());
    assert_eq!(
        p.expect("startSession").await?,
        json!({"type": "startSession", "peerId": c.id, "sessionId": sid, "offer": null})
    );

    p.send(json!({"type": "peer", "sessionId": sid, "sdp": {"type": "offer", "sdp": "v=0\r\n"}}))
        .await?;
    for i in 0..100 {
        p.send(json!({"type": "peer", "sessionId": sid, "ice": {"candidate": format!("candidate:{i}"), "sdpMLineIndex": 0}}))
            .await?;
    }
    assert_eq!(c.expect("peer").await?["sdp"]["type"], "offer");
    for i in 0..100 {
        assert_eq!(
            c.expect("peer").await?["ice"]["candidate"],
            format!("candidate:{i}")
        );
    }
    c.send(json!({"type": "peer", "sessionId": sid, "sdp": {"type": "answer", "sdp": "v=0\r\n"}}))
        .await?;
    assert_eq!(p.expect("peer").await?["sdp"]["type"], "answer");
    // a consumer's offer is refused on its own node; nothing crosses
    c.send(json!({"type": "peer", "sessionId": sid, "sdp": {"type": "offer", "sdp": "x"}}))
        .await?;
    assert!(c.expect("error").await?["details"]
        .as_str()
        .unwrap()
        .contains("is not the producer"));
    p.assert_silent(QUIET).await?;

    c.send(json!({"type": "endSession", "sessionId": sid}))
        .await?;
    assert_eq!(
        p.expect("endSession").await?,
        json!({"type": "endSession", "sessionId": sid})
    );
    Ok(())
}

#[tokio::test]
async fn producer_initiated_session_across_nodes() -> Result<()> {
    let redis = Redis::start().await?;
    let nodes = cluster(&redis, &[]).await?;
    let mut c = Peer::connect(&nodes[2].url()).await?;
    c.set_status(&["consumer"], Value::Null).await?;
    let mut p = Peer::connect(&nodes[0].url()).await?;
    p.set_status(&["producer"], Value::Null).await?;
    let deadline = Instant::now() + cluster_tests::STEP;
    loop {
        p.send(json!({"type": "listConsumers"})).await?;
        let list = p.wait_for("listConsumers").await?;
        if list["consumers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["id"] == c.id.as_str())
        {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "consumer never listed");
    }
    p.send(json!({"type": "startSession", "peerId": c.id}))
        .await?;
    let started = c.expect("sessionStarted").await?;
    assert_eq!(started["peerId"], p.id.as_str());
    let start = p.expect("startSession").await?;
    assert_eq!(start["sessionId"], started["sessionId"]);
    // the consumer dropping its role ends the session on the producer's node
    c.set_status(&[], Value::Null).await?;
    assert_eq!(
        p.expect("endSession").await?["sessionId"],
        started["sessionId"]
    );
    Ok(())
}

#[tokio::test]
async fn disconnects_and_hijacks_across_nodes() -> Result<()> {
    let redis = Redis::start().await?;
    let nodes = cluster(&redis, &[]).await?;
    let mut l = Peer::connect(&nodes[2].url()).await?;
    l.set_status(&["listener"], Value::Null).await?;
    l.expect("peerStatusChanged").await?;
    let mut p = Peer::connect(&nodes[0].url()).await?;
    p.set_status(&["producer"], json!({"name": "cam"})).await?;
    l.expect("peerStatusChanged").await?;
    let mut c = Peer::connect(&nodes[1].url()).await?;
    until_listed(&mut c, &p.id).await?;
    c.send(json!({"type": "startSession", "peerId": p.id}))
        .await?;
    let sid = c.expect("sessionStarted").await?["sessionId"]
        .as_str()
        .unwrap()
        .to_string();
    p.expect("startSession").await?;

    // a third peer, on the third node, cannot end or inject into the session
    let mut x = Peer::connect_with(&nodes[2].url(), Some("gstwebrtc-cluster.v2")).await?;
    x.send(json!({"type": "endSession", "sessionId": sid}))
        .await?;
    assert_eq!(x.expect("error").await?["code"], "unknown-session");
    x.send(json!({"type": "peer", "sessionId": sid, "sdp": {"type": "offer", "sdp": "evil"}}))
        .await?;
    assert_eq!(x.expect("error").await?["code"], "unknown-session");
    p.assert_silent(QUIET).await?;
    c.assert_silent(QUIET).await?;

    // the producer disconnects: the consumer on another node gets endSession, listeners hear
    let pid = p.id.clone();
    p.close().await;
    assert_eq!(
        c.expect("endSession").await?,
        json!({"type": "endSession", "sessionId": sid})
    );
    let gone = l.wait_until(|v| v["peerId"] == pid.as_str()).await?;
    assert_eq!(gone["roles"], json!([]));
    assert_eq!(gone["meta"], json!({"name": "cam"}));
    Ok(())
}

#[tokio::test]
async fn a_killed_node_disappears_from_the_cluster() -> Result<()> {
    let redis = Redis::start().await?;
    let nodes = cluster(&redis, &["--node-ttl", "1"]).await?;
    let mut l = Peer::connect(&nodes[1].url()).await?;
    l.set_status(&["listener"], Value::Null).await?;
    l.expect("peerStatusChanged").await?;
    let mut p = Peer::connect(&nodes[0].url()).await?;
    p.set_status(&["producer"], json!({"name": "doomed"}))
        .await?;
    l.expect("peerStatusChanged").await?;
    let mut c = Peer::connect(&nodes[2].url()).await?;
    until_listed(&mut c, &p.id).await?;
    c.send(json!({"type": "startSession", "peerId": p.id}))
        .await?;
    let sid = c.expect("sessionStarted").await?["sessionId"].clone();
    p.expect("startSession").await?;

    let killed = Instant::now();
    nodes[0].proc.signal(9);
    assert_eq!(c.expect("endSession").await?["sessionId"], sid);
    let ended_after = killed.elapsed();
    let pid = p.id.clone();
    let gone = l.wait_until(|v| v["peerId"] == pid.as_str()).await?;
    assert_eq!(gone["roles"], json!([]));
    let removed_after = killed.elapsed();
    eprintln!("node killed: session ended after {ended_after:?}, peer removed after {removed_after:?} (ttl 1 s)");
    let c_port = nodes[2].port;
    eventually(
        Duration::from_secs(5),
        "producer gone from list",
        || async {
            let Ok(mut q) = Peer::connect(&format!("ws://127.0.0.1:{c_port}")).await else {
                return false;
            };
            q.send(json!({"type": "list"})).await.is_ok()
                && q.expect("list")
                    .await
                    .is_ok_and(|v| v["producers"] == json!([]))
        },
    )
    .await?;
    // the survivors keep working together
    let mut p2 = Peer::connect(&nodes[1].url()).await?;
    p2.set_status(&["producer"], Value::Null).await?;
    until_listed(&mut c, &p2.id).await?;
    c.send(json!({"type": "startSession", "peerId": p2.id}))
        .await?;
    c.expect("sessionStarted").await?;
    p2.wait_for("startSession").await?;
    Ok(())
}

/// `/readyz` status of a node.
async fn readyz(node: &Node) -> u16 {
    node.get("/readyz").await.map_or(0, |(status, _)| status)
}

#[tokio::test]
async fn redis_restarted_empty_the_cluster_converges_without_restarts() -> Result<()> {
    let redis = Redis::start().await?;
    let port = redis.port;
    let a = Node::join(&redis, "node-a", &["--node-ttl", "1"]).await?;
    let b = Node::join(&redis, "node-b", &["--node-ttl", "1"]).await?;

    // a session inside node A, and one across A and B
    let mut p1 = Peer::connect(&a.url()).await?;
    p1.set_status(&["producer"], json!({"name": "p1"})).await?;
    let mut c1 = Peer::connect(&a.url()).await?;
    until_listed(&mut c1, &p1.id).await?;
    c1.send(json!({"type": "startSession", "peerId": p1.id}))
        .await?;
    let s1 = c1.expect("sessionStarted").await?["sessionId"]
        .as_str()
        .unwrap()
        .to_string();
    p1.expect("startSession").await?;
    let mut p2 = Peer::connect(&a.url()).await?;
    p2.set_status(&["producer"], json!({"name": "p2"})).await?;
    let mut c2 = Peer::connect_with(&b.url(), Some("gstwebrtc-cluster.v2")).await?;
    until_listed(&mut c2, &p2.id).await?;

    drop(redis); // SIGKILL
    eventually(Duration::from_secs(10), "node A not ready", || async {
        readyz(&a).await == 503
    })
    .await?;
    eventually(Duration::from_secs(10), "node B not ready", || async {
        readyz(&b).await == 503
    })
    .await?;

    // local sessions keep relaying
    p1.send(json!({"type": "peer", "sessionId": s1, "ice": {"candidate": "during", "sdpMLineIndex": 0}}))
        .await?;
    assert_eq!(c1.expect("peer").await?["ice"]["candidate"], "during");
    // cross-node requests get a clear error
    c2.send(json!({"type": "startSession", "peerId": p2.id}))
        .await?;
    let err = c2.expect("error").await?;
    assert_eq!(err["code"], "cluster-unavailable", "{err}");

    let restarted = Instant::now();
    let _redis = Redis::start_on(port).await?; // empty: no persistence
    eventually(Duration::from_secs(15), "nodes ready again", || async {
        readyz(&a).await == 200 && readyz(&b).await == 200
    })
    .await?;
    // B lists both of A's producers again, and a new cross-node session works
    let mut c3 = Peer::connect(&b.url()).await?;
    until_listed(&mut c3, &p1.id).await?;
    until_listed(&mut c3, &p2.id).await?;
    eprintln!(
        "redis restarted empty: cluster converged after {:?}",
        restarted.elapsed()
    );
    c3.send(json!({"type": "startSession", "peerId": p2.id}))
        .await?;
    let started = c3.expect("sessionStarted").await?;
    let start = p2.wait_for("startSession").await?;
    assert_eq!(start["sessionId"], started["sessionId"]);
    p2.send(json!({"type": "peer", "sessionId": started["sessionId"], "sdp": {"type": "offer", "sdp": "v=0"}}))
        .await?;
    assert_eq!(c3.expect("peer").await?["sdp"]["sdp"], "v=0");
    // and the local session never noticed
    p1.send(
        json!({"type": "peer", "sessionId": s1, "ice": {"candidate": "after", "sdpMLineIndex": 0}}),
    )
    .await?;
    assert_eq!(c1.expect("peer").await?["ice"]["candidate"], "after");
    Ok(())
}

#[tokio::test]
async fn operations_api_shows_the_whole_cluster() -> Result<()> {
    let redis = Redis::start().await?;
    let nodes = cluster(&redis, &[]).await?;
    let mut p = Peer::connect(&nodes[0].url()).await?;
    p.set_status(&["producer"], json!({"name": "cam-ops"}))
        .await?;
    let _idle = Peer::connect(&nodes[2].url()).await?;
    let b = &nodes[1];
    eventually(
        Duration::from_secs(10),
        "all nodes listed with their peers",
        || async {
            let Ok((200, body)) = b.get("/api/v1/nodes").await else {
                return false;
            };
            let v: Value = serde_json::from_str(&body).unwrap_or_default();
            let peers = |id: &str| {
                v["nodes"]
                    .as_array()
                    .and_then(|a| a.iter().find(|n| n["id"] == id))
                    .map(|n| n["peers"].clone())
            };
            peers("node-a") == Some(json!(1))
                && peers("node-b") == Some(json!(0))
                && peers("node-c") == Some(json!(1))
        },
    )
    .await?;
    let (_, body) = b.get("/api/v1/producers").await?;
    let v: Value = serde_json::from_str(&body)?;
    assert_eq!(
        v["producers"],
        json!([{"id": p.id, "meta": {"name": "cam-ops"}}])
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_smoke_2000_peers_over_three_nodes() -> Result<()> {
    cluster_tests::raise_fd_limit();
    let redis = Redis::start().await?;
    let nodes = cluster(&redis, &["--log", "warn"]).await?;
    let urls: Vec<String> = nodes.iter().map(Node::url).collect();
    // connect and register in parallel batches
    let mut peers = Vec::new();
    for chunk in (0..2000).collect::<Vec<_>>().chunks(100) {
        let batch = chunk.iter().map(|i| {
            let url = urls[i % 3].clone();
            async move {
                let mut p = Peer::connect(&url).await?;
                p.set_status(&["producer"], json!({"n": i})).await?;
                Ok::<_, anyhow::Error>(p)
            }
        });
        for p in futures::future::join_all(batch).await {
            peers.push(p?);
        }
    }
    for url in &urls {
        let mut q = Peer::connect(url).await?;
        let list = cluster_tests::Topo::list_until(&mut q, false, |l| {
            l["producers"].as_array().map_or(0, Vec::len) == 2000
        })
        .await?;
        let mut ns: Vec<u64> = list["producers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["meta"]["n"].as_u64().unwrap())
            .collect();
        ns.sort_unstable();
        assert_eq!(ns, (0..2000).collect::<Vec<u64>>(), "listed from {url}");
    }
    Ok(())
}

#[tokio::test]
async fn list_reads_what_a_listener_anywhere_has_seen() -> Result<()> {
    let redis = Redis::start().await?;
    let nodes = cluster(&redis, &[]).await?;
    let mut l = Peer::connect(&nodes[1].url()).await?;
    l.set_status(&["listener"], Value::Null).await?;
    l.expect("peerStatusChanged").await?;
    let mut q = Peer::connect(&nodes[2].url()).await?;
    let mut producers = Vec::new();
    for i in 0..30 {
        let mut p = Peer::connect(&nodes[0].url()).await?;
        p.set_status(&["producer"], json!({"n": i})).await?;
        let pid = p.id.clone();
        l.wait_until(|v| v["peerId"] == pid.as_str()).await?;
        // no polling: the first list after the listener saw it must include it
        q.send(json!({"type": "list"})).await?;
        let list = q.expect("list").await?;
        assert!(
            list["producers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["id"] == pid.as_str()),
            "round {i}: {pid} missing from {list}"
        );
        producers.push(p);
    }
    Ok(())
}

#[tokio::test]
async fn a_v2_peer_resumes_on_its_node_while_in_a_cross_node_session() -> Result<()> {
    let redis = Redis::start().await?;
    let nodes = cluster(&redis, &[]).await?;
    let (p, mut c, sid) = v2_producer_in_session(&nodes[0], &nodes[1]).await?;
    let (pid, token) = (
        p.id.clone(),
        p.welcome["resumeToken"].as_str().unwrap().to_string(),
    );
    nodes[0].cut(p).await?;
    for i in 0..5 {
        c.send(json!({"type": "peer", "sessionId": sid, "ice": {"candidate": format!("away-{i}"), "sdpMLineIndex": 0}}))
            .await?;
    }
    let url = format!("{}/?resume={token}", nodes[0].url());
    let mut p = Peer::connect_with(&url, Some("gstwebrtc-cluster.v2")).await?;
    assert_eq!(p.id, pid);
    for i in 0..5 {
        assert_eq!(
            p.expect("peer").await?["ice"]["candidate"],
            format!("away-{i}")
        );
    }
    p.send(json!({"type": "peer", "sessionId": sid, "sdp": {"type": "offer", "sdp": "v=0"}}))
        .await?;
    assert_eq!(c.expect("peer").await?["sdp"]["sdp"], "v=0");
    c.assert_silent(QUIET).await?;
    Ok(())
}

#[tokio::test]
async fn a_stopping_node_leaves_the_cluster_at_once_not_after_its_ttl() -> Result<()> {
    let redis = Redis::start().await?;
    // a TTL far longer than the test: only a clean leave can explain what follows
    let mut a = Node::join(
        &redis,
        "node-a",
        &["--node-ttl", "60", "--drain-timeout", "1"],
    )
    .await?;
    let b = Node::join(&redis, "node-b", &["--node-ttl", "60"]).await?;
    let mut l = Peer::connect(&b.url()).await?;
    l.set_status(&["listener"], Value::Null).await?;
    l.expect("peerStatusChanged").await?;
    let mut p = Peer::connect(&a.url()).await?;
    p.set_status(&["producer"], Value::Null).await?;
    l.expect("peerStatusChanged").await?;
    let mut c = Peer::connect(&b.url()).await?;
    until_listed(&mut c, &p.id).await?;
    c.send(json!({"type": "startSession", "peerId": p.id}))
        .await?;
    let sid = c.expect("sessionStarted").await?["sessionId"].clone();
    p.expect("startSession").await?;

    a.proc.signal(15);
    assert_eq!(c.expect("endSession").await?["sessionId"], sid);
    let pid = p.id.clone();
    let gone = l.wait_until(|v| v["peerId"] == pid.as_str()).await?;
    assert_eq!(gone["roles"], json!([]));
    let status = tokio::task::spawn_blocking(move || a.proc.child.wait()).await??;
    assert!(status.success(), "{status}");
    eventually(
        Duration::from_secs(5),
        "node-a gone from /api/v1/nodes",
        || async {
            b.get("/api/v1/nodes")
                .await
                .is_ok_and(|(_, n)| !n.contains("node-a"))
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_v2_peer_resumes_on_another_node_and_its_session_goes_on() -> Result<()> {
    let redis = Redis::start().await?;
    let nodes = cluster(&redis, &[]).await?;
    let mut l = Peer::connect(&nodes[2].url()).await?;
    l.set_status(&["listener"], Value::Null).await?;
    l.expect("peerStatusChanged").await?;
    let mut p = Peer::connect_with(&nodes[0].url(), Some("gstwebrtc-cluster.v2")).await?;
    p.set_status(&["producer"], Value::Null).await?;
    l.expect("peerStatusChanged").await?;
    let mut c = Peer::connect(&nodes[1].url()).await?;
    until_listed(&mut c, &p.id).await?;
    c.send(json!({"type": "startSession", "peerId": p.id}))
        .await?;
    let sid = c.expect("sessionStarted").await?["sessionId"]
        .as_str()
        .unwrap()
        .to_string();
    p.expect("startSession").await?;
    let (pid, token) = (
        p.id.clone(),
        p.welcome["resumeToken"].as_str().unwrap().to_string(),
    );

    nodes[0].cut(p).await?; // connection cut on node A
    for i in 0..5 {
        c.send(json!({"type": "peer", "sessionId": sid, "ice": {"candidate": format!("away-{i}"), "sdpMLineIndex": 0}}))
            .await?;
    }
    // back on node C, a third node: same peer, queued messages first, in order
    let url = format!("{}/?resume={token}", nodes[2].url());
    let mut p = Peer::connect_with(&url, Some("gstwebrtc-cluster.v2")).await?;
    assert_eq!(p.id, pid);
    assert_eq!(p.welcome["resumed"], true);
    assert_eq!(p.welcome["nodeId"], "node-c");
    for i in 0..5 {
        assert_eq!(
            p.expect("peer").await?["ice"]["candidate"],
            format!("away-{i}")
        );
    }
    // the session goes on in both directions
    for i in 0..20 {
        c.send(json!({"type": "peer", "sessionId": sid, "ice": {"candidate": format!("after-{i}"), "sdpMLineIndex": 0}}))
            .await?;
    }
    p.send(json!({"type": "peer", "sessionId": sid, "sdp": {"type": "offer", "sdp": "v=0"}}))
        .await?;
    for i in 0..20 {
        assert_eq!(
            p.expect("peer").await?["ice"]["candidate"],
            format!("after-{i}")
        );
    }
    assert_eq!(c.expect("peer").await?["sdp"]["sdp"], "v=0");
    // nobody noticed more than a pause; every node lists it once, on node C now
    c.assert_silent(QUIET).await?;
    l.assert_silent(QUIET).await?;
    let (_, producers) = nodes[1].get("/api/v1/producers").await?;
    assert_eq!(
        serde_json::from_str::<Value>(&producers)?["producers"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    // ending works from the new node
    p.send(json!({"type": "endSession", "sessionId": sid}))
        .await?;
    assert_eq!(c.expect("endSession").await?["sessionId"], sid.as_str());
    Ok(())
}

#[tokio::test]
async fn drain_moves_v2_peers_to_other_nodes_and_closes_v1_peers() -> Result<()> {
    let redis = Redis::start().await?;
    let mut a = Node::join(&redis, "node-a", &["--drain-timeout", "3"]).await?;
    let b = Node::join(&redis, "node-b", &[]).await?;
    // a v2 producer and a v1 producer on A, their consumers on B
    let mut p2 = Peer::connect_with(&a.url(), Some("gstwebrtc-cluster.v2")).await?;
    p2.set_status(&["producer"], json!({"v": 2})).await?;
    let mut p1 = Peer::connect(&a.url()).await?;
    p1.set_status(&["producer"], json!({"v": 1})).await?;
    let mut c2 = Peer::connect(&b.url()).await?;
    until_listed(&mut c2, &p2.id).await?;
    until_listed(&mut c2, &p1.id).await?;
    c2.send(json!({"type": "startSession", "peerId": p2.id}))
        .await?;
    let s2 = c2.expect("sessionStarted").await?["sessionId"]
        .as_str()
        .unwrap()
        .to_string();
    p2.expect("startSession").await?;
    let mut c1 = Peer::connect(&b.url()).await?;
    c1.send(json!({"type": "startSession", "peerId": p1.id}))
        .await?;
    let s1 = c1.expect("sessionStarted").await?["sessionId"].clone();
    p1.expect("startSession").await?;

    a.proc.signal(15);
    p2.expect("goAway").await?;
    // the v2 producer moves to B while its old connection is still open
    let token = p2.welcome["resumeToken"].as_str().unwrap().to_string();
    let url = format!("{}/?resume={token}", b.url());
    let mut moved = Peer::connect_with(&url, Some("gstwebrtc-cluster.v2")).await?;
    assert_eq!(moved.id, p2.id);
    moved
        .send(json!({"type": "peer", "sessionId": s2, "sdp": {"type": "offer", "sdp": "v=0"}}))
        .await?;
    assert_eq!(c2.expect("peer").await?["sdp"]["sdp"], "v=0");
    // the v1 producer is closed at the end of the drain, its consumer told
    assert_eq!(c1.expect("endSession").await?["sessionId"], s1);
    let status = tokio::task::spawn_blocking(move || a.proc.child.wait()).await??;
    assert!(status.success(), "{status}");
    // the moved session survived A's exit
    c2.send(json!({"type": "peer", "sessionId": s2, "sdp": {"type": "answer", "sdp": "v=0"}}))
        .await?;
    assert_eq!(moved.expect("peer").await?["sdp"]["type"], "answer");
    c2.assert_silent(QUIET).await?;
    Ok(())
}

#[tokio::test]
async fn frames_lost_in_flight_are_sent_again_on_another_node() -> Result<()> {
    let redis = Redis::start().await?;
    let nodes = cluster(&redis, &[]).await?;
    let (mut p, mut c, sid) = v2_producer_in_session(&nodes[0], &nodes[1]).await?;
    for i in 1..=3 {
        c.send(json!({"type": "peer", "sessionId": sid, "ice": {"candidate": format!("a{i}"), "sdpMLineIndex": 0}}))
            .await?;
    }
    for _ in 1..=3 {
        p.expect("peer").await?;
    }
    let last = p.frames - 2; // the client lost the last two
    let token = p.welcome["resumeToken"].as_str().unwrap().to_string();
    nodes[0].cut(p).await?;
    c.send(
        json!({"type": "peer", "sessionId": sid, "ice": {"candidate": "a4", "sdpMLineIndex": 0}}),
    )
    .await?;
    let url = format!("{}/?resume={token}&last={last}", nodes[2].url());
    let mut p = Peer::connect_with(&url, Some("gstwebrtc-cluster.v2")).await?;
    assert_eq!(p.welcome["resumed"], true);
    for i in 2..=4 {
        assert_eq!(p.expect("peer").await?["ice"]["candidate"], format!("a{i}"));
    }
    // The numbering goes on across connections: the client has `last`, then a2..a4.
    let received = last + 3;
    // a5 reaches the new socket but is lost too; the next resume, on another node again,
    // sends it again from the right place
    c.send(
        json!({"type": "peer", "sessionId": sid, "ice": {"candidate": "a5", "sdpMLineIndex": 0}}),
    )
    .await?;
    p.expect("peer").await?;
    let last = received;
    let token = p.welcome["resumeToken"].as_str().unwrap().to_string();
    nodes[2].cut(p).await?;
    let url = format!("{}/?resume={token}&last={last}", nodes[1].url());
    let mut p = Peer::connect_with(&url, Some("gstwebrtc-cluster.v2")).await?;
    assert_eq!(p.expect("peer").await?["ice"]["candidate"], "a5");
    Ok(())
}

#[tokio::test]
async fn a_resume_claim_does_not_disturb_other_sessions_between_the_nodes() -> Result<()> {
    let redis = Redis::start().await?;
    let nodes = cluster(&redis, &[]).await?;
    // an unrelated session between node A and node B
    let (mut q, mut d, other) = v2_producer_in_session(&nodes[0], &nodes[1]).await?;
    // a v2 peer of node A resumes on node B: B sends its claim on A's channel
    let (p, _c, _sid) = v2_producer_in_session(&nodes[0], &nodes[2]).await?;
    let token = p.welcome["resumeToken"].as_str().unwrap().to_string();
    nodes[0].cut(p).await?;
    let url = format!("{}/?resume={token}", nodes[1].url());
    let _p = Peer::connect_with(&url, Some("gstwebrtc-cluster.v2")).await?;
    // the next messages from B to A must not look like a gap that ends B's sessions with A
    d.send(json!({"type": "peer", "sessionId": other, "sdp": {"type": "answer", "sdp": "v=0"}}))
        .await?;
    assert_eq!(q.expect("peer").await?["sdp"]["type"], "answer");
    q.send(
        json!({"type": "peer", "sessionId": other, "ice": {"candidate": "c", "sdpMLineIndex": 0}}),
    )
    .await?;
    assert_eq!(d.expect("peer").await?["ice"]["candidate"], "c");
    d.assert_silent(QUIET).await?;
    Ok(())
}

/// Everything `peer` receives until it has been silent for `quiet`.
async fn drain(peer: &mut Peer, quiet: Duration) -> Result<Vec<Value>> {
    let mut got = Vec::new();
    loop {
        match peer.recv_within(quiet).await {
            Ok(v) => got.push(v),
            Err(e) if e.to_string().contains("timed out") => return Ok(got),
            Err(e) => return Err(e),
        }
    }
}

/// Resumes with `token` on `node` (v2).
async fn resume(node: &Node, token: &str) -> Result<Peer> {
    let url = format!("{}/?resume={token}", node.url());
    Peer::connect_with(&url, Some("gstwebrtc-cluster.v2")).await
}

fn token_of(p: &Peer) -> String {
    p.welcome["resumeToken"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn a_v2_peer_of_a_killed_node_resumes_elsewhere_and_its_session_goes_on() -> Result<()> {
    let redis = Redis::start().await?;
    let nodes = cluster(&redis, &["--node-ttl", "1"]).await?;
    let mut l = Peer::connect(&nodes[1].url()).await?;
    l.set_status(&["listener"], Value::Null).await?;
    l.expect("peerStatusChanged").await?;
    // a v2 producer on A in a session with a v1 consumer on B
    let (p, mut c, sid) = v2_producer_in_session(&nodes[0], &nodes[1]).await?;
    let (pid, token) = (p.id.clone(), token_of(&p));
    l.wait_until(|v| v["peerId"] == pid.as_str()).await?;
    // and a v1 producer on A in a session with another v1 consumer on B
    let mut p1 = Peer::connect(&nodes[0].url()).await?;
    p1.set_status(&["producer"], json!({"v": 1})).await?;
    let p1id = p1.id.clone();
    l.wait_until(|v| v["peerId"] == p1id.as_str()).await?;
    let mut c1 = Peer::connect(&nodes[1].url()).await?;
    until_listed(&mut c1, &p1id).await?;
    c1.send(json!({"type": "startSession", "peerId": p1id}))
        .await?;
    let sid1 = c1.expect("sessionStarted").await?["sessionId"].clone();
    p1.expect("startSession").await?;

    let killed = Instant::now();
    nodes[0].proc.signal(9);
    drop(p);
    // The client reconnects to B at once, before the cluster noticed A is dead: B waits for
    // the reaping, then adopts the peer.
    let mut p = resume(&nodes[1], &token).await?;
    assert_eq!(p.id, pid);
    assert_eq!(p.welcome["resumed"], true);
    assert_eq!(p.welcome["nodeId"], "node-b");
    let new_token = token_of(&p);
    assert!(new_token.ends_with(".node-b") && new_token != token);

    // the session goes on in both directions, with the same id
    c.send(json!({"type": "peer", "sessionId": sid, "ice": {"candidate": "after", "sdpMLineIndex": 0}}))
        .await?;
    let got = p.expect("peer").await?;
    assert_eq!(
        (got["sessionId"].as_str(), got["ice"]["candidate"].as_str()),
        (Some(sid.as_str()), Some("after"))
    );
    p.send(json!({"type": "peer", "sessionId": sid, "sdp": {"type": "offer", "sdp": "v=0"}}))
        .await?;
    let got = c.expect("peer").await?;
    assert_eq!(
        (got["sessionId"].as_str(), got["sdp"]["sdp"].as_str()),
        (Some(sid.as_str()), Some("v=0"))
    );
    eprintln!(
        "node killed: resumed relay working after {:?} (ttl 1 s)",
        killed.elapsed()
    );

    // the v1 producer went away as before
    assert_eq!(c1.expect("endSession").await?["sessionId"], sid1);
    // the consumer never saw its session end, the listener never saw the producer leave
    for v in drain(&mut c, QUIET).await? {
        assert_ne!(v["type"], "endSession", "{v}");
    }
    let heard = drain(&mut l, QUIET).await?;
    assert!(
        heard
            .iter()
            .any(|v| v["peerId"] == p1id.as_str() && v["roles"] == json!([])),
        "{heard:?}"
    );
    assert!(
        !heard.iter().any(|v| v["peerId"] == pid.as_str()),
        "{heard:?}"
    );
    // B lists it (and not the v1 producer), on B now
    let list = Topo::list_until(&mut c, false, |l| {
        !l["producers"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["id"] == p1id.as_str()))
    })
    .await?;
    assert_eq!(list["producers"], json!([{"id": pid, "meta": null}]));
    // and the node C sees it too; a new session from there works
    let mut c3 = Peer::connect(&nodes[2].url()).await?;
    until_listed(&mut c3, &pid).await?;
    c3.send(json!({"type": "startSession", "peerId": pid}))
        .await?;
    let s3 = c3.expect("sessionStarted").await?["sessionId"].clone();
    assert_eq!(p.wait_for("startSession").await?["sessionId"], s3);
    // ending the adopted session works from either side
    c.send(json!({"type": "endSession", "sessionId": sid}))
        .await?;
    assert_eq!(p.wait_for("endSession").await?["sessionId"], sid.as_str());
    Ok(())
}

#[tokio::test]
async fn a_suspended_peer_not_resumed_in_time_leaves_after_the_grace() -> Result<()> {
    let redis = Redis::start().await?;
    const GRACE: Duration = Duration::from_secs(3);
    let nodes = cluster(&redis, &["--node-ttl", "1", "--resume-grace", "3"]).await?;
    let mut l = Peer::connect(&nodes[1].url()).await?;
    l.set_status(&["listener"], Value::Null).await?;
    l.expect("peerStatusChanged").await?;
    let (p, mut c, sid) = v2_producer_in_session(&nodes[0], &nodes[1]).await?;
    let (pid, token) = (p.id.clone(), token_of(&p));
    l.wait_until(|v| v["peerId"] == pid.as_str()).await?;

    let killed = Instant::now();
    nodes[0].proc.signal(9);
    drop(p);
    // nobody comes back: after TTL + grace, the session ends and the producer leaves; not
    // before the grace is over (it starts when the node is found dead, after the kill)
    assert_eq!(c.expect("endSession").await?["sessionId"], sid.as_str());
    let ended = killed.elapsed();
    let gone = l.wait_until(|v| v["peerId"] == pid.as_str()).await?;
    let left = killed.elapsed();
    assert_eq!(gone["roles"], json!([]));
    assert!(
        ended >= GRACE && left >= GRACE,
        "ended {ended:?} and left {left:?} after the kill, within the {GRACE:?} grace"
    );
    for node in &nodes[1..] {
        let mut q = Peer::connect(&node.url()).await?;
        Topo::list_until(&mut q, false, |l| l["producers"] == json!([])).await?;
    }
    // too late: a new peer
    let late = resume(&nodes[2], &token).await?;
    assert_ne!(late.id, pid);
    assert!(late.welcome.get("resumed").is_none(), "{}", late.welcome);
    Ok(())
}

#[tokio::test]
async fn two_resumes_with_one_token_on_two_nodes_exactly_one_wins() -> Result<()> {
    let redis = Redis::start().await?;
    let nodes = cluster(&redis, &["--node-ttl", "1"]).await?;
    let (p, mut c, sid) = v2_producer_in_session(&nodes[0], &nodes[1]).await?;
    let (pid, token) = (p.id.clone(), token_of(&p));

    nodes[0].proc.signal(9);
    drop(p);
    let (on_b, on_c) = tokio::join!(resume(&nodes[1], &token), resume(&nodes[2], &token));
    let (on_b, on_c) = (on_b?, on_c?);
    let won = |p: &Peer| p.id == pid && p.welcome["resumed"] == true;
    assert!(
        won(&on_b) != won(&on_c),
        "exactly one resume wins: {} / {}",
        on_b.welcome,
        on_c.welcome
    );
    let (mut winner, loser) = if won(&on_b) {
        (on_b, on_c)
    } else {
        (on_c, on_b)
    };
    assert_ne!(loser.id, pid);
    assert!(loser.welcome.get("resumed").is_none(), "{}", loser.welcome);
    // the session goes on with the winner
    c.send(
        json!({"type": "peer", "sessionId": sid, "ice": {"candidate": "c", "sdpMLineIndex": 0}}),
    )
    .await?;
    assert_eq!(winner.expect("peer").await?["ice"]["candidate"], "c");
    winner
        .send(json!({"type": "peer", "sessionId": sid, "sdp": {"type": "offer", "sdp": "v=0"}}))
        .await?;
    assert_eq!(c.expect("peer").await?["sdp"]["sdp"], "v=0");
    Ok(())
}

#[tokio::test]
async fn what_is_sent_to_a_suspended_peer_is_held_and_delivered_on_another_node() -> Result<()> {
    let redis = Redis::start().await?;
    let nodes = cluster(&redis, &["--node-ttl", "1"]).await?;
    let mut l = Peer::connect(&nodes[1].url()).await?;
    l.set_status(&["listener"], Value::Null).await?;
    l.expect("peerStatusChanged").await?;
    let (p, mut c, sid) = v2_producer_in_session(&nodes[0], &nodes[1]).await?;
    let (pid, token) = (p.id.clone(), token_of(&p));
    // a v1 peer of A: when the listener on B sees it leave, B has suspended the producer
    let mut canary = Peer::connect(&nodes[0].url()).await?;
    canary.set_status(&["producer"], Value::Null).await?;
    let cid = canary.id.clone();
    l.wait_until(|v| v["peerId"] == cid.as_str()).await?;

    nodes[0].proc.signal(9);
    drop(p);
    l.wait_until(|v| v["peerId"] == cid.as_str() && v["roles"] == json!([]))
        .await?;
    // while suspended: candidates for it, and a new session with it, are held on B
    for i in 0..5 {
        c.send(json!({"type": "peer", "sessionId": sid, "ice": {"candidate": format!("held-{i}"), "sdpMLineIndex": 0}}))
            .await?;
    }
    c.sync().await?; // (held before c2 asks: two connections are not ordered)
    let mut c2 = Peer::connect(&nodes[1].url()).await?;
    c2.send(json!({"type": "startSession", "peerId": pid}))
        .await?;
    let s2 = c2.expect("sessionStarted").await?["sessionId"].clone();

    // back on C: B hands over the sessions, then what it held, in order
    let mut p = resume(&nodes[2], &token).await?;
    assert_eq!(
        (p.id.as_str(), &p.welcome["resumed"]),
        (pid.as_str(), &json!(true))
    );
    for i in 0..5 {
        let got = p.expect("peer").await?;
        assert_eq!(got["sessionId"], sid.as_str());
        assert_eq!(got["ice"]["candidate"], format!("held-{i}"));
    }
    let start = p.expect("startSession").await?;
    assert_eq!(
        (&start["sessionId"], &start["peerId"]),
        (&s2, &json!(c2.id))
    );
    // both sessions relay both ways through C now
    p.send(json!({"type": "peer", "sessionId": s2, "sdp": {"type": "offer", "sdp": "s2"}}))
        .await?;
    assert_eq!(c2.expect("peer").await?["sdp"]["sdp"], "s2");
    p.send(json!({"type": "peer", "sessionId": sid, "sdp": {"type": "offer", "sdp": "s1"}}))
        .await?;
    assert_eq!(c.expect("peer").await?["sdp"]["sdp"], "s1");
    c2.send(json!({"type": "peer", "sessionId": s2, "sdp": {"type": "answer", "sdp": "a2"}}))
        .await?;
    assert_eq!(p.expect("peer").await?["sdp"]["sdp"], "a2");
    let heard = drain(&mut l, QUIET).await?;
    assert!(
        !heard.iter().any(|v| v["peerId"] == pid.as_str()),
        "{heard:?}"
    );
    Ok(())
}

/// Runs `redis-cli` against `redis` and returns its output.
async fn redis_cli(redis: &Redis, args: &[&str]) -> Result<String> {
    let out = tokio::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string()])
        .args(args)
        .output()
        .await?;
    anyhow::ensure!(out.status.success(), "redis-cli {args:?} failed");
    Ok(String::from_utf8(out.stdout)?)
}

/// What arrives on a Redis channel, read by a `redis-cli subscribe` (raw output: three lines
/// per message: `message`, channel, payload).
struct Subscription {
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    _child: tokio::process::Child,
}

impl Subscription {
    async fn start(redis: &Redis, channel: &str) -> Result<Subscription> {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new("redis-cli")
            .args(["-p", &redis.port.to_string(), "subscribe", channel])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().expect("piped");
        let mut sub = Subscription {
            lines: tokio::io::BufReader::new(stdout).lines(),
            _child: child,
        };
        // the confirmation: "subscribe", channel, count
        for _ in 0..3 {
            sub.line().await?;
        }
        Ok(sub)
    }

    async fn line(&mut self) -> Result<String> {
        tokio::time::timeout(Duration::from_secs(10), self.lines.next_line())
            .await??
            .ok_or_else(|| anyhow::anyhow!("redis-cli ended"))
    }

    /// The next envelope published on the channel.
    async fn envelope(&mut self) -> Result<Value> {
        loop {
            if self.line().await? == "message" {
                self.line().await?; // channel
                return Ok(serde_json::from_str(&self.line().await?)?);
            }
        }
    }
}

/// Writes the frames with one flush, so that they reach the node together.
async fn send_at_once(peer: &mut Peer, msgs: Vec<Value>) -> Result<()> {
    use futures::SinkExt;
    for msg in msgs {
        let frame = tokio_tungstenite::tungstenite::Message::text(msg.to_string());
        peer.socket().feed(frame).await?;
    }
    peer.socket().flush().await?;
    Ok(())
}

/// Relays a node publishes to another node are packed into batch envelopes only when that node
/// advertises reading them (`{prefix}:features`); a node that does not (an older version during
/// a rolling upgrade) gets one plain envelope per message. Either way every relay arrives, in
/// order, and the envelopes' sequence numbers have no gap.
#[tokio::test]
async fn relays_are_batched_only_to_nodes_that_read_batches() -> Result<()> {
    let redis = Redis::start().await?;
    let node = Node::join(&redis, "node-a", &[]).await?;
    // An "old" node, played by this test: alive, with a producer, never advertising batches.
    let far = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis()
        + 3_600_000)
        .to_string();
    redis_cli(&redis, &["zadd", "gwc:nodes", &far, "old"]).await?;
    let status = json!({"roles": ["producer"], "meta": {"name": "old-cam"}, "peerId": "old-peer"});
    redis_cli(
        &redis,
        &[
            "hset",
            "gwc:peers",
            "old-peer",
            &json!({"node": "old", "status": status}).to_string(),
        ],
    )
    .await?;
    let announce = json!({"v": 1, "from": "old", "boot": 1, "seq": 1, "kind": "peerStatus",
        "body": {"peerId": "old-peer", "status": status}});
    redis_cli(&redis, &["publish", "gwc:presence", &announce.to_string()]).await?;
    let mut sub = Subscription::start(&redis, "gwc:node:old").await?;

    let mut c = Peer::connect(&node.url()).await?;
    until_listed(&mut c, "old-peer").await?;
    c.send(json!({"type": "startSession", "peerId": "old-peer"}))
        .await?;
    let sid = c.expect("sessionStarted").await?["sessionId"]
        .as_str()
        .unwrap_or_default()
        .to_string();

    // Reads envelopes until `n` relays came; returns (relay candidates in order, batches seen).
    let mut next_seq = None;
    let mut read_relays =
        async |sub: &mut Subscription, n: usize| -> Result<(Vec<String>, usize)> {
            let (mut candidates, mut batches) = (Vec::new(), 0);
            while candidates.len() < n {
                let env = sub.envelope().await?;
                let seq = env["seq"].as_u64().unwrap_or_default();
                if let Some(expected) = next_seq {
                    assert_eq!(seq, expected, "a gap in the sequence: {env}");
                }
                next_seq = Some(seq + 1);
                let items = match env["kind"].as_str() {
                    Some("batch") => {
                        batches += 1;
                        env["body"].as_array().cloned().unwrap_or_default()
                    }
                    _ => vec![json!({"kind": env["kind"], "body": env["body"]})],
                };
                for item in items {
                    if item["kind"] == "relay" {
                        assert_eq!(item["body"]["sessionId"], sid.as_str());
                        let candidate = &item["body"]["payload"]["candidate"];
                        candidates.push(candidate.as_str().unwrap_or_default().to_string());
                    }
                }
            }
            Ok((candidates, batches))
        };
    let burst = |from: usize, n: usize| {
        (from..from + n)
            .map(|i| json!({"type": "peer", "sessionId": sid, "ice": {"candidate": format!("candidate:{i}"), "sdpMLineIndex": 0}}))
            .collect::<Vec<_>>()
    };
    let expected = |from: usize, n: usize| {
        (from..from + n)
            .map(|i| format!("candidate:{i}"))
            .collect::<Vec<_>>()
    };

    // No batches for a node that does not say it reads them, however fast relays come.
    send_at_once(&mut c, burst(0, 300)).await?;
    let (candidates, batches) = read_relays(&mut sub, 300).await?;
    assert_eq!(candidates, expected(0, 300));
    assert_eq!(batches, 0, "batches sent to a node that cannot read them");

    // Once it advertises batches (seen at the sender's next liveness tick), bursts are packed.
    redis_cli(&redis, &["hset", "gwc:features", "old", "batch"]).await?;
    let mut sent = 300;
    let mut batched = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while batched == 0 && Instant::now() < deadline {
        send_at_once(&mut c, burst(sent, 300)).await?;
        let (candidates, batches) = read_relays(&mut sub, 300).await?;
        assert_eq!(candidates, expected(sent, 300));
        sent += 300;
        batched += batches;
    }
    assert!(
        batched > 0,
        "no batch in {sent} relays to a node that reads them"
    );
    Ok(())
}

/// The node's own Redis connections (the publisher's and the subscription, see
/// `src/bus/resp.rs`) log in with the URL's user and password as redis-rs does, and a Redis
/// user whose ACL forbids `CLIENT` (managed Redis services often do) still carries the
/// cluster: the publisher then reads every reply instead of turning replies off.
#[tokio::test]
async fn a_redis_user_without_client_commands_carries_the_cluster() -> Result<()> {
    let redis = Redis::start().await?;
    let acl = [
        "ACL", "SETUSER", "gwc", "on", ">s3cret", "~*", "&*", "+@all", "-client",
    ];
    assert_eq!(redis_cli(&redis, &acl).await?.trim(), "OK");
    // Nobody gets in without the URL's credentials.
    assert_eq!(
        redis_cli(&redis, &["ACL", "SETUSER", "default", "off"])
            .await?
            .trim(),
        "OK"
    );
    let url = format!("redis://gwc:s3cret@127.0.0.1:{}", redis.port);
    let mut nodes = Vec::new();
    for id in ["node-a", "node-b"] {
        nodes.push(Node::start(&["--redis-url", &url, "--node-id", id]).await?);
    }
    for node in &nodes {
        eventually(cluster_tests::STEP, "node ready", || async {
            readyz(node).await == 200
        })
        .await?;
    }
    let (mut p, mut c, sid) = producer_in_session(&nodes[0], &nodes[1], None).await?;
    for i in 0..50 {
        p.send(json!({"type": "peer", "sessionId": sid, "ice": {"candidate": format!("p{i}"), "sdpMLineIndex": 0}}))
            .await?;
        c.send(json!({"type": "peer", "sessionId": sid, "ice": {"candidate": format!("c{i}"), "sdpMLineIndex": 0}}))
            .await?;
    }
    for i in 0..50 {
        assert_eq!(c.expect("peer").await?["ice"]["candidate"], format!("p{i}"));
        assert_eq!(p.expect("peer").await?["ice"]["candidate"], format!("c{i}"));
    }
    // The nodes did ask, and were refused (so the replies-read path carried the relays).
    let denied = redis_cli_as(&redis, "gwc", "s3cret", &["ACL", "LOG"]).await?;
    assert!(
        denied.contains("client"),
        "no CLIENT refusal in the ACL log: {denied}"
    );
    Ok(())
}

/// Runs `redis-cli` against `redis` as `user`.
async fn redis_cli_as(redis: &Redis, user: &str, pass: &str, args: &[&str]) -> Result<String> {
    let mut all = vec!["--user", user, "--pass", pass, "--no-auth-warning"];
    all.extend_from_slice(args);
    redis_cli(redis, &all).await
}

/// `rediss://`: nodes reach a TLS-only Redis whose certificate they trust through
/// `SSL_CERT_FILE` (as the Helm chart mounts a private CA), on every connection: redis-rs'
/// and the publisher's and the subscription's own (`src/bus/resp.rs`).
#[tokio::test]
async fn nodes_join_over_tls_to_redis() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("gwc-rediss-{}", std::process::id()));
    let (cert, key, _) = cluster_tests::self_signed(&dir)?;
    let port = cluster_tests::free_port();
    let (cert, key) = (cert.to_string_lossy(), key.to_string_lossy());
    let mut cmd = std::process::Command::new("redis-server");
    cmd.args([
        "--port",
        "0",
        "--tls-port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
    ])
    .args(["--tls-cert-file", &cert, "--tls-key-file", &key])
    .args(["--tls-ca-cert-file", &cert, "--tls-auth-clients", "no"])
    .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
    .stdout(std::process::Stdio::null());
    let _redis = cluster_tests::Proc::spawn(cmd, "redis-server (TLS)")?;
    eventually(cluster_tests::STEP, "redis-server listening", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await?;
    let url = format!("rediss://localhost:{port}");
    let mut nodes = Vec::new();
    for id in ["node-a", "node-b"] {
        let args = ["--redis-url", url.as_str(), "--node-id", id];
        let node = Node::start_env(&args, &[("SSL_CERT_FILE", &cert)]).await?;
        eventually(cluster_tests::STEP, "node ready over TLS", || async {
            readyz(&node).await == 200
        })
        .await?;
        nodes.push(node);
    }
    let (mut p, mut c, sid) = producer_in_session(&nodes[0], &nodes[1], None).await?;
    p.send(json!({"type": "peer", "sessionId": sid, "ice": {"candidate": "over-tls", "sdpMLineIndex": 0}}))
        .await?;
    assert_eq!(c.expect("peer").await?["ice"]["candidate"], "over-tls");
    // Without the CA the node cannot join: the test above did use TLS with that trust.
    let untrusted = Node::start_env(
        &["--redis-url", url.as_str(), "--node-id", "node-c"],
        &[("SSL_CERT_FILE", "/nonexistent.pem")],
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        untrusted.is_err(),
        "a node joined without trusting Redis' certificate"
    );
    Ok(())
}

/// A v2 consumer asking for a stream by name is placed on the least-loaded relay with room,
/// cluster-wide; the origin only once every relay is full; a stream nobody serves is an error.
#[tokio::test]
async fn a_consumer_asking_for_a_stream_is_placed_on_a_relay_with_room_before_the_origin(
) -> Result<()> {
    let redis = Redis::start().await?;
    let nodes = cluster(&redis, &[]).await?;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut origin = Peer::connect(&a.url()).await?;
    origin
        .set_status(&["producer"], json!({"name": "s"}))
        .await?;
    let mut relays = Vec::new();
    for name in ["r1", "r2"] {
        let mut r = Peer::connect(&a.url()).await?;
        let meta = json!({"name": name, "stream": "s", "relay-of": origin.id,
                          "depth": "1", "capacity": "2"});
        r.set_status(&["producer"], meta).await?;
        relays.push(r);
    }
    let mut lister = Peer::connect(&b.url()).await?;
    Topo::list_until(&mut lister, false, |l| {
        l["producers"].as_array().map(Vec::len) == Some(3)
    })
    .await?;

    let mut placed = Vec::new();
    let mut viewers = Vec::new();
    for _ in 0..5 {
        let mut c = Peer::connect_with(&b.url(), Some("gstwebrtc-cluster.v2")).await?;
        c.send(json!({"type": "startSession", "stream": "s"}))
            .await?;
        let started = c.expect("sessionStarted").await?;
        placed.push(started["peerId"].as_str().unwrap_or_default().to_string());
        viewers.push(c);
    }
    let (r1, r2) = (relays[0].id.clone(), relays[1].id.clone());
    let on = |id: &str| placed.iter().filter(|p| *p == id).count();
    assert_eq!(
        (on(&r1), on(&r2)),
        (2, 2),
        "spread over the relays: {placed:?}"
    );
    assert_eq!(
        placed[4], origin.id,
        "the origin once the relays are full: {placed:?}"
    );
    assert!(!placed[..4].contains(&origin.id), "{placed:?}");
    for r in &mut relays {
        r.expect("startSession").await?;
        r.expect("startSession").await?;
    }
    origin.expect("startSession").await?;

    // A third node holds none of those sessions: it learns the relays' load from their node's
    // announcements, and places its consumer on the origin too (a relay it picks before the
    // news arrived is left again, and the request retried).
    let c_node = &nodes[2];
    let mut third = Peer::connect_with(&c_node.url(), Some("gstwebrtc-cluster.v2")).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        third
            .send(json!({"type": "startSession", "stream": "s"}))
            .await?;
        let started = third.expect("sessionStarted").await?;
        if started["peerId"] == origin.id.as_str() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never placed on the origin: {started}"
        );
        third
            .send(json!({"type": "endSession", "sessionId": started["sessionId"]}))
            .await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let mut nobody = Peer::connect_with(&b.url(), Some("gstwebrtc-cluster.v2")).await?;
    nobody
        .send(json!({"type": "startSession", "stream": "none"}))
        .await?;
    let err = nobody.expect("error").await?;
    assert_eq!(err["code"], "unknown-peer", "{err}");
    Ok(())
}
