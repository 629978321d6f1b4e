//! Helpers for `tests/k8s_*.rs`: the chart, the tools `./dev setup` installs under
//! `/var/cache/gst-webrtc-cluster/tools` (helm, kubectl, readme-generator, a venv with
//! kubernetes-validate), rendering, and YAML → JSON through the venv's PyYAML; what more than
//! one of those files reads of a render (the signalling container, its flags).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{bail, Context};
use serde_json::Value;

/// Announced to `helm template` so the CRD-backed objects (ServiceMonitor, HTTPRoute) render.
pub const CRD_APIS: [&str; 6] = [
    "--api-versions",
    "monitoring.coreos.com/v1/ServiceMonitor",
    "--api-versions",
    "monitoring.coreos.com/v1/PrometheusRule",
    "--api-versions",
    "gateway.networking.k8s.io/v1/HTTPRoute",
];

/// The repository root (the tests crate lives in `tests/`).
pub fn repo() -> PathBuf {
    Path::new(&crate::manifest_dir())
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

pub fn chart() -> PathBuf {
    repo().join("k8s/helm/gst-webrtc-cluster")
}

/// Where `./dev setup` installs the tools (`K8S_TOOLS` overrides it).
pub fn tools() -> PathBuf {
    std::env::var_os("K8S_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/gst-webrtc-cluster/tools"))
}

/// One of the installed tools; panics with the fix when `./dev setup` has not run.
pub fn tool(rel: &str) -> PathBuf {
    let path = tools().join(rel);
    assert!(
        path.exists(),
        "{} missing: run `./dev setup` (installs the k8s tools)",
        path.display()
    );
    path
}

pub fn helm() -> Command {
    let mut cmd = Command::new(tool("bin/helm"));
    // no user config, cache or repositories: the chart has no dependencies
    let home = std::env::temp_dir().join(format!("gwc-helm-{}", std::process::id()));
    cmd.env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_DATA_HOME", home.join("data"));
    cmd
}

pub fn python() -> Command {
    let mut cmd = Command::new(tool("venv/bin/python"));
    cmd.arg(repo().join("k8s/tools/k8s-check.py"));
    cmd
}

/// Runs `cmd`; the output, whatever the exit status.
pub fn run(mut cmd: Command) -> anyhow::Result<Output> {
    cmd.output().with_context(|| format!("cannot run {cmd:?}"))
}

/// Runs `cmd`, failing with its stderr unless it succeeds; returns stdout.
pub fn run_ok(cmd: Command) -> anyhow::Result<String> {
    let desc = format!("{cmd:?}");
    let out = run(cmd)?;
    if !out.status.success() {
        bail!(
            "{desc} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// `helm template RELEASE chart ARGS…`: the rendered YAML.
pub fn template(release: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut cmd = helm();
    cmd.arg("template").arg(release).arg(chart()).args(args);
    run_ok(cmd)
}

/// The `ci/*-values.yaml` files of the chart, sorted.
pub fn ci_values() -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(chart().join("ci"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|p| p.to_string_lossy().ends_with("-values.yaml"));
    files.sort();
    Ok(files)
}

/// The documents of a multi-document YAML text, as JSON values.
pub fn yaml_docs(yaml: &str) -> anyhow::Result<Vec<Value>> {
    let file = tempfile("docs.yaml", yaml)?;
    let mut cmd = python();
    cmd.arg("json").arg(&file);
    let out = run_ok(cmd)?;
    let _ = std::fs::remove_file(file);
    match serde_json::from_str(&out)? {
        Value::Array(docs) => Ok(docs),
        other => bail!("not a list of documents: {other}"),
    }
}

/// The document of `kind` whose `app.kubernetes.io/component` label is `component`.
pub fn find<'a>(docs: &'a [Value], kind: &str, component: &str) -> Option<&'a Value> {
    docs.iter().find(|d| {
        d["kind"] == kind && d["metadata"]["labels"]["app.kubernetes.io/component"] == component
    })
}

/// Writes `text` to a unique temporary file named after `name`.
pub fn tempfile(name: &str, text: &str) -> anyhow::Result<PathBuf> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!("gwc-k8s-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{}-{name}", N.fetch_add(1, Ordering::Relaxed)));
    std::fs::write(&path, text)?;
    Ok(path)
}

/// The Debian package owning `path` (`dpkg -S`), trying the `/usr`-merged twin of the path and
/// the resolved symlink too, since dpkg records files under the path its package shipped.
pub fn package_of(path: &Path) -> anyhow::Result<String> {
    let s = path.to_string_lossy().to_string();
    let mut candidates = vec![s.clone()];
    if let Some(rest) = s.strip_prefix("/usr") {
        candidates.push(rest.to_string());
    } else {
        candidates.push(format!("/usr{s}"));
    }
    if let Ok(real) = std::fs::canonicalize(path) {
        let real = real.to_string_lossy().to_string();
        if let Some(rest) = real.strip_prefix("/usr") {
            candidates.push(rest.to_string());
        }
        candidates.push(real);
    }
    for c in &candidates {
        let out = Command::new("dpkg").arg("-S").arg(c).output()?;
        if out.status.success() {
            let line = String::from_utf8_lossy(&out.stdout);
            // "libc6:amd64: /lib/x86_64-linux-gnu/libc.so.6" (skip "diversion by" lines)
            if let Some(pkg) = line
                .lines()
                .filter(|l| !l.starts_with("diversion"))
                .find_map(|l| l.split(": ").next())
            {
                return Ok(pkg.split(':').next().unwrap_or(pkg).to_string());
            }
        }
    }
    bail!("no Debian package owns {s}")
}

/// The packages the Dockerfile's runtime stage installs: the words of the `apt-get install`
/// between the `runtime-packages:begin`/`end` markers, options and shell words left out.
pub fn dockerfile_runtime_packages(dockerfile: &str) -> anyhow::Result<Vec<String>> {
    let begin = dockerfile
        .find("# runtime-packages:begin")
        .context("no runtime-packages:begin marker")?;
    let end = dockerfile
        .find("# runtime-packages:end")
        .context("no runtime-packages:end marker")?;
    let block = &dockerfile[begin..end];
    let install = block
        .find("apt-get install")
        .context("no apt-get install in the runtime block")?;
    let rest = &block[install + "apt-get install".len()..];
    let stop = rest.find("&&").unwrap_or(rest.len());
    Ok(rest[..stop]
        .split_whitespace()
        .filter(|w| !w.starts_with('-') && *w != "\\")
        .map(String::from)
        .collect())
}

/// The signalling container of a render, and its pod spec.
pub fn signalling_container(docs: &[Value]) -> anyhow::Result<(Value, Value)> {
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
pub fn arg<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .find_map(|a| a.strip_prefix(&format!("{flag}=")))
}
