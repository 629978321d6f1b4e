//! Monitoring: the ServiceMonitors, the HPA's metric, the Grafana dashboard and the alerts
//! render, and every metric the dashboard and the alerts query is exported by a real scrape of
//! a node, a producer, a relay and a consumer.
//!
//! The tools (helm, kubectl, readme-generator, kubernetes-validate) are installed by
//! `./dev setup` under /var/cache/gst-webrtc-cluster/tools; nothing is downloaded here. The
//! other k8s_*.rs files check the rest of k8s/; their shared helpers are in `src/k8s.rs`.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result};
use cluster_tests::k8s::{self, arg, signalling_container, yaml_docs, CRD_APIS};
use cluster_tests::{free_port, http_get};
use serde_json::Value;

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
