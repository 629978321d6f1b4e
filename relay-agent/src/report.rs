//! The relay's stats line (`relay-stats`) and metrics: upstream state, consumers, bitrate in
//! (from the source) and out (to all consumers), keyframes requested upstream, and the
//! encoders and decoders it runs (none: it forwards what it receives as it is).

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

/// One stats line (`relay-stats`).
#[derive(Serialize, Clone, Debug)]
pub struct Snapshot {
    #[serde(rename = "type")]
    kind: &'static str,
    origin_id: Option<String>,
    upstream_session: Option<String>,
    /// Sessions with a source after the first (a returning origin).
    reattachments: u64,
    /// Encoded video frames received from the source.
    frames_in: u64,
    /// Media from the source and, summed over the consumers, to them, since the last line.
    bitrate_in_bps: f64,
    bitrate_out_bps: f64,
    consumers: usize,
    sessions_started: u64,
    /// Keyframe requests of the relay's consumers, and those passed on to the source.
    keyframe_requests: u64,
    keyframes_requested_upstream: u64,
    reconnects: u64,
    /// Encoders (factories in the relay's pipeline; codecs of webrtcsink's per-consumer
    /// encoders) and decoders (webrtcsrc's included): both empty while nothing is re-encoded.
    encoders: Vec<String>,
    decoders: Vec<String>,
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
        let pipeline = self.sink.upgrade().and_then(|s| top_bin(&s));
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
            origin_id: shared.origin.lock().unwrap().clone(),
            upstream_session: shared.upstream_session.lock().unwrap().clone(),
            reattachments: shared.reattachments.load(Ordering::Relaxed),
            frames_in: shared.frames_in.load(Ordering::Relaxed),
            bitrate_in_bps,
            bitrate_out_bps,
            consumers: stats.map(|s| s.n_fields()).unwrap_or(0),
            sessions_started: shared.sessions.load(Ordering::Relaxed),
            keyframe_requests: shared.keyframes.requests.load(Ordering::Relaxed),
            keyframes_requested_upstream: shared.keyframes.forced.load(Ordering::Relaxed),
            reconnects: shared.reconnects_up.load(Ordering::Relaxed)
                + shared.reconnects_down.load(Ordering::Relaxed),
            encoders,
            decoders,
        }
    }
}

/// The outermost bin holding `element` (the relay's pipeline).
fn top_bin(element: &gst::Element) -> Option<gst::Bin> {
    let mut top = element.parent()?;
    while let Some(up) = top.parent() {
        top = up;
    }
    top.downcast::<gst::Bin>().ok()
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
            s.consumers as f64,
        ),
        (
            "relay_frames_in_total",
            "counter",
            "Encoded video frames received from the origin.",
            s.frames_in as f64,
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
            s.bitrate_out_bps,
        ),
        (
            "relay_keyframe_requests_total",
            "counter",
            "Keyframe requests of the relay's consumers.",
            s.keyframe_requests as f64,
        ),
        (
            "relay_keyframes_requested_upstream_total",
            "counter",
            "Keyframe requests passed on to the origin.",
            s.keyframes_requested_upstream as f64,
        ),
        (
            "relay_upstream_connected",
            "gauge",
            "1 while a session with the origin is up.",
            s.upstream_session.is_some() as u8 as f64,
        ),
        (
            "relay_reattachments_total",
            "counter",
            "Sessions with a returning origin after the first.",
            s.reattachments as f64,
        ),
    ] {
        write_metric(&mut out, name, kind, help, &[(labels.clone(), v)]);
    }
    out
}
