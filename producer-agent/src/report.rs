//! Producer statistics: per consumer (bitrate, RTT, loss, encoder, congestion-control target)
//! from webrtcsink's `stats`, as JSON lines and Prometheus metrics.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use agent_core::metrics::write_metric;
use agent_core::stats::{entries, rate_bps};
use gst::prelude::*;
use gst_webrtc::WebRTCStatsType;
use serde::Serialize;

use crate::{encoding, ladder};

/// Counters the agent bumps as things happen.
#[derive(Default)]
pub struct Counters {
    pub sessions_started: AtomicU64,
    pub consumers_refused: AtomicU64,
    pub reconnects: AtomicU64,
    pub navigation_events: AtomicU64,
}

#[derive(Serialize, Clone, Debug)]
pub struct ConsumerStats {
    pub session_id: String,
    pub consumer_id: Option<String>,
    /// Media bits per second sent to this consumer over the last interval.
    pub bitrate_bps: f64,
    /// Round-trip time reported by the consumer's RTCP, in milliseconds.
    pub rtt_ms: Option<f64>,
    pub packets_sent: u64,
    pub packets_lost: i64,
    /// Codec of each video encoder serving this consumer (e.g. `VP8`).
    pub encoders: Vec<String>,
    /// What congestion control currently asks of the encoders, in bits per second.
    pub target_bitrate_bps: u64,
    /// The selected ICE candidate pair's types, `local/remote` (`relay/host`: through TURN).
    pub ice_pair: Option<String>,
}

#[derive(Serialize, Clone, Debug)]
pub struct Snapshot {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub name: String,
    pub peer_id: Option<String>,
    pub uptime_s: f64,
    pub consumers: Vec<ConsumerStats>,
    pub sessions_started: u64,
    pub consumers_refused: u64,
    pub reconnects: u64,
    pub navigation_events: u64,
    /// `per-consumer` or `shared` (`--encoding`).
    pub encoding: &'static str,
    /// With `--encoding shared`: the one video encoder every consumer gets.
    pub shared_encoder: Option<SharedEncoder>,
    /// Encoders in the producer's own pipeline (shared mode's; webrtcsink's per-consumer
    /// encoders are each consumer's `encoders`).
    pub pipeline_encoders: Vec<String>,
    /// With a ladder (`--layers`/`--ladder`): each layer's figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ladder: Option<LadderStats>,
}

#[derive(Serialize, Clone, Debug)]
pub struct LadderStats {
    /// Keyframes forced on every layer together (the start, `--keyframe-interval`).
    pub aligned_keyframes: u64,
    /// Top first.
    pub layers: Vec<LayerStats>,
}

#[derive(Serialize, Clone, Debug)]
pub struct LayerStats {
    /// `WxH@KBPS`, as in the meta's `layers`.
    pub layer: String,
    pub width: u32,
    pub height: u32,
    /// The encoder's configured target.
    pub bitrate_bps: u64,
    /// Keyframe requests on this layer's stream (joins, PLI/FIR), before coalescing.
    pub keyframe_requests: u64,
    /// Keyframes forced on this layer alone for them.
    pub keyframes_forced: u64,
    /// Keyframes the layer sent, forced or not.
    pub keyframes: u64,
    /// Presentation times of its latest keyframes, ms (the same on every layer for the
    /// aligned ones).
    pub recent_keyframes_ms: Vec<u64>,
}

impl LadderStats {
    fn of(l: &ladder::Stats) -> LadderStats {
        LadderStats {
            aligned_keyframes: l.aligned_keyframes.load(Ordering::Relaxed),
            layers: l
                .layers
                .iter()
                .map(|s| LayerStats {
                    layer: s.layer.to_string(),
                    width: s.layer.width,
                    height: s.layer.height,
                    bitrate_bps: s.layer.kbps as u64 * 1000,
                    keyframe_requests: s.keyframes.requests.load(Ordering::Relaxed),
                    keyframes_forced: s.keyframes.forced.load(Ordering::Relaxed),
                    keyframes: s.keyframes.sent.load(Ordering::Relaxed),
                    recent_keyframes_ms: s
                        .recent_keyframes_ms
                        .lock()
                        .unwrap()
                        .iter()
                        .copied()
                        .collect(),
                })
                .collect(),
        }
    }
}

#[derive(Serialize, Clone, Debug)]
pub struct SharedEncoder {
    pub codec: Option<String>,
    pub bitrate_bps: u64,
    /// Keyframe requests from consumers (joins, PLI/FIR), before coalescing.
    pub keyframe_requests: u64,
    /// Keyframes forced on the encoder for them.
    pub keyframes_forced: u64,
    /// Keyframes sent, forced or not.
    pub keyframes: u64,
    /// The consumers' bandwidth estimates the bitrate follows (empty if it does not).
    pub estimates_bps: Vec<u64>,
}

/// Turns successive webrtcsink `stats` readings into snapshots.
pub struct Collector {
    pub name: String,
    pub started: Instant,
    pub counters: Arc<Counters>,
    pub peer_id: Arc<Mutex<Option<String>>>,
    /// session id → consumer peer id, from the signaller's events.
    pub consumers: Arc<Mutex<HashMap<String, String>>>,
    /// The shared encoder's figures (`--encoding shared`).
    shared: Option<Arc<encoding::Stats>>,
    ladder: Option<Arc<ladder::Stats>>,
    last: HashMap<String, (Instant, u64)>,
}

impl Collector {
    pub fn new(
        name: String,
        counters: Arc<Counters>,
        peer_id: Arc<Mutex<Option<String>>>,
        consumers: Arc<Mutex<HashMap<String, String>>>,
        shared: Option<Arc<encoding::Stats>>,
        ladder: Option<Arc<ladder::Stats>>,
    ) -> Self {
        Collector {
            name,
            started: Instant::now(),
            counters,
            peer_id,
            consumers,
            shared,
            ladder,
            last: HashMap::new(),
        }
    }

    pub fn collect(&mut self, sink: &gst::Element) -> Snapshot {
        let stats = sink.property::<gst::Structure>("stats");
        let now = Instant::now();
        let mut consumers = Vec::new();
        for (session_id, value) in stats.iter() {
            let Ok(session) = value.get::<gst::Structure>() else {
                continue;
            };
            let all = entries(&session);
            let bytes: u64 = all
                .iter()
                .filter(|e| e.kind == WebRTCStatsType::OutboundRtp)
                .filter_map(|e| e.u64("bytes-sent"))
                .sum();
            let packets_sent: u64 = all
                .iter()
                .filter(|e| e.kind == WebRTCStatsType::OutboundRtp)
                .filter_map(|e| e.u64("packets-sent"))
                .sum();
            let remote: Vec<_> = all
                .iter()
                .filter(|e| e.kind == WebRTCStatsType::RemoteInboundRtp)
                .collect();
            let rtt_ms = remote
                .iter()
                .filter_map(|e| e.f64("round-trip-time"))
                .fold(None, |acc: Option<f64>, x| {
                    Some(acc.map_or(x, |a| a.max(x)))
                })
                .map(|s| s * 1000.0);
            let packets_lost = remote.iter().filter_map(|e| e.i64("packets-lost")).sum();
            let (encoders, target) = encoders(&session);
            let bitrate_bps = match self.last.get(session_id.as_str()) {
                Some((at, before)) => rate_bps(bytes, *before, (now - *at).as_secs_f64()),
                None => 0.0,
            };
            self.last.insert(session_id.to_string(), (now, bytes));
            consumers.push(ConsumerStats {
                session_id: session_id.to_string(),
                consumer_id: self
                    .consumers
                    .lock()
                    .unwrap()
                    .get(session_id.as_str())
                    .cloned(),
                bitrate_bps,
                rtt_ms,
                packets_sent,
                packets_lost,
                encoders,
                target_bitrate_bps: target,
                ice_pair: agent_core::stats::ice_pair(&all),
            });
        }
        self.last
            .retain(|id, _| consumers.iter().any(|c| &c.session_id == id));
        let c = &self.counters;
        Snapshot {
            kind: "producer-stats",
            name: self.name.clone(),
            peer_id: self.peer_id.lock().unwrap().clone(),
            uptime_s: self.started.elapsed().as_secs_f64(),
            consumers,
            sessions_started: c.sessions_started.load(Ordering::Relaxed),
            consumers_refused: c.consumers_refused.load(Ordering::Relaxed),
            reconnects: c.reconnects.load(Ordering::Relaxed),
            navigation_events: c.navigation_events.load(Ordering::Relaxed),
            encoding: match self.shared {
                Some(_) => "shared",
                None => "per-consumer",
            },
            pipeline_encoders: agent_core::stats::pipeline_of(sink)
                .map(|p| agent_core::stats::elements_of_class(&p, "Codec/Encoder"))
                .unwrap_or_default(),
            shared_encoder: self.shared.as_ref().map(|e| SharedEncoder {
                codec: e.codec.lock().unwrap().clone(),
                bitrate_bps: e.bitrate.load(Ordering::Relaxed),
                keyframe_requests: e.keyframes.requests.load(Ordering::Relaxed),
                keyframes_forced: e.keyframes.forced.load(Ordering::Relaxed),
                keyframes: e.keyframes.sent.load(Ordering::Relaxed),
                estimates_bps: e.estimates.lock().unwrap().clone(),
            }),
            ladder: self.ladder.as_deref().map(LadderStats::of),
        }
    }
}

/// Codec names and summed target bitrate of the consumer's video encoders.
fn encoders(session: &gst::StructureRef) -> (Vec<String>, u64) {
    let Ok(ours) = session.get::<gst::Structure>("consumer-stats") else {
        return (Vec::new(), 0);
    };
    let Ok(list) = ours.get::<gst::Array>("video-encoders") else {
        return (Vec::new(), 0);
    };
    let mut names = Vec::new();
    let mut target = 0u64;
    for enc in list.iter().filter_map(|v| v.get::<gst::Structure>().ok()) {
        if let Ok(name) = enc.get::<String>("codec-name") {
            names.push(name);
        }
        if let Ok(bitrate) = enc.get::<i32>("bitrate") {
            target += u64::try_from(bitrate).unwrap_or(0);
        }
    }
    (names, target)
}

/// Prometheus text of a snapshot.
pub fn render(s: &Snapshot) -> String {
    let mut out = String::new();
    let base = vec![("name", s.name.clone())];
    let per = |f: &dyn Fn(&ConsumerStats) -> Option<f64>| -> Vec<(Vec<(&str, String)>, f64)> {
        s.consumers
            .iter()
            .filter_map(|c| {
                let v = f(c)?;
                let mut labels = base.clone();
                labels.push(("session", c.session_id.clone()));
                labels.push(("consumer", c.consumer_id.clone().unwrap_or_default()));
                Some((labels, v))
            })
            .collect()
    };
    write_metric(
        &mut out,
        "producer_consumers",
        "gauge",
        "Consumers currently served.",
        &[(base.clone(), s.consumers.len() as f64)],
    );
    write_metric(
        &mut out,
        "producer_consumer_bitrate_bps",
        "gauge",
        "Media bits per second sent to the consumer.",
        &per(&|c| Some(c.bitrate_bps)),
    );
    write_metric(
        &mut out,
        "producer_consumer_rtt_seconds",
        "gauge",
        "Round-trip time to the consumer (RTCP).",
        &per(&|c| c.rtt_ms.map(|ms| ms / 1000.0)),
    );
    write_metric(
        &mut out,
        "producer_consumer_packets_lost",
        "gauge",
        "Packets the consumer reported lost.",
        &per(&|c| Some(c.packets_lost as f64)),
    );
    write_metric(
        &mut out,
        "producer_consumer_target_bitrate_bps",
        "gauge",
        "Encoder bitrate congestion control currently asks for.",
        &per(&|c| Some(c.target_bitrate_bps as f64)),
    );
    for (name, help, v) in [
        (
            "producer_sessions_started_total",
            "Sessions accepted.",
            s.sessions_started,
        ),
        (
            "producer_consumers_refused_total",
            "Consumers refused at --max-consumers.",
            s.consumers_refused,
        ),
        (
            "producer_signalling_reconnects_total",
            "Signalling connections replaced.",
            s.reconnects,
        ),
        (
            "producer_navigation_events_total",
            "Navigation events received from consumers.",
            s.navigation_events,
        ),
    ] {
        write_metric(&mut out, name, "counter", help, &[(base.clone(), v as f64)]);
    }
    let mut mode = base.clone();
    mode.push(("encoding", s.encoding.to_string()));
    write_metric(
        &mut out,
        "producer_info",
        "gauge",
        "Always 1; the labels say how the producer encodes.",
        &[(mode, 1.0)],
    );
    if let Some(e) = &s.shared_encoder {
        write_metric(
            &mut out,
            "producer_shared_encoder_bitrate_bps",
            "gauge",
            "Target bitrate of the shared video encoder.",
            &[(base.clone(), e.bitrate_bps as f64)],
        );
        for (name, help, v) in [
            (
                "producer_shared_keyframe_requests_total",
                "Keyframe requests from consumers, before coalescing.",
                e.keyframe_requests,
            ),
            (
                "producer_shared_keyframes_forced_total",
                "Keyframes forced on the shared encoder.",
                e.keyframes_forced,
            ),
            (
                "producer_shared_keyframes_total",
                "Keyframes the shared encoder sent.",
                e.keyframes,
            ),
        ] {
            write_metric(&mut out, name, "counter", help, &[(base.clone(), v as f64)]);
        }
    }
    if let Some(l) = &s.ladder {
        let per = |f: &dyn Fn(&LayerStats) -> u64| -> Vec<(Vec<(&str, String)>, f64)> {
            l.layers
                .iter()
                .enumerate()
                .map(|(k, layer)| {
                    let mut labels = base.clone();
                    labels.push(("layer", k.to_string()));
                    (labels, f(layer) as f64)
                })
                .collect()
        };
        write_metric(
            &mut out,
            "producer_layer_bitrate_bps",
            "gauge",
            "Target bitrate of each layer's encoder.",
            &per(&|x| x.bitrate_bps),
        );
        write_metric(
            &mut out,
            "producer_layer_keyframe_requests_total",
            "counter",
            "Keyframe requests on each layer's stream, before coalescing.",
            &per(&|x| x.keyframe_requests),
        );
        write_metric(
            &mut out,
            "producer_layer_keyframes_forced_total",
            "counter",
            "Keyframes forced on one layer for its requests.",
            &per(&|x| x.keyframes_forced),
        );
        write_metric(
            &mut out,
            "producer_layer_keyframes_total",
            "counter",
            "Keyframes each layer sent.",
            &per(&|x| x.keyframes),
        );
        write_metric(
            &mut out,
            "producer_aligned_keyframes_total",
            "counter",
            "Keyframes forced on every layer together.",
            &[(base.clone(), l.aligned_keyframes as f64)],
        );
    }
    out
}
