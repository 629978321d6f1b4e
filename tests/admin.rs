//! The operations API that acts, through `signalling-cluster admin` against one node while the
//! peers and sessions concerned live on others; ids nobody knows; the CLI's options, tokens,
//! TLS with a private CA, and the audit line. Real nodes, real Redis.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use cluster_tests::{bin, Node, Peer, Redis};
use serde_json::{json, Value};

const V2: &str = "gstwebrtc-cluster.v2";

/// `signalling-cluster admin --url http://127.0.0.1:PORT ARGS`: (success, stdout, stderr).
fn admin(port: u16, args: &[&str]) -> Result<(bool, String, String)> {
    let out = Command::new(bin("signalling-cluster"))
        .args(["admin", "--url", &format!("http://127.0.0.1:{port}")])
        .args(args)
        .output()?;
    Ok((
        out.status.success(),
        String::from_utf8(out.stdout)?,
        String::from_utf8(out.stderr)?,
    ))
}

fn admin_json(port: u16, what: &str) -> Result<Value> {
    // (the options after the subcommand, as an operator types them)
    let (ok, out, err) = admin(port, &[what, "--json"])?;
    anyhow::ensure!(ok, "admin {what}: {err}");
    Ok(serde_json::from_str(&out)?)
}

#[tokio::test]
async fn from_one_node_an_operator_lists_and_ends_kicks_and_drains_on_the_others() -> Result<()> {
    let redis = Redis::start().await?;
    let flags = ["--admin-api", "--drain-timeout", "2"];
    let a = Node::join(&redis, "node-a", &flags).await?;
    let b = Node::join(&redis, "node-b", &flags).await?;
    let c = Node::join(&redis, "node-c", &flags).await?;
    let mut producer = Peer::connect_with(&b.url(), Some(V2)).await?;
    producer
        .set_status(&["producer"], json!({"name": "cam"}))
        .await?;
    let mut viewer = Peer::connect_with(&c.url(), Some(V2)).await?;
    let session = cluster_tests::start_session(&mut producer, &mut viewer).await?;

    // (node A learns the live nodes at its liveness ticks)
    cluster_tests::eventually(Duration::from_secs(10), "three live nodes", || async {
        admin_json(a.port, "nodes").is_ok_and(|n| n["nodes"].as_array().map(Vec::len) == Some(3))
    })
    .await?;
    // Listings on node A, which takes part in nothing.
    let peers = admin_json(a.port, "peers")?;
    let node_of = |id: &str| {
        peers["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["id"] == id)
            .map(|p| p["node"].clone())
    };
    assert_eq!(node_of(&producer.id), Some(json!("node-b")), "{peers}");
    assert_eq!(node_of(&viewer.id), Some(json!("node-c")), "{peers}");
    let sessions = admin_json(a.port, "sessions")?;
    let rows = sessions["sessions"].as_array().context("no sessions")?;
    assert_eq!(rows.len(), 1, "{sessions}");
    assert_eq!(rows[0]["sessionId"], session.as_str());
    assert_eq!(rows[0]["producerNode"], "node-b");
    assert_eq!(rows[0]["consumerNode"], "node-c");
    // (--url after the subcommand too)
    let out = Command::new(bin("signalling-cluster"))
        .args([
            "admin",
            "sessions",
            "--url",
            &format!("http://127.0.0.1:{}", a.port),
        ])
        .output()?;
    let table = String::from_utf8(out.stdout)?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split("  ")
        .collect();
    assert!(
        header.starts_with(&["SESSION ID"]) && header.contains(&"PRODUCER NODE"),
        "{table}"
    );
    assert!(table.contains(&session), "{table}");

    // End it from node A: both members hear, and a v2 member hears that an operator did it.
    let (ok, out, err) = admin(a.port, &["end-session", &session])?;
    assert!(ok, "{out}{err}");
    for member in [&mut producer, &mut viewer] {
        let ended = member.wait_for("endSession").await?;
        assert_eq!(ended["sessionId"], session.as_str(), "{ended}");
        assert_eq!(ended["reason"], "operator", "{ended}");
    }
    // A v1 member hears `endSession` as upstream sends it: no `reason`.
    let mut old = Peer::connect(&c.url()).await?;
    let v1_session = cluster_tests::start_session(&mut producer, &mut old).await?;
    cluster_tests::eventually(Duration::from_secs(10), "the v1 session listed", || async {
        admin_json(a.port, "sessions").is_ok_and(|s| s.to_string().contains(&v1_session))
    })
    .await?;
    let (ok, _, err) = admin(a.port, &["end-session", &v1_session])?;
    assert!(ok, "{err}");
    let ended = old.wait_for("endSession").await?;
    assert_eq!(
        ended,
        json!({"type": "endSession", "sessionId": v1_session})
    );
    assert_eq!(producer.wait_for("endSession").await?["reason"], "operator");

    // Ids that no node knows: 404 from the API, a non-zero exit and the reason from the CLI.
    for (args, said) in [
        (["kick", "nonexistent-peer"], "no peer 'nonexistent-peer'"),
        (["end-session", "nonexistent"], "no session 'nonexistent'"),
        (
            ["drain", "nonexistent-node"],
            "no live node 'nonexistent-node'",
        ),
    ] {
        let (ok, out, err) = admin(a.port, &args)?;
        assert!(!ok, "{args:?}: {out}");
        assert!(err.contains("404") && err.contains(said), "{args:?}: {err}");
        assert!(
            err.starts_with("error: ") && err.trim().lines().count() == 1,
            "{err}"
        );
    }

    // Kick the viewer from node A: told why, closed, and not resumable.
    let (ok, _, err) = admin(a.port, &["kick", &viewer.id, "--reason", "policy test"])?;
    assert!(ok, "{err}");
    let told = viewer.wait_for("error").await?;
    assert_eq!(told["code"], "kicked", "{told}");
    assert!(
        told["details"]
            .as_str()
            .is_some_and(|d| d.contains("policy test")),
        "{told}"
    );
    assert_eq!(viewer.closed().await?, Some(4000));
    let token = viewer.welcome["resumeToken"]
        .as_str()
        .context("token")?
        .to_string();
    let again = Peer::connect_with(&format!("{}/?resume={token}", c.url()), Some(V2)).await?;
    assert_ne!(
        again.welcome["resumed"], true,
        "a kicked peer does not resume"
    );
    assert_ne!(again.id, viewer.id, "a new peer: {}", again.welcome);

    // Drain node B from node A: its v2 peer is sent away. (Every action above named a peer, a
    // session or a node held elsewhere: found cluster-wide, not 404.)
    let (ok, _, err) = admin(a.port, &["drain", "node-b"])?;
    assert!(ok, "{err}");
    let away = producer.wait_for("goAway").await?;
    assert!(away["reason"].as_str().is_some(), "{away}");
    cluster_tests::eventually(Duration::from_secs(10), "node B unready", || async {
        !matches!(b.get("/readyz").await, Ok((200, _)))
    })
    .await?;
    assert_eq!(a.get("/readyz").await?.0, 200, "only node B drains");
    Ok(())
}

#[tokio::test]
async fn without_admin_api_or_an_admin_grant_actions_are_refused() -> Result<()> {
    let node = Node::start(&[]).await?;
    let mut p = Peer::connect(&node.url()).await?;
    p.set_status(&["producer"], json!({"name": "cam"})).await?;
    p.sync().await?;
    // Listing stays open without auth, as it always was.
    let peers = admin_json(node.port, "peers")?;
    assert_eq!(peers["peers"].as_array().map(Vec::len), Some(1), "{peers}");
    let (ok, _, err) = admin(node.port, &["kick", &p.id])?;
    assert!(
        !ok && err.contains("403") && err.contains("--admin-api"),
        "{err}"
    );
    p.send(json!({"type": "list"})).await?;
    p.wait_for("list").await?;
    Ok(())
}

/// `signalling-cluster token …` with the real binary.
fn mint(secret: &std::path::Path, args: &[&str]) -> Result<String> {
    let out = Command::new(bin("signalling-cluster"))
        .args(["token", "--secret-file", secret.to_str().context("path")?])
        .args(args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

/// Against a node with auth and TLS from a private CA: the CLI reads its token from a file,
/// trusts the CA given with `--cafile` (or `SSL_CERT_FILE`) and no other, takes its options
/// after the subcommand; the node's audit line names the token's subject, with no Rust
/// `Debug` formatting.
#[tokio::test]
async fn a_token_file_and_a_private_ca_work_and_the_audit_line_names_the_subject() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("gwc-admin-tls-{}", std::process::id()));
    let (cert, key, _) = cluster_tests::self_signed(&dir)?;
    let secret = dir.join("jwt.secret");
    std::fs::write(&secret, "a secret for the admin tests")?;
    let log_path = dir.join("node.log");
    let port = cluster_tests::free_port();
    let mut cmd = Command::new(bin("signalling-cluster"));
    // (the node logs to stdout)
    cmd.stdout(std::fs::File::create(&log_path)?);
    let extra = [
        "-c",
        cert.to_str().context("path")?,
        "-k",
        key.to_str().context("path")?,
        "--auth-jwt-secret-file",
        secret.to_str().context("path")?,
        "--node-id",
        "tls-node",
        "--log",
        "info",
        "--log-format",
        "json",
    ];
    let mut node = Node::spawn(cmd, "127.0.0.1", port, &extra, &[], true).await?;
    let token_file = dir.join("admin.token");
    std::fs::write(
        &token_file,
        mint(&secret, &["--sub", "ops-alice", "--admin"])? + "\n",
    )?;
    let url = format!("https://localhost:{port}");
    let run = |args: &[&str], env: &[(&str, &str)]| -> Result<(bool, String, String)> {
        let out = Command::new(bin("signalling-cluster"))
            .arg("admin")
            .args(args)
            .env_remove("SSL_CERT_FILE")
            .envs(env.iter().copied())
            .output()?;
        Ok((
            out.status.success(),
            String::from_utf8(out.stdout)?,
            String::from_utf8(out.stderr)?,
        ))
    };
    let (tf, ca) = (
        token_file.to_str().context("path")?,
        cert.to_str().context("path")?,
    );
    let (ok, out, err) = run(
        &[
            "nodes",
            "--url",
            &url,
            "--token-file",
            tf,
            "--cafile",
            ca,
            "--json",
        ],
        &[],
    )?;
    assert!(ok, "{err}");
    let nodes: Value = serde_json::from_str(&out)?;
    assert_eq!(nodes["nodes"][0]["id"], "tls-node", "{nodes}");
    // The private CA is trusted only when given: not by default, and through SSL_CERT_FILE.
    let (ok, _, err) = run(&["nodes", "--url", &url, "--token-file", tf], &[])?;
    assert!(!ok && err.contains("certificate"), "{err}");
    let (ok, _, err) = run(
        &["nodes", "--url", &url, "--token-file", tf],
        &[("SSL_CERT_FILE", ca)],
    )?;
    assert!(ok, "SSL_CERT_FILE is honoured: {err}");
    // A token that is not the node's: refused, exit 1, the node's reason.
    let (ok, _, err) = run(
        &[
            "nodes",
            "--url",
            &url,
            "--cafile",
            ca,
            "--token",
            "not.a.token",
        ],
        &[],
    )?;
    assert!(!ok && err.contains("401"), "{err}");

    // An action: the node drains itself, and logs who asked.
    let (ok, out, err) = run(
        &[
            "drain",
            "tls-node",
            "--url",
            &url,
            "--token-file",
            tf,
            "--cafile",
            ca,
        ],
        &[],
    )?;
    assert!(ok, "{out}{err}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while node.proc.child.try_wait()?.is_none() {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the node never stopped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = std::fs::read_to_string(&log_path)?;
    let audit: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["fields"]["message"] == "operator action")
        .collect();
    assert_eq!(audit.len(), 1, "{log}");
    let fields = &audit[0]["fields"];
    assert_eq!(fields["operator"], "ops-alice", "{fields}");
    assert_eq!(fields["action"], "drain", "{fields}");
    assert_eq!(fields["target"], "tls-node", "{fields}");
    assert!(
        fields["remote"]
            .as_str()
            .is_some_and(|r| r.starts_with("127.0.0.1:")),
        "{fields}"
    );
    assert!(!log.contains("Drain {") && !log.contains("Some("), "{log}");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// Arguments that cannot work: exit 2 and one line saying which and why; a node that cannot
/// be reached: exit 1, one line.
#[tokio::test]
async fn bad_arguments_exit_2_and_an_unreachable_node_exits_1_each_with_one_line() -> Result<()> {
    let run = |args: &[&str]| -> Result<(Option<i32>, String)> {
        let out = Command::new(bin("signalling-cluster"))
            .arg("admin")
            .args(args)
            .env("RUST_BACKTRACE", "1")
            .output()?;
        Ok((out.status.code(), String::from_utf8(out.stderr)?))
    };
    let (code, err) = run(&["peers", "--url", "ws://127.0.0.1:8443"])?;
    assert_eq!(code, Some(2), "{err}");
    // (says why, and what to give instead)
    assert!(
        err.contains("ws://127.0.0.1:8443")
            && err.contains("the operations API is HTTP")
            && err.contains("http://"),
        "{err}"
    );
    let (code, err) = run(&["peers", "--token-file", "/nonexistent/admin.token"])?;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("/nonexistent/admin.token"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    let url = format!("http://127.0.0.1:{}", cluster_tests::free_port());
    let (code, err) = run(&["peers", "--url", &url])?;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("Connection refused"), "{err}");
    assert_eq!(err.matches(&url).count(), 1, "the URL once: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    Ok(())
}
