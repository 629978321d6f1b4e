//! The targets as ratios of one run's figures (single ÷ upstream, cluster ÷ single, ...),
//! each with its bound and whether it was met.

use serde_json::{json, Map, Value};

use crate::plan::Plan;

fn get<'a>(
    results: &'a Map<String, Value>,
    target: &str,
    key: &str,
    path: &[&str],
) -> Option<&'a Value> {
    let mut v = results.get(target)?.get(key)?;
    for p in path {
        v = v.get(*p)?;
    }
    (!v.is_null()).then_some(v)
}

fn num(results: &Map<String, Value>, target: &str, key: &str, path: &[&str]) -> Option<f64> {
    get(results, target, key, path)?.as_f64()
}

/// The targets as ratios of this run's figures.
/// A target: at most or at least a limit (with a unit for the report).
enum Bound {
    AtMost(f64, &'static str),
    AtLeast(f64),
}

pub fn ratios(results: &Map<String, Value>, plan: &Plan) -> Value {
    let mut out = Vec::new();
    // Each target is written once: its text and its check come from the same bound.
    let mut add = |what: String, value: Option<f64>, bound: Bound| {
        let (target, met) = match bound {
            Bound::AtMost(limit, unit) => (format!("≤ {limit:?}{unit}"), value.map(|v| v <= limit)),
            Bound::AtLeast(limit) => (format!("≥ {limit:?}"), value.map(|v| v >= limit)),
        };
        out.push(json!({"what": what, "value": value.map(|v| (v * 1000.0).round() / 1000.0), "target": target, "met": met}));
    };
    let ratio =
        |a: Option<f64>, b: Option<f64>| a.zip(b).filter(|(_, b)| *b != 0.0).map(|(a, b)| a / b);
    let largest_relay = plan.relay.iter().max_by_key(|(p, _)| *p).copied();
    // One pair alone measures the added latency of the Redis hop without queueing; the
    // throughput and CPU targets are about loaded runs (its CPU is a few 10 ms ticks).
    let unloaded = plan.relay.iter().any(|(p, _)| *p == 1);
    for &(p, r) in &plan.relay {
        let key = format!("relay_{p}x{r}");
        let p50 = |t: &str| num(results, t, &key, &["rtt_us", "p50"]);
        if p == 1 {
            for c in results.keys().filter(|k| k.starts_with("cluster")) {
                let v = p50(c).zip(p50("single")).map(|(a, b)| (a - b) / 1000.0);
                add(
                    format!("{key}: {c} RTT p50 − single (ms)"),
                    v,
                    Bound::AtMost(1.0, " ms"),
                );
            }
            continue;
        }
        let cpu = |t: &str| num(results, t, &key, &["server_cpu_us_per_msg"]);
        let tput = |t: &str| num(results, t, &key, &["msgs_per_sec"]);
        let v = ratio(cpu("single"), cpu("upstream"));
        add(
            format!("{key}: single CPU/msg ÷ upstream"),
            v,
            Bound::AtMost(0.5, ""),
        );
        let v = ratio(tput("single"), tput("upstream"));
        add(
            format!("{key}: single msgs/s ÷ upstream"),
            v,
            Bound::AtLeast(1.3),
        );
        if Some((p, r)) == largest_relay {
            let p99 = |t: &str| num(results, t, &key, &["rtt_us", "p99"]);
            let v = ratio(p99("single"), p99("upstream"));
            add(
                format!("{key}: single RTT p99 ÷ upstream"),
                v,
                Bound::AtMost(1.0, ""),
            );
        }
        for c in results.keys().filter(|k| k.starts_with("cluster")) {
            let v = ratio(tput(c), tput("upstream"));
            add(
                format!("{key}: {c} msgs/s ÷ upstream"),
                v,
                Bound::AtLeast(1.0),
            );
            let v = ratio(cpu(c), cpu("single"));
            add(
                format!("{key}: {c} node CPU/msg (sum) ÷ single"),
                v,
                Bound::AtMost(2.0, ""),
            );
            if !unloaded {
                let v = p50(c).zip(p50("single")).map(|(a, b)| (a - b) / 1000.0);
                add(
                    format!("{key}: {c} RTT p50 − single (ms)"),
                    v,
                    Bound::AtMost(1.0, " ms"),
                );
            }
        }
    }
    for &n in &plan.idle {
        let key = format!("idle_{n}");
        let mem = |t: &str| num(results, t, &key, &["rss_bytes_per_peer"]);
        let v = ratio(mem("single"), mem("upstream"));
        add(
            format!("{key}: single RSS/peer ÷ upstream"),
            v,
            Bound::AtMost(0.125, ""),
        );
    }
    for &(l, k) in &plan.presence {
        let key = format!("presence_{l}x{k}");
        let d = |t: &str| num(results, t, &key, &["deliveries_per_sec"]);
        let v = ratio(d("single"), d("upstream"));
        add(
            format!("{key}: single deliveries/s ÷ upstream"),
            v,
            Bound::AtLeast(2.0),
        );
    }
    Value::Array(out)
}
