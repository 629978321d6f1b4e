//! The report: the table printed (one row per figure, one column per target), the Markdown
//! document (`BENCHMARKS.md`: setting, scenarios, results, targets, the fanout and relay-tree
//! sections, notes), and what it says of the run (date, machine).

use serde_json::{json, Value};

use crate::{adaptive_report, fanout, relays, sfu_report};

pub fn date() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

pub fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string());
    let mem_kb: Option<u64> = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    json!({
        "cpu": model,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory_gib": mem_kb.map(|k| (k as f64 / 1048576.0 * 10.0).round() / 10.0),
        "kernel": kernel,
    })
}

/// One row per figure, one column per target.
pub fn table(report: &Value) -> String {
    let results = report["results"].as_object().cloned().unwrap_or_default();
    let targets: Vec<String> = results.keys().cloned().collect();
    // keep the order targets were run in: upstream, single, clusters
    let mut order: Vec<String> = ["upstream", "single"]
        .iter()
        .map(|s| s.to_string())
        .filter(|t| targets.contains(t))
        .collect();
    let mut clusters: Vec<String> = targets
        .iter()
        .filter(|t| t.starts_with("cluster"))
        .cloned()
        .collect();
    clusters.sort();
    order.extend(clusters);

    let mut keys: Vec<String> = Vec::new();
    for t in &order {
        for k in results[t].as_object().into_iter().flat_map(|o| o.keys()) {
            if !keys.contains(k) {
                keys.push(k.clone());
            }
        }
    }
    let rank = |k: &str| {
        ["relay", "idle", "presence", "setup", "first_frame"]
            .iter()
            .position(|p| k.starts_with(p))
            .unwrap_or(9)
    };
    // relay runs in the order given, then the other scenarios
    let size = |k: &str| {
        k.split(['_', 'x'])
            .nth(1)
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0)
    };
    keys.sort_by_key(|k| (rank(k), size(k)));
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let fmt = |v: Option<&Value>| match v {
        None | Some(Value::Null) => "–".to_string(),
        Some(Value::Number(n)) => {
            let f = n.as_f64().unwrap_or(0.0);
            if f.fract() == 0.0 {
                format!("{}", f as i64)
            } else {
                format!("{f:.2}")
            }
        }
        Some(Value::Bool(b)) => if *b { "yes" } else { "NO" }.to_string(),
        Some(v) => v.to_string(),
    };
    for key in &keys {
        let fields: &[(&str, &[&str])] = if key.starts_with("relay") {
            &[
                ("msgs/s", &["msgs_per_sec"]),
                ("RTT p50 µs", &["rtt_us", "p50"]),
                ("RTT p99 µs", &["rtt_us", "p99"]),
                ("RTT p99.9 µs", &["rtt_us", "p999"]),
                ("server CPU µs/msg", &["server_cpu_us_per_msg"]),
                ("redis CPU µs/msg", &["redis_cpu_us_per_msg"]),
                ("generator CPU µs/msg", &["generator_cpu_us_per_msg"]),
            ]
        } else if key.starts_with("idle") {
            &[
                ("RSS bytes/peer", &["rss_bytes_per_peer"]),
                ("connections/s", &["connections_per_sec"]),
                ("listConsumers sees all", &["list_consumers_all"]),
                ("server CPU µs/peer", &["server_cpu_us_per_peer"]),
            ]
        } else if key.starts_with("presence") {
            &[
                ("deliveries/s", &["deliveries_per_sec"]),
                ("all seen, s", &["seconds_all_seen"]),
                ("server CPU µs/delivery", &["server_cpu_us_per_delivery"]),
            ]
        } else if key.starts_with("setup") {
            &[
                ("p50 µs", &["setup_us", "p50"]),
                ("p99 µs", &["setup_us", "p99"]),
            ]
        } else {
            &[("median ms", &["median_ms"])]
        };
        for (label, path) in fields {
            let cells = order
                .iter()
                .map(|t| {
                    if let Some(e) = results[t].get(key).and_then(|v| v.get("error")) {
                        let _ = e;
                        return "error".to_string();
                    }
                    let mut v = results[t].get(key);
                    for p in *path {
                        v = v.and_then(|v| v.get(*p));
                    }
                    fmt(v)
                })
                .collect();
            rows.push((format!("{key} {label}"), cells));
        }
    }
    let mut s = format!(
        "| figure | {} |\n|---|{}\n",
        order.join(" | "),
        "---:|".repeat(order.len())
    );
    for (label, cells) in rows {
        s += &format!("| {label} | {} |\n", cells.join(" | "));
    }
    s
}

pub fn markdown(report: &Value, table: &str, notes: &str) -> String {
    let m = &report["machine"];
    let mut s = String::new();
    s += "# Benchmarks\n\n";
    s += "Our signalling node and clusters side by side with the stock `gst-webrtc-signalling-server`, \
          measured the same way in one run by `tests/loadgen` (issue 5). Generated by the run itself; \
          the analysis at the end is written by hand.\n\n";
    s += &format!(
        "* **Date**: {}\n* **Machine**: {} ({} cores), {} GiB RAM, Linux {}; client, servers and Redis share the cores\n* **Command**: `{}`\n* **Upstream**: {}\n* **Our nodes ran with**: `{}` (the per-peer rate limit and queue are raised so the benchmark measures the relay, not the guards), log level warn for every server\n* **Client**: loopback only, sources spread over {}, fd limit {} per process (idle runs asked: {}, run: {})\n* **Rounds**: relay, presence and setup ran {} times per target, the targets taking turns; each figure is the median of its runs (all runs are in the JSON)\n\n",
        report["date"].as_str().unwrap_or(""),
        m["cpu"].as_str().unwrap_or("?"),
        m["cores"],
        m["memory_gib"],
        m["kernel"].as_str().unwrap_or("?"),
        report["command"].as_str().unwrap_or(""),
        report["upstream"].as_str().unwrap_or(""),
        report["settings"]["our_node_flags"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>().join(" "))
            .unwrap_or_default(),
        report["settings"]["client_source_addresses"].as_str().unwrap_or(""),
        report["settings"]["fd_limit"],
        report["settings"]["idle_requested"],
        report["settings"]["idle_run"],
        report["settings"]["rounds"],
    );
    s += "## Scenarios\n\n\
* **relay_PxR**: P producer/consumer pairs, each in a session (in a cluster the consumer sits on the next node, so every session crosses nodes), ping-pong of a ~150-byte ICE `peer` message for R rounds, all pairs from a common start. msgs/s = 2·P·R ÷ wall time; RTT per round; CPU from `/proc/PID/stat` (user + system) over the relay phase, summed over nodes; Redis and the generator reported apart.\n\
* **idle_N**: N peers connect and register as consumers (256 connects in flight): connections/s, server RSS growth ÷ N (`/proc/PID/status` VmRSS, summed over nodes), and whether `listConsumers` on every node lists all N.\n\
* **presence_LxK**: L listeners registered (spread over the nodes), then K producers register at once: L·K `peerStatusChanged` deliveries ÷ time until every listener saw every producer.\n\
* **setup_PxS**: P pairs, each starting and ending S sessions in turn: startSession → `sessionStarted` at the consumer and `startSession` at the producer.\n\
* **first_frame**: producer-agent (test pattern) on the first node, consumer-agent `--frames 1` on the last node; its reported `first_frame_ms`, median of the runs.\n\n";
    s += "## Results\n\n";
    s += table;
    s += "\n## Targets (ratios in this run)\n\n| what | value | target | met |\n|---|---:|---|---|\n";
    for r in report["ratios"].as_array().into_iter().flatten() {
        let value = r["value"]
            .as_f64()
            .map_or("–".into(), |v| format!("{v:.3}"));
        let met = match r["met"].as_bool() {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "–",
        };
        s += &format!(
            "| {} | {value} | {} | {met} |\n",
            r["what"].as_str().unwrap_or(""),
            r["target"].as_str().unwrap_or("")
        );
    }
    let errors: Vec<String> = report["results"]
        .as_object()
        .into_iter()
        .flatten()
        .flat_map(|(t, v)| {
            v.as_object()
                .into_iter()
                .flatten()
                .filter_map(move |(k, v)| {
                    v.get("error")
                        .map(|e| format!("* {t} {k}: {}", e.as_str().unwrap_or("")))
                })
        })
        .collect();
    if !errors.is_empty() {
        s += "\n## Failed scenarios\n\n";
        s += &errors.join("\n");
        s += "\n";
    }
    if report["fanout"].is_object() {
        s += &fanout::markdown(report);
    }
    if report["relay_tree"].is_object() {
        s += &relays::markdown(report);
    }
    if report["sfu"].is_object() {
        s += &sfu_report::markdown(report);
    }
    if report["adaptive"].is_object() {
        s += &adaptive_report::markdown(report);
    }
    if !notes.is_empty() {
        s += "\n";
        s += notes;
    }
    s
}
