//! The node's Prometheus metrics (`GET /metrics`, OpenMetrics text), on `prometheus-client`.
//!
//! Counters are incremented where things happen (atomics, no lock, no allocation once a label
//! set has been seen); gauges of state (peers, sessions, nodes, Redis) are read from the bus
//! when scraped, so they cannot drift. Every metric, its labels and meaning: docs/metrics.md.

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::routing::Census;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    pub r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabel {
    /// `local` or `cross_node`.
    pub path: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    pub protocol: &'static str,
    pub role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScopeLabel {
    pub scope: &'static str,
}

/// What the node counts as it runs.
pub struct Metrics {
    /// Messages received from clients, by `type` ([`CLIENT_TYPES`]): plain counters, as this
    /// runs for every message (a label family takes a lock per lookup).
    client_messages: [Counter; CLIENT_TYPES.len()],
    /// `error` messages sent, by code.
    pub errors_sent: Family<CodeLabel, Counter>,
    /// Connections closed by the node, or by the client, by reason.
    pub closes: Family<ReasonLabel, Counter>,
    /// Upgrades refused, by reason (`auth`, `limit`).
    pub refused: Family<ReasonLabel, Counter>,
    /// Resumes, by outcome (`resumed`, `resumed_from_other_node`, `refused`).
    pub resumes: Family<ReasonLabel, Counter>,
    /// Redis connections made again after a loss (subscriber and publisher).
    pub redis_reconnects: Counter,
    /// Envelopes another node sent that never arrived (sequence gaps).
    pub envelope_gaps: Counter,
    /// Nodes this node found dead and reaped.
    pub nodes_reaped: Counter,
    /// TURN credentials minted (`turn.rs`).
    pub turn_credentials: Counter,
    /// From another node's publish to this node's receipt of envelopes (clocks of one
    /// cluster: a skew shows here).
    pub cross_node_latency: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            client_messages: Default::default(),
            errors_sent: Family::default(),
            closes: Family::default(),
            refused: Family::default(),
            resumes: Family::default(),
            redis_reconnects: Counter::default(),
            envelope_gaps: Counter::default(),
            nodes_reaped: Counter::default(),
            turn_credentials: Counter::default(),
            // 0.5 ms … 8 s
            cross_node_latency: Histogram::new(exponential_buckets(0.0005, 2.0, 15)),
        }
    }
}

/// The `type`s of `gwc_client_messages_total` (`invalid`: not a message of the protocol).
const CLIENT_TYPES: [&str; 7] = [
    "setPeerStatus",
    "startSession",
    "endSession",
    "peer",
    "list",
    "listConsumers",
    "invalid",
];

/// The label values of `gwc_connected_peers` (`routing/census.rs` counts by them).
const PEER_PROTOCOLS: [&str; 2] = ["v1", "v2"];
const PEER_ROLES: [&str; 4] = ["producer", "consumer", "listener", "none"];

/// Counts a message of `kind` (a wire `type`, or `invalid`) received from a client.
pub fn client_message(kind: &str) {
    let i = CLIENT_TYPES.iter().position(|t| *t == kind).unwrap_or(6);
    metrics().client_messages[i].inc();
}

/// The node's metrics (one set per process).
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::default)
}

/// Counts a resume's `outcome`.
pub fn resumed(outcome: &'static str) {
    metrics()
        .resumes
        .get_or_create(&ReasonLabel { reason: outcome })
        .inc();
}

/// Counts a TURN credential minted.
pub fn turn_credential_issued() {
    metrics().turn_credentials.inc();
}

/// Counts a connection closed for `reason`.
pub fn closed(reason: &'static str) {
    metrics()
        .closes
        .get_or_create(&ReasonLabel { reason })
        .inc();
}

/// What this process has used: CPU seconds, resident bytes, open file descriptors
/// (`/proc/self`).
fn process(registry: &mut Registry) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    // SAFETY: sysconf has no preconditions.
    let (hz, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK).max(1) as f64,
            libc::sysconf(libc::_SC_PAGESIZE).max(1) as i64,
        )
    };
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // A counter (`process_cpu_seconds_total`), as every Prometheus client exports it, so that
    // `rate()` over it is what dashboards expect.
    let cpu = prometheus_client::metrics::counter::ConstCounter::new((ticks(11) + ticks(12)) / hz);
    registry.register(
        "process_cpu_seconds",
        "User and system CPU time of the node process",
        cpu,
    );
    let rss: Gauge = Gauge::default();
    rss.set(
        fields
            .get(21)
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0)
            * page,
    );
    registry.register(
        "process_resident_memory_bytes",
        "Resident memory of the node process",
        rss,
    );
    let fds: Gauge = Gauge::default();
    let open = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    fds.set(open as i64);
    registry.register(
        "process_open_fds",
        "Open file descriptors of the node process",
        fds,
    );
}

/// The text of one scrape: the counters, then the node's state read now (`census`, whether
/// Redis answers, the connections held).
pub fn render(census: &Census, redis_up: bool, connections: usize) -> String {
    let m = metrics();
    let mut registry = Registry::with_prefix("gwc");
    let client_messages = Family::<TypeLabel, Counter>::default();
    for (r#type, counter) in CLIENT_TYPES.into_iter().zip(&m.client_messages) {
        client_messages
            .get_or_create(&TypeLabel { r#type })
            .inc_by(counter.get());
    }
    registry.register(
        "client_messages",
        "Messages received from clients, by type",
        client_messages,
    );
    registry.register(
        "errors_sent",
        "Error messages sent to clients, by code",
        m.errors_sent.clone(),
    );
    registry.register(
        "connection_closes",
        "WebSocket connections ended, by reason",
        m.closes.clone(),
    );
    registry.register(
        "upgrades_refused",
        "WebSocket upgrades refused, by reason",
        m.refused.clone(),
    );
    registry.register(
        "resumes",
        "Resumes of v2 peers, by outcome (the label is `reason`)",
        m.resumes.clone(),
    );
    registry.register(
        "redis_reconnects",
        "Redis connections made again after a loss",
        m.redis_reconnects.clone(),
    );
    registry.register(
        "envelope_gaps",
        "Envelopes from other nodes that never arrived (sequence gaps)",
        m.envelope_gaps.clone(),
    );
    registry.register(
        "nodes_reaped",
        "Dead nodes this node reaped",
        m.nodes_reaped.clone(),
    );
    registry.register(
        "turn_credentials_issued",
        "TURN credentials minted for clients (welcome and /api/v1/ice-servers)",
        m.turn_credentials.clone(),
    );
    registry.register_with_unit(
        "cross_node_relay",
        "From another node's publish to receipt here, per envelope",
        prometheus_client::registry::Unit::Seconds,
        m.cross_node_latency.clone(),
    );

    // (kept by the router, which relays them; read as counters)
    let relayed = Family::<PathLabel, Counter>::default();
    let relayed_bytes = Family::<PathLabel, Counter>::default();
    for (path, (messages, bytes)) in ["local", "cross_node"].into_iter().zip(census.relayed) {
        relayed.get_or_create(&PathLabel { path }).inc_by(messages);
        relayed_bytes
            .get_or_create(&PathLabel { path })
            .inc_by(bytes);
    }
    registry.register(
        "relayed_messages",
        "SDP and ICE messages relayed, by path (the other member on this node or another)",
        relayed,
    );
    registry.register(
        "relayed_bytes",
        "Bytes of SDP and ICE payloads relayed, by path",
        relayed_bytes,
    );
    let peers = Family::<PeerLabels, Gauge>::default();
    // Every known label set, 0 when nobody is connected: a series that vanishes reads as
    // "no data" rather than 0 (sums, alerts, autoscaling).
    for protocol in PEER_PROTOCOLS {
        for role in PEER_ROLES {
            peers.get_or_create(&PeerLabels { protocol, role }).set(0);
        }
    }
    for &((protocol, role), n) in &census.peers {
        peers
            .get_or_create(&PeerLabels { protocol, role })
            .set(n as i64);
    }
    registry.register(
        "connected_peers",
        "Peers connected to this node, by protocol (v1, v2) and role",
        peers,
    );
    let sessions = Family::<ScopeLabel, Gauge>::default();
    sessions
        .get_or_create(&ScopeLabel { scope: "local" })
        .set(census.local_sessions as i64);
    sessions
        .get_or_create(&ScopeLabel {
            scope: "cross_node",
        })
        .set(census.cross_node_sessions as i64);
    registry.register(
        "sessions",
        "Sessions this node takes part in: both members here (local) or one elsewhere",
        sessions,
    );
    let gauge = |v: usize| {
        let g: Gauge = Gauge::default();
        g.set(v as i64);
        g
    };
    registry.register(
        "connections",
        "WebSocket connections held",
        gauge(connections),
    );
    registry.register(
        "cluster_nodes",
        "Live nodes of the cluster, this one included (1 alone)",
        gauge(census.nodes),
    );
    registry.register(
        "redis_up",
        "1 while the cluster's Redis answers (always 1 alone)",
        gauge(redis_up as usize),
    );
    let mut process_registry = Registry::default();
    process(&mut process_registry);
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode_registry(&mut out, &registry);
    let _ = prometheus_client::encoding::text::encode_registry(&mut out, &process_registry);
    let _ = prometheus_client::encoding::text::encode_eof(&mut out);
    out
}
