//! Who may do what: tokens (made by PyJWT) at the upgrade, grants per role and stream name,
//! tenants across nodes, the operations API, expiry. Real nodes, real Redis. (Connection
//! guards and hostile upgrades: `guards.rs`.)

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cluster_tests::jwt::{now, Keys};
use cluster_tests::{upgrade, Node, Peer, Redis, Topo};
use serde_json::{json, Value};

const V2: &str = "gstwebrtc-cluster.v2";

/// A node with auth on (HS256 secret of `keys`, and `extra`).
async fn auth_node(keys: &Keys, extra: &[&str]) -> Result<Node> {
    let secret = keys.path("secret");
    let mut args = vec!["--auth-jwt-secret-file", secret.as_str()];
    args.extend_from_slice(extra);
    Node::start(&args).await
}

/// Nodes `ids` of one cluster on `redis`, auth on with the secret of `keys`.
async fn auth_cluster(keys: &Keys, redis: &Redis, ids: &[&str]) -> Result<Vec<Node>> {
    let secret = keys.path("secret");
    let mut nodes = Vec::new();
    for id in ids {
        nodes.push(Node::join(redis, id, &["--auth-jwt-secret-file", secret.as_str()]).await?);
    }
    Ok(nodes)
}

/// `url` with `?token=` (what browsers do).
fn with_token(url: &str, token: &str) -> String {
    format!("{url}/?token={token}")
}

/// A v2 peer with `token` in the URL.
async fn peer(node_url: &str, token: &str) -> Result<Peer> {
    Peer::connect_with(&with_token(node_url, token), Some(V2)).await
}

/// The next `error` the peer gets: (code, details).
async fn error_of(p: &mut Peer) -> Result<(String, String)> {
    let e = p.wait_for("error").await?;
    Ok((
        e["code"].as_str().unwrap_or_default().to_string(),
        e["details"].as_str().unwrap_or_default().to_string(),
    ))
}

/// Names in a `list` answer.
fn names(list: &Value) -> Vec<String> {
    let mut names: Vec<String> = list["producers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["meta"]["name"].as_str().map(String::from))
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn without_a_valid_token_the_upgrade_is_refused_with_401_and_nothing_is_announced(
) -> Result<()> {
    let keys = Keys::new("refused")?;
    let node = auth_node(&keys, &["--auth-jwt-issuer", "gwc-tests"]).await?;
    let url = node.url();
    let all = json!({"listen": true, "consume": true});
    let good = |exp: u64| json!({"sub": "s", "iss": "gwc-tests", "exp": exp, "gwc": all});
    let mut listener = peer(
        &url,
        &keys.sign_with("HS256", "secret", &good(now() + 600))?,
    )
    .await?;
    listener.set_status(&["listener"], json!({})).await?;
    listener.sync().await?;
    let cases = [
        ("no token", None, "no token"),
        ("garbage", Some("not.a.jwt".to_string()), "malformed"),
        (
            "another secret",
            Some(keys.sign_with("HS256", "other-secret", &good(now() + 600))?),
            "bad signature",
        ),
        (
            "expired",
            Some(keys.sign_with("HS256", "secret", &good(now() - 60))?),
            "expired",
        ),
        (
            "not yet valid",
            Some(keys.sign_with(
                "HS256",
                "secret",
                &json!({"iss": "gwc-tests", "exp": now() + 600, "nbf": now() + 300, "gwc": all}),
            )?),
            "not valid yet",
        ),
        (
            "wrong issuer",
            Some(keys.sign_with(
                "HS256",
                "secret",
                &json!({"iss": "someone", "exp": now() + 600, "gwc": all}),
            )?),
            "issuer",
        ),
        (
            "no exp",
            Some(keys.sign_with("HS256", "secret", &json!({"iss": "gwc-tests", "gwc": all}))?),
            "exp",
        ),
        (
            "alg none",
            Some(keys.sign_with("none", "secret", &good(now() + 600))?),
            "malformed",
        ),
    ];
    for (what, token, reason) in &cases {
        let refused = upgrade(&url, token.as_deref()).await?;
        let (status, body) = refused.with_context(|| format!("{what}: accepted"))?;
        assert_eq!(status, 401, "{what}: {body}");
        assert!(body.contains(reason), "{what}: {body}");
    }
    // The same through ?token= (browsers).
    let expired = keys.sign_with("HS256", "secret", &good(now() - 60))?;
    let refused = upgrade(&with_token(&url, &expired), None).await?;
    assert_eq!(refused.map(|r| r.0), Some(401));
    // Nothing was created or announced for them; they were counted.
    listener.assert_silent(Duration::from_millis(300)).await?;
    let (_, health) = node.get("/healthz").await?;
    let health: Value = serde_json::from_str(&health)?;
    assert_eq!(health["refused"]["auth"], cases.len() + 1, "{health}");
    assert_eq!(health["peers"], 1, "{health}");
    // A good token in the header is accepted.
    let ok = keys.sign_with("HS256", "secret", &good(now() + 600))?;
    assert_eq!(upgrade(&url, Some(&ok)).await?, None);
    Ok(())
}

#[tokio::test]
async fn rs256_es256_and_eddsa_tokens_made_by_pyjwt_are_accepted_with_their_public_key(
) -> Result<()> {
    let keys = Keys::new("public")?;
    for (alg, key) in [("RS256", "rsa"), ("ES256", "ec"), ("EdDSA", "ed")] {
        let public = keys.path(&format!("{key}.pub"));
        let node = Node::start(&["--auth-jwt-public-key-file", &public]).await?;
        let claims = json!({"sub": alg, "exp": now() + 600, "gwc": {"consume": true}});
        let token = keys.sign_with(alg, &format!("{key}.key"), &claims)?;
        assert_eq!(upgrade(&node.url(), Some(&token)).await?, None, "{alg}");
        // An HS256 token means nothing to a node with only a public key.
        let hs = keys.token("x", json!({"consume": true}))?;
        let refused = upgrade(&node.url(), Some(&hs)).await?;
        assert_eq!(refused.map(|r| r.0), Some(401), "{alg}: HS256 accepted");
    }
    Ok(())
}

#[tokio::test]
async fn grants_decide_roles_producer_names_sessions_and_what_a_peer_sees() -> Result<()> {
    let keys = Keys::new("grants")?;
    let node = auth_node(&keys, &[]).await?;
    let url = node.url();
    let cams = keys.token("cams", json!({"produce": ["cam-*"]}))?;
    let any = keys.token("studio", json!({"produce": true}))?;
    let mut cam = peer(&url, &cams).await?;
    cam.set_status(&["producer"], json!({"name": "cam-1"}))
        .await?;
    // A name its grant does not cover: refused, not applied.
    let mut wrong = peer(&url, &cams).await?;
    wrong
        .set_status(&["producer"], json!({"name": "lab-1"}))
        .await?;
    let (code, details) = error_of(&mut wrong).await?;
    assert_eq!(code, "forbidden", "{details}");
    let mut lab = peer(&url, &any).await?;
    lab.set_status(&["producer"], json!({"name": "lab-1"}))
        .await?;
    // No produce grant at all: cannot be a producer, nameless or not.
    let viewer_token = keys.token("viewer", json!({"consume": ["cam-*"]}))?;
    let mut nameless = peer(&url, &viewer_token).await?;
    nameless.set_status(&["producer"], json!({})).await?;
    assert_eq!(error_of(&mut nameless).await?.0, "forbidden");

    // A consumer of cam-* lists cam-1 only; lab-1 is invisible, and asking for it forbidden.
    let mut viewer = peer(&url, &viewer_token).await?;
    viewer.set_status(&["consumer"], json!({})).await?;
    let list = Topo::list_until(&mut viewer, false, |l| !names(l).is_empty()).await?;
    assert_eq!(names(&list), ["cam-1"], "{list}");
    viewer
        .send(json!({"type": "startSession", "peerId": lab.id}))
        .await?;
    assert_eq!(error_of(&mut viewer).await?.0, "forbidden");
    viewer
        .send(json!({"type": "startSession", "peerId": cam.id}))
        .await?;
    viewer.wait_for("sessionStarted").await?;
    cam.wait_for("startSession").await?;

    // Listening needs `listen`; a listener hears only what it may watch.
    let mut deaf = peer(&url, &viewer_token).await?;
    deaf.set_status(&["listener"], json!({})).await?;
    assert_eq!(error_of(&mut deaf).await?.0, "forbidden");
    let listen = keys.token("l", json!({"listen": true, "consume": ["cam-*"]}))?;
    let mut listener = peer(&url, &listen).await?;
    listener.set_status(&["listener"], json!({})).await?;
    listener.sync().await?;
    let mut lab2 = peer(&url, &any).await?;
    lab2.set_status(&["producer"], json!({"name": "lab-2"}))
        .await?;
    let mut cam2 = peer(&url, &cams).await?;
    cam2.set_status(&["producer"], json!({"name": "cam-2"}))
        .await?;
    let heard = listener.wait_for("peerStatusChanged").await?;
    assert_eq!(
        heard["meta"]["name"], "cam-2",
        "lab-2 is not announced: {heard}"
    );
    lab2.close().await;
    cam2.close().await;
    let gone = listener.wait_for("peerStatusChanged").await?;
    assert_eq!(
        gone["meta"]["name"], "cam-2",
        "lab-2's departure is not either: {gone}"
    );
    Ok(())
}

/// A producer's registration as a listener hears it (skipping any other status change).
async fn next_producer(listener: &mut Peer) -> Result<Value> {
    listener
        .wait_until(|v| {
            v["type"] == "peerStatusChanged"
                && v["roles"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|r| r == "producer"))
        })
        .await
}

#[tokio::test]
async fn tenants_never_see_or_reach_each_other_across_three_nodes() -> Result<()> {
    let keys = Keys::new("tenants")?;
    let redis = Redis::start().await?;
    let [a, b, c]: [Node; 3] = auth_cluster(&keys, &redis, &["node-a", "node-b", "node-c"])
        .await?
        .try_into()
        .map_err(|_| anyhow::anyhow!("nodes"))?;
    let produce = |t: &str| keys.token("p", json!({"produce": true, "tenant": t}));
    // Grants that cover every name: only the tenant can keep the other's peers out of sight.
    let watch = |t: &str| keys.token("c", json!({"consume": true, "listen": true, "tenant": t}));
    let mut y_cam = peer(&b.url(), &produce("y")?).await?;
    y_cam
        .set_status(&["producer"], json!({"name": "cam-1"}))
        .await?;
    let mut x_cam = peer(&c.url(), &produce("x")?).await?;
    x_cam
        .set_status(&["producer"], json!({"name": "cam-x"}))
        .await?;
    // Y's producer on node B has reached node A: a peer of Y there lists it.
    let mut y_on_a = peer(&a.url(), &watch("y")?).await?;
    Topo::visible(&mut y_on_a, &y_cam.id, false).await?;
    // A peer of tenant X on node A sees X's producer on node C, not Y's.
    let mut x = peer(&a.url(), &watch("x")?).await?;
    x.set_status(&["consumer"], json!({})).await?;
    let list = Topo::list_until(&mut x, false, |l| !names(l).is_empty()).await?;
    assert_eq!(names(&list), ["cam-x"], "{list}");
    // Node A knows Y's producer, and says it does not exist.
    x.send(json!({"type": "startSession", "peerId": y_cam.id}))
        .await?;
    let err = x.expect("error").await?;
    assert_eq!(err["code"], "unknown-peer", "{err}");
    // Tenant Y on node C reaches Y's producer on node B.
    let mut y = peer(&c.url(), &watch("y")?).await?;
    y.set_status(&["consumer"], json!({})).await?;
    let list = Topo::list_until(&mut y, false, |l| !names(l).is_empty()).await?;
    assert_eq!(names(&list), ["cam-1"], "{list}");
    y.send(json!({"type": "startSession", "peerId": y_cam.id}))
        .await?;
    y.wait_for("sessionStarted").await?;
    y_cam.wait_for("startSession").await?;
    // X's listener on node B hears X's new producer on node A, not Y's, which node B knew
    // first (Y's listener there heard it).
    let mut x_listen = peer(&b.url(), &watch("x")?).await?;
    x_listen.set_status(&["listener"], json!({})).await?;
    x_listen.sync().await?;
    let mut y_listen = peer(&b.url(), &watch("y")?).await?;
    y_listen.set_status(&["listener"], json!({})).await?;
    y_listen.sync().await?;
    let mut y_more = peer(&a.url(), &produce("y")?).await?;
    y_more
        .set_status(&["producer"], json!({"name": "cam-y2"}))
        .await?;
    let heard = next_producer(&mut y_listen).await?;
    assert_eq!(heard["meta"]["name"], "cam-y2", "{heard}");
    let mut x_more = peer(&a.url(), &produce("x")?).await?;
    x_more
        .set_status(&["producer"], json!({"name": "cam-2"}))
        .await?;
    let heard = next_producer(&mut x_listen).await?;
    assert_eq!(heard["meta"]["name"], "cam-2", "{heard}");
    // Placement by stream keeps to the tenant too (X's cam-x is on Y's node C).
    y.send(json!({"type": "startSession", "stream": "cam-x"}))
        .await?;
    let err = y.expect("error").await?;
    assert_eq!(err["code"], "unknown-peer", "{err}");
    Ok(())
}

#[tokio::test]
async fn the_operations_api_needs_an_admin_grant_and_the_probes_stay_open() -> Result<()> {
    let keys = Keys::new("api")?;
    let node = auth_node(&keys, &[]).await?;
    let admin = keys.token("ops", json!({"admin": true}))?;
    let viewer = keys.token("v", json!({"consume": true}))?;
    for path in ["/api/v1/producers", "/api/v1/nodes"] {
        assert_eq!(node.get(path).await?.0, 401, "{path} without a token");
        let (status, _) = node.get(&format!("{path}?token={viewer}")).await?;
        assert_eq!(status, 403, "{path} without admin");
        let (status, body) = node.get(&format!("{path}?token={admin}")).await?;
        assert_eq!(status, 200, "{path}: {body}");
    }
    assert_eq!(node.get("/healthz").await?.0, 200);
    assert_eq!(node.get("/readyz").await?.0, 200);
    // The actions too, through `signalling-cluster admin`: a viewer's token is refused, an
    // admin's kicks (no --admin-api needed with auth on).
    let mut target = peer(&node.url(), &viewer).await?;
    let cli = |token: &str| {
        std::process::Command::new(cluster_tests::bin("signalling-cluster"))
            .args(["admin", "--url", &format!("http://127.0.0.1:{}", node.port)])
            .args(["--token", token, "kick", &target.id])
            .output()
    };
    let refused = cli(&viewer)?;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("403"));
    assert!(cli(&admin)?.status.success());
    assert_eq!(target.wait_for("error").await?["code"], "kicked");
    // Placement for browsers needs a token too, and sees what it grants.
    let mut cam = peer(&node.url(), &keys.token("p", json!({"produce": true}))?).await?;
    cam.set_status(&["producer"], json!({"name": "cam-1"}))
        .await?;
    cam.sync().await?;
    assert_eq!(node.get("/place?stream=cam-1").await?.0, 401);
    let (status, body) = node
        .get(&format!("/place?stream=cam-1&token={viewer}"))
        .await?;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&cam.id), "{body}");
    let lab_only = keys.token("l", json!({"consume": ["lab-*"]}))?;
    let (status, _) = node
        .get(&format!("/place?stream=cam-1&token={lab_only}"))
        .await?;
    assert_eq!(status, 404, "a stream it may not watch is not there");
    Ok(())
}

#[tokio::test]
async fn an_expiring_token_is_announced_the_connection_closes_and_a_fresh_token_resumes_the_peer(
) -> Result<()> {
    let keys = Keys::new("expiry")?;
    let node = auth_node(&keys, &[]).await?;
    let exp = now() + 4;
    let short = keys.sign_with(
        "HS256",
        "secret",
        &json!({"sub": "short", "exp": exp, "gwc": {"produce": true}}),
    )?;
    let mut p = peer(&node.url(), &short).await?;
    p.set_status(&["producer"], json!({"name": "cam-1"}))
        .await?;
    let viewer = keys.token("viewer", json!({"consume": true}))?;
    let mut c = peer(&node.url(), &viewer).await?;
    c.send(json!({"type": "startSession", "peerId": p.id}))
        .await?;
    let session = c.wait_for("sessionStarted").await?["sessionId"].clone();
    p.wait_for("startSession").await?;
    let warned = p.wait_for("tokenExpiring").await?;
    assert!(warned["expiresAt"].as_u64() >= Some(now()), "{warned}");
    let code = p.closed().await?;
    assert_eq!(code, Some(1008), "closed with policy violation");
    // Resuming with the expired token is refused (past the nodes' 5 s leeway for clock
    // skew); with a fresh one the peer comes back.
    while now() <= exp + 5 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let resume = p.welcome["resumeToken"]
        .as_str()
        .context("no resume token")?
        .to_string();
    let url = node.url();
    let again = format!("{url}/?resume={resume}&token={short}");
    let refused = upgrade(&again, None).await?;
    assert_eq!(refused.map(|r| r.0), Some(401));
    let fresh = keys.token("short", json!({"produce": true}))?;
    let resumed =
        Peer::connect_with(&format!("{url}/?resume={resume}&token={fresh}"), Some(V2)).await?;
    assert_eq!(resumed.id, p.id, "{}", resumed.welcome);
    assert_eq!(resumed.welcome["resumed"], true);
    // The session went on: the consumer's messages reach the resumed producer.
    let mut resumed = resumed;
    let ice = json!({"type": "peer", "sessionId": session, "ice": {"candidate": "after", "sdpMLineIndex": 0}});
    c.send(ice).await?;
    let got = resumed.wait_for("peer").await?;
    assert_eq!(got["ice"]["candidate"], "after", "{got}");
    Ok(())
}

#[tokio::test]
async fn the_token_command_prints_a_token_that_pyjwt_verifies_and_a_node_accepts() -> Result<()> {
    let keys = Keys::new("command")?;
    let out = std::process::Command::new(cluster_tests::bin("signalling-cluster"))
        .args([
            "token",
            "--secret-file",
            &keys.path("secret"),
            "--sub",
            "cam-1",
        ])
        .args([
            "--produce",
            "cam-*",
            "--consume",
            "*",
            "--ttl",
            "1h",
            "--tenant",
            "acme",
        ])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout)?.trim().to_string();
    let claims = keys.decode(&token)?;
    assert_eq!(claims["sub"], "cam-1");
    assert_eq!(claims["gwc"]["produce"], json!(["cam-*"]));
    assert_eq!(claims["gwc"]["consume"], true);
    assert_eq!(claims["gwc"]["tenant"], "acme");
    let ttl = claims["exp"].as_u64().unwrap_or(0) - claims["iat"].as_u64().unwrap_or(0);
    assert_eq!(ttl, 3600);
    let node = auth_node(&keys, &[]).await?;
    let mut p = peer(&node.url(), &token).await?;
    p.set_status(&["producer"], json!({"name": "cam-1"}))
        .await?;
    // Registered: no `forbidden`, and the node lists it (to a peer of its tenant).
    p.send(json!({"type": "list"})).await?;
    let answer = p.recv().await?;
    assert_eq!(
        answer["type"], "list",
        "the registration was refused: {answer}"
    );
    let viewer = keys.token("v", json!({"consume": true, "tenant": "acme"}))?;
    let mut v = peer(&node.url(), &viewer).await?;
    let list = Topo::list_until(&mut v, false, |l| !names(l).is_empty()).await?;
    assert_eq!(names(&list), ["cam-1"], "{list}");
    Ok(())
}

#[tokio::test]
async fn a_rotated_secret_takes_effect_without_dropping_anyone() -> Result<()> {
    let keys = Keys::new("rotation")?;
    let file = keys.dir.join("node.secret");
    std::fs::copy(keys.dir.join("secret"), &file)?;
    let args = ["--auth-jwt-secret-file", file.to_str().context("path")?];
    let node = Node::start_logged(&args).await?;
    let old = keys.token("before", json!({"produce": true, "consume": true}))?;
    let mut before = peer(&node.url(), &old).await?;
    before
        .set_status(&["producer"], json!({"name": "cam-1"}))
        .await?;
    before.sync().await?;
    // The Secret is rotated: the file now holds another secret.
    std::fs::write(keys.dir.join("new"), "the rotated secret\n")?;
    std::fs::copy(keys.dir.join("new"), &file)?;
    let claims = json!({"sub": "after", "exp": now() + 600, "gwc": {"consume": true}});
    let new = keys.sign_with("HS256", "new", &claims)?;
    cluster_tests::eventually(Duration::from_secs(5), "the new secret in use", || async {
        matches!(upgrade(&node.url(), Some(&new)).await, Ok(None))
    })
    .await?;
    assert_eq!(
        upgrade(&node.url(), Some(&old)).await?.map(|r| r.0),
        Some(401)
    );
    // The connection made with the old secret is still served.
    before.send(json!({"type": "list"})).await?;
    let list = before.wait_for("list").await?;
    assert_eq!(names(&list), ["cam-1"], "{list}");
    // A file that no longer parses keeps the key in use: once the node has read it (and said
    // so), the new secret still verifies.
    std::fs::write(&file, "")?;
    let log = node.log.as_ref().context("the node's log")?;
    cluster_tests::eventually(Duration::from_secs(10), "the empty file read", || async {
        // (upgrades are what make the node look at the file again)
        let _ = upgrade(&node.url(), Some(&new)).await;
        log.contains("keeping the previous verification key: the secret file is empty")
    })
    .await?;
    assert_eq!(upgrade(&node.url(), Some(&new)).await?, None);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_with_tokens_publish_and_watch_across_an_auth_cluster() -> Result<()> {
    let _one = cluster_tests::media::exclusive().await;
    let keys = Keys::new("agents")?;
    let redis = Redis::start().await?;
    let [a, b]: [Node; 2] = auth_cluster(&keys, &redis, &["node-a", "node-b"])
        .await?
        .try_into()
        .map_err(|_| anyhow::anyhow!("nodes"))?;
    let (url, far) = (a.url(), b.url());
    let producer_token = keys.dir.join("producer.token");
    std::fs::write(
        &producer_token,
        keys.token("cam-1", json!({"produce": ["cam-*"]}))? + "\n",
    )?;
    let token_file = producer_token.to_str().context("path")?;
    let _producer = cluster_tests::agent::Agent::producer(&[
        "--server",
        &url,
        "--name",
        "cam-1",
        "--token-file",
        token_file,
    ])?;
    // (finding a producer by name, the agent listens to presence: `listen` too)
    let viewer_token = keys.token("viewer", json!({"consume": ["cam-*"], "listen": true}))?;
    let mut viewer = cluster_tests::agent::Agent::consumer(&[
        "--server",
        &far,
        "--producer-name",
        "cam-1",
        "--token",
        &viewer_token,
        "--sink",
        "encoded",
        "--frames",
        "10",
    ])?;
    assert_eq!(
        viewer.exit_within(Duration::from_secs(90)).await?,
        Some(0),
        "{}",
        viewer.stderr()
    );
    // Without a token the agent is turned away at every attempt and gives up.
    let mut stranger = cluster_tests::agent::Agent::consumer(&[
        "--server",
        &url,
        "--producer-name",
        "cam-1",
        "--retry-for",
        "2",
    ])?;
    assert_eq!(
        stranger.exit_within(Duration::from_secs(60)).await?,
        Some(4),
        "without a token the 401 is final"
    );
    assert!(stranger.stderr().contains("401"), "{}", stranger.stderr());
    Ok(())
}

/// Stock webrtcsink and webrtcsrc, the token in their signaller's `headers`, stream through a
/// two-node cluster with auth on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_elements_with_tokens_in_their_headers_stream_through_an_auth_cluster() -> Result<()>
{
    let _one = cluster_tests::media::exclusive().await;
    let keys = Keys::new("stock")?;
    let redis = Redis::start().await?;
    let [a, b]: [Node; 2] = auth_cluster(&keys, &redis, &["node-a", "node-b"])
        .await?
        .try_into()
        .map_err(|_| anyhow::anyhow!("nodes"))?;
    // (webrtcsrc with a producer id does not list or listen: `consume` is enough)
    let viewer = keys.token("viewer", json!({"consume": ["cam-*"], "listen": true}))?;
    let mut listener = peer(&b.url(), &viewer).await?;
    listener.set_status(&["listener"], json!({})).await?;
    listener.sync().await?;
    let producer_token = keys.token("cam", json!({"produce": ["cam-*"]}))?;
    let producer =
        cluster_tests::media::stock_producer_with(&a.url(), "cam-1", Some(&producer_token))?;
    let announced = listener.wait_for("peerStatusChanged").await?;
    let producer_id = announced["peerId"].as_str().context("peerId")?.to_string();
    let (consumer, frames) =
        cluster_tests::media::stock_consumer_with(&b.url(), &producer_id, Some(&viewer))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while frames.count() < 30 {
        if let Some(e) = producer.error().or_else(|| consumer.error()) {
            anyhow::bail!("pipeline error: {e}");
        }
        anyhow::ensure!(Instant::now() < deadline, "only {} frames", frames.count());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
