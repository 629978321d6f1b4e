//! The agents of a relay test, started the same way by every relay test file
//! (`relays.rs`, `forward_relay.rs`, `forward_clients.rs`): an origin, a relay, a viewer, each
//! printing stats every 0.2 s, and what a lister sees of them.

use anyhow::{Context, Result};
use serde_json::Value;

use crate::agent::Agent;
use crate::{Node, Peer, Topo};

/// A producer-agent on `node` named `name` (and `extra`).
pub fn origin(node: &Node, name: &str, extra: &[&str]) -> Result<Agent> {
    let url = node.url();
    let mut args = vec!["--server", &url, "--name", name];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--stats-interval", "0.2"]);
    Agent::producer(&args)
}

/// A relay-agent on `node` relaying `source` as `name` (and `extra`: the engine too, else
/// relay-agent's default, or `RELAY_ENGINE` from the test's environment).
pub fn relay(node: &Node, source: &str, name: &str, extra: &[&str]) -> Result<Agent> {
    let url = node.url();
    let mut args = vec!["--server", &url, "--source-name", source, "--name", name];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--stats-interval", "0.2"]);
    Agent::spawn("relay-agent", &args)
}

/// A producer-agent publishing `name` on `node` as the adaptive tests' origins do: the test
/// picture at 1280x720, 30 fps, VP8, one shared encoding, stats every 0.5 s, and `extra`
/// (a ladder, a bitrate, audio).
pub fn shared_720p_origin(node: &Node, name: &str, extra: &[&str]) -> Result<Agent> {
    let url = node.url();
    let mut args = vec!["--server", &url, "--name", name];
    args.extend_from_slice(&["--width", "1280", "--height", "720", "--fps", "30"]);
    args.extend_from_slice(&["--video-codec", "vp8", "--encoding", "shared"]);
    args.extend_from_slice(&["--stats-interval", "0.5"]);
    args.extend_from_slice(extra);
    Agent::spawn("producer-agent", &args)
}

/// The "hall" of the re-placement tests (`web.rs`, `gst_plugin.rs`): a shared-encoding origin
/// on `a` and a relay of it on `b` (room for 4), stats every 0.5 s; returns once the relay
/// serves.
pub async fn hall(a: &Node, b: &Node) -> Result<(Agent, Agent)> {
    let origin = Agent::producer(&[
        "--server",
        &a.url(),
        "--name",
        "hall",
        "--encoding",
        "shared",
        "--stats-interval",
        "0.5",
    ])?;
    let relay = Agent::spawn(
        "relay-agent",
        &[
            "--server",
            &b.url(),
            "--source-name",
            "hall",
            "--name",
            "hall relay",
            "--max-consumers",
            "4",
            "--stats-interval",
            "0.5",
        ],
    )?;
    relay
        .wait_stderr("serving as", std::time::Duration::from_secs(60))
        .await?;
    Ok((origin, relay))
}

/// A relay-agent with `--engine forward`, whatever the environment says.
pub fn forward(node: &Node, source: &str, name: &str, extra: &[&str]) -> Result<Agent> {
    let mut args = vec!["--engine", "forward"];
    args.extend_from_slice(extra);
    relay(node, source, name, &args)
}

/// A consumer-agent on `node` (`target`: `--stream X`, `--producer-name X`) with `sink`
/// (`null` decodes, `encoded` counts encoded frames).
pub fn viewer(node: &Node, target: &[&str], sink: &str) -> Result<Agent> {
    let url = node.url();
    let mut args = vec!["--server", url.as_str()];
    args.extend_from_slice(target);
    args.extend_from_slice(&["--sink", sink, "--stats-interval", "0.2"]);
    Agent::consumer(&args)
}

/// The latest stats line of `kind` (`relay-stats`, `producer-stats`, …).
pub fn latest(agent: &Agent, kind: &str) -> Result<Value> {
    agent
        .json_lines(kind)
        .pop()
        .with_context(|| format!("no {kind}"))
}

/// The producers a lister on `node` sees once there are `n`.
pub async fn listed(node: &Node, n: usize) -> Result<Value> {
    let mut lister = Peer::connect(&node.url()).await?;
    Topo::list_until(&mut lister, false, |l| {
        l["producers"].as_array().map(Vec::len) == Some(n)
    })
    .await
}

/// The id and meta of the producer named `name` in a `list` answer.
pub fn member(list: &Value, name: &str) -> Result<(Value, Value)> {
    list["producers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["meta"]["name"] == name)
        .map(|p| (p["id"].clone(), p["meta"].clone()))
        .with_context(|| format!("{name} not listed: {list}"))
}
