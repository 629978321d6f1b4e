//! What the nodes write to Redis and how they reach it: relays batched only to nodes that read
//! batches (read off the Redis channel), a Redis user without `CLIENT` commands, a TLS-only
//! Redis. Real nodes, real `redis-server` and `redis-cli`.

use std::time::{Duration, Instant};

use anyhow::Result;
use cluster_tests::cluster::{producer_in_session, readyz, until_listed};
use cluster_tests::{eventually, Node, Peer, Redis};
use serde_json::{json, Value};

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
