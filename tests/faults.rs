//! Faults that real clusters have, with real parts: a `redis-server` paused with SIGSTOP (what
//! a hung server or a paused VM look like to a node: nothing refused, nothing answered), one
//! node partitioned from Redis in a network namespace while its peers stay connected, a slow
//! network between the nodes and Redis, and a Sentinel failover.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cluster_tests::netns::Namespace;
use cluster_tests::{bin, delay, eventually, free_port, start_session, Node, Peer, Redis, Topo};
use serde_json::{json, Value};

/// `/readyz` status of a node.
async fn readyz(node: &Node) -> u16 {
    node.get("/readyz").await.map_or(0, |(status, _)| status)
}

/// Waits until `/readyz` of both nodes answers `status`.
async fn both_readyz(a: &Node, b: &Node, status: u16, within: Duration, what: &str) -> Result<()> {
    eventually(within, what, || async {
        readyz(a).await == status && readyz(b).await == status
    })
    .await
}

const V2: Option<&str> = Some("gstwebrtc-cluster.v2");

/// A v1 producer on `pn` named `name` in a session with a consumer on `cn` (speaking
/// `subprotocol`: v1 if none).
async fn session(
    pn: &Node,
    cn: &Node,
    name: &str,
    subprotocol: Option<&str>,
) -> Result<(Peer, Peer, String)> {
    session_as(pn, cn, name, None, subprotocol).await
}

/// A producer on `pn` named `name` in a session with a consumer on `cn`, each speaking its
/// subprotocol (v1 if none).
async fn session_as(
    pn: &Node,
    cn: &Node,
    name: &str,
    producer: Option<&str>,
    consumer: Option<&str>,
) -> Result<(Peer, Peer, String)> {
    let mut p = Peer::connect_with(&pn.url(), producer).await?;
    p.set_status(&["producer"], json!({ "name": name })).await?;
    let mut c = Peer::connect_with(&cn.url(), consumer).await?;
    let sid = start_session(&mut p, &mut c).await?;
    Ok((p, c, sid))
}

fn ice(session_id: &str, candidate: &str) -> Value {
    json!({"type": "peer", "sessionId": session_id,
           "ice": {"candidate": candidate, "sdpMLineIndex": 0}})
}

/// Everything `peer` receives until it has been quiet for `quiet`.
async fn received(peer: &mut Peer, quiet: Duration) -> Vec<Value> {
    let mut got = Vec::new();
    while let Ok(msg) = peer.recv_within(quiet).await {
        got.push(msg);
    }
    got
}

#[tokio::test]
async fn a_paused_redis_makes_nodes_unready_refuses_what_crosses_and_delivers_nothing_late(
) -> Result<()> {
    let redis = Redis::start().await?;
    // A pause far shorter than the node TTL: nobody is fenced (that is the partition test's),
    // however long a loaded machine takes to notice the pause.
    let opts = ["--node-ttl", "30"];
    let a = Node::join(&redis, "node-a", &opts).await?;
    let b = Node::join(&redis, "node-b", &opts).await?;
    let (mut p1, mut c1, s1) = session(&a, &b, "one", None).await?;
    // (v2, to read the error's code)
    let (mut p2, mut c2, s2) = session(&a, &b, "two", V2).await?;
    p1.send(ice(&s1, "before")).await?;
    assert_eq!(c1.expect("peer").await?["ice"]["candidate"], "before");

    redis.proc.signal(libc::SIGSTOP);
    let paused = Instant::now();
    // Sent before anyone can notice: it waits in Redis' buffers for the whole pause.
    p1.send(ice(&s1, "during")).await?;
    both_readyz(&a, &b, 503, Duration::from_secs(15), "both nodes unready").await?;
    let detected = paused.elapsed();
    // What would cross nodes now gets a clear error at once.
    c2.send(ice(&s2, "refused")).await?;
    let err = c2.expect("error").await?;
    assert_eq!(err["code"], "cluster-unavailable", "{err}");

    // Longer than twice --redis-timeout (1 s): whatever was held is late by then.
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(paused.elapsed())).await;
    redis.proc.signal(libc::SIGCONT);
    let resumed = Instant::now();
    both_readyz(
        &a,
        &b,
        200,
        Duration::from_secs(20),
        "both nodes ready again",
    )
    .await?;
    eprintln!(
        "redis paused for 5 s: both nodes unready {detected:?} after SIGSTOP, ready again {:?} after SIGCONT",
        resumed.elapsed()
    );
    // The candidate sent during the pause is not delivered 5 s late as if new, nor lost
    // silently: its session ends, and the consumer is told.
    let end = c1
        .wait_until(|m| m["type"] == "peer" || m["type"] == "endSession")
        .await
        .context("the candidate sent during the pause: neither delivered nor its session ended")?;
    assert_eq!(
        (&end["type"], &end["sessionId"]),
        (&json!("endSession"), &json!(s1)),
        "the candidate held up in the pause: {end}"
    );

    // Both nodes waited out the same pause, so neither reaped the other: node A's producers
    // are still listed on node B, and a new session across the nodes relays.
    let mut c3 = Peer::connect(&b.url()).await?;
    Topo::visible(&mut c3, &p1.id, false).await?;
    Topo::visible(&mut c3, &p2.id, false).await?;
    c3.send(json!({"type": "startSession", "peerId": p2.id}))
        .await?;
    let started = c3.expect("sessionStarted").await?;
    let start = p2.wait_for("startSession").await?;
    assert_eq!(start["sessionId"], started["sessionId"]);
    let s3 = started["sessionId"].as_str().unwrap_or_default();
    p2.send(ice(s3, "after")).await?;
    assert_eq!(c3.expect("peer").await?["ice"]["candidate"], "after");
    Ok(())
}

#[tokio::test]
async fn a_slow_redis_trips_nothing() -> Result<()> {
    let redis = Redis::start().await?;
    // 250 ms each way: every Redis round trip takes 500 ms, a quarter of --redis-timeout,
    // which leaves a loaded machine 1.5 s of slack before anything may trip.
    let slow = delay::start(redis.port, Duration::from_millis(250)).await?;
    let url = format!("redis://127.0.0.1:{slow}");
    let opts = ["--redis-timeout", "2"];
    let a = Node::join_url(&url, "node-a", &opts).await?;
    let b = Node::join_url(&url, "node-b", &opts).await?;
    // Joining takes a few slow round trips (subscribe, load the replica, connect the
    // publisher) before a node is ready; from then on nothing may trip.
    both_readyz(&a, &b, 200, Duration::from_secs(10), "both nodes ready").await?;
    let (mut p, mut c, sid) = session(&a, &b, "slow", None).await?;
    let started = Instant::now();
    let mut relayed = 0;
    while started.elapsed() < Duration::from_secs(4) {
        assert_eq!((readyz(&a).await, readyz(&b).await), (200, 200));
        let candidate = format!("c{relayed}");
        p.send(ice(&sid, &candidate)).await?;
        assert_eq!(c.expect("peer").await?["ice"]["candidate"], candidate);
        relayed += 1;
    }
    eprintln!("slow redis: {relayed} relays across nodes in 4 s, nodes ready throughout");
    assert!(relayed > 0);
    Ok(())
}

/// `peer`'s resume on `node` with its token: the same peer, resumed.
async fn resume_on(node: &Node, peer: &Peer) -> Result<Peer> {
    let token = peer.welcome["resumeToken"].as_str().unwrap_or_default();
    let url = format!("{}/?resume={token}&last={}", node.url(), peer.frames);
    let resumed = Peer::connect_with(&url, V2).await?;
    assert_eq!(resumed.id, peer.id, "{}", resumed.welcome);
    assert_eq!(resumed.welcome["resumed"], true, "{}", resumed.welcome);
    Ok(resumed)
}

/// Sends a candidate from `from` in session `sid` and expects `to` to get it.
async fn relays(from: &mut Peer, to: &mut Peer, sid: &str, candidate: &str) -> Result<()> {
    from.send(ice(sid, candidate)).await?;
    let got = to.expect("peer").await?;
    assert_eq!(got["ice"]["candidate"], candidate, "{got}");
    Ok(())
}

#[tokio::test]
async fn a_node_partitioned_from_redis_fences_itself_its_peers_move_and_it_rejoins() -> Result<()> {
    let ns = Namespace::create()?;
    let redis_host = ns.redis_address();
    // (protected mode refuses clients from any address but loopback's; this one is the
    // namespace's link, nothing else reaches it)
    let listen = ["--bind", "127.0.0.1", &redis_host, "--protected-mode", "no"];
    let redis = Redis::start_with(free_port(), &listen).await?;
    let url = format!("redis://{redis_host}:{}", redis.port);
    let opts = ["--node-ttl", "2"];
    let mut args = vec!["--redis-url", &url, "--node-id", "node-a"];
    args.extend_from_slice(&opts);
    let cmd = ns.command(&bin("signalling-cluster"));
    let a = Node::spawn(cmd, &ns.peers_address(), free_port(), &args, &[], false).await?;
    let b = Node::join(&redis, "node-b", &opts).await?;
    // On node A (the one to be cut off): a v2 producer and a v1 producer, each with a consumer
    // on node B, and a v2 consumer of a producer on node B.
    let (mut p_v2, mut c_v2, s_v2) = session_as(&a, &b, "a-v2", V2, V2).await?;
    let (mut p_v1, mut c_v1, _) = session_as(&a, &b, "a-v1", None, None).await?;
    let (mut p_b, mut c_a, s_b) = session_as(&b, &a, "b-v2", V2, V2).await?;
    relays(&mut p_v2, &mut c_v2, &s_v2, "before").await?;
    relays(&mut p_b, &mut c_a, &s_b, "before").await?;

    ns.cut_redis()?;
    let cut = Instant::now();
    // The node's v2 peers are sent away, and every connection is closed.
    p_v2.wait_for("goAway").await?;
    let fenced = cut.elapsed();
    assert_eq!(p_v2.closed().await?, Some(1001));
    c_a.wait_for("goAway").await?;
    assert_eq!(c_a.closed().await?, Some(1001));
    assert_eq!(p_v1.closed().await?, Some(1001));
    assert_eq!(readyz(&a).await, 503);
    assert!(
        Peer::connect(&a.url()).await.is_err(),
        "a fenced node refuses new connections"
    );
    // The other node reaped it: the v1 producer's session ended there.
    c_v1.wait_for("endSession").await?;
    // The v2 peers resume on node B with their sessions.
    let mut p_v2 = resume_on(&b, &p_v2).await?;
    let mut c_a = resume_on(&b, &c_a).await?;
    let moved = cut.elapsed();
    relays(&mut c_v2, &mut p_v2, &s_v2, "moved").await?;
    relays(&mut p_v2, &mut c_v2, &s_v2, "moved back").await?;
    relays(&mut p_b, &mut c_a, &s_b, "moved").await?;
    assert_eq!(
        readyz(&b).await,
        200,
        "the node that kept Redis stays ready"
    );

    // Everything the survivors have been told so far; from now on they must hear nothing.
    for peer in [&mut p_v2, &mut c_v2, &mut c_v1, &mut p_b, &mut c_a] {
        received(peer, Duration::from_millis(200)).await;
    }
    ns.heal_redis()?;
    let healed = Instant::now();
    eventually(Duration::from_secs(15), "node A ready again", || async {
        readyz(&a).await == 200
    })
    .await?;
    let rejoined = healed.elapsed();
    eprintln!(
        "node A partitioned from Redis (TTL 2 s): goAway {fenced:?} after the cut, both v2 \
         peers resumed on B {moved:?} after it; ready again {rejoined:?} after the heal"
    );
    // Nobody hears a duplicate or a stale message from the rejoined node.
    for peer in [&mut p_v2, &mut c_v2, &mut c_v1, &mut p_b, &mut c_a] {
        let late = received(peer, Duration::from_secs(2)).await;
        assert!(
            late.is_empty(),
            "{} heard after the heal: {late:?}",
            peer.id
        );
    }
    // It serves the cluster again: a new peer there sees the producers where they are now
    // (the v1 one is gone) and starts a session with the moved one.
    let mut c_new = Peer::connect_with(&a.url(), V2).await?;
    let s_new = start_session(&mut p_v2, &mut c_new).await?;
    relays(&mut p_v2, &mut c_new, &s_new, "rejoined").await?;
    relays(&mut c_new, &mut p_v2, &s_new, "rejoined back").await?;
    let listed = Topo::list_until(&mut c_new, false, |l| {
        let names: Vec<&str> = l["producers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["meta"]["name"].as_str())
            .collect();
        names.contains(&"a-v2") && names.contains(&"b-v2")
    })
    .await?;
    let text = listed.to_string();
    assert!(
        !text.contains(&p_v1.id),
        "the closed v1 producer is gone: {text}"
    );
    Ok(())
}

/// `redis-cli -p port args…`, its output.
async fn cli(port: u16, args: &[&str]) -> Result<String> {
    let out = tokio::process::Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .await?;
    anyhow::ensure!(out.status.success(), "redis-cli {args:?} failed");
    Ok(String::from_utf8(out.stdout)?)
}

#[tokio::test]
async fn a_sentinel_failover_moves_the_cluster_to_the_promoted_replica() -> Result<()> {
    let master = Redis::start().await?;
    let master_port = master.port.to_string();
    let replica =
        Redis::start_with(free_port(), &["--replicaof", "127.0.0.1", &master_port]).await?;
    let mut sentinels = Vec::new();
    for _ in 0..3 {
        sentinels.push(Redis::sentinel(master.port, "gwc").await?);
    }
    // Before the master dies, the Sentinels must know the replica and each other (a quorum of
    // two has to agree), which they learn from the master within seconds.
    eventually(
        Duration::from_secs(30),
        "sentinels that know the replica and each other",
        || async {
            let mut all = true;
            for s in &sentinels {
                let master = cli(s.port, &["SENTINEL", "MASTER", "gwc"])
                    .await
                    .unwrap_or_default();
                let field = |name: &str| {
                    let lines: Vec<&str> = master.lines().collect();
                    lines
                        .iter()
                        .position(|l| *l == name)
                        .and_then(|i| lines.get(i + 1))
                        .map(|v| v.to_string())
                };
                all &= field("num-slaves").as_deref() == Some("1")
                    && field("num-other-sentinels").as_deref() == Some("2");
            }
            all
        },
    )
    .await?;
    let list: Vec<String> = sentinels
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.port))
        .collect();
    let list = list.join(",");
    let node = |id: &'static str| {
        let list = list.clone();
        async move {
            Node::start(&[
                "--redis-sentinel",
                &list,
                "--redis-sentinel-master",
                "gwc",
                "--node-id",
                id,
            ])
            .await
        }
    };
    let a = node("node-a").await?;
    let b = node("node-b").await?;
    both_readyz(&a, &b, 200, Duration::from_secs(10), "both nodes ready").await?;
    let (mut p, mut c, sid) = session(&a, &b, "ha", None).await?;
    p.send(ice(&sid, "before")).await?;
    assert_eq!(c.expect("peer").await?["ice"]["candidate"], "before");

    drop(master); // SIGKILL
    let killed = Instant::now();
    both_readyz(&a, &b, 503, Duration::from_secs(5), "both nodes unready").await?;
    both_readyz(
        &a,
        &b,
        200,
        Duration::from_secs(40),
        "both nodes ready on the promoted replica",
    )
    .await?;
    eprintln!(
        "sentinel failover: both nodes ready again {:?} after the master was killed",
        killed.elapsed()
    );
    let role = cli(replica.port, &["ROLE"]).await?;
    assert!(role.starts_with("master"), "{role}");

    // The session across the nodes relays again, or was ended: never a silent loss.
    p.send(ice(&sid, "after")).await?;
    let got = received(&mut c, Duration::from_secs(3)).await;
    let relayed = got
        .iter()
        .any(|m| m["type"] == "peer" && m["ice"]["candidate"] == "after");
    let ended = got.iter().any(|m| m["type"] == "endSession");
    assert!(relayed || ended, "{got:?}");
    // And a new one relays on the new master.
    let (mut p2, mut c2, s2) = session(&a, &b, "ha-2", None).await?;
    p2.send(ice(&s2, "new")).await?;
    assert_eq!(c2.expect("peer").await?["ice"]["candidate"], "new");
    drop(sentinels);
    Ok(())
}
