//! The relay's stats line (`relay-stats`) and metrics: upstream state, consumers, bitrate in
//! (from the source) and out (to all consumers), keyframes requested upstream, and the
//! encoders and decoders it runs (none: it forwards what it receives as it is); with the
//! forward engine, per viewer: packets, NACKs served, keyframe requests, bandwidth estimate.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use agent_core::metrics::write_metric;
use agent_core::stats::{entries, rate_bps};
use gst::glib;
use gst::prelude::*;
use gst_webrtc::WebRTCStatsType;
use serde::Serialize;

use crate::Shared;

/// One stats line (`relay-stats`), whatever the engine (`forward/stats.rs` fills it for the
/// forward engine).
#[derive(Serialize, Clone, Debug)]
pub struct Snapshot {
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// `pipeline` or `forward`.
    pub engine: &'static str,
    pub origin_id: Option<String>,
    pub upstream_session: Option<String>,
    /// Sessions with a source after the first (a returning origin).
    pub reattachments: u64,
    /// Encoded video frames received from the source (pipeline engine).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frames_in: Option<u64>,
    /// RTP packets received from the current origin (forward engine).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin_packets: Option<u64>,
    /// Media from the source (pipeline engine) and, summed over the consumers, to them, since
    /// the last line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bitrate_in_bps: Option<f64>,
    pub bitrate_out_bps: f64,
    pub consumers: usize,
    pub sessions_started: u64,
    /// Keyframe requests of the relay's consumers, and those passed on to the source.
    pub keyframe_requests: u64,
    pub keyframes_requested_upstream: u64,
    pub reconnects: u64,
    /// Encoders (factories in the relay's pipeline; codecs of webrtcsink's per-consumer
    /// encoders) and decoders (webrtcsrc's included): both empty while nothing is re-encoded.
    pub encoders: Vec<String>,
    pub decoders: Vec<String>,
    /// Per viewer (forward engine).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub viewers: Option<Vec<ViewerLine>>,
}

/// One viewer of the forward engine.
#[derive(Serialize, Clone, Debug)]
pub struct ViewerLine {
    pub session: String,
    pub packets: u64,
    pub bytes: u64,
    /// NACKs answered from the relay's packet cache, and those that missed it and went
    /// upstream.
    pub nacks_served: u64,
    pub nacks_upstream: u64,
    pub keyframe_requests: u64,
    /// The viewer's bandwidth estimate (TWCC), bits per second.
    pub estimate_bps: Option<u64>,
    /// A layered source: the layer the viewer is sent (0 = the top), its height, the layer it
    /// is switching to, and the switches done up and down (absent fields: not layered).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer_height: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_layer: Option<usize>,
    pub layer_switches_up: u64,
    pub layer_switches_down: u64,
}

/// Turns counters into a line, rates against the previous one.
pub struct Collector {
    shared: Arc<Shared>,
    sink: glib::WeakRef<gst::Element>,
    last: Instant,
    bytes_in: u64,
    /// Bytes sent per consumer session at the last line.
    bytes_out: HashMap<String, u64>,
}

impl Collector {
    pub fn new(shared: Arc<Shared>, sink: &gst::Element) -> Self {
        Collector {
            shared,
            sink: sink.downgrade(),
            last: Instant::now(),
            bytes_in: 0,
            bytes_out: HashMap::new(),
        }
    }

    pub fn collect(&mut self) -> Snapshot {
        let dt = self.last.elapsed().as_secs_f64();
        self.last = Instant::now();
        let shared = &self.shared;
        let bytes_in = shared.bytes_in.load(Ordering::Relaxed);
        let bitrate_in_bps = rate_bps(bytes_in, self.bytes_in, dt);
        self.bytes_in = bytes_in;
        let stats = self
            .sink
            .upgrade()
            .map(|s| s.property::<gst::Structure>("stats"));
        let mut bitrate_out_bps = 0.0;
        let mut bytes_out = HashMap::new();
        let pipeline = self
            .sink
            .upgrade()
            .and_then(|s| agent_core::stats::pipeline_of(&s));
        let class = |c: &str| {
            let of = |p: &gst::Bin| agent_core::stats::elements_of_class(p, c);
            pipeline.as_ref().map(of).unwrap_or_default()
        };
        let (mut encoders, decoders) = (class("Codec/Encoder"), class("Codec/Decoder"));
        for (session, value) in stats.iter().flat_map(|s| s.iter()) {
            let Ok(session_stats) = value.get::<gst::Structure>() else {
                continue;
            };
            encoders.extend(consumer_encoders(&session_stats));
            let sent: u64 = entries(&session_stats)
                .iter()
                .filter(|e| e.kind == WebRTCStatsType::OutboundRtp)
                .filter_map(|e| e.u64("bytes-sent"))
                .sum();
            let before = self.bytes_out.get(session.as_str()).copied().unwrap_or(0);
            bitrate_out_bps += rate_bps(sent, before, dt);
            bytes_out.insert(session.to_string(), sent);
        }
        self.bytes_out = bytes_out;
        Snapshot {
            kind: "relay-stats",
            engine: "pipeline",
            origin_id: shared.origin.lock().unwrap().clone(),
            upstream_session: shared.upstream_session.lock().unwrap().clone(),
            reattachments: shared.reattachments.load(Ordering::Relaxed),
            frames_in: Some(shared.frames_in.load(Ordering::Relaxed)),
            origin_packets: None,
            bitrate_in_bps: Some(bitrate_in_bps),
            bitrate_out_bps,
            consumers: stats.map(|s| s.n_fields()).unwrap_or(0),
            sessions_started: shared.sessions.load(Ordering::Relaxed),
            keyframe_requests: shared.keyframes.requests.load(Ordering::Relaxed),
            keyframes_requested_upstream: shared.keyframes.forced.load(Ordering::Relaxed),
            reconnects: shared.reconnects_up.load(Ordering::Relaxed)
                + shared.reconnects_down.load(Ordering::Relaxed),
            encoders,
            decoders,
            viewers: None,
        }
    }
}

/// The encoders webrtcsink runs for one consumer, in pipelines of its own (its stats'
/// `consumer-stats.video-encoders`, as the producer reports them).
fn consumer_encoders(session: &gst::StructureRef) -> Vec<String> {
    let list = session
        .get::<gst::Structure>("consumer-stats")
        .ok()
        .and_then(|s| s.get::<gst::Array>("video-encoders").ok());
    let Some(list) = list else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|v| v.get::<gst::Structure>().ok())
        .filter_map(|e| e.get::<String>("codec-name").ok())
        .collect()
}

pub fn render(s: &Snapshot) -> String {
    let mut out = String::new();
    let labels: Vec<(&str, String)> = vec![("origin", s.origin_id.clone().unwrap_or_default())];
    for (name, kind, help, v) in [
        (
            "relay_consumers",
            "gauge",
            "Consumers the relay serves.",
            Some(s.consumers as f64),
        ),
        (
            "relay_frames_in_total",
            "counter",
            "Encoded video frames received from the origin.",
            s.frames_in.map(|n| n as f64),
        ),
        (
            "relay_bitrate_in_bps",
            "gauge",
            "Media received from the source, bits per second.",
            s.bitrate_in_bps,
        ),
        (
            "relay_bitrate_out_bps",
            "gauge",
            "Media sent to all consumers, bits per second.",
            Some(s.bitrate_out_bps),
        ),
        (
            "relay_keyframe_requests_total",
            "counter",
            "Keyframe requests of the relay's consumers.",
            Some(s.keyframe_requests as f64),
        ),
        (
            "relay_keyframes_requested_upstream_total",
            "counter",
            "Keyframe requests passed on to the origin.",
            Some(s.keyframes_requested_upstream as f64),
        ),
        (
            "relay_origin_packets_total",
            "counter",
            "RTP packets received from the current origin (forward engine).",
            s.origin_packets.map(|n| n as f64),
        ),
        (
            "relay_upstream_connected",
            "gauge",
            "1 while a session with the origin is up.",
            Some(s.upstream_session.is_some() as u8 as f64),
        ),
        (
            "relay_reattachments_total",
            "counter",
            "Sessions with a returning origin after the first.",
            Some(s.reattachments as f64),
        ),
    ] {
        if let Some(v) = v {
            write_metric(&mut out, name, kind, help, &[(labels.clone(), v)]);
        }
    }
    if let Some(viewers) = &s.viewers {
        per_viewer(&mut out, viewers);
    }
    out
}

/// The forward engine's figures per viewer, labelled by session.
fn per_viewer(out: &mut String, viewers: &[ViewerLine]) {
    type Figure = fn(&ViewerLine) -> Option<f64>;
    let figures: [(&str, &str, &str, Figure); 7] = [
        (
            "relay_viewer_packets_total",
            "counter",
            "RTP packets sent to the viewer.",
            |v| Some(v.packets as f64),
        ),
        (
            "relay_viewer_nacks_served_total",
            "counter",
            "The viewer's NACKs answered from the relay's packet cache.",
            |v| Some(v.nacks_served as f64),
        ),
        (
            "relay_viewer_nacks_upstream_total",
            "counter",
            "The viewer's NACKs that missed the cache and went upstream.",
            |v| Some(v.nacks_upstream as f64),
        ),
        (
            "relay_viewer_keyframe_requests_total",
            "counter",
            "Keyframe requests (PLI/FIR) the viewer sent.",
            |v| Some(v.keyframe_requests as f64),
        ),
        (
            "relay_viewer_estimate_bps",
            "gauge",
            "The viewer's bandwidth estimate (TWCC), bits per second.",
            |v| v.estimate_bps.map(|e| e as f64),
        ),
        (
            "relay_viewer_layer",
            "gauge",
            "The layer of a layered source the viewer is sent (0 = the top).",
            |v| v.layer.map(|l| l as f64),
        ),
        (
            "relay_viewer_layer_height",
            "gauge",
            "The height of the layer the viewer is sent.",
            |v| v.layer_height.map(f64::from),
        ),
    ];
    for (name, kind, help, figure) in figures {
        let series: Vec<_> = viewers
            .iter()
            .filter_map(|v| Some((vec![("session", v.session.clone())], figure(v)?)))
            .collect();
        if !series.is_empty() {
            write_metric(out, name, kind, help, &series);
        }
    }
    // Switches by direction, for the viewers of a layered source.
    let switches: Vec<_> = viewers
        .iter()
        .filter(|v| v.layer.is_some())
        .flat_map(|v| {
            [("up", v.layer_switches_up), ("down", v.layer_switches_down)].map(|(d, n)| {
                let labels = vec![("session", v.session.clone()), ("direction", d.to_owned())];
                (labels, n as f64)
            })
        })
        .collect();
    if !switches.is_empty() {
        write_metric(
            out,
            "relay_viewer_layer_switches_total",
            "counter",
            "Layer switches done for the viewer (at a keyframe of the new layer), up and down.",
            &switches,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn viewer(session: &str, layer: Option<usize>) -> ViewerLine {
        ViewerLine {
            session: session.into(),
            packets: 10,
            bytes: 1000,
            nacks_served: 0,
            nacks_upstream: 0,
            keyframe_requests: 0,
            estimate_bps: Some(800_000),
            layer,
            layer_height: layer.map(|_| 360),
            target_layer: layer,
            layer_switches_up: 1,
            layer_switches_down: 2,
        }
    }

    #[test]
    fn a_layered_viewer_s_layer_and_switches_are_metrics_a_plain_one_has_none() {
        let mut out = String::new();
        per_viewer(&mut out, &[viewer("a", Some(1)), viewer("b", None)]);
        let has = |needle: &str| out.lines().any(|l| l.starts_with(needle));
        assert!(has("relay_viewer_layer{session=\"a\"} 1"), "{out}");
        assert!(has("relay_viewer_layer_height{session=\"a\"} 360"), "{out}");
        assert!(
            has("relay_viewer_layer_switches_total{session=\"a\",direction=\"down\"} 2"),
            "{out}"
        );
        assert!(!out.contains("session=\"b\",direction"), "{out}");
        assert!(!has("relay_viewer_layer{session=\"b\"}"), "{out}");
    }
}
