//! Bad values are refused: `values.schema.json` rejects a wrong type, an external Redis
//! without a URL (or Sentinel master), an unknown key; the chart refuses a grace period that
//! does not cover preStop and the drain, a sticky cookie named like the node's, and a bundled
//! coturn without its address, its Secret, or with ports a Service cannot carry.
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

/// The bundled coturn needs the address clients reach it at and the Secret it shares with the
/// nodes; with both it renders.
#[test]
fn coturn_needs_a_public_host_and_the_nodes_turn_secret() -> Result<()> {
    let err = rejected(&["coturn.enabled=true", "signalling.turn.secretName=s"])?;
    assert!(
        err.contains("coturn.publicHost: the DNS name or IP address browsers and agents reach"),
        "{err}"
    );
    let err = rejected(&["coturn.enabled=true", "coturn.publicHost=turn.example.com"])?;
    assert!(
        err.contains("signalling.turn.secretName: the Secret with coturn's static-auth-secret (coturn.enabled is set"),
        "{err}"
    );
    k8s::template(
        "gwc",
        &[
            "--set",
            "coturn.enabled=true,coturn.publicHost=turn.example.com,signalling.turn.secretName=s",
        ],
    )?;
    Ok(())
}

/// Behind a Service, coturn needs the address it announces, one replica and a port range a
/// Service can carry (node ports for a NodePort); the schema bounds its ports and peer ranges.
#[test]
fn coturn_ports_and_service_values_are_checked() -> Result<()> {
    let base = "coturn.enabled=true,coturn.publicHost=t.example.com,signalling.turn.secretName=s";
    let service = "coturn.hostNetwork=false,coturn.externalIp=203.0.113.20";
    let narrow = "coturn.minPort=49160,coturn.maxPort=49169";
    for (extra, says) in [
        (
            format!("coturn.hostNetwork=false,{narrow}"),
            "coturn.externalIp: the address of coturn's Service",
        ),
        (service.into(), "16384 relay ports, at most 1000"),
        (
            format!("{service},{narrow},coturn.replicas=2"),
            "coturn.replicas must be 1 with coturn.hostNetwork=false",
        ),
        (
            format!("{service},{narrow},coturn.service.type=NodePort"),
            "node port range 30000-32767",
        ),
        (
            "coturn.minPort=50000,coturn.maxPort=40000".into(),
            "coturn.minPort (50000) must not exceed coturn.maxPort (40000)",
        ),
        (
            "coturn.port=80".into(),
            "coturn.port: Must be greater than or equal to 1024",
        ),
        (
            "coturn.maxPort=70000".into(),
            "coturn.maxPort: Must be less than or equal to 65535",
        ),
        (
            "coturn.deniedPeerIps={10.0.0.0/8}".into(),
            "coturn.deniedPeerIps.0: Does not match pattern",
        ),
        (
            "coturn.service.type=ClusterIP".into(),
            "coturn.service.type: coturn.service.type must be one of",
        ),
    ] {
        let err = rejected(&[base, &extra])?;
        assert!(err.contains(says), "{extra}: {err}");
    }
    k8s::template(
        "gwc",
        &[
            "--set",
            base,
            "--set",
            "coturn.hostNetwork=false,coturn.externalIp=203.0.113.20,coturn.service.type=NodePort,\
             coturn.port=30478,coturn.minPort=31000,coturn.maxPort=31099",
        ],
    )?;
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

/// A WHIP ingest member is a relay entry with `whip: true` instead of a source: it renders
/// `RELAY_WHIP` and no source; an entry with neither is refused.
#[test]
fn a_relay_entry_is_a_whip_ingest_member_with_whip_true_instead_of_a_source() -> Result<()> {
    let err = rejected(&["relays[0].name=r"])?;
    assert!(err.contains("relays.0"), "{err}");
    let rendered = k8s::template(
        "gwc",
        &["--set", "relays[0].name=ingest,relays[0].whip=true"],
    )?;
    let docs = yaml_docs(&rendered)?;
    let deployment = docs
        .iter()
        .find(|d| {
            d["kind"] == "Deployment"
                && d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.ends_with("ingest"))
        })
        .with_context(|| "no ingest Deployment rendered".to_string())?;
    let env = &deployment["spec"]["template"]["spec"]["containers"][0]["env"];
    let named = |name: &str| {
        env.as_array()
            .into_iter()
            .flatten()
            .find(|e| e["name"] == name)
    };
    assert_eq!(
        named("RELAY_WHIP").map(|e| e["value"].clone()),
        Some(Value::from("true")),
        "{env}"
    );
    assert!(named("RELAY_SOURCE_NAME").is_none(), "{env}");
    Ok(())
}
