//! The Helm chart renders right: it lints, every rendered document is valid for the schemas of
//! several Kubernetes versions, the CRD-backed objects render only when their API is served,
//! NOTES.txt tells how to connect, the ingress carries the WebSocket timeouts and sticky
//! sessions, every pod meets the restricted Pod Security Standard, and the checked-in plain
//! manifests and values table are what the chart generates.
//!
//! The tools (helm, kubectl, readme-generator, kubernetes-validate) are installed by
//! `./dev setup` under /var/cache/gst-webrtc-cluster/tools; nothing is downloaded here. The
//! other k8s_*.rs files check the rest of k8s/; their shared helpers are in `src/k8s.rs`.

use std::collections::BTreeSet;
use std::process::Command;

use anyhow::{Context, Result};
use cluster_tests::k8s::{self, find, yaml_docs, CRD_APIS};
use serde_json::Value;

/// Kubernetes versions every rendered document is validated against: the chart's minimum
/// (`kubeVersion` in Chart.yaml), an older supported one, the kubectl shipped with the tools,
/// and the newest the schemas know.
const KUBE_VERSIONS: [&str; 4] = ["1.25.0", "1.29.0", "1.32.0", "1.37.0"];

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
     # Do not edit: change the chart and run `./dev k8s-refresh` (tests/k8s_chart.rs checks it).\n"
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

/// `relays[].engine: forward` renders the engine's env, one UDP container port and one
/// Service port per thread from `udpPort`, the Service's type, and `hostNetwork` per relay.
#[test]
fn a_forward_relay_renders_its_engine_its_udp_ports_their_service_and_host_network() -> Result<()> {
    let sets = "relays[0].name=fw,relays[0].source=cam,relays[0].engine=forward,\
                relays[0].udpPort=30100,relays[0].threads=2,relays[0].serviceType=NodePort,\
                relays[0].publicIp=203.0.113.7,\
                relays[1].name=host,relays[1].source=cam,relays[1].engine=forward,\
                relays[1].hostNetwork=true,relays[2].name=pipe,relays[2].source=cam";
    let docs = yaml_docs(&k8s::template("gwc", &["--set", sets])?)?;
    let deployment = |id: &str| {
        docs.iter()
            .find(|d| {
                d["kind"] == "Deployment"
                    && d["metadata"]["labels"]["gst-webrtc-cluster/agent"] == id
            })
            .with_context(|| format!("no Deployment {id}"))
    };
    let env = |id: &str| -> Result<Vec<(String, String)>> {
        let c = &deployment(id)?["spec"]["template"]["spec"]["containers"][0];
        Ok(c["env"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| {
                Some((
                    e["name"].as_str()?.to_string(),
                    e["value"].as_str()?.to_string(),
                ))
            })
            .collect())
    };
    let fw = env("relay-fw")?;
    for (k, v) in [
        ("RELAY_ENGINE", "forward"),
        ("RELAY_UDP_PORT", "30100"),
        ("RELAY_THREADS", "2"),
        ("RELAY_PUBLIC_IP", "203.0.113.7"),
    ] {
        assert!(
            fw.contains(&(k.into(), v.into())),
            "{k}={v} missing: {fw:?}"
        );
    }
    let ports = &deployment("relay-fw")?["spec"]["template"]["spec"]["containers"][0]["ports"];
    let udp: Vec<(u64, &str)> = ports
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["protocol"] == "UDP")
        .map(|p| {
            (
                p["containerPort"].as_u64().unwrap_or(0),
                p["name"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(udp, [(30100, "media-0"), (30101, "media-1")], "{ports}");
    let service = docs
        .iter()
        .find(|d| {
            d["kind"] == "Service"
                && d["metadata"]["name"] == "gwc-gst-webrtc-cluster-relay-fw-media"
        })
        .context("no media Service for the forward relay")?;
    assert_eq!(service["spec"]["type"], "NodePort", "{service}");
    assert_eq!(
        service["spec"]["externalTrafficPolicy"], "Local",
        "{service}"
    );
    assert_eq!(
        service["spec"]["selector"]["gst-webrtc-cluster/agent"], "relay-fw",
        "{service}"
    );
    let served: Vec<(u64, u64, &str)> = service["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["port"].as_u64().unwrap_or(0),
                p["nodePort"].as_u64().unwrap_or(0),
                p["protocol"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        served,
        [(30100, 30100, "UDP"), (30101, 30101, "UDP")],
        "{service}"
    );
    // hostNetwork per relay; the pipeline relay keeps the defaults (no engine flags, no Service)
    assert_eq!(
        deployment("relay-host")?["spec"]["template"]["spec"]["hostNetwork"],
        true
    );
    assert!(deployment("relay-fw")?["spec"]["template"]["spec"]["hostNetwork"].is_null());
    let pipe = env("relay-pipe")?;
    assert!(
        pipe.iter().all(
            |(k, _)| !["RELAY_ENGINE", "RELAY_UDP_PORT", "RELAY_THREADS"].contains(&k.as_str())
        ),
        "{pipe:?}"
    );
    let media_services = docs
        .iter()
        .filter(|d| {
            d["kind"] == "Service"
                && d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.ends_with("-media"))
        })
        .count();
    assert_eq!(
        media_services, 1,
        "only a relay with udpPort has a media Service"
    );
    Ok(())
}
