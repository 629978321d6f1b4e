//! producer-agent and consumer-agent end to end through a real node.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cluster_tests::{bin, Node, Proc};
use serde_json::Value;

/// Runs a command to completion (killing it after `limit`); returns (exit code, stdout, stderr).
fn run_to_end(mut cmd: Command, limit: Duration) -> Result<(Option<i32>, String, String)> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output()?;
            bail!(
                "still running after {limit:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output()?;
    Ok((
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_agent_to_consumer_agent_counts_frames() -> Result<()> {
    let node = Node::start(&[]).await?;
    let mut producer = Command::new(bin("producer-agent"));
    producer.args([
        "--server",
        &node.url(),
        "--name",
        "agents-e2e",
        "--source",
        "test",
    ]);
    producer.args(["--width", "320", "--height", "240", "--audio"]);
    let _producer = Proc::spawn(producer, "producer-agent")?;

    let mut consumer = Command::new(bin("consumer-agent"));
    consumer.args([
        "--server",
        &node.url(),
        "--producer-name",
        "agents-e2e",
        "--frames",
        "60",
    ]);
    let url = node.url();
    let (code, stdout, stderr) =
        tokio::task::spawn_blocking(move || run_to_end(consumer, Duration::from_secs(120)))
            .await??;
    assert_eq!(code, Some(0), "consumer-agent failed:\n{stderr}");
    let last = stdout.lines().last().context("no stdout")?;
    let report: Value = serde_json::from_str(last).with_context(|| format!("not JSON: {last}"))?;
    assert!(report["frames"].as_u64().unwrap() >= 60, "{report}");
    let first = report["first_frame_ms"]
        .as_u64()
        .context("no first_frame_ms")?;
    assert!(
        first > 0 && first <= report["elapsed_ms"].as_u64().unwrap(),
        "{report}"
    );
    assert!(stderr.contains("first frame after"), "{stderr}");
    eprintln!("through {url}: {report}");
    Ok(())
}

#[tokio::test]
async fn consumer_agent_gives_up_on_a_producer_that_never_appears() -> Result<()> {
    let node = Node::start(&[]).await?;
    let mut consumer = Command::new(bin("consumer-agent"));
    consumer.args([
        "--server",
        &node.url(),
        "--producer-name",
        "nobody",
        "--frames",
        "1",
        "--timeout",
        "2",
    ]);
    let (code, stdout, stderr) =
        tokio::task::spawn_blocking(move || run_to_end(consumer, Duration::from_secs(30)))
            .await??;
    assert_eq!(code, Some(3), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stderr.contains("no producer named 'nobody'"), "{stderr}");
    Ok(())
}

#[tokio::test]
async fn consumer_agent_reports_an_unreachable_server() -> Result<()> {
    let port = cluster_tests::free_port();
    let mut consumer = Command::new(bin("consumer-agent"));
    consumer.args([
        "--server",
        &format!("ws://127.0.0.1:{port}"),
        "--producer-name",
        "x",
    ]);
    let (code, _, stderr) =
        tokio::task::spawn_blocking(move || run_to_end(consumer, Duration::from_secs(30)))
            .await??;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("cannot connect to"), "{stderr}");
    Ok(())
}
