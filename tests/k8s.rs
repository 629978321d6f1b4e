//! The Kubernetes deployment (k8s/): the Helm chart lints, renders and validates against the
//! schemas of several Kubernetes versions, rejects bad values, matches the checked-in plain
//! manifests and values table, agrees with the node binary it deploys, and the image's package
//! list covers what the binaries link and the GStreamer plugins the agents load.
//!
//! The tools (helm, kubectl, readme-generator, kubernetes-validate) are installed by
//! `./dev setup` under /var/cache/gst-webrtc-cluster/tools; nothing is downloaded here.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cluster_tests::k8s::{self, find, yaml_docs};
use cluster_tests::{bin, free_port, http_get, Peer, Proc, Redis};
use gst::prelude::*;
use serde_json::Value;

/// Kubernetes versions every rendered document is validated against: the chart's minimum
/// (`kubeVersion` in Chart.yaml), an older supported one, the kubectl shipped with the tools,
/// and the newest the schemas know.
const KUBE_VERSIONS: [&str; 4] = ["1.25.0", "1.29.0", "1.32.0", "1.37.0"];

/// Announced to `helm template` so the CRD-backed objects (ServiceMonitor, HTTPRoute) render.
const CRD_APIS: [&str; 6] = [
    "--api-versions",
    "monitoring.coreos.com/v1/ServiceMonitor",
    "--api-versions",
    "monitoring.coreos.com/v1/PrometheusRule",
    "--api-versions",
    "gateway.networking.k8s.io/v1/HTTPRoute",
];

#[test]
fn helm_lint_strict_passes_with_defaults_and_every_ci_values_file() -> Result<()> {
    let mut cmd = k8s::helm();
    cmd.args(["lint", "--strict"]).arg(k8s::chart());
    let out = k8s::run_ok(cmd)?;
    assert!(out.contains("0 chart(s) failed"), "{out}");
    for values in k8s::ci_values()? {
        let mut cmd = k8s::helm();
        cmd.args(["lint", "--strict"])
            .arg(k8s::chart())
            .arg("-f")
            .arg(&values);
        k8s::run_ok(cmd).with_context(|| format!("lint with {}", values.display()))?;
    }
    Ok(())
}

#[test]
fn every_rendered_document_is_valid_for_four_kubernetes_versions() -> Result<()> {
    let mut files = vec![k8s::tempfile(
        "default.yaml",
        &k8s::template("gwc", &CRD_APIS)?,
    )?];
    let ci = k8s::ci_values()?;
    assert!(ci.len() >= 6, "too few ci/*-values.yaml: {ci:?}");
    let mut kinds = BTreeSet::new();
    for values in &ci {
        let mut args = vec!["-f", values.to_str().unwrap()];
        args.extend(CRD_APIS);
        let yaml = k8s::template("gwc", &args)?;
        for d in yaml_docs(&yaml)? {
            kinds.insert(d["kind"].as_str().unwrap_or_default().to_string());
        }
        let name = values.file_name().unwrap().to_string_lossy().to_string();
        files.push(k8s::tempfile(&name, &yaml)?);
    }
    // the ci files exercise every optional object of the chart
    for kind in [
        "Deployment",
        "Service",
        "StatefulSet",
        "Ingress",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "ServiceMonitor",
        "HTTPRoute",
    ] {
        assert!(
            kinds.contains(kind),
            "no ci values render a {kind}: {kinds:?}"
        );
    }

    let mut cmd = k8s::python();
    cmd.arg("validate")
        .arg(KUBE_VERSIONS.join(","))
        .args(&files);
    let out = k8s::run(cmd)?;
    let report: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| String::from_utf8_lossy(&out.stderr).to_string())?;
    assert_eq!(report["errors"], serde_json::json!([]), "{report:#}");
    assert!(out.status.success());
    let documents = report["documents"].as_u64().unwrap();
    let crd = report["crd"].as_array().unwrap();
    assert!(documents > 40, "{report:#}");
    // every document but the CRD-backed ones, once per version
    assert_eq!(
        report["validations"].as_u64().unwrap(),
        (documents - crd.len() as u64) * KUBE_VERSIONS.len() as u64,
        "{report:#}"
    );
    let crd_kinds: BTreeSet<&str> = crd
        .iter()
        .map(|c| c.as_str().unwrap().rsplit(": ").next().unwrap())
        .map(|k| k.split('/').next().unwrap())
        .collect();
    assert_eq!(
        crd_kinds,
        BTreeSet::from(["HTTPRoute", "PrometheusRule", "ServiceMonitor"]),
        "{report:#}"
    );

    // and the validation does reject an unknown field (the strict schemas are in use)
    let yaml = k8s::template("gwc", &[])?.replacen(
        "revisionHistoryLimit: 5",
        "revisionHistoryLimit: 5\n  surpriseField: 1",
        1,
    );
    let mut cmd = k8s::python();
    cmd.arg("validate")
        .arg("1.32.0")
        .arg(k8s::tempfile("bad.yaml", &yaml)?);
    let out = k8s::run(cmd)?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("surpriseField"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(())
}

#[test]
fn crd_backed_objects_render_only_when_their_api_is_served() -> Result<()> {
    let values = k8s::chart().join("ci/gateway-monitoring-values.yaml");
    let values = values.to_str().unwrap();
    let without = yaml_docs(&k8s::template("gwc", &["-f", values])?)?;
    let mut args = vec!["-f", values];
    args.extend(CRD_APIS);
    let with = yaml_docs(&k8s::template("gwc", &args)?)?;
    let kinds = |docs: &[Value]| -> BTreeSet<String> {
        docs.iter()
            .map(|d| d["kind"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(!kinds(&without).contains("ServiceMonitor"));
    assert!(!kinds(&without).contains("HTTPRoute"));
    assert!(kinds(&with).contains("ServiceMonitor"));
    let route = with.iter().find(|d| d["kind"] == "HTTPRoute").unwrap();
    assert_eq!(
        route["spec"]["rules"][0]["sessionPersistence"]["sessionName"],
        "gwc-node"
    );
    Ok(())
}

/// The metric names a scrape exports: its samples, and the series of every declared family
/// (a counter with labels has no sample until its first label set is counted).
fn scraped_names(text: &str) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(String::from)
        .collect();
    for l in text.lines() {
        let mut words = l.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (words.next(), words.next(), words.next(), words.next())
        {
            match kind {
                "counter" => names.insert(format!("{}_total", name.trim_end_matches("_total"))),
                "histogram" => {
                    names.extend(["_bucket", "_sum", "_count"].map(|s| format!("{name}{s}")));
                    true
                }
                _ => names.insert(name.to_string()),
            };
        }
    }
    names
}

/// The metric names a PromQL expression reads (ours and the agents': `gwc_`, `process_`,
/// `producer_`, `consumer_`, `relay_`).
fn queried_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &expr[i..];
        let starts = ["gwc_", "process_", "producer_", "consumer_", "relay_"]
            .iter()
            .any(|p| rest.starts_with(p));
        let boundary = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if starts && boundary {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            names.insert(rest[..end].to_string());
            i += end;
        } else {
            i += 1;
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitoring_renders_and_the_dashboard_and_alerts_query_only_metrics_that_are_exported(
) -> Result<()> {
    let values = k8s::chart().join("ci/monitoring-values.yaml");
    let mut args = vec!["-f", values.to_str().unwrap()];
    args.extend(CRD_APIS);
    let docs = yaml_docs(&k8s::template("gwc", &args)?)?;
    let monitors: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "ServiceMonitor")
        .collect();
    assert_eq!(monitors.len(), 2, "nodes and agents");
    let nodes = monitors
        .iter()
        .find(|m| {
            m["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.ends_with("-nodes"))
        })
        .context("no ServiceMonitor for the nodes")?;
    assert_eq!(nodes["spec"]["endpoints"][0]["path"], "/metrics");
    assert_eq!(
        nodes["spec"]["endpoints"][0]["port"], "metrics",
        "the nodes' own port"
    );
    let (_, node) = signalling_container(&docs)?;
    let args: Vec<String> = serde_json::from_value(node["args"].clone())?;
    assert_eq!(arg(&args, "--metrics-addr"), Some("0.0.0.0:9090"));
    let hpa = docs
        .iter()
        .find(|d| d["kind"] == "HorizontalPodAutoscaler")
        .context("no HPA")?;
    let pods = &hpa["spec"]["metrics"][0]["pods"];
    assert_eq!(pods["metric"]["name"], "gwc_connected_peers", "{hpa}");
    assert_eq!(pods["target"]["averageValue"], "500");
    let dashboard = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["labels"]["grafana_dashboard"] == "1")
        .context("no dashboard ConfigMap")?;
    let json: Value = serde_json::from_str(
        dashboard["data"]["gst-webrtc-cluster.json"]
            .as_str()
            .context("no JSON")?,
    )?;
    let mut queried = BTreeSet::new();
    for panel in json["panels"].as_array().context("no panels")? {
        for t in panel["targets"].as_array().into_iter().flatten() {
            queried.extend(queried_names(t["expr"].as_str().unwrap_or_default()));
        }
    }
    let rule = docs
        .iter()
        .find(|d| d["kind"] == "PrometheusRule")
        .context("no PrometheusRule")?;
    for r in rule["spec"]["groups"][0]["rules"]
        .as_array()
        .context("no rules")?
    {
        queried.extend(queried_names(r["expr"].as_str().unwrap_or_default()));
    }
    assert!(queried.len() >= 15, "{queried:?}");

    // A real scrape of a node, and of a producer, a relay and a consumer through it.
    let node = cluster_tests::Node::start(&[]).await?;
    let _one = cluster_tests::media::exclusive().await;
    let ports = [free_port(), free_port(), free_port()];
    let metrics = |i: usize| format!("127.0.0.1:{}", ports[i]);
    let url = node.url();
    let _producer = cluster_tests::agent::Agent::producer(&[
        "--server",
        &url,
        "--name",
        "cam-1",
        "--metrics-addr",
        &metrics(0),
    ])?;
    let _relay = cluster_tests::agent::Agent::spawn(
        "relay-agent",
        &[
            "--server",
            &url,
            "--source-name",
            "cam-1",
            "--metrics-addr",
            &metrics(1),
        ],
    )?;
    let _consumer = cluster_tests::agent::Agent::consumer(&[
        "--server",
        &url,
        "--stream",
        "cam-1",
        "--sink",
        "encoded",
        "--metrics-addr",
        &metrics(2),
    ])?;
    let mut exported = BTreeSet::new();
    cluster_tests::eventually(Duration::from_secs(60), "every agent's metrics", || async {
        let mut names = BTreeSet::new();
        for port in ports {
            if let Ok((200, text)) = http_get(port, "/metrics").await {
                names.extend(scraped_names(&text));
            }
        }
        [
            "producer_consumers",
            "producer_consumer_bitrate_bps",
            "relay_consumers",
            "consumer_fps",
        ]
        .iter()
        .all(|n| names.contains(*n))
    })
    .await?;
    for port in ports {
        exported.extend(scraped_names(&http_get(port, "/metrics").await?.1));
    }
    exported.extend(scraped_names(&http_get(node.port, "/metrics").await?.1));
    let missing: Vec<&String> = queried.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "queried but not exported: {missing:?}\nexported: {exported:?}"
    );
    Ok(())
}

/// NOTES.txt as `helm install` prints it. `helm template` skips NOTES.txt and a dry-run install
/// needs a cluster, so a copy of the chart wraps it in a named template rendered into a
/// ConfigMap.
fn notes(sets: &[&str]) -> Result<String> {
    let copy = std::env::temp_dir().join(format!(
        "gwc-k8s-notes-{}-{}",
        std::process::id(),
        sets.len()
    ));
    let _ = std::fs::remove_dir_all(&copy);
    let status = Command::new("cp")
        .arg("-r")
        .arg(k8s::chart())
        .arg(&copy)
        .status()?;
    assert!(status.success());
    let text = std::fs::read_to_string(copy.join("templates/NOTES.txt"))?;
    std::fs::remove_file(copy.join("templates/NOTES.txt"))?;
    std::fs::write(
        copy.join("templates/_notes.tpl"),
        format!("{{{{- define \"test.notes\" -}}}}{text}{{{{- end -}}}}"),
    )?;
    std::fs::write(
        copy.join("templates/notes.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  notes: {{ include \"test.notes\" . | quote }}\n",
    )?;
    let mut cmd = k8s::helm();
    cmd.args([
        "template",
        "sig",
        "-n",
        "webrtc",
        "--show-only",
        "templates/notes.yaml",
    ])
    .arg(&copy);
    for s in sets {
        cmd.args(["--set", s]);
    }
    let docs = yaml_docs(&k8s::run_ok(cmd)?)?;
    let _ = std::fs::remove_dir_all(&copy);
    Ok(docs[0]["data"]["notes"]
        .as_str()
        .context("no notes")?
        .to_string())
}

#[test]
fn notes_tell_how_to_connect() -> Result<()> {
    let plain = notes(&[])?;
    assert!(
        plain.contains("ws://sig-gst-webrtc-cluster.webrtc.svc:8443"),
        "{plain}"
    );
    assert!(
        plain.contains("kubectl -n webrtc port-forward service/sig-gst-webrtc-cluster 8443:8443"),
        "{plain}"
    );
    let ingress = notes(&[
        "ingress.enabled=true",
        "ingress.tls.enabled=true",
        "ingress.host=sig.example.org",
    ])?;
    assert!(ingress.contains("wss://sig.example.org/"), "{ingress}");
    assert!(ingress.contains("sticky: cookie"), "{ingress}");
    Ok(())
}

/// `helm template` with `--set`s that must fail; returns stderr.
fn rejected(sets: &[&str]) -> Result<String> {
    let mut cmd = k8s::helm();
    cmd.arg("template").arg("gwc").arg(k8s::chart());
    for s in sets {
        cmd.args(["--set", s]);
    }
    let out = k8s::run(cmd)?;
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{sets:?} was accepted");
    Ok(stderr)
}

#[test]
fn schema_rejects_a_wrong_type() -> Result<()> {
    let err = rejected(&["signalling.drainTimeoutSeconds=soon"])?;
    assert!(
        err.contains("values don't meet the specifications of the schema"),
        "{err}"
    );
    assert!(
        err.contains("signalling.drainTimeoutSeconds: Invalid type. Expected: integer"),
        "{err}"
    );
    Ok(())
}

#[test]
fn schema_rejects_external_redis_without_a_url() -> Result<()> {
    let err = rejected(&["redis.enabled=false"])?;
    assert!(
        err.contains("values don't meet the specifications of the schema"),
        "{err}"
    );
    assert!(err.contains("redis.external"), "{err}");
    // either form satisfies it
    k8s::template(
        "gwc",
        &[
            "--set",
            "redis.enabled=false",
            "--set",
            "redis.external.url=redis://r:6379",
        ],
    )?;
    k8s::template(
        "gwc",
        &[
            "--set",
            "redis.enabled=false",
            "--set",
            "redis.external.existingSecret=r",
        ],
    )?;
    // and Sentinels, which the nodes are then pointed at instead of a URL
    let rendered = k8s::template(
        "gwc",
        &[
            "--set",
            "redis.enabled=false",
            "--set",
            "redis.external.sentinel.hosts=s-0:26379\\,s-1:26379",
            "--set",
            "redis.external.sentinel.master=gwc",
        ],
    )?;
    let docs = yaml_docs(&rendered)?;
    let deployment = find(&docs, "Deployment", "signalling").context("no signalling Deployment")?;
    let env = &deployment["spec"]["template"]["spec"]["containers"][0]["env"];
    let value = |name: &str| {
        env.as_array()
            .and_then(|e| e.iter().find(|v| v["name"] == name))
            .map(|v| v["value"].clone())
    };
    assert_eq!(
        value("SIGNALLING_REDIS_SENTINEL"),
        Some(Value::from("s-0:26379,s-1:26379"))
    );
    assert_eq!(
        value("SIGNALLING_REDIS_SENTINEL_MASTER"),
        Some(Value::from("gwc"))
    );
    assert_eq!(value("SIGNALLING_REDIS_URL"), None, "{env}");
    let err = rejected(&[
        "redis.enabled=false",
        "redis.external.sentinel.hosts=s-0:26379",
    ])?;
    assert!(err.contains("redis.external"), "{err}");
    Ok(())
}

#[test]
fn schema_rejects_an_unknown_key() -> Result<()> {
    let err = rejected(&["signalling.replicas=3"])?;
    assert!(
        err.contains("signalling: Additional property replicas is not allowed"),
        "{err}"
    );
    Ok(())
}

#[test]
fn chart_refuses_a_grace_period_that_does_not_cover_prestop_and_drain() -> Result<()> {
    let err = rejected(&[
        "signalling.drainTimeoutSeconds=60",
        "signalling.terminationGracePeriodSeconds=60",
    ])?;
    assert!(
        err.contains("must exceed preStopSleepSeconds + drainTimeoutSeconds"),
        "{err}"
    );
    let err = rejected(&["ingress.enabled=true", "ingress.stickyCookie=gwc-node"])?;
    assert!(err.contains("ingress.stickyCookie must differ"), "{err}");
    Ok(())
}

#[test]
fn ingress_carries_websocket_timeouts_and_sticky_sessions() -> Result<()> {
    let ingress = |file: &str| -> Result<Value> {
        let path = k8s::chart().join("ci").join(file);
        let docs = yaml_docs(&k8s::template("gwc", &["-f", path.to_str().unwrap()])?)?;
        Ok(find(&docs, "Ingress", "signalling")
            .context("no Ingress")?
            .clone())
    };
    let nginx = ingress("ingress-sticky-values.yaml")?;
    let a = &nginx["metadata"]["annotations"];
    assert_eq!(a["nginx.ingress.kubernetes.io/affinity"], "cookie");
    assert_eq!(
        a["nginx.ingress.kubernetes.io/session-cookie-name"],
        "gwc-route"
    );
    assert_eq!(a["nginx.ingress.kubernetes.io/proxy-read-timeout"], "3600");
    assert_eq!(a["nginx.ingress.kubernetes.io/proxy-send-timeout"], "3600");
    assert_eq!(a["cert-manager.io/cluster-issuer"], "letsencrypt");
    assert_eq!(nginx["spec"]["ingressClassName"], "nginx");
    assert_eq!(nginx["spec"]["tls"][0]["secretName"], "signalling-tls");

    let header = ingress("ingress-header-hash-values.yaml")?;
    assert_eq!(
        header["metadata"]["annotations"]["nginx.ingress.kubernetes.io/upstream-hash-by"],
        "$http_x_signalling_node"
    );
    let traefik = ingress("ingress-traefik-values.yaml")?;
    assert_eq!(
        traefik["metadata"]["annotations"]
            ["traefik.ingress.kubernetes.io/service.sticky.cookie.name"],
        "gwc-route"
    );
    let haproxy = ingress("ingress-haproxy-values.yaml")?;
    assert_eq!(
        haproxy["metadata"]["annotations"]["haproxy.org/cookie-persistence"],
        "gwc-route"
    );
    Ok(())
}

#[test]
fn plain_manifests_are_the_chart_rendered_with_defaults() -> Result<()> {
    let expected = manifests_header() + &k8s::template("gwc", &[])?;
    let path = k8s::repo().join("k8s/manifests/gst-webrtc-cluster.yaml");
    let actual = std::fs::read_to_string(&path)?;
    assert!(
        actual == expected,
        "{} is out of date: run `./dev k8s-refresh`",
        path.display()
    );
    // and kustomize builds the same objects
    let mut cmd = Command::new(k8s::tool("bin/kubectl"));
    cmd.arg("kustomize").arg(k8s::repo().join("k8s/manifests"));
    let built = yaml_docs(&k8s::run_ok(cmd)?)?;
    let rendered = yaml_docs(&expected)?;
    let names = |docs: &[Value]| -> BTreeSet<String> {
        docs.iter()
            .map(|d| format!("{}/{}", d["kind"], d["metadata"]["name"]))
            .collect()
    };
    assert_eq!(names(&built), names(&rendered));
    Ok(())
}

fn manifests_header() -> String {
    "# Generated from k8s/helm/gst-webrtc-cluster with its default values (release `gwc`):\n\
     #   helm template gwc k8s/helm/gst-webrtc-cluster\n\
     # Do not edit: change the chart and run `./dev k8s-refresh` (tests/k8s.rs checks it).\n"
        .to_string()
}

#[test]
fn values_table_in_the_readme_is_generated_from_values_yaml() -> Result<()> {
    let readme = k8s::repo().join("k8s/README.md");
    let text = std::fs::read_to_string(&readme)?;
    let copy = k8s::tempfile("README.md", &text)?;
    let mut cmd = Command::new(k8s::tool("bin/readme-generator"));
    cmd.arg("--values")
        .arg(k8s::chart().join("values.yaml"))
        .arg("--readme")
        .arg(&copy);
    k8s::run_ok(cmd)?;
    let regenerated = std::fs::read_to_string(&copy)?;
    assert!(
        regenerated == text,
        "the values table of k8s/README.md is out of date: run `./dev k8s-refresh`"
    );
    assert!(text.contains("| `signalling.drainTimeoutSeconds`"));
    Ok(())
}

/// The signalling container of a render, and its pod spec.
fn signalling_container(docs: &[Value]) -> Result<(Value, Value)> {
    let deploy = find(docs, "Deployment", "signalling").context("no signalling Deployment")?;
    let pod = deploy["spec"]["template"]["spec"].clone();
    let container = pod["containers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "signalling"))
        .context("no signalling container")?
        .clone();
    Ok((pod, container))
}

/// `--flag=value` from rendered args.
fn arg<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .find_map(|a| a.strip_prefix(&format!("{flag}=")))
}

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

/// Element factories the agents create on paths the session below does not take (other
/// sources and sinks), with the source file that names each.
const FACTORIES_IN_SOURCE: [(&str, &str); 6] = [
    ("uridecodebin", "producer-agent/src/source.rs"),
    ("identity", "producer-agent/src/source.rs"),
    ("mp4mux", "consumer-agent/src/sink.rs"),
    ("matroskamux", "consumer-agent/src/sink.rs"),
    ("autovideosink", "consumer-agent/src/sink.rs"),
    ("autoaudiosink", "consumer-agent/src/sink.rs"),
];

/// Plugins compiled into the agents (gst-plugins-rs crates registered statically), and the
/// core's static elements: no plugin file, nothing to install.
const BUILT_IN_PLUGINS: [&str; 3] = ["staticelements", "rswebrtc", "rsrtp"];

#[test]
fn dockerfile_runtime_stage_is_minimal_non_root_with_tini() -> Result<()> {
    let dockerfile = std::fs::read_to_string(k8s::repo().join("k8s/Dockerfile"))?;
    let runtime = dockerfile.split("\nFROM ").last().context("no stages")?;
    assert!(
        runtime.starts_with("debian:12"),
        "runtime stage: {runtime:.40}"
    );
    assert!(dockerfile.contains("FROM rust:") && dockerfile.contains("bookworm AS build"));
    let packages = k8s::dockerfile_runtime_packages(&dockerfile)?;
    assert!(packages.len() > 10, "{packages:?}");
    for p in &packages {
        assert!(
            !p.ends_with("-dev")
                && !["gcc", "g++", "cc", "cargo", "rustc", "build-essential"].contains(&p.as_str()),
            "build-only package {p} in the runtime stage"
        );
    }
    assert!(packages.contains(&"tini".to_string()));
    assert!(runtime.contains("ENTRYPOINT [\"/usr/bin/tini\", \"--\"]"));
    assert!(runtime.contains("USER 10001:10001"));
    for b in ["signalling-cluster", "producer-agent", "consumer-agent"] {
        assert!(
            dockerfile.contains(&format!("target/release/{b}")),
            "{b} not copied"
        );
    }
    Ok(())
}

/// The packages the Dockerfile's runtime stage installs.
fn listed_runtime_packages() -> Result<BTreeSet<String>> {
    let dockerfile = std::fs::read_to_string(k8s::repo().join("k8s/Dockerfile"))?;
    Ok(k8s::dockerfile_runtime_packages(&dockerfile)?
        .into_iter()
        .collect())
}

#[test]
fn dockerfile_packages_cover_the_shared_libraries_the_binaries_link() -> Result<()> {
    let listed = listed_runtime_packages()?;
    let mut needed: BTreeMap<String, String> = BTreeMap::new();
    for b in ["signalling-cluster", "producer-agent", "consumer-agent"] {
        let out = Command::new("ldd").arg(bin(b)).output()?;
        assert!(out.status.success(), "ldd {b}");
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            assert!(!line.contains("not found"), "{b}: {line}");
            // "libfoo.so.1 => /lib/x86_64-linux-gnu/libfoo.so.1 (0x…)" or "/lib64/ld-linux… (0x…)"
            let path = match line.split_once("=>") {
                Some((_, rhs)) => rhs.split_whitespace().next(),
                None => line
                    .split_whitespace()
                    .next()
                    .filter(|p| p.starts_with('/')),
            };
            let Some(path) = path.filter(|p| p.starts_with('/')) else {
                continue; // linux-vdso
            };
            let pkg = k8s::package_of(std::path::Path::new(path))?;
            needed.insert(pkg, format!("{b}: {path}"));
        }
    }
    assert!(needed.contains_key("libgstreamer1.0-0"), "{needed:?}");
    let missing: Vec<_> = needed
        .iter()
        .filter(|(p, _)| !listed.contains(*p))
        .collect();
    assert!(
        missing.is_empty(),
        "missing from k8s/Dockerfile: {missing:?}"
    );
    Ok(())
}

#[test]
fn dockerfile_packages_cover_the_gstreamer_plugins_the_agents_load() -> Result<()> {
    let listed = listed_runtime_packages()?;

    // a real session: test source with audio (webrtcsink discovers every encoder it can use)
    // → node → consumer decoding, with GStreamer's `factories` tracer on (the recording
    // muxers are in FACTORIES_IN_SOURCE)
    let dir = std::env::temp_dir().join(format!("gwc-k8s-plugins-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let port = free_port();
    let mut node = Command::new(bin("signalling-cluster"));
    node.args([
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--log",
        "warn",
    ]);
    let _node = Proc::spawn(node, "signalling-cluster")?;
    let url = format!("ws://127.0.0.1:{port}");
    let traced = |name: &str, args: &[&str], log: &str| -> Result<Command> {
        let mut cmd = Command::new(bin(name));
        cmd.args(["--server", &url])
            .args(args)
            .env("GST_TRACERS", "factories")
            .env("GST_DEBUG", "GST_TRACER:7")
            .env("GST_DEBUG_NO_COLOR", "1")
            .env("GST_DEBUG_FILE", dir.join(log))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("{log}.stderr")))?);
        Ok(cmd)
    };
    let producer = Proc::spawn(
        traced(
            "producer-agent",
            &[
                "--name",
                "k8s-plugins",
                "--source",
                "test",
                "--audio",
                "--width",
                "320",
                "--height",
                "240",
            ],
            "producer.log",
        )?,
        "producer-agent",
    )?;
    let mut consumer = traced(
        "consumer-agent",
        &[
            "--producer-name",
            "k8s-plugins",
            "--frames",
            "10",
            "--timeout",
            "120",
        ],
        "consumer.log",
    )?;
    let status = consumer.status()?;
    let stderr = |log: &str| std::fs::read_to_string(dir.join(format!("{log}.stderr")));
    assert!(
        status.success(),
        "consumer-agent: {status}\n{}\nproducer-agent:\n{}",
        stderr("consumer.log")?,
        stderr("producer.log")?
    );
    drop(producer);

    let mut factories: BTreeMap<String, String> = BTreeMap::new();
    for log in ["producer.log", "consumer.log"] {
        let text = std::fs::read_to_string(dir.join(log))?;
        for line in text.lines().filter(|l| l.contains("factory-used")) {
            let field = |key: &str| -> Option<String> {
                let start = line.find(&format!("{key}=(string)"))? + key.len() + 9;
                let rest = &line[start..];
                Some(rest[..rest.find([',', ';']).unwrap_or(rest.len())].to_string())
            };
            if field("factory-type").as_deref() == Some("element") {
                factories.insert(field("factory").unwrap(), field("plugin").unwrap());
            }
        }
    }
    for expected in [
        "webrtcsink",
        "webrtcbin",
        "nicesrc",
        "vp8enc",
        "opusenc",
        "webrtcsrc",
        "opusdec",
    ] {
        assert!(
            factories.contains_key(expected),
            "{expected} not traced: {factories:?}"
        );
    }

    gst::init()?;
    for (factory, file) in FACTORIES_IN_SOURCE {
        let text = std::fs::read_to_string(k8s::repo().join(file))?;
        assert!(
            text.contains(factory),
            "{file} no longer names {factory}: update the list"
        );
        let plugin = gst::ElementFactory::find(factory)
            .and_then(|f| f.plugin())
            .with_context(|| format!("{factory} not installed"))?;
        factories.insert(factory.to_string(), plugin.plugin_name().to_string());
    }

    let mut needed: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (factory, plugin_name) in &factories {
        if BUILT_IN_PLUGINS.contains(&plugin_name.as_str()) {
            continue;
        }
        let plugin = gst::ElementFactory::find(factory)
            .and_then(|f| f.plugin())
            .with_context(|| format!("{factory} ({plugin_name}) not in the registry"))?;
        let file = plugin
            .filename()
            .with_context(|| format!("{plugin_name} has no plugin file"))?;
        let pkg = k8s::package_of(&file)?;
        needed.entry(pkg).or_default().push(factory.clone());
    }
    assert!(needed.contains_key("gstreamer1.0-nice"), "{needed:?}");
    let missing: Vec<_> = needed
        .iter()
        .filter(|(p, _)| !listed.contains(*p))
        .collect();
    assert!(
        missing.is_empty(),
        "missing from k8s/Dockerfile: {missing:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
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

#[tokio::test]
async fn a_node_started_with_the_rendered_auth_args_verifies_tokens_and_agents_find_theirs(
) -> Result<()> {
    let values = k8s::chart().join("ci/auth-values.yaml");
    let docs = yaml_docs(&k8s::template("gwc", &["-f", values.to_str().unwrap()])?)?;
    let (pod, container) = signalling_container(&docs)?;
    let args: Vec<String> = serde_json::from_value(container["args"].clone())?;
    let mount = container["volumeMounts"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == "jwt"))
        .context("no jwt mount")?["mountPath"]
        .as_str()
        .unwrap()
        .to_string();
    let volume = pod["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == "jwt"))
        .context("no jwt volume")?;
    assert_eq!(volume["secret"]["secretName"], "gwc-jwt");
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
    let redis = Redis::start().await?;
    let redis_service = find(&docs, "Service", "redis").unwrap()["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let port = free_port();
    let local = dir.to_string_lossy().to_string();
    let _node = start_rendered_node(
        &container,
        "gwc-auth-pod",
        port,
        &redis,
        &redis_service,
        &[(mount.as_str(), local.as_str())],
    )?;
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

#[test]
fn every_pod_meets_the_restricted_pod_security_standard_and_sets_resources() -> Result<()> {
    let mut renders = vec![k8s::template("gwc", &[])?];
    for values in k8s::ci_values()? {
        renders.push(k8s::template("gwc", &["-f", values.to_str().unwrap()])?);
    }
    let mut pods = 0;
    for yaml in renders {
        for d in yaml_docs(&yaml)? {
            if !["Deployment", "StatefulSet"].contains(&d["kind"].as_str().unwrap()) {
                continue;
            }
            let name = format!("{}/{}", d["kind"], d["metadata"]["name"]);
            let spec = &d["spec"]["template"]["spec"];
            pods += 1;
            assert_eq!(spec["securityContext"]["runAsNonRoot"], true, "{name}");
            assert_eq!(
                spec["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
                "{name}"
            );
            assert_eq!(spec["automountServiceAccountToken"], false, "{name}");
            assert!(
                spec["hostNetwork"].is_null(),
                "{name}: host network by default"
            );
            for c in spec["containers"].as_array().unwrap() {
                let sc = &c["securityContext"];
                assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
                assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
                assert_eq!(
                    sc["capabilities"]["drop"],
                    serde_json::json!(["ALL"]),
                    "{name}"
                );
                assert!(c["resources"]["requests"]["cpu"].is_string(), "{name}");
                assert!(c["resources"]["requests"]["memory"].is_string(), "{name}");
                assert!(c["resources"]["limits"]["memory"].is_string(), "{name}");
            }
        }
    }
    assert!(pods > 15, "{pods}");
    Ok(())
}
