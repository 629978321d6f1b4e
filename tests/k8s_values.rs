//! Bad values are refused: `values.schema.json` rejects a wrong type, an external Redis
//! without a URL (or Sentinel master), an unknown key; the chart refuses a grace period that
//! does not cover preStop and the drain, and a sticky cookie named like the node's.
//!
//! The tools (helm, kubectl, readme-generator, kubernetes-validate) are installed by
//! `./dev setup` under /var/cache/gst-webrtc-cluster/tools; nothing is downloaded here. The
//! other k8s_*.rs files check the rest of k8s/; their shared helpers are in `src/k8s.rs`.

use anyhow::{Context, Result};
use cluster_tests::k8s::{self, find, yaml_docs};
use serde_json::Value;

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
fn turn_urls_need_a_secret_and_the_right_scheme() -> Result<()> {
    let err = rejected(&["signalling.turn.urls={turn:t.example.com:3478}"])?;
    assert!(err.contains("signalling.turn.secretName"), "{err}");
    let err = rejected(&[
        "signalling.turn.urls={stun:t.example.com:3478}",
        "signalling.turn.secretName=s",
    ])?;
    assert!(err.contains("signalling.turn.urls.0"), "{err}");
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

/// The forward engine's values (`udpPort`, `threads`, `publicIp`, `serviceType`) mean nothing
/// to a pipeline relay, a media Service needs its port, a NodePort needs node ports.
#[test]
fn forward_only_relay_values_need_the_forward_engine() -> Result<()> {
    let relay = "relays[0].name=r,relays[0].source=cam";
    for (extra, says) in [
        (
            "relays[0].udpPort=30100",
            "Must not validate the schema (not)",
        ),
        (
            "relays[0].engine=pipeline,relays[0].publicIp=203.0.113.7",
            "Must not validate the schema (not)",
        ),
        (
            "relays[0].engine=forward,relays[0].serviceType=LoadBalancer",
            "Has a dependency on udpPort",
        ),
        ("relays[0].engine=sideways", "relays.0.engine"),
        (
            "relays[0].engine=forward,relays[0].udpPort=5000,relays[0].serviceType=NodePort",
            "node port range 30000-32767",
        ),
    ] {
        let err = rejected(&[&format!("{relay},{extra}")])?;
        assert!(err.contains(says), "{extra}: {err}");
    }
    k8s::template(
        "gwc",
        &["--set", &format!("{relay},relays[0].engine=forward,relays[0].udpPort=30100,relays[0].serviceType=NodePort")],
    )?;
    Ok(())
}
