//! Agents that cannot do what they were started for say why and stop with a documented code
//! (docs/agents.md, "Exit codes") instead of running on or retrying what cannot succeed:
//! grants the node refuses (4), credentials and certificates (2 at start, 4 when refused),
//! values GStreamer would only fail on later (2). And a relay serving viewers prints no
//! GStreamer-CRITICAL. Real nodes with auth (tokens made by PyJWT), real agents.

use std::time::Duration;

use anyhow::{Context, Result};
use cluster_tests::agent::{run_to_exit, Agent};
use cluster_tests::jwt::{now, Keys};
use cluster_tests::{free_port, media, Node, Peer};
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(90);
const V2: &str = "gstwebrtc-cluster.v2";

/// A node with auth on (the HS256 secret of `keys`).
async fn auth_node(keys: &Keys) -> Result<Node> {
    Node::start(&["--auth-jwt-secret-file", &keys.path("secret")]).await
}

/// `token` in a file of `keys`' directory; its path.
fn token_file(keys: &Keys, name: &str, token: &str) -> Result<String> {
    let path = keys.dir.join(name);
    std::fs::write(&path, format!("{token}\n"))?;
    Ok(path.to_str().context("path")?.to_string())
}

/// An HS256 token of `keys` for `sub` granting `gwc`, expired a minute ago.
fn expired(keys: &Keys, sub: &str, gwc: Value) -> Result<String> {
    let claims = json!({"sub": sub, "exp": now() - 60, "gwc": gwc});
    keys.sign_with("HS256", "secret", &claims)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_or_relay_whose_token_does_not_cover_its_name_exits_4_with_the_reason(
) -> Result<()> {
    let _one = media::exclusive().await;
    let keys = Keys::new("refused-producer")?;
    let node = auth_node(&keys).await?;
    let url = node.url();
    let other = keys.token("cam-2", json!({"produce": ["other-*"]}))?;
    let (code, stderr) = run_to_exit(
        "producer-agent",
        &["--server", &url, "--name", "cam-2", "--token", &other],
        LONG,
    )
    .await?;
    assert_eq!(code, Some(4), "{stderr}");
    assert!(
        stderr.contains(
            "producer-agent: refused by the signalling server: Not allowed to produce 'cam-2'"
        ),
        "{stderr}"
    );

    // A relay may watch its origin but not publish under its own name.
    let origin_token = keys.token("cam-1", json!({"produce": ["cam-*"]}))?;
    let _origin = Agent::producer(&[
        "--server",
        &url,
        "--name",
        "cam-1",
        "--token",
        &origin_token,
    ])?;
    let relay_token = keys.token(
        "relay",
        json!({"consume": ["cam-*"], "listen": true, "produce": ["other-*"]}),
    )?;
    let (code, stderr) = run_to_exit(
        "relay-agent",
        &[
            "--server",
            &url,
            "--source-name",
            "cam-1",
            "--name",
            "cam-1-relay",
            "--token",
            &relay_token,
        ],
        LONG,
    )
    .await?;
    assert_eq!(code, Some(4), "{stderr}");
    assert!(
        stderr.contains("Not allowed to produce 'cam-1-relay'"),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn a_consumer_without_listen_or_consume_exits_4_naming_the_grant_and_an_invisible_one_3(
) -> Result<()> {
    let keys = Keys::new("refused-consumer")?;
    let node = auth_node(&keys).await?;
    let url = node.url();
    // A producer (a plain peer: no media is needed to be refused).
    let producer_token = keys.token("cam-1", json!({"produce": ["cam-*"]}))?;
    let mut producer =
        Peer::connect_with(&format!("{url}/?token={producer_token}"), Some(V2)).await?;
    producer
        .set_status(&["producer"], json!({"name": "cam-1"}))
        .await?;
    producer.sync().await?;

    // By name without `listen`: it cannot follow presence (docs/security.md).
    let no_listen = keys.token("viewer", json!({"consume": ["cam-*"]}))?;
    let (code, stderr) = run_to_exit(
        "consumer-agent",
        &[
            "--server",
            &url,
            "--producer-name",
            "cam-1",
            "--token",
            &no_listen,
        ],
        LONG,
    )
    .await?;
    assert_eq!(code, Some(4), "{stderr}");
    assert!(
        stderr.contains("Not allowed to listen") && stderr.contains("needs `listen`"),
        "{stderr}"
    );
    assert!(!stderr.contains("session"), "no session started: {stderr}");

    // By id without a `consume` covering it: the session is refused.
    let other = keys.token("viewer", json!({"consume": ["other-*"]}))?;
    let (code, stderr) = run_to_exit(
        "consumer-agent",
        &[
            "--server",
            &url,
            "--producer-id",
            &producer.id,
            "--token",
            &other,
        ],
        LONG,
    )
    .await?;
    assert_eq!(code, Some(4), "{stderr}");
    assert!(stderr.contains("Not allowed to watch 'cam-1'"), "{stderr}");
    // A server error that is no refusal: logged with its code in plain words (not
    // `code=Some(UnknownPeer)`).
    let (code, stderr) = run_to_exit(
        "consumer-agent",
        &[
            "--server",
            &url,
            "--producer-id",
            "no-such-peer",
            "--token",
            &other,
        ],
        LONG,
    )
    .await?;
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        stderr.contains("code=unknown-peer") && !stderr.contains("Some("),
        "{stderr}"
    );

    // By name with `listen` but no `consume` for it: invisible, not found (3), and said so.
    let listen_other = keys.token("viewer", json!({"consume": ["other-*"], "listen": true}))?;
    let (code, stderr) = run_to_exit(
        "consumer-agent",
        &[
            "--server",
            &url,
            "--producer-name",
            "cam-1",
            "--token",
            &listen_other,
            "--timeout",
            "2",
        ],
        LONG,
    )
    .await?;
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        stderr.contains("or none the token's `consume` covers"),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn a_refused_token_is_final_with_the_servers_reason_and_a_token_file_is_read_again(
) -> Result<()> {
    let keys = Keys::new("refused-token")?;
    let node = auth_node(&keys).await?;
    let url = node.url();
    let gwc = json!({"consume": true, "listen": true});
    let waiting = ["--first", "--timeout", "600", "--retry-for", "600"];

    // A fixed --token refused: final (long before --retry-for), with the node's reason.
    let stale = expired(&keys, "viewer", gwc.clone())?;
    let mut args = vec!["--server", url.as_str(), "--token", stale.as_str()];
    args.extend(waiting);
    let (code, stderr) = run_to_exit("consumer-agent", &args, LONG).await?;
    assert_eq!(code, Some(4), "{stderr}");
    assert!(
        stderr.contains("refused the --token given: HTTP 401: unauthorized: token expired"),
        "{stderr}"
    );
    // No token at all: final too.
    let mut args = vec!["--server", url.as_str()];
    args.extend(waiting);
    let (code, stderr) = run_to_exit("consumer-agent", &args, LONG).await?;
    assert_eq!(code, Some(4), "{stderr}");
    assert!(stderr.contains("wants a token"), "{stderr}");

    // A token file is tried again, read again each time, and says so: once it holds a valid
    // token, the agent gets in.
    let file = token_file(&keys, "viewer.token", &stale)?;
    let mut args = vec!["--server", url.as_str(), "--token-file", file.as_str()];
    args.extend(waiting);
    let agent = Agent::consumer(&args)?;
    agent
        .wait_stderr("the file is read again at every attempt", LONG)
        .await?;
    assert!(
        agent.stderr().contains("unauthorized: token expired"),
        "{}",
        agent.stderr()
    );
    token_file(&keys, "viewer.token", &keys.token("viewer", gwc)?)?;
    agent.wait_stderr("registered as", LONG).await?;

    // Refused until --retry-for ran out: refused (4), not unreachable.
    let (code, stderr) = run_to_exit(
        "consumer-agent",
        &[
            "--server",
            &url,
            "--first",
            "--token-file",
            &token_file(&keys, "stale.token", &stale)?,
            "--retry-for",
            "1",
        ],
        LONG,
    )
    .await?;
    assert_eq!(code, Some(4), "{stderr}");
    Ok(())
}

#[tokio::test]
async fn a_rejected_server_certificate_is_final() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("gwc-refused-tls-{}", std::process::id()));
    let (cert, key, _) = cluster_tests::self_signed(&dir)?;
    let node = Node::start_tls(&[
        "-c",
        cert.to_str().context("path")?,
        "-k",
        key.to_str().context("path")?,
    ])
    .await?;
    let url = format!("wss://localhost:{}", node.port);
    let (code, stderr) = run_to_exit(
        "producer-agent",
        &["--server", &url, "--name", "cam", "--retry-for", "600"],
        LONG,
    )
    .await?;
    assert_eq!(code, Some(4), "{stderr}");
    assert!(
        stderr.contains("certificate was rejected") && stderr.contains("not retrying"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("cannot connect, retrying"),
        "tried once: {stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[tokio::test]
async fn bad_values_are_refused_at_start_naming_the_argument() -> Result<()> {
    // Nothing is ever reached: a value that passed would show as a connection failure (1).
    let dead = format!("ws://127.0.0.1:{}", free_port());
    let dir = std::env::temp_dir();
    let dir = dir.to_str().context("temp dir")?;
    let base = |name: &str| -> Vec<&str> {
        match name {
            "producer-agent" => vec!["--name", "x"],
            "consumer-agent" => vec!["--first"],
            _ => vec!["--source-name", "x"],
        }
    };
    let cases: Vec<(&str, Vec<&str>, &str)> = vec![
        (
            "producer-agent",
            vec!["--cafile", "/nonexistent"],
            "'--cafile <CAFILE>': cannot read CA file /nonexistent",
        ),
        (
            "producer-agent",
            vec!["--cafile", dir],
            "'--cafile <CAFILE>'",
        ),
        (
            "producer-agent",
            vec!["--width", "0"],
            "'--width <WIDTH>': must be a whole number",
        ),
        (
            "producer-agent",
            vec!["--width", "-1"],
            "'--width <WIDTH>': must be a whole number",
        ),
        (
            "producer-agent",
            vec!["--height", "100000"],
            "'--height <HEIGHT>'",
        ),
        ("producer-agent", vec!["--fps", "0"], "'--fps <FPS>'"),
        (
            "producer-agent",
            vec!["--min-bitrate", "0"],
            "'--min-bitrate <MIN_BITRATE>'",
        ),
        (
            "producer-agent",
            vec!["--max-consumers", "-1"],
            "'--max-consumers <MAX_CONSUMERS>'",
        ),
        (
            "producer-agent",
            vec!["--token-file", "/nonexistent"],
            "'--token-file <TOKEN_FILE>': cannot read the token file /nonexistent",
        ),
        (
            "producer-agent",
            vec!["--token-file", dir],
            "'--token-file <TOKEN_FILE>'",
        ),
        (
            "producer-agent",
            vec!["--stats-interval", "-1"],
            "'--stats-interval <STATS_INTERVAL>'",
        ),
        (
            "consumer-agent",
            vec!["--sink", "file:/nonexistent-dir/x.mkv"],
            "no directory /nonexistent-dir",
        ),
        (
            "consumer-agent",
            vec!["--timeout", "0"],
            "'--timeout <TIMEOUT>': must be a whole number from 1",
        ),
        (
            "consumer-agent",
            vec!["--frames", "-5"],
            "'--frames <FRAMES>'",
        ),
        (
            "consumer-agent",
            vec!["--duration", "0"],
            "'--duration <DURATION>': must be a positive number of seconds",
        ),
        (
            "consumer-agent",
            vec!["--frame-log", "/nonexistent-dir/frames"],
            "--frame-log: cannot create /nonexistent-dir/frames",
        ),
        (
            "consumer-agent",
            vec!["--backoff-max", "0"],
            "'--backoff-max <BACKOFF_MAX>'",
        ),
        (
            "relay-agent",
            vec!["--timeout", "-1"],
            "'--timeout <TIMEOUT>'",
        ),
        (
            "relay-agent",
            vec!["--min-keyframe-interval", "-250"],
            "'--min-keyframe-interval <MIN_KEYFRAME_INTERVAL_MS>'",
        ),
    ];
    for (name, extra, message) in cases {
        let mut args = vec!["--server", dead.as_str(), "--retry-for", "1"];
        args.extend(base(name));
        args.extend(extra.iter().copied());
        let (code, stderr) = run_to_exit(name, &args, LONG).await?;
        assert_eq!(code, Some(2), "{name} {extra:?}:\n{stderr}");
        assert!(
            stderr.contains(message),
            "{name} {extra:?}: no '{message}' in:\n{stderr}"
        );
        assert!(
            !stderr.contains("unexpected argument") && !stderr.contains("GStreamer"),
            "{name} {extra:?}:\n{stderr}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_serving_viewers_prints_no_gstreamer_critical() -> Result<()> {
    let _one = media::exclusive().await;
    let node = Node::start(&[]).await?;
    let url = node.url();
    let _origin = Agent::producer(&["--server", &url, "--name", "cam"])?;
    let relay = Agent::spawn(
        "relay-agent",
        &["--server", &url, "--source-name", "cam", "--name", "cam-r"],
    )?;
    relay.wait_stderr("serving as", LONG).await?;
    // Each viewer joins with keyframe requests the relay coalesces (what printed the
    // criticals: one per request held back).
    for _ in 0..2 {
        let (code, stderr) = run_to_exit(
            "consumer-agent",
            &[
                "--server",
                &url,
                "--producer-name",
                "cam-r",
                "--sink",
                "encoded",
                "--frames",
                "30",
            ],
            LONG,
        )
        .await?;
        assert_eq!(code, Some(0), "{stderr}");
    }
    relay.wait_stderr("consumer left", LONG).await?;
    let stderr = relay.stderr();
    assert!(
        stderr.matches("connected").count() >= 2,
        "both viewers served: {stderr}"
    );
    assert!(!stderr.contains("CRITICAL"), "{stderr}");
    Ok(())
}
