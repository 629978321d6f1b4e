//! The rendered pods run for real: nodes started with exactly the rendered args and env answer
//! the rendered probes, form one cluster and drain within the grace period; with the auth and
//! the TLS values they verify tokens and answer HTTPS probes; agents started with the rendered
//! env find the node through the rendered Service URL.
//!
//! The tools (helm, kubectl, readme-generator, kubernetes-validate) are installed by
//! `./dev setup` under /var/cache/gst-webrtc-cluster/tools; nothing is downloaded here. The
//! other k8s_*.rs files check the rest of k8s/; their shared helpers are in `src/k8s.rs`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cluster_tests::k8s::{self, arg, find, signalling_container, yaml_docs};
use cluster_tests::{bin, free_port, http_get, Peer, Proc, Redis};
use serde_json::Value;

/// Starts a node exactly as the rendered container would run, as pod `pod_name`: the rendered
/// args and env, with the listening port and the Redis address remapped to loopback.
fn start_rendered_node(
    container: &Value,
    pod_name: &str,
    port: u16,
    redis: &Redis,
    redis_service: &str,
    paths: &[(&str, &str)],
) -> Result<Proc> {
    assert_eq!(
        container["command"],
        serde_json::json!(["signalling-cluster"])
    );
    let mut args: Vec<String> = serde_json::from_value(container["args"].clone())?;
    for a in &mut args {
        if a.starts_with("--port=") {
            *a = format!("--port={port}");
        } else if a.starts_with("--metrics-addr=") {
            *a = format!("--metrics-addr=127.0.0.1:{}", free_port());
        } else if a.starts_with("--host=") {
            *a = "--host=127.0.0.1".into();
        }
        // files mounted in the pod live elsewhere here
        for (from, to) in paths {
            *a = a.replace(from, to);
        }
    }
    let mut cmd = Command::new(bin("signalling-cluster"));
    cmd.args(&args).stdout(Stdio::null());
    // only what the pod would have: no SIGNALLING_* from the test's environment
    for (k, _) in std::env::vars() {
        if k.starts_with("SIGNALLING_") || k == "POD_NAME" {
            cmd.env_remove(k);
        }
    }
    for e in container["env"].as_array().context("no env")? {
        let name = e["name"].as_str().unwrap();
        let value = if let Some(v) = e["value"].as_str() {
            v.to_string()
        } else if e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name" {
            pod_name.to_string()
        } else {
            bail!("env {name}: no value this test can provide: {e}");
        };
        let value = if name == "SIGNALLING_REDIS_URL" {
            // the in-cluster Service name resolves only in the cluster: remap it
            let service = format!("redis://{redis_service}:6379");
            assert_eq!(
                value, service,
                "the node must use the bundled Redis Service"
            );
            redis.url()
        } else {
            value
        };
        cmd.env(name, value);
    }
    Proc::spawn(cmd, pod_name)
}

/// The port a probe targets, resolved against the container's ports.
fn probe_port(container: &Value, probe: &Value) -> u64 {
    let port = &probe["httpGet"]["port"];
    if let Some(n) = port.as_u64() {
        return n;
    }
    container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| &p["name"] == port)
        .and_then(|p| p["containerPort"].as_u64())
        .expect("probe names a port the container declares")
}

#[tokio::test]
async fn nodes_started_with_the_rendered_args_and_env_answer_the_rendered_probes_and_drain_within_the_grace_period(
) -> Result<()> {
    let docs = yaml_docs(&k8s::template("gwc", &[])?)?;
    let (pod, container) = signalling_container(&docs)?;
    let args: Vec<String> = serde_json::from_value(container["args"].clone())?;
    let redis_service = find(&docs, "Service", "redis").context("no bundled Redis Service")?
        ["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    // the probes target the port the node listens on
    let listen: u64 = arg(&args, "--port").context("no --port")?.parse()?;
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        assert_eq!(probe_port(&container, &container[probe]), listen, "{probe}");
        assert_eq!(container[probe]["httpGet"]["scheme"], "HTTP", "{probe}");
    }
    assert_eq!(container["startupProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");

    let redis = Redis::start().await?;
    let replicas = docs.iter().find(|d| d["kind"] == "Deployment").unwrap()["spec"]["replicas"]
        .as_u64()
        .unwrap();
    assert!(replicas >= 2);
    let pods = [
        "gwc-gst-webrtc-cluster-5d9c7-a1b2c",
        "gwc-gst-webrtc-cluster-5d9c7-x9y8z",
    ];
    let mut nodes = Vec::new();
    for name in pods {
        let port = free_port();
        let proc = start_rendered_node(&container, name, port, &redis, &redis_service, &[])?;
        nodes.push((name, port, proc));
    }

    // every rendered probe answers 200 within the startup probe's budget
    let startup = &container["startupProbe"];
    let budget = startup["periodSeconds"].as_u64().unwrap_or(10)
        * startup["failureThreshold"].as_u64().unwrap_or(3);
    for (name, port, proc) in &mut nodes {
        let deadline = Instant::now() + Duration::from_secs(budget);
        loop {
            if let Some(status) = proc.child.try_wait()? {
                bail!("node {name} exited at start: {status}");
            }
            if probe(*port, startup).await {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: startup probe never passed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // readiness needs Redis: wait for the cluster connection
        cluster_tests::eventually(Duration::from_secs(budget), "readiness", || async {
            probe(*port, &container["readinessProbe"]).await
        })
        .await?;
        assert!(probe(*port, &container["livenessProbe"]).await);
        let live = container["livenessProbe"]["httpGet"]["path"]
            .as_str()
            .unwrap();
        let (status, body) = http_get(*port, live).await?;
        assert_eq!(status, 200);
        // the node id is the pod name (downward API)
        let health: Value = serde_json::from_str(&body)?;
        assert_eq!(health["nodeId"], *name, "{body}");
    }
    // one cluster through the rendered Redis settings: each node lists both
    for (_, port, _) in &nodes {
        cluster_tests::eventually(Duration::from_secs(10), "both nodes listed", || async {
            match http_get(*port, "/api/v1/nodes").await {
                Ok((200, body)) => pods.iter().all(|p| body.contains(p)),
                _ => false,
            }
        })
        .await?;
    }
    // the upgrade names the node in the rendered affinity header and cookie
    let mut peer = Peer::connect(&format!("ws://127.0.0.1:{}", nodes[0].1)).await?;
    let header = arg(&args, "--affinity-header").unwrap();
    assert_eq!(peer.headers.get(header).unwrap(), pods[0]);
    let cookie = arg(&args, "--affinity-cookie").unwrap();
    let set_cookie = peer.headers.get("set-cookie").unwrap().to_str()?;
    assert!(
        set_cookie.starts_with(&format!("{cookie}={}", pods[0])),
        "{set_cookie}"
    );

    // drain: preStop sleep + --drain-timeout fit in the grace period…
    let drain: u64 = arg(&args, "--drain-timeout")
        .context("no --drain-timeout")?
        .parse()?;
    let pre_stop = &container["lifecycle"]["preStop"]["exec"]["command"];
    assert_eq!(pre_stop[0], "sleep", "{pre_stop}");
    let sleep: u64 = pre_stop[1].as_str().unwrap().parse()?;
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        sleep > 0 && sleep + drain < grace,
        "preStop {sleep} + drain {drain} >= grace {grace}"
    );
    // …and the node does drain that way: on SIGTERM readiness fails at once, a v1 peer (which
    // cannot move) is kept until the drain timeout closes it, and the node exits by itself
    // before the kubelet would kill it (grace minus the preStop sleep)
    let (name, port, proc) = &mut nodes[0];
    let readiness = &container["readinessProbe"];
    proc.signal(libc::SIGTERM);
    let sigterm = Instant::now();
    // a draining node stops accepting connections and answers 503 to those it still reads:
    // either way the probe fails and the pod leaves the endpoints
    cluster_tests::eventually(Duration::from_secs(5), "readiness failing", || async {
        !probe(*port, readiness).await
    })
    .await?;
    let closed = tokio::time::timeout(Duration::from_secs(grace), peer.closed()).await;
    assert!(closed.is_ok(), "{name}: the v1 peer was never closed");
    let mut child_wait = None;
    while sigterm.elapsed() < Duration::from_secs(grace - sleep) {
        if let Some(status) = proc.child.try_wait()? {
            child_wait = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = child_wait.context("the node outlived its grace period")?;
    assert!(status.success(), "{status}");
    assert!(
        sigterm.elapsed() >= Duration::from_secs(drain),
        "the v1 peer was closed before --drain-timeout"
    );
    Ok(())
}

/// Runs an httpGet probe as the kubelet does: success is a 2xx/3xx answer within
/// `timeoutSeconds` (default 1).
async fn probe(port: u16, probe: &Value) -> bool {
    let path = probe["httpGet"]["path"].as_str().unwrap();
    let timeout = Duration::from_secs(probe["timeoutSeconds"].as_u64().unwrap_or(1));
    matches!(
        tokio::time::timeout(timeout, http_get(port, path)).await,
        Ok(Ok((200..=399, _)))
    )
}

/// The env of the first container of the agent Deployment labelled `id`, with Kubernetes'
/// values only (no secrets in the values file used).
fn agent_env(docs: &[Value], id: &str) -> Result<Vec<(String, String)>> {
    let deploy = docs
        .iter()
        .find(|d| {
            d["kind"] == "Deployment" && d["metadata"]["labels"]["gst-webrtc-cluster/agent"] == id
        })
        .with_context(|| format!("no Deployment for agent {id}"))?;
    let container = &deploy["spec"]["template"]["spec"]["containers"][0];
    let mut env = Vec::new();
    for e in container["env"].as_array().context("no env")? {
        let value = e["value"]
            .as_str()
            .with_context(|| format!("env without a value: {e}"))?;
        env.push((e["name"].as_str().unwrap().to_string(), value.to_string()));
    }
    Ok(env)
}

#[tokio::test]
async fn agents_started_with_the_rendered_env_find_each_other_through_the_rendered_service_url(
) -> Result<()> {
    let values = k8s::chart().join("ci/gateway-monitoring-values.yaml");
    let docs = yaml_docs(&k8s::template(
        "gwc",
        &[
            "-f",
            values.to_str().unwrap(),
            "--set",
            "consumers[0].name=viewer,consumers[0].stream=cam-1,\
             relays[0].name=cam-1-relay,relays[0].source=cam-1,relays[0].maxConsumers=5",
        ],
    )?)?;
    let service = find(&docs, "Service", "signalling").context("no signalling Service")?;
    let service_url = format!(
        "ws://{}.default.svc:{}",
        service["metadata"]["name"].as_str().unwrap(),
        service["spec"]["ports"][0]["port"]
    );
    let node = cluster_tests::Node::start(&[]).await?;
    let metrics_port = free_port();
    let start = |bin_name: &str, env: Vec<(String, String)>| -> Result<Proc> {
        let mut cmd = Command::new(bin(bin_name));
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        for (k, _) in std::env::vars() {
            if ["GWC_", "PRODUCER_", "CONSUMER_", "RELAY_"]
                .iter()
                .any(|p| k.starts_with(p))
            {
                cmd.env_remove(k);
            }
        }
        for (k, v) in env {
            let v = match k.as_str() {
                // the agents reach the chart's Service by default: remap it to the test node
                "GWC_SERVER" => {
                    assert_eq!(v, service_url);
                    node.url()
                }
                "GWC_METRICS_ADDR" => format!("127.0.0.1:{metrics_port}"),
                "HOME" => std::env::temp_dir().to_string_lossy().to_string(),
                _ => v,
            };
            cmd.env(k, v);
        }
        Proc::spawn(cmd, bin_name)
    };
    let producer_env = agent_env(&docs, "producer-cam-1")?;
    assert!(producer_env.contains(&("PRODUCER_NAME".into(), "cam-1".into())));
    assert!(producer_env.contains(&("PRODUCER_SOURCE".into(), "test".into())));
    let _producer = start("producer-agent", producer_env)?;
    // the producer registers under the rendered name and serves metrics on the rendered port
    cluster_tests::eventually(Duration::from_secs(60), "cam-1 registered", || async {
        matches!(node.get("/api/v1/producers").await, Ok((200, body)) if body.contains("\"cam-1\""))
    })
    .await?;
    cluster_tests::eventually(Duration::from_secs(30), "producer metrics", || async {
        matches!(http_get(metrics_port, "/metrics").await, Ok((200, body)) if body.contains("producer_"))
    })
    .await?;
    // the relay of cam-1 registers under its rendered name
    let relay_env: Vec<_> = agent_env(&docs, "relay-cam-1-relay")?
        .into_iter()
        .filter(|(k, _)| k != "GWC_METRICS_ADDR")
        .collect();
    assert!(relay_env.contains(&("RELAY_SOURCE_NAME".into(), "cam-1".into())));
    assert!(relay_env.contains(&("RELAY_MAX_CONSUMERS".into(), "5".into())));
    let _relay = start("relay-agent", relay_env)?;
    cluster_tests::eventually(Duration::from_secs(60), "the relay registered", || async {
        matches!(node.get("/api/v1/producers").await, Ok((200, body)) if body.contains("\"cam-1-relay\""))
    })
    .await?;
    let consumer_env = agent_env(&docs, "consumer-viewer")?;
    // asked by stream: the node places it (where: tests/relays.rs)
    assert!(consumer_env.contains(&("CONSUMER_STREAM".into(), "cam-1".into())));
    assert!(consumer_env.contains(&("CONSUMER_SINK".into(), "null".into())));
    let mut consumer_env: Vec<_> = consumer_env
        .into_iter()
        .filter(|(k, _)| k != "GWC_METRICS_ADDR")
        .collect();
    // a Deployment's consumer runs until stopped; here it stops after a few frames
    consumer_env.push(("CONSUMER_FRAMES".into(), "5".into()));
    consumer_env.push(("CONSUMER_TIMEOUT".into(), "120".into()));
    let mut consumer = start("consumer-agent", consumer_env)?;
    let status = tokio::task::spawn_blocking(move || consumer.child.wait()).await??;
    assert!(status.success(), "consumer-agent: {status}");
    Ok(())
}

/// A node started with the rendered signalling `container` (as pod `pod_name`) and a Redis of
/// its own, the Secret mounted at `mount` read from the local directory `dir`: its port, the
/// node, the Redis.
async fn node_with_secret(
    docs: &[Value],
    container: &Value,
    pod_name: &str,
    mount: &str,
    dir: &std::path::Path,
) -> Result<(u16, Proc, Redis)> {
    let redis = Redis::start().await?;
    let redis_service = find(docs, "Service", "redis").context("no redis Service")?["metadata"]
        ["name"]
        .as_str()
        .context("a name")?
        .to_string();
    let port = free_port();
    let local = dir.to_string_lossy().to_string();
    let node = start_rendered_node(
        container,
        pod_name,
        port,
        &redis,
        &redis_service,
        &[(mount, local.as_str())],
    )?;
    Ok((port, node, redis))
}

/// Where the pod mounts its volume `name`, checked to be the Secret `secret`.
fn mounted_secret(pod: &Value, container: &Value, name: &str, secret: &str) -> Result<String> {
    let mount = container["volumeMounts"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == name))
        .with_context(|| format!("no {name} mount"))?["mountPath"]
        .as_str()
        .context("a mountPath")?
        .to_string();
    let volume = pod["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == name))
        .with_context(|| format!("no {name} volume"))?;
    assert_eq!(volume["secret"]["secretName"], secret);
    Ok(mount)
}

#[tokio::test]
async fn a_node_started_with_the_rendered_auth_args_verifies_tokens_and_agents_find_theirs(
) -> Result<()> {
    let values = k8s::chart().join("ci/auth-values.yaml");
    let docs = yaml_docs(&k8s::template("gwc", &["-f", values.to_str().unwrap()])?)?;
    let (pod, container) = signalling_container(&docs)?;
    let args: Vec<String> = serde_json::from_value(container["args"].clone())?;
    let mount = mounted_secret(&pod, &container, "jwt", "gwc-jwt")?;
    assert_eq!(
        arg(&args, "--auth-jwt-secret-file"),
        Some(format!("{mount}/jwt-secret").as_str())
    );
    assert_eq!(arg(&args, "--auth-jwt-issuer"), Some("gwc"));
    assert_eq!(arg(&args, "--max-connections-per-ip"), Some("50"));
    // The agents read their token from the Secret mounted where GWC_TOKEN_FILE points.
    let viewer = agent_env(&docs, "consumer-viewer")?;
    assert!(viewer.contains(&("GWC_TOKEN_FILE".into(), "/etc/gwc/token/jwt".into())));
    let producer = agent_env(&docs, "producer-cam-1")?;
    assert!(producer.contains(&("GWC_TOKEN_FILE".into(), "/etc/gwc/token/token".into())));

    // The node started with those args (the Secret's file in a local directory) verifies.
    let keys = cluster_tests::jwt::Keys::new("k8s")?;
    let dir = keys.dir.join("mounted");
    std::fs::create_dir_all(&dir)?;
    std::fs::copy(keys.dir.join("secret"), dir.join("jwt-secret"))?;
    let (port, _node, _redis) =
        node_with_secret(&docs, &container, "gwc-auth-pod", &mount, &dir).await?;
    let claims = |iss: &str| serde_json::json!({"sub": "t", "iss": iss, "exp": cluster_tests::jwt::now() + 600, "gwc": {"admin": true}});
    let good = keys.sign_with("HS256", "secret", &claims("gwc"))?;
    let wrong = keys.sign_with("HS256", "secret", &claims("other"))?;
    cluster_tests::eventually(Duration::from_secs(30), "the node with auth", || async {
        matches!(
            http_get(port, &format!("/api/v1/nodes?token={good}")).await,
            Ok((200, _))
        )
    })
    .await?;
    assert_eq!(
        http_get(port, &format!("/api/v1/nodes?token={wrong}"))
            .await?
            .0,
        401
    );
    assert_eq!(http_get(port, "/readyz").await?.0, 200, "probes stay open");
    Ok(())
}

#[tokio::test]
async fn a_node_started_with_the_rendered_turn_args_hands_out_the_charts_servers() -> Result<()> {
    let values = k8s::chart().join("ci/turn-values.yaml");
    let docs = yaml_docs(&k8s::template("gwc", &["-f", values.to_str().unwrap()])?)?;
    let (pod, container) = signalling_container(&docs)?;
    let args: Vec<String> = serde_json::from_value(container["args"].clone())?;
    let mount = mounted_secret(&pod, &container, "turn", "gwc-turn")?;
    assert_eq!(
        arg(&args, "--turn-secret-file"),
        Some(format!("{mount}/turn-secret").as_str())
    );
    assert_eq!(arg(&args, "--turn-ttl"), Some("1800"));

    // The node started with those args (the Secret's file in a local directory) hands them out.
    let dir = std::env::temp_dir().join(format!("gwc-k8s-turn-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("turn-secret"), "north\n")?;
    let (port, _node, _redis) =
        node_with_secret(&docs, &container, "gwc-turn-pod", &mount, &dir).await?;
    cluster_tests::eventually(
        Duration::from_secs(30),
        "the node's ICE servers",
        || async { matches!(http_get(port, "/api/v1/ice-servers").await, Ok((200, _))) },
    )
    .await?;
    let (_, body) = http_get(port, "/api/v1/ice-servers").await?;
    let answer: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(answer["ttl"], 1800, "{answer}");
    assert_eq!(
        answer["iceServers"][0]["urls"],
        serde_json::json!(["stun:turn.example.com:3478"]),
        "{answer}"
    );
    assert_eq!(
        answer["iceServers"][1]["urls"],
        serde_json::json!([
            "turn:turn.example.com:3478?transport=udp",
            "turn:turn.example.com:3478?transport=tcp"
        ]),
        "{answer}"
    );
    assert!(
        answer["iceServers"][1]["credential"].is_string(),
        "{answer}"
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[tokio::test]
async fn a_node_started_with_the_rendered_tls_args_answers_the_https_probes() -> Result<()> {
    let values = k8s::chart().join("ci/node-tls-values.yaml");
    let docs = yaml_docs(&k8s::template("gwc", &["-f", values.to_str().unwrap()])?)?;
    let (pod, container) = signalling_container(&docs)?;
    let args: Vec<String> = serde_json::from_value(container["args"].clone())?;
    // the cert and key come from the kubernetes.io/tls Secret mounted where the args point
    let mount = container["volumeMounts"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == "tls"))
        .context("no tls mount")?["mountPath"]
        .as_str()
        .unwrap()
        .to_string();
    let volume = pod["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == "tls"))
        .context("no tls volume")?;
    assert_eq!(volume["secret"]["secretName"], "signalling-node-tls");
    assert_eq!(
        arg(&args, "--cert"),
        Some(format!("{mount}/tls.crt").as_str())
    );
    assert_eq!(
        arg(&args, "--key"),
        Some(format!("{mount}/tls.key").as_str())
    );

    let dir = std::env::temp_dir().join(format!("gwc-k8s-tls-{}", std::process::id()));
    let (cert, key, _) = cluster_tests::self_signed(&dir)?;
    std::fs::rename(cert, dir.join("tls.crt"))?;
    std::fs::rename(key, dir.join("tls.key"))?;
    let redis = Redis::start().await?;
    let redis_service = find(&docs, "Service", "redis").unwrap()["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let port = free_port();
    let local = dir.to_string_lossy().to_string();
    let _node = start_rendered_node(
        &container,
        "gwc-tls-pod",
        port,
        &redis,
        &redis_service,
        &[(mount.as_str(), local.as_str())],
    )?;
    // the kubelet's HTTPS probes do not verify the certificate: neither does curl -k
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["scheme"], "HTTPS", "{probe}");
        let url = format!("https://127.0.0.1:{port}{}", get["path"].as_str().unwrap());
        cluster_tests::eventually(Duration::from_secs(30), probe, || {
            let url = url.clone();
            async move {
                let out = tokio::process::Command::new("curl")
                    .args([
                        "-sk",
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{http_code}",
                        "--max-time",
                        "2",
                        &url,
                    ])
                    .output()
                    .await;
                matches!(out, Ok(o) if o.stdout == b"200")
            }
        })
        .await?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The bundled coturn started with exactly the rendered args (Debian's turnserver, the 4.6 the
/// image's tag names; listening and relaying on loopback here) and the TURN_SECRET the kubelet
/// would expand from the Secret's key takes the credential a node started as rendered hands
/// out for the rendered publicHost URLs, and refuses a forged one.
#[tokio::test]
async fn a_coturn_started_with_the_rendered_args_accepts_the_rendered_nodes_credentials(
) -> Result<()> {
    let values = k8s::chart().join("ci/coturn-values.yaml");
    let docs = yaml_docs(&k8s::template("gwc", &["-f", values.to_str().unwrap()])?)?;
    let (pod, container) = signalling_container(&docs)?;
    let mount = mounted_secret(&pod, &container, "turn", "gwc-turn")?;
    // the Secret as the kubelet mounts it, one file per key (no line end: coturn takes it verbatim)
    let dir = std::env::temp_dir().join(format!("gwc-k8s-coturn-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("turn-secret"), "south")?;
    let (port, _node, _redis) =
        node_with_secret(&docs, &container, "gwc-coturn-pod", &mount, &dir).await?;

    let coturn = &find(&docs, "Deployment", "coturn").context("no coturn")?["spec"]["template"]
        ["spec"]["containers"][0];
    let env = &coturn["env"][0];
    assert_eq!(env["name"], "TURN_SECRET");
    assert_eq!(env["valueFrom"]["secretKeyRef"]["name"], "gwc-turn");
    let key = env["valueFrom"]["secretKeyRef"]["key"]
        .as_str()
        .context("a key")?;
    let secret = std::fs::read_to_string(dir.join(key)).context("not the nodes' key")?;
    let turn_port = free_port();
    let local = |file: &str| dir.join(file).to_string_lossy().to_string();
    let mut cmd = Command::new(coturn["command"][0].as_str().context("a command")?);
    for a in coturn["args"].as_array().context("args")? {
        let a = a
            .as_str()
            .context("a string")?
            .replace("$(TURN_SECRET)", &secret);
        cmd.arg(match a.split('=').next().unwrap() {
            "--listening-port" => format!("--listening-port={turn_port}"),
            "--pidfile" => format!("--pidfile={}", local("turnserver.pid")),
            "--userdb" => format!("--userdb={}", local("turndb")),
            _ => a,
        });
    }
    cmd.args(["--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1"])
        .args(["--allow-loopback-peers", "-v"])
        .stdout(Stdio::piped());
    let mut proc = Proc::spawn(cmd, "turnserver")?;
    let log = cluster_tests::Log::collect(proc.child.stdout.take().context("stdout")?);
    cluster_tests::eventually(Duration::from_secs(10), "coturn listening", || async {
        log.contains("Total General servers")
    })
    .await?;

    cluster_tests::eventually(
        Duration::from_secs(30),
        "the node's ICE servers",
        || async { matches!(http_get(port, "/api/v1/ice-servers").await, Ok((200, _))) },
    )
    .await?;
    let answer: Value = serde_json::from_str(&http_get(port, "/api/v1/ice-servers").await?.1)?;
    let turn = answer["iceServers"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["username"].is_string()))
        .with_context(|| format!("no TURN server: {answer}"))?;
    assert_eq!(
        turn["urls"],
        serde_json::json!([
            "turn:turn.example.com:3478?transport=udp",
            "turn:turn.example.com:3478?transport=tcp"
        ])
    );
    let user = turn["username"].as_str().unwrap();
    let allocate = |credential: String| async move {
        let out = tokio::process::Command::new("turnutils_uclient")
            .args(["-y", "-n", "2", "-m", "1", "-u", user, "-w", &credential])
            .args(["-p", &turn_port.to_string(), "127.0.0.1"])
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(30), out).await??;
        anyhow::Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        ))
    };
    let credential = turn["credential"].as_str().context("a credential")?;
    let (ok, out) = allocate(credential.into()).await?;
    assert!(ok, "the node's credential was refused:\n{out}");
    let (ok, out) = allocate(format!("x{credential}")).await?;
    assert!(!ok, "a forged credential allocated:\n{out}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
