//! The Helm chart renders right: it lints, every rendered document is valid for the schemas of
//! several Kubernetes versions, the CRD-backed objects render only when their API is served,
//! NOTES.txt tells how to connect, the ingress carries the WebSocket timeouts and sticky
//! sessions, every pod meets the restricted Pod Security Standard (but the bundled coturn's
//! host network), the bundled coturn shares the nodes' TURN Secret and is rendered only when
//! enabled, and the checked-in plain manifests and values table are what the chart generates.
//!
//! The tools (helm, kubectl, readme-generator, kubernetes-validate) are installed by
//! `./dev setup` under /var/cache/gst-webrtc-cluster/tools; nothing is downloaded here. The
//! other k8s_*.rs files check the rest of k8s/; their shared helpers are in `src/k8s.rs`.

use std::collections::BTreeSet;
use std::process::Command;

use anyhow::{Context, Result};
use cluster_tests::k8s::{self, arg, find, signalling_container, yaml_docs, CRD_APIS};
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
    let mut components = BTreeSet::new();
    for values in &ci {
        let mut args = vec!["-f", values.to_str().unwrap()];
        args.extend(CRD_APIS);
        let yaml = k8s::template("gwc", &args)?;
        for d in yaml_docs(&yaml)? {
            kinds.insert(d["kind"].as_str().unwrap_or_default().to_string());
            let component = &d["metadata"]["labels"]["app.kubernetes.io/component"];
            components.insert(format!("{}/{}", d["kind"], component));
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
    // the bundled coturn (off in the defaults), on the host network and behind a Service
    for object in [r#""Deployment"/"coturn""#, r#""Service"/"coturn""#] {
        assert!(components.contains(object), "{object}: {components:?}");
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
    let coturn = notes(&[
        "coturn.enabled=true,coturn.publicHost=turn.example.com,signalling.turn.secretName=t",
    ])?;
    assert!(
        coturn.contains("Bundled coturn (host network): the nodes hand out turn:turn.example.com:3478?transport=udp turn:turn.example.com:3478?transport=tcp"),
        "{coturn}"
    );
    assert!(
        coturn.contains("rollout restart deployment/sig-gst-webrtc-cluster-coturn"),
        "{coturn}"
    );
    assert!(!plain.contains("coturn"), "{plain}");
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
            // coturn's default is the host network (baseline, not restricted: README "Media
            // networking"); every other pod stays off it unless asked
            let coturn = d["metadata"]["labels"]["app.kubernetes.io/component"] == "coturn";
            assert!(
                spec["hostNetwork"].is_null() || coturn,
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
                // the one capability the restricted standard lets a pod add back
                let add = &sc["capabilities"]["add"];
                assert!(
                    add.is_null() || *add == serde_json::json!(["NET_BIND_SERVICE"]),
                    "{name}: {add}"
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

/// The documents of a render with `ci/<file>` and `sets`.
fn ci_docs(file: &str, sets: &[&str]) -> Result<Vec<Value>> {
    let values = k8s::chart().join("ci").join(file);
    let mut args = vec!["-f", values.to_str().unwrap()];
    for s in sets {
        args.extend(["--set", s]);
    }
    yaml_docs(&k8s::template("gwc", &args)?)
}

/// The nodes' `--turn-url`s.
fn node_turn_urls(docs: &[Value]) -> Result<Vec<String>> {
    let (_, node) = signalling_container(docs)?;
    let args: Vec<String> = serde_json::from_value(node["args"].clone())?;
    Ok(args
        .iter()
        .filter_map(|a| a.strip_prefix("--turn-url="))
        .map(String::from)
        .collect())
}

/// `coturn.enabled`: turnserver with coturn's REST-API auth, its secret from the Secret and key
/// the nodes mount and read, the port range and the peer filters of the values; the nodes hand
/// out its udp and tcp URLs on publicHost, unless `signalling.turn.urls` names others. On the
/// host network it has no Service; behind one, the Service carries 3478 udp+tcp and every relay
/// port, and coturn announces the load balancer's address.
#[test]
fn bundled_coturn_shares_the_nodes_turn_secret_and_the_nodes_hand_out_its_address() -> Result<()> {
    let check = |docs: &[Value], key: &str, flags: &[&str]| -> Result<Value> {
        let coturn = find(docs, "Deployment", "coturn").context("no coturn Deployment")?;
        let pod = coturn["spec"]["template"]["spec"].clone();
        let c = &pod["containers"][0];
        assert_eq!(c["command"], serde_json::json!(["turnserver"]));
        assert_eq!(coturn["spec"]["strategy"]["type"], "Recreate");
        let args: Vec<String> = serde_json::from_value(c["args"].clone())?;
        for flag in [
            "--use-auth-secret",
            "--static-auth-secret=$(TURN_SECRET)",
            "--listening-port=3478",
            "--no-tls",
            "--no-dtls",
            "--no-cli",
            "--fingerprint",
            "--no-multicast-peers",
            "--log-file=stdout",
        ]
        .iter()
        .chain(flags)
        {
            assert!(args.iter().any(|a| a == flag), "{flag} missing: {args:?}");
        }
        // TURN_SECRET: the Secret the nodes mount, the key their --turn-secret-file reads
        let env = c["env"]
            .as_array()
            .and_then(|e| e.iter().find(|e| e["name"] == "TURN_SECRET"))
            .context("no TURN_SECRET env")?;
        let from = &env["valueFrom"]["secretKeyRef"];
        let (npod, node) = signalling_container(docs)?;
        let volume = npod["volumes"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["name"] == "turn"))
            .context("the nodes mount no TURN Secret")?;
        assert_eq!(from["name"], volume["secret"]["secretName"], "{env}");
        assert_eq!(from["name"], "gwc-turn", "{env}");
        assert_eq!(from["key"], key, "{env}");
        let mount = node["volumeMounts"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["name"] == "turn"))
            .context("no turn mount")?["mountPath"]
            .as_str()
            .context("a mountPath")?
            .to_string();
        let nargs: Vec<String> = serde_json::from_value(node["args"].clone())?;
        assert_eq!(
            arg(&nargs, "--turn-secret-file"),
            Some(format!("{mount}/{key}").as_str())
        );
        // probed on its TCP listener
        assert_eq!(c["livenessProbe"]["tcpSocket"]["port"], "turn-tcp");
        let port = |name, protocol| serde_json::json!({"name": name, "containerPort": 3478, "protocol": protocol});
        assert_eq!(
            c["ports"],
            serde_json::json!([port("turn-udp", "UDP"), port("turn-tcp", "TCP")])
        );
        Ok(pod)
    };

    let docs = ci_docs("coturn-values.yaml", &[])?;
    let pod = check(
        &docs,
        "turn-secret",
        &[
            "--realm=example.com",
            "--min-port=49152",
            "--max-port=49999",
            "--denied-peer-ip=172.16.0.0-172.31.255.255",
            "--allowed-peer-ip=10.244.0.0-10.244.255.255",
        ],
    )?;
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["nodeSelector"]["gst-webrtc-cluster/turn"], "true");
    assert!(find(&docs, "Service", "coturn").is_none());
    assert_eq!(
        node_turn_urls(&docs)?,
        [
            "turn:turn.example.com:3478?transport=udp",
            "turn:turn.example.com:3478?transport=tcp"
        ]
    );

    let docs = ci_docs("coturn-service-values.yaml", &[])?;
    let pod = check(
        &docs,
        "static-auth-secret",
        &[
            "--realm=203.0.113.20",
            "--min-port=49160",
            "--max-port=49199",
            "--external-ip=203.0.113.20",
        ],
    )?;
    assert!(pod["hostNetwork"].is_null());
    let service = find(&docs, "Service", "coturn").context("no coturn Service")?;
    assert_eq!(service["spec"]["type"], "LoadBalancer");
    assert_eq!(service["spec"]["externalTrafficPolicy"], "Local");
    let ports: Vec<String> = service["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| format!("{}/{}", p["port"], p["protocol"].as_str().unwrap_or("")))
        .collect();
    let mut expected = vec!["3478/UDP".to_string(), "3478/TCP".into()];
    expected.extend((49160..=49199).map(|p| format!("{p}/UDP")));
    assert_eq!(ports, expected, "{service}");
    assert_eq!(
        node_turn_urls(&docs)?,
        [
            "turn:203.0.113.20:3478?transport=udp",
            "turn:203.0.113.20:3478?transport=tcp"
        ]
    );

    // URLs given win over the derived ones (e.g. a TLS terminator's turns: in front of coturn)
    let docs = ci_docs(
        "coturn-values.yaml",
        &["signalling.turn.urls={turns:turn.example.com:443?transport=tcp}"],
    )?;
    assert!(find(&docs, "Deployment", "coturn").is_some());
    assert_eq!(
        node_turn_urls(&docs)?,
        ["turns:turn.example.com:443?transport=tcp"]
    );
    Ok(())
}

/// Without `coturn.enabled` nothing of coturn is rendered (even with its other values set), and
/// the nodes get exactly `signalling.turn.urls`.
#[test]
fn coturn_off_renders_no_coturn_objects() -> Result<()> {
    for (file, sets, urls) in [
        ("turn-values.yaml", vec![], 2),
        (
            "auth-values.yaml",
            vec!["coturn.publicHost=turn.example.com,signalling.turn.secretName=t"],
            0,
        ),
    ] {
        let docs = ci_docs(file, &sets)?;
        let coturn: Vec<&Value> = docs
            .iter()
            .filter(|d| d["metadata"]["labels"]["app.kubernetes.io/component"] == "coturn")
            .collect();
        assert!(coturn.is_empty(), "{file}: {coturn:?}");
        assert!(
            !serde_json::to_string(&docs)?.contains("turnserver"),
            "{file}"
        );
        let turn_urls = node_turn_urls(&docs)?;
        assert_eq!(turn_urls.len(), urls, "{file}: {turn_urls:?}");
        assert!(turn_urls
            .iter()
            .all(|u| u.starts_with("turn:turn.example.com:3478?")));
    }
    let defaults = k8s::template("gwc", &[])?;
    assert!(!defaults.contains("coturn"), "coturn in the default render");
    Ok(())
}
