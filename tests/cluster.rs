//! Nodes joined over a real `redis-server`: peers on different nodes see, list and session
//! with each other as on one upstream server; a killed node's peers and sessions go away.
//! (Resume across nodes: `cluster_resume.rs`; what the nodes write to Redis and how they reach
//! it: `cluster_redis.rs`.)

use std::time::{Duration, Instant};

use anyhow::Result;
use cluster_tests::cluster::{readyz, three_nodes, until_listed};
use cluster_tests::{eventually, Node, Peer, Redis, Topo};
use serde_json::{json, Value};

const QUIET: Duration = Duration::from_millis(300);

#[tokio::test]
async fn presence_is_cluster_wide() -> Result<()> {
    let redis = Redis::start().await?;
    let nodes = three_nodes(&redis, &[]).await?;
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
    let nodes = three_nodes(&redis, &[]).await?;
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
    let nodes = three_nodes(&redis, &[]).await?;
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
    let nodes = three_nodes(&redis, &[]).await?;
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
    let nodes = three_nodes(&redis, &["--node-ttl", "1"]).await?;
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
    let nodes = three_nodes(&redis, &[]).await?;
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
    let nodes = three_nodes(&redis, &["--log", "warn"]).await?;
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
    let nodes = three_nodes(&redis, &[]).await?;
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

/// A v2 consumer asking for a stream by name is placed on the least-loaded relay with room,
/// cluster-wide; the origin only once every relay is full; a stream nobody serves is an error.
#[tokio::test]
async fn a_consumer_asking_for_a_stream_is_placed_on_a_relay_with_room_before_the_origin(
) -> Result<()> {
    let redis = Redis::start().await?;
    let nodes = three_nodes(&redis, &[]).await?;
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
