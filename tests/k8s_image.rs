//! The image (k8s/Dockerfile): a minimal non-root runtime stage with tini, whose package list
//! covers the shared libraries the binaries link and the GStreamer plugins the agents load in
//! a real session.
//!
//! The tools (helm, kubectl, readme-generator, kubernetes-validate) are installed by
//! `./dev setup` under /var/cache/gst-webrtc-cluster/tools; nothing is downloaded here. The
//! other k8s_*.rs files check the rest of k8s/; their shared helpers are in `src/k8s.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use cluster_tests::k8s;
use cluster_tests::{bin, free_port, Proc};
use gst::prelude::*;

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

/// Plugins compiled into the agents (gst-plugins-rs crates registered statically), the core's
/// static elements, and our own elements the agents register in-process (`gwcwebrtcsink`,
/// `gwcwebrtcsrc`: the tracer names no plugin for them): no plugin file, nothing to install.
const BUILT_IN_PLUGINS: [&str; 4] = ["staticelements", "rswebrtc", "rsrtp", ""];

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
