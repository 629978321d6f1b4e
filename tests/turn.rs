//! Issue 27, the node's side: TURN credentials minted per client, checked by a real coturn
//! (`tests/src/coturn.rs`, REST-API auth with the same secret) and its own client
//! (`turnutils_uclient`); v2 `welcome` carries them, v1 sees nothing new; with auth on they
//! need a token and name its subject. About 10 s.

use std::time::Duration;

use anyhow::{Context, Result};
use cluster_tests::coturn::Coturn;
use cluster_tests::jwt::Keys;
use cluster_tests::peer::Peer;
use cluster_tests::Node;
use serde_json::{json, Value};

const V2: &str = "gstwebrtc-cluster.v2";
const SECRET: &str = "north";

fn secret_file(name: &str) -> Result<std::path::PathBuf> {
    cluster_tests::coturn::secret_file(name, SECRET)
}

/// A node handing out `coturn` (UDP and TCP) and its STUN, with `extra` flags.
async fn node(coturn: &Coturn, secret: &std::path::Path, extra: &[&str]) -> Result<Node> {
    let udp = format!("turn:127.0.0.1:{}?transport=udp", coturn.port);
    let tcp = format!("turn:127.0.0.1:{}?transport=tcp", coturn.port);
    let stun = format!("stun:127.0.0.1:{}", coturn.port);
    let secret = secret.to_str().context("a path")?;
    let mut args = vec!["--turn-url", &udp, "--turn-url", &tcp, "--stun-url", &stun];
    args.extend_from_slice(&["--turn-secret-file", secret]);
    args.extend_from_slice(extra);
    Node::start(&args).await
}

/// The TURN entry of an `iceServers` list: (username, credential).
fn turn_entry(servers: &Value) -> Result<(String, String)> {
    let entry = servers
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["username"].is_string())
        .with_context(|| format!("no TURN entry in {servers}"))?;
    let urls = entry["urls"].as_array().context("urls")?;
    assert!(
        urls.iter()
            .all(|u| u.as_str().is_some_and(|u| u.starts_with("turn:"))),
        "{entry}"
    );
    Ok((
        entry["username"].as_str().context("username")?.to_string(),
        entry["credential"]
            .as_str()
            .context("credential")?
            .to_string(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coturn_accepts_what_the_node_mints_and_refuses_forged_and_expired_credentials(
) -> Result<()> {
    let coturn = Coturn::start(SECRET).await?;
    let secret = secret_file("mint")?;
    let n = node(&coturn, &secret, &[]).await?;
    let (status, body) = n.get("/api/v1/ice-servers").await?;
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body)?;
    assert_eq!(answer["ttl"], 3600, "{answer}");
    let servers = &answer["iceServers"];
    assert_eq!(
        servers[0],
        json!({"urls": [format!("stun:127.0.0.1:{}", coturn.port)]}),
        "STUN first, without credentials: {servers}"
    );
    let (user, credential) = turn_entry(servers)?;
    let (expiry, id) = user.split_once(':').context("EXPIRY:ID")?;
    let expiry: u64 = expiry.parse()?;
    let now = cluster_tests::jwt::now();
    assert!((now + 3590..=now + 3610).contains(&expiry), "{user}");
    assert!(id.starts_with("http-"), "{user}");

    let (ok, out) = coturn.allocate(&user, &credential).await?;
    assert!(ok, "the node's credential was refused: {out}");
    coturn
        .wait_log(
            &format!("user <{user}>: incoming packet ALLOCATE processed, success"),
            Duration::from_secs(5),
        )
        .await?;

    // Forged: the same username, a credential not made with the secret.
    let (ok, out) = coturn.allocate(&user, "Zm9yZ2VkIGNyZWRlbnRpYWw=").await?;
    assert!(!ok, "a forged credential was accepted: {out}");

    // Expired: minted with a 1 s ttl, used 2.5 s later.
    let short = node(&coturn, &secret, &["--turn-ttl", "1"]).await?;
    let (_, body) = short.get("/api/v1/ice-servers").await?;
    let (user, credential) = turn_entry(&serde_json::from_str::<Value>(&body)?["iceServers"])?;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (ok, out) = coturn.allocate(&user, &credential).await?;
    assert!(!ok, "an expired credential was accepted: {out}");
    coturn
        .wait_log(
            &format!("user <{user}>: incoming packet message processed, error 401"),
            Duration::from_secs(5),
        )
        .await?;

    // Counted.
    let (_, metrics) = n.get("/metrics").await?;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("gwc_turn_credentials_issued_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_welcome_carries_the_peers_own_credentials_v1_sees_nothing_and_a_resume_renews_them(
) -> Result<()> {
    let coturn = Coturn::start(SECRET).await?;
    let secret = secret_file("welcome")?;
    let n = node(&coturn, &secret, &[]).await?;
    let v2 = Peer::connect_with(&n.url(), Some(V2)).await?;
    let (user, credential) = turn_entry(&v2.welcome["iceServers"])?;
    assert!(
        user.ends_with(&format!(":{}", v2.id)),
        "bound to the peer: {user}"
    );
    let (ok, out) = coturn.allocate(&user, &credential).await?;
    assert!(ok, "{out}");

    // v1: byte-compatible with upstream, no iceServers.
    let v1 = Peer::connect(&n.url()).await?;
    assert_eq!(
        v1.welcome,
        json!({"type": "welcome", "peerId": v1.id}),
        "a v1 welcome as upstream's"
    );

    // A resume gets a fresh credential for the same peer.
    let token = v2.welcome["resumeToken"]
        .as_str()
        .context("token")?
        .to_string();
    drop(v2);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let again = Peer::connect_with(&format!("{}/?resume={token}", n.url()), Some(V2)).await?;
    assert_eq!(again.welcome["resumed"], true, "{}", again.welcome);
    let (renewed, _) = turn_entry(&again.welcome["iceServers"])?;
    assert!(renewed.ends_with(&format!(":{}", again.id)), "{renewed}");
    assert_ne!(renewed, user, "minted again, expiring later");
    Ok(())
}

/// A peer connected longer than the ttl gets fresh credentials for its next sessions: v2
/// `iceServers` every half ttl, each valid; v1 is never sent one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_connection_is_sent_fresh_credentials_before_its_welcomes_expire() -> Result<()> {
    let coturn = Coturn::start(SECRET).await?;
    let secret = secret_file("renew")?;
    let n = node(&coturn, &secret, &["--turn-ttl", "4"]).await?;
    let mut v2 = Peer::connect_with(&n.url(), Some(V2)).await?;
    let mut v1 = Peer::connect(&n.url()).await?;
    let (first, _) = turn_entry(&v2.welcome["iceServers"])?;
    // the welcome's credential expires in 4 s; a fresh one comes after 2
    let renewed = v2.recv_within(Duration::from_secs(4)).await?;
    assert_eq!(renewed["type"], "iceServers", "{renewed}");
    let (user, credential) = turn_entry(&renewed["iceServers"])?;
    assert!(user.ends_with(&format!(":{}", v2.id)), "{user}");
    let expiry = |u: &str| u.split(':').next().and_then(|e| e.parse::<u64>().ok());
    assert!(expiry(&user) > expiry(&first), "{first} then {user}");
    let (ok, out) = coturn.allocate(&user, &credential).await?;
    assert!(ok, "{out}");
    // v1 connected with v2, so a renewal for it would be queued by now: the answer to a
    // `list` must be the next thing it reads (an ordering check, not a wait).
    v1.send(serde_json::json!({"type": "list"})).await?;
    v1.expect("list").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_only_a_token_gets_credentials_and_they_name_its_subject() -> Result<()> {
    let coturn = Coturn::start(SECRET).await?;
    let secret = secret_file("auth")?;
    let keys = Keys::new("turn")?;
    let jwt = keys.path("secret");
    let n = node(&coturn, &secret, &["--auth-jwt-secret-file", &jwt]).await?;
    let (status, body) = n.get("/api/v1/ice-servers").await?;
    assert_eq!(status, 401, "no token: {body}");
    let token = keys.token("alice", json!({"consume": ["*"]}))?;
    let (status, body) = n.get(&format!("/api/v1/ice-servers?token={token}")).await?;
    assert_eq!(status, 200, "{body}");
    let (user, _) = turn_entry(&serde_json::from_str::<Value>(&body)?["iceServers"])?;
    assert!(user.contains(":alice:http-"), "{user}");
    let peer = Peer::connect_with(&format!("{}/?token={token}", n.url()), Some(V2)).await?;
    let (user, credential) = turn_entry(&peer.welcome["iceServers"])?;
    assert!(user.ends_with(&format!(":alice:{}", peer.id)), "{user}");
    let (ok, out) = coturn.allocate(&user, &credential).await?;
    assert!(ok, "{out}");
    Ok(())
}

#[tokio::test]
async fn bad_turn_flags_stop_the_node_with_a_clear_message() -> Result<()> {
    for (args, says) in [
        (vec!["--turn-url", "stun:x:3478"], "starts with turn:"),
        (
            vec!["--turn-url", "turn:x:3478"],
            "needs --turn-secret-file",
        ),
        (
            vec![
                "--turn-url",
                "turn:x:3478",
                "--turn-secret-file",
                "/nonexistent/s",
            ],
            "/nonexistent/s",
        ),
    ] {
        let out = std::process::Command::new(cluster_tests::bin("signalling-cluster"))
            .args(["--port", &cluster_tests::free_port().to_string()])
            .args(&args)
            .output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    Ok(())
}
