//! Viewers that are not ours: the web app in headless Chromium (`web/tests/browser.mjs`,
//! playwright-core) and aiortc (`tests/tools/aiortc_viewer.py`, DTLS with ECDSA suites only),
//! both reporting JSON lines on stdout; and what a DER certificate's key is.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::agent::Agent;
use crate::{k8s, manifest_dir};

/// How long a browser or aiortc step may take on a loaded machine.
pub const LONG: Duration = Duration::from_secs(90);

pub fn web_dir() -> PathBuf {
    manifest_dir().join("../web")
}

/// `node web/tests/browser.mjs ARGS`: a headless Chromium session reporting JSON lines. Its
/// host candidates are plain addresses (GStreamer cannot resolve mDNS names).
pub fn browser(args: &[&str]) -> Result<Agent> {
    browser_with(args, false)
}

/// [`browser`], with `mdns`: Chromium's default host candidates (`<uuid>.local` names), as a
/// user's browser gathers them.
pub fn browser_with(args: &[&str], mdns: bool) -> Result<Agent> {
    let mut cmd = Command::new("node");
    cmd.arg("tests/browser.mjs")
        .args(args)
        .current_dir(web_dir())
        .env("BROWSER_MDNS", if mdns { "1" } else { "0" });
    Agent::spawn_command(cmd, "browser")
}

/// `node web/tests/whip-whep.mjs ARGS`: headless Chromium on the node's whip-whep.html (the
/// npm whip-whep clients), reporting JSON lines.
pub fn whip_whep_page(args: &[&str]) -> Result<Agent> {
    let mut cmd = Command::new("node");
    cmd.arg("tests/whip-whep.mjs")
        .args(args)
        .current_dir(web_dir())
        .env("BROWSER_MDNS", "0");
    Agent::spawn_command(cmd, "browser (whip-whep)")
}

/// Waits for the browser's `{"event": kind}` line (failing fast on `failed`).
pub async fn event(b: &Agent, kind: &str) -> Result<Value> {
    b.wait(LONG, kind, |b| {
        b.json_lines_with("event", kind).is_some() || b.json_lines_with("event", "failed").is_some()
    })
    .await?;
    if let Some(failed) = b.json_lines_with("event", "failed") {
        anyhow::bail!("browser failed: {failed}\n{}", b.stderr());
    }
    b.json_lines_with("event", kind).context("no event")
}

/// aiortc watching the producer named `name` on `url` until it decoded `frames` video frames.
pub fn aiortc_viewer(url: &str, name: &str, frames: u32) -> Result<Agent> {
    aiortc_viewer_with(url, name, frames, &["--timeout", "60"])
}

/// [`aiortc_viewer`] with more of the tool's options (`--timeout S`, `--dtls-suites rsa`).
pub fn aiortc_viewer_with(url: &str, name: &str, frames: u32, extra: &[&str]) -> Result<Agent> {
    let mut cmd = Command::new(k8s::tool("venv/bin/python"));
    cmd.arg(manifest_dir().join("tools/aiortc_viewer.py"))
        .args(["--server", url, "--producer-name", name])
        .args(["--frames", &frames.to_string()])
        .args(extra);
    Agent::spawn_command(cmd, "aiortc-viewer")
}

/// The aiortc viewer's JSON lines whose `event` is `kind`.
pub fn aiortc_events(viewer: &Agent, kind: &str) -> Vec<Value> {
    viewer
        .stdout()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == kind)
        .collect()
}

/// The aiortc viewer's exit code and its "done" line, with its output when it failed.
pub async fn aiortc_watched(viewer: &mut Agent) -> Result<Value> {
    let code = viewer.exit_within(LONG).await?;
    assert_eq!(
        code,
        Some(0),
        "aiortc did not get its frames:\n{}\n{}",
        viewer.stdout().join("\n"),
        viewer.stderr()
    );
    aiortc_events(viewer, "done").pop().context("no done line")
}

/// The public key algorithm of a DER X.509 certificate, by the OIDs its
/// SubjectPublicKeyInfo carries: `"ecdsa-p256"`, `"ecdsa"` (another curve), `"rsa"`, or
/// `"unknown"`. (A byte search is enough here: the signature algorithm OIDs differ from these.)
pub fn certificate_key(der: &[u8]) -> &'static str {
    const EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    const PRIME256V1: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    const RSA_ENCRYPTION: &[u8] = &[
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
    ];
    let has = |oid: &[u8]| der.windows(oid.len()).any(|w| w == oid);
    if has(EC_PUBLIC_KEY) && has(PRIME256V1) {
        "ecdsa-p256"
    } else if has(EC_PUBLIC_KEY) {
        "ecdsa"
    } else if has(RSA_ENCRYPTION) {
        "rsa"
    } else {
        "unknown"
    }
}

/// Bytes from a hex string (as the browser reports a certificate); `None` if it is not hex.
pub fn from_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}
