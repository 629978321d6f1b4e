//! The door without tokens: connection guards (per node, per address), a flood of half-open
//! connections and bad upgrades, mutated upgrade requests. The node refuses or closes what it
//! must and keeps relaying for the peers it has. Real nodes over real TCP.

use std::time::{Duration, Instant};

use anyhow::Result;
use cluster_tests::{upgrade, Node, Peer};
use serde_json::json;

const V2: &str = "gstwebrtc-cluster.v2";

/// A v1 producer and consumer on `url` in a session.
async fn a_session(url: &str) -> Result<(Peer, Peer, String)> {
    let mut producer = Peer::connect(url).await?;
    producer
        .set_status(&["producer"], json!({"name": "cam"}))
        .await?;
    let mut consumer = Peer::connect(url).await?;
    let session = cluster_tests::start_session(&mut producer, &mut consumer).await?;
    Ok((producer, consumer, session))
}

#[tokio::test]
async fn connection_limits_refuse_new_upgrades_and_existing_peers_keep_relaying() -> Result<()> {
    let node = Node::start(&["--max-connections-per-ip", "3"]).await?;
    let url = node.url();
    let (mut producer, mut consumer, session) = a_session(&url).await?;
    let _third = Peer::connect(&url).await?;
    let refused = upgrade(&url, None).await?;
    assert_eq!(refused.map(|r| r.0), Some(429));
    let ice = json!({"type": "peer", "sessionId": session, "ice": {"candidate": "c", "sdpMLineIndex": 0}});
    producer.send(ice).await?;
    consumer.wait_for("peer").await?;

    let full = Node::start(&["--max-connections", "2"]).await?;
    let _a = Peer::connect(&full.url()).await?;
    let _b = Peer::connect(&full.url()).await?;
    assert_eq!(upgrade(&full.url(), None).await?.map(|r| r.0), Some(503));
    let (_, health) = full.get("/healthz").await?;
    assert!(health.contains("\"limits\":1"), "{health}");
    Ok(())
}

#[tokio::test]
async fn a_flood_of_half_open_connections_and_bad_upgrades_does_not_stop_relaying() -> Result<()> {
    let node = Node::start(&["--handshake-timeout", "1"]).await?;
    let url = node.url();
    let (mut producer, mut consumer, session) = a_session(&url).await?;
    // 300 TCP connections that never send a byte, and 100 upgrades with no key.
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(tokio::net::TcpStream::connect(("127.0.0.1", node.port)).await?);
    }
    let flood = tokio::spawn({
        let port = node.port;
        async move {
            for _ in 0..100 {
                let r = cluster_tests::http_get(port, "/").await;
                let _ = r;
            }
        }
    });
    let started = Instant::now();
    for i in 0..50 {
        let ice = json!({"type": "peer", "sessionId": session, "ice": {"candidate": format!("c{i}"), "sdpMLineIndex": 0}});
        producer.send(ice).await?;
        let got = consumer.wait_for("peer").await?;
        assert_eq!(got["ice"]["candidate"], format!("c{i}"));
    }
    eprintln!(
        "50 relayed round trips under the flood in {} ms",
        started.elapsed().as_millis()
    );
    flood.await?;
    // A request head beyond the parser's buffer is refused, not buffered.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", node.port)).await?;
        let big = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(200_000)
        );
        let _ = s.write_all(big.as_bytes()).await;
        let mut head = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut head)).await??;
        let head = String::from_utf8_lossy(&head[..n]).to_string();
        assert!(head.starts_with("HTTP/1.1 431"), "{head}");
    }
    // The half-open connections are closed after the handshake timeout (1 s): each one is
    // read until the node ends it (EOF, a 408, or a reset), within a generous deadline.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let ends = idle.into_iter().map(|mut s| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 64];
        tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .is_ok()
    });
    let closed = futures::future::join_all(ends).await;
    let open = closed.iter().filter(|c| !**c).count();
    assert_eq!(open, 0, "half-open connections never closed by the node");
    assert_eq!(node.get("/healthz").await?.0, 200);
    Ok(())
}

/// The upgrade path fed 200 random and mutated requests over real TCP (seeded from a real
/// upgrade): each gets an answer or a closed connection; the node keeps serving.
#[tokio::test]
async fn mutated_upgrade_requests_get_an_answer_and_the_node_keeps_serving() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let node = Node::start(&["--handshake-timeout", "1"]).await?;
    let seed = format!(
        "GET /?resume=abc&token=x HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {V2}\r\n\r\n",
        node.port
    );
    // A small deterministic generator (the cases must be the same on every run).
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut cases = Vec::new();
    for case in 0..200 {
        let mut bytes = seed.clone().into_bytes();
        for _ in 0..(1 + next() % 6) {
            if bytes.len() < 2 {
                break;
            }
            let at = (next() as usize) % bytes.len();
            match next() % 4 {
                0 => bytes[at] = next() as u8,
                1 => bytes.insert(at, next() as u8),
                2 => {
                    bytes.remove(at);
                }
                _ => bytes.truncate(at.max(1)),
            }
        }
        if case % 10 == 0 {
            bytes = (0..1 + next() % 2048).map(|_| next() as u8).collect();
        }
        cases.push(bytes);
    }
    // All at once (each may wait out the 1 s handshake timeout).
    let port = node.port;
    let runs: Vec<_> = cases
        .into_iter()
        .map(|bytes| {
            tokio::spawn(async move {
                let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
                let _ = s.write_all(&bytes).await;
                let mut buf = [0u8; 256];
                match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => Ok(true),
                    Ok(_) => Ok(false),
                    Err(_) => anyhow::bail!("no answer and not closed within 5 s: {bytes:?}"),
                }
            })
        })
        .collect();
    let (mut answered, mut closed) = (0, 0);
    for run in runs {
        match run.await?? {
            true => answered += 1,
            false => closed += 1,
        }
    }
    eprintln!("200 mutated upgrades: {answered} answered, {closed} closed");
    assert_eq!(node.get("/healthz").await?.0, 200);
    let mut p = Peer::connect(&node.url()).await?;
    p.send(json!({"type": "list"})).await?;
    p.wait_for("list").await?;
    Ok(())
}
