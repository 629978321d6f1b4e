//! Debian's GStreamer tools (`gst-launch-1.0`, `gst-inspect-1.0`) with our plugin
//! (`libgstgwc.so`: ours and the stock gst-plugin-webrtc elements) on their path, as a
//! GStreamer user runs them.

use std::process::Command;

use crate::agent::Agent;

/// The directory of `libgstgwc.so` (the test binaries' profile directory).
pub fn plugin_dir() -> std::path::PathBuf {
    let lib = crate::bin("libgstgwc.so");
    lib.parent().expect("a directory").to_path_buf()
}

/// A GStreamer tool with the plugin on its path and a registry of the test's own (so a
/// stale system registry cannot hide the plugin).
pub fn tool(name: &str) -> Command {
    let mut cmd = Command::new(name);
    let registry = std::env::temp_dir().join(format!("gwc-registry-{}.bin", std::process::id()));
    cmd.env("GST_PLUGIN_PATH", plugin_dir())
        .env("GST_REGISTRY", registry);
    cmd
}

/// `gst-launch-1.0 ARGS` (a pipeline as words), its output collected.
pub fn launch(words: &[&str]) -> anyhow::Result<Agent> {
    let mut cmd = tool("gst-launch-1.0");
    cmd.args(words);
    Agent::spawn_command(cmd, "gst-launch-1.0")
}

/// Buffers a `fakesink silent=false` printed (gst-launch `-v`: one `chain` line each).
pub fn buffers(p: &Agent) -> usize {
    p.stdout().iter().filter(|l| l.contains("chain")).count()
}
