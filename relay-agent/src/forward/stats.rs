//! The forward engine's `relay-stats` line: the engine's counters ([`Forwarder::stats`]) in
//! the pipeline engine's [`Snapshot`], plus one entry per viewer.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use agent_core::stats::rate_bps;
use sfu::forwarder::Forwarder;

use crate::report::{Snapshot, ViewerLine};
use crate::Shared;

pub struct Collector {
    shared: Arc<Shared>,
    forwarder: Forwarder,
    last: Instant,
    /// Bytes sent per viewer session at the last line.
    bytes_out: HashMap<String, u64>,
}

impl Collector {
    pub fn new(shared: Arc<Shared>, forwarder: Forwarder) -> Self {
        Collector {
            shared,
            forwarder,
            last: Instant::now(),
            bytes_out: HashMap::new(),
        }
    }

    pub fn collect(&mut self) -> Snapshot {
        let dt = self.last.elapsed().as_secs_f64();
        self.last = Instant::now();
        let stats = self.forwarder.stats();
        let mut bitrate_out_bps = 0.0;
        let mut bytes_out = HashMap::new();
        for v in &stats.viewers {
            let before = self.bytes_out.get(&v.session).copied().unwrap_or(0);
            bitrate_out_bps += rate_bps(v.bytes, before, dt);
            bytes_out.insert(v.session.clone(), v.bytes);
        }
        self.bytes_out = bytes_out;
        let shared = &self.shared;
        let viewers: Vec<ViewerLine> = stats
            .viewers
            .iter()
            .map(|v| ViewerLine {
                session: v.session.clone(),
                packets: v.packets,
                bytes: v.bytes,
                nacks_served: v.nacks_served,
                nacks_upstream: v.nacks_upstream,
                keyframe_requests: v.keyframe_requests,
                estimate_bps: v.estimate_bps,
                layer: v.layer,
                layer_height: v.layer_height,
                target_layer: v.target_layer,
                layer_switches_up: v.layer_switches_up,
                layer_switches_down: v.layer_switches_down,
            })
            .collect();
        Snapshot {
            kind: "relay-stats",
            engine: "forward",
            origin_id: shared.origin.lock().unwrap().clone(),
            upstream_session: shared.upstream_session.lock().unwrap().clone(),
            reattachments: shared.reattachments.load(Ordering::Relaxed),
            frames_in: None,
            origin_packets: Some(stats.origin_packets),
            bitrate_in_bps: None,
            bitrate_out_bps,
            consumers: viewers.len(),
            sessions_started: shared.sessions.load(Ordering::Relaxed),
            keyframe_requests: viewers.iter().map(|v| v.keyframe_requests).sum(),
            keyframes_requested_upstream: stats.keyframe_requests_upstream,
            reconnects: shared.reconnects_up.load(Ordering::Relaxed)
                + shared.reconnects_down.load(Ordering::Relaxed),
            // Nothing is decoded or encoded: there is no pipeline.
            encoders: Vec::new(),
            decoders: Vec::new(),
            viewers: Some(viewers),
        }
    }
}
