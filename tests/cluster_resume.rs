//! v2 peers resuming across a cluster of real nodes on a real Redis: on their node or another,
//! after a dropped connection, a drain or their node's death (suspension, adoption, the grace),
//! with what was sent meanwhile or lost in flight delivered, in order, once.

use std::time::{Duration, Instant};

use anyhow::Result;
use cluster_tests::cluster::{three_nodes, until_listed, v2_producer_in_session};
use cluster_tests::{Node, Peer, Redis, Topo};
use serde_json::{json, Value};

const QUIET: Duration = Duration::from_millis(300);

#[tokio::test]
async fn a_v2_peer_resumes_on_its_node_while_in_a_cross_node_session() -> Result<()> {
    let redis = Redis::start().await?;
    let nodes = three_nodes(&redis, &[]).await?;
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
async fn a_v2_peer_resumes_on_another_node_and_its_session_goes_on() -> Result<()> {
    let redis = Redis::start().await?;
    let nodes = three_nodes(&redis, &[]).await?;
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
    let nodes = three_nodes(&redis, &[]).await?;
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
    let nodes = three_nodes(&redis, &[]).await?;
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
    let nodes = three_nodes(&redis, &["--node-ttl", "1"]).await?;
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
    let nodes = three_nodes(&redis, &["--node-ttl", "1", "--resume-grace", "3"]).await?;
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
    let nodes = three_nodes(&redis, &["--node-ttl", "1"]).await?;
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
    let nodes = three_nodes(&redis, &["--node-ttl", "1"]).await?;
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

/// A node learns which nodes are alive once per liveness tick (250 ms). A token of a node that
/// joined since then is not a dead node's: it is claimed from that node, not adopted (the
/// adoption would find no suspended peer and the client would get a new peer id).
#[tokio::test]
async fn a_resume_reaches_a_node_that_joined_since_the_last_liveness_tick() -> Result<()> {
    let redis = Redis::start().await?;
    let a = Node::join(&redis, "node-a", &[]).await?;
    let b = Node::join(&redis, "node-b", &[]).await?;
    a.wait_cluster(2).await?;
    // at once after node-c joined, well within node-a's next tick
    let c = Node::join(&redis, "node-c", &[]).await?;
    let p = Peer::connect_with(&c.url(), Some("gstwebrtc-cluster.v2")).await?;
    let (pid, token) = (
        p.id.clone(),
        p.welcome["resumeToken"].as_str().unwrap().to_string(),
    );
    c.cut(p).await?;
    let url = format!("{}/?resume={token}", a.url());
    let p = Peer::connect_with(&url, Some("gstwebrtc-cluster.v2")).await?;
    assert_eq!(p.welcome["resumed"], true, "{}", p.welcome);
    assert_eq!(p.id, pid);
    drop(b);
    Ok(())
}
