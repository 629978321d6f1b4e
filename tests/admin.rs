//! The operations API that acts, through `signalling-cluster admin` against one node while the
//! peers and sessions concerned live on others. Real nodes, real Redis.

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
    let (ok, out, err) = admin(port, &["--json", what])?;
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
    let (ok, table, _) = admin(a.port, &["sessions"])?;
    assert!(ok && table.starts_with("SESSIONID"), "{table}");
    assert!(table.contains(&session), "{table}");

    // End it from node A: both members hear.
    let (ok, out, err) = admin(a.port, &["end-session", &session])?;
    assert!(ok, "{out}{err}");
    producer.wait_for("endSession").await?;
    viewer.wait_for("endSession").await?;

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

    // Drain node B from node A: its v2 peer is sent away.
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
