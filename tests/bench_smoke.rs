//! The benchmark harness (`tests/loadgen`, run in full by `./dev bench`) in a tiny version:
//! upstream (the stock server's library), one node and a 2-node cluster, a handful of peers
//! per scenario, two rounds. It checks the harness still produces well-formed figures; it
//! asserts nothing about speed.

use std::process::Command;

use cluster_tests::bin;
use serde_json::Value;

#[test]
fn loadgen_smoke_produces_every_figure() {
    let dir = std::env::temp_dir().join(format!("loadgen-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (json, md) = (dir.join("bench.json"), dir.join("BENCHMARKS.md"));
    let bin_dir = bin("signalling-cluster").parent().unwrap().to_path_buf();
    let upstream = format!("{} {{port}}", bin("upstream-signalling-server").display());
    let out = Command::new(bin("loadgen"))
        .args([
            "--smoke",
            "--rounds",
            "2",
            "--targets",
            "upstream,single,cluster2",
        ])
        .arg("--bin-dir")
        .arg(&bin_dir)
        .args(["--upstream", &upstream, "--scenario-timeout", "60"])
        .arg("--json")
        .arg(&json)
        .arg("--md")
        .arg(&md)
        .output()
        .expect("loadgen runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "loadgen failed: {stderr}");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("| figure | upstream | single | cluster2 |"),
        "{table}"
    );

    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    for target in ["upstream", "single", "cluster2"] {
        let r = &report["results"][target];
        for key in ["relay_4x10", "idle_40", "presence_8x4", "setup_4x3"] {
            assert!(r[key].is_object(), "{target} {key} missing: {r}\n{stderr}");
            assert!(r[key].get("error").is_none(), "{target} {key}: {}", r[key]);
        }
        let relay = &r["relay_4x10"];
        // What the nodes counted relaying (the stock server counts nothing): every message
        // loadgen sent in the measured rounds, once.
        match target {
            "upstream" => assert!(relay["server_relayed"].is_null(), "{relay}"),
            _ => assert_eq!(relay["server_relayed"], relay["messages"], "{relay}"),
        }
        assert!(relay["messages"].as_u64() > Some(0), "{relay}");
        // two rounds: the figures are medians, the runs are kept
        assert_eq!(relay["runs"].as_array().map(Vec::len), Some(2), "{relay}");
        assert!(relay["msgs_per_sec"].as_f64().unwrap() > 0.0, "{relay}");
        assert!(relay["rtt_us"]["p50"].as_u64().unwrap() > 0, "{relay}");
        assert!(relay["server_cpu_us_per_msg"].is_number(), "{relay}");
        assert_eq!(
            relay["redis_cpu_us"].is_number(),
            target == "cluster2",
            "{relay}"
        );
        let idle = &r["idle_40"];
        assert_eq!(idle["list_consumers_all"], true, "{target}: {idle}");
        assert!(idle["rss_bytes_per_peer"].is_number(), "{idle}");
        assert!(
            idle["connections_per_sec"].as_f64().unwrap() > 0.0,
            "{idle}"
        );
        let presence = &r["presence_8x4"];
        // (each listener read every producer's registration, or the scenario failed above)
        assert!(
            presence["deliveries_per_sec"].as_f64().unwrap() > 0.0,
            "{presence}"
        );
        let setup = &r["setup_4x3"];
        assert_eq!(setup["samples"], 12);
        assert!(setup["setup_us"]["p99"].as_u64().unwrap() > 0, "{setup}");
    }
    let ratios = report["ratios"].as_array().unwrap();
    assert!(!ratios.is_empty());
    for r in ratios {
        // tiny counts: a CPU figure may round to zero ticks, so a ratio may be absent
        assert!(r["what"].is_string() && r["target"].is_string(), "{r}");
        assert_eq!(r["value"].is_number(), r["met"].is_boolean(), "{r}");
    }
    let md = std::fs::read_to_string(&md).unwrap();
    assert!(
        md.contains("# Benchmarks") && md.contains("## Targets"),
        "{md}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
