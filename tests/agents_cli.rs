//! The agents' command lines: bad arguments, unreachable servers and missing producers give
//! the documented exit codes; JSON logs are one object per line.

use std::time::Duration;

use anyhow::{Context, Result};
use cluster_tests::agent::{quick, Agent};
use cluster_tests::{free_port, Node};
use serde_json::Value;

#[tokio::test]
async fn bad_arguments_unreachable_servers_and_missing_producers_give_documented_exit_codes(
) -> Result<()> {
    let node = Node::start(&[]).await?;
    let url = node.url();
    let dead = format!("ws://127.0.0.1:{}", free_port());
    let cases: Vec<(&str, Vec<&str>, i32, &str)> = vec![
        (
            "producer-agent",
            vec![
                "--server",
                &url,
                "--name",
                "x",
                "--source",
                "pipeline:nosuchelement ! videoconvert",
            ],
            2,
            "cannot parse the pipeline fragment",
        ),
        (
            "producer-agent",
            vec![
                "--server",
                &url,
                "--name",
                "x",
                "--source",
                "uri:file:///nonexistent/clip.mp4",
            ],
            2,
            "cannot open",
        ),
        (
            "producer-agent",
            vec!["--server", &url, "--name", "x", "--source", "camera"],
            2,
            "unknown source",
        ),
        (
            "producer-agent",
            vec!["--server", "http://127.0.0.1:1", "--name", "x"],
            2,
            "scheme must be ws or wss",
        ),
        (
            "producer-agent",
            vec!["--server", &dead, "--name", "x", "--retry-for", "1"],
            1,
            "cannot connect to",
        ),
        (
            "relay-agent",
            vec!["--server", &url],
            2,
            "--source-name, --source-id or --whip",
        ),
        (
            "relay-agent",
            vec!["--server", &dead, "--source-name", "x", "--retry-for", "1"],
            1,
            "cannot connect to",
        ),
        (
            "relay-agent",
            vec![
                "--server",
                &url,
                "--source-name",
                "nobody",
                "--timeout",
                "2",
            ],
            1,
            "no origin appeared within 2 s",
        ),
        (
            "consumer-agent",
            vec!["--server", &url],
            2,
            "--producer-name, --producer-id, --first or --stream",
        ),
        (
            "consumer-agent",
            vec!["--server", &url, "--first", "--sink", "file:/tmp/x.avi"],
            2,
            "container",
        ),
        (
            "consumer-agent",
            vec!["--server", &dead, "--first", "--retry-for", "1"],
            1,
            "cannot connect to",
        ),
        (
            "consumer-agent",
            vec![
                "--server",
                &url,
                "--producer-name",
                "nobody",
                "--timeout",
                "2",
            ],
            3,
            "no producer named 'nobody' appeared",
        ),
        (
            "consumer-agent",
            vec![
                "--server",
                &url,
                "--producer-id",
                "no-such-id",
                "--timeout",
                "5",
            ],
            3,
            "no producer no-such-id",
        ),
    ];
    for (name, args, code, message) in cases {
        let (got, stderr) = quick(name, &args).await?;
        assert_eq!(got, Some(code), "{name} {args:?}:\n{stderr}");
        assert!(
            stderr.contains(message),
            "{name} {args:?}: no '{message}' in:\n{stderr}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() -> Result<()> {
    let dead = format!("ws://127.0.0.1:{}", free_port());
    let mut a = Agent::spawn(
        "consumer-agent",
        &[
            "--server",
            &dead,
            "--first",
            "--retry-for",
            "1",
            "--log-format",
            "json",
        ],
    )?;
    assert_eq!(a.exit_within(Duration::from_secs(30)).await?, Some(1));
    // Every line, the last (the error it exits with) included.
    let stderr = a.stderr();
    let logs: Vec<&str> = stderr.lines().collect();
    assert!(logs.len() > 1, "{stderr}");
    for line in &logs {
        let v: Value = serde_json::from_str(line).with_context(|| format!("not JSON: {line}"))?;
        assert!(v["level"].is_string() && v["fields"].is_object(), "{v}");
    }
    assert!(
        logs.last()
            .is_some_and(|l| l.contains(r#""level":"ERROR""#)),
        "{stderr}"
    );
    Ok(())
}
