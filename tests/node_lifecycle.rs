//! A node's start and what it logs: a Redis that is not there yet (the node listens, unready,
//! and joins when Redis comes), a bound on that wait, configuration refused at start with
//! exit 2, and log lines an operator reads without Rust `Debug` formatting. Real node binary,
//! real redis-server.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cluster_tests::{bin, free_port, Node, Peer, Redis, Topo};
use serde_json::json;

/// Runs the node with `args` until it exits by itself (within a generous deadline).
fn run_until_exit(args: &[&str]) -> Result<Output> {
    let mut child = Command::new(bin("signalling-cluster"))
        .args(["--host", "127.0.0.1", "--port", &free_port().to_string()])
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            anyhow::bail!("the node did not exit: {args:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(child.wait_with_output()?)
}

/// A node whose stdout (its log) goes to `log`.
async fn node_logging_to(log: &Path, extra: &[&str]) -> Result<Node> {
    let mut cmd = Command::new(bin("signalling-cluster"));
    cmd.stdout(std::fs::File::create(log)?);
    let mut args = vec!["--log", "info"];
    args.extend_from_slice(extra);
    Node::spawn(cmd, "127.0.0.1", free_port(), &args, &[], false).await
}

/// The log, which has no terminal colours: it is not written to a terminal.
fn plain(log: &Path) -> Result<String> {
    let text = std::fs::read_to_string(log)?;
    anyhow::ensure!(
        !text.contains('\u{1b}'),
        "escape sequences in a log written to a file"
    );
    Ok(text)
}

#[tokio::test]
async fn a_node_started_before_redis_listens_unready_and_joins_once_redis_is_up() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("gwc-lifecycle-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let log = dir.join("early.log");
    let redis_port = free_port();
    let url = format!("redis://127.0.0.1:{redis_port}");
    // Listening (healthy) with nothing on the Redis port.
    let early = node_logging_to(&log, &["--redis-url", &url, "--node-id", "early"]).await?;
    let (status, body) = early.get("/readyz").await?;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("waiting for Redis"), "{body}");
    let refused = Peer::connect(&early.url())
        .await
        .err()
        .context("upgrade accepted")?;
    assert!(refused.to_string().contains("503"), "{refused}");
    assert_eq!(early.get("/api/v1/peers").await?.0, 503);
    // Each attempt is in the log, at info and warn, with why it failed.
    cluster_tests::eventually(Duration::from_secs(10), "two attempts logged", || async {
        let text = plain(&log).unwrap_or_default();
        text.contains("attempt=2")
            && text.contains("WARN")
            && text.contains("waiting for Redis: cannot reach Redis")
    })
    .await?;

    // Redis comes: the node joins and works as any node, with another node that starts now.
    let redis = Redis::start_on(redis_port).await?;
    cluster_tests::eventually(
        Duration::from_secs(30),
        "ready once Redis is up",
        || async { matches!(early.get("/readyz").await, Ok((200, _))) },
    )
    .await?;
    let late = Node::join(&redis, "late", &[]).await?;
    let mut producer = Peer::connect(&early.url()).await?;
    producer
        .set_status(&["producer"], json!({"name": "cam"}))
        .await?;
    let mut viewer = Peer::connect(&late.url()).await?;
    Topo::visible(&mut viewer, &producer.id, false).await?;
    let text = plain(&log)?;
    assert!(text.contains("joined the cluster"), "{text}");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[tokio::test]
async fn with_a_join_timeout_a_node_without_redis_exits_1_with_one_line() -> Result<()> {
    let url = format!("redis://127.0.0.1:{}", free_port());
    let out = run_until_exit(&["--redis-url", &url, "--redis-join-timeout", "1"])?;
    let err = String::from_utf8(out.stderr)?;
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("error: cannot join the cluster within --redis-join-timeout (1 s)")
            && err.contains("Connection refused"),
        "{err}"
    );
    assert_eq!(
        err.trim().lines().count(),
        1,
        "one line, no backtrace: {err}"
    );
    // The node listened meanwhile and said why it waited.
    let log = String::from_utf8(out.stdout)?;
    assert!(log.contains("listening on"), "{log}");
    assert!(log.contains("waiting for Redis"), "{log}");
    Ok(())
}

#[tokio::test]
async fn configuration_that_cannot_work_is_refused_at_start_with_exit_2() -> Result<()> {
    let empty = std::env::temp_dir().join(format!("gwc-empty-web-{}", std::process::id()));
    std::fs::create_dir_all(&empty)?;
    let empty_arg = empty.to_str().context("path")?;
    for (args, said) in [
        (
            vec!["--web-root", "/nonexistent"],
            "--web-root /nonexistent: not a directory",
        ),
        (vec!["--web-root", empty_arg], "no index.html"),
        (
            vec!["--redis-url", "http://redis:6379"],
            "cannot join the cluster",
        ),
        (vec!["--redis-join-timeout", "0"], "above 0"),
    ] {
        let out = run_until_exit(&args)?;
        let err = String::from_utf8(out.stderr)?;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(said), "{args:?}: {err}");
        assert!(!err.contains("Stack backtrace"), "{args:?}: {err}");
    }
    std::fs::remove_dir_all(&empty)?;
    Ok(())
}

/// What an operator reads: addresses, roles and actions as values, never `Some(…)` or
/// `Kick { … }`.
#[tokio::test]
async fn log_lines_carry_plain_values_not_rust_debug_formatting() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("gwc-logs-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let log = dir.join("node.log");
    let node = node_logging_to(&log, &["--admin-api"]).await?;
    let mut producer = Peer::connect(&node.url()).await?;
    producer
        .set_status(&["producer"], json!({"name": "cam"}))
        .await?;
    producer.sync().await?;
    let kicked = Command::new(bin("signalling-cluster"))
        .args(["admin", "kick", &producer.id, "--reason", "log test"])
        .args(["--url", &format!("http://127.0.0.1:{}", node.port)])
        .output()?;
    assert!(kicked.status.success(), "{kicked:?}");
    assert_eq!(producer.closed().await?, Some(4000));
    cluster_tests::eventually(Duration::from_secs(10), "the kick logged", || async {
        plain(&log).is_ok_and(|t| t.contains("peer kicked by an operator"))
    })
    .await?;
    let text = plain(&log)?;
    assert!(text.contains("remote=127.0.0.1:"), "{text}");
    assert!(text.contains("roles=producer"), "{text}");
    assert!(
        text.contains("operator action") && text.contains("action=\"kick\""),
        "{text}"
    );
    for debug in ["Some(", "None", "Kick {", "[Producer]"] {
        assert!(!text.contains(debug), "'{debug}' in the log:\n{text}");
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
