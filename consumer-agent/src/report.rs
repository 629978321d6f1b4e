//! Consumer statistics: per received stream (bitrate, jitter, loss) from webrtcbin, plus the
//! decoded frame rate, time to first frame, and what the viewer sees (resolution, frozen
//! time, switches: `quality.rs`); as JSON lines and Prometheus metrics.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use agent_core::metrics::write_metric;
use agent_core::stats::{codec_of, entries, find_webrtcbin, ice_pair, rate_bps, webrtcbin_stats};
use gst::prelude::*;
use gst_webrtc::WebRTCStatsType;
use serde::Serialize;

use crate::quality::Quality;

/// What the agent's main loop knows, shared with the stats thread.
#[derive(Default)]
pub struct Shared {
    pub producer_id: Mutex<Option<String>>,
    pub session_id: Mutex<Option<String>>,
    pub first_frame_ms: Mutex<Option<u64>>,
    /// From the session's start to the first video frame.
    pub session_to_first_frame_ms: Mutex<Option<u64>>,
    pub sessions: AtomicU64,
    pub reconnects: AtomicU64,
    /// The current pipeline's webrtcsrc (replaced when the agent rebuilds).
    pub src: Mutex<Option<gst::glib::WeakRef<gst::Element>>>,
}

#[derive(Serialize, Clone, Debug)]
pub struct StreamStats {
    pub ssrc: u64,
    pub codec: Option<String>,
    pub bitrate_bps: f64,
    pub packets_received: u64,
    pub packets_lost: i64,
    pub jitter_ms: Option<f64>,
}

#[derive(Serialize, Clone, Debug)]
pub struct Snapshot {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub producer_id: Option<String>,
    pub session_id: Option<String>,
    pub frames: u64,
    /// Decoded (or recorded) video frames per second over the last interval.
    pub fps: f64,
    pub first_frame_ms: Option<u64>,
    pub elapsed_ms: u64,
    pub sessions: u64,
    pub reconnects: u64,
    /// The resolution of the last decoded frame (none before one, or without decoding).
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// Received video bits per second over the last interval (every video stream).
    pub video_bitrate_bps: f64,
    /// Of the last interval, the time the video stood frozen (no new frame for more than 3
    /// frame intervals), ms.
    pub frozen_ms: u64,
    /// Changes of the received resolution so far.
    pub switches: u64,
    /// The selected ICE candidate pair's types, `local/remote` (`relay/host`: through TURN).
    pub ice_pair: Option<String>,
    pub streams: Vec<StreamStats>,
}

pub struct Collector {
    started: Instant,
    frames: Arc<AtomicU64>,
    shared: Arc<Shared>,
    quality: Arc<Quality>,
    last_frames: (Instant, u64),
    last_bytes: HashMap<u64, (Instant, u64)>,
    last_frozen: std::time::Duration,
}

impl Collector {
    pub fn new(
        started: Instant,
        frames: Arc<AtomicU64>,
        shared: Arc<Shared>,
        quality: Arc<Quality>,
    ) -> Self {
        Collector {
            started,
            frames,
            shared,
            quality,
            last_frames: (started, 0),
            last_bytes: HashMap::new(),
            last_frozen: std::time::Duration::ZERO,
        }
    }

    pub fn collect(&mut self) -> Snapshot {
        let now = Instant::now();
        let frames = self.frames.load(Ordering::Relaxed);
        let dt = (now - self.last_frames.0).as_secs_f64();
        let fps = if dt > 0.0 {
            frames.saturating_sub(self.last_frames.1) as f64 / dt
        } else {
            0.0
        };
        self.last_frames = (now, frames);

        let src = self
            .shared
            .src
            .lock()
            .unwrap()
            .as_ref()
            .and_then(|w| w.upgrade());
        let webrtcbin = src
            .and_then(|s| s.downcast::<gst::Bin>().ok())
            .and_then(|bin| find_webrtcbin(&bin));
        let stats = webrtcbin.as_ref().and_then(webrtcbin_stats);
        let mut streams = Vec::new();
        let mut pair = None;
        if let (Some(stats), Some(webrtcbin)) = (stats, webrtcbin) {
            let all = entries(&stats);
            pair = ice_pair(&all);
            let media = media_streams(&webrtcbin);
            // webrtcbin also lists the repair SSRCs (RTX, FEC), silent until a loss, then
            // with a few packets: they are not streams being received.
            let receiving = all.iter().filter(|e| {
                e.kind == WebRTCStatsType::InboundRtp
                    && e.u64("packets-received").unwrap_or(0) > 0
                    && e.u64("ssrc").is_some_and(|ssrc| media.contains_key(&ssrc))
            });
            for e in receiving {
                let ssrc = e.u64("ssrc").unwrap_or(0);
                let bytes = e.u64("bytes-received").unwrap_or(0);
                let bitrate_bps = match self.last_bytes.get(&ssrc) {
                    Some((at, before)) => rate_bps(bytes, *before, (now - *at).as_secs_f64()),
                    None => 0.0,
                };
                self.last_bytes.insert(ssrc, (now, bytes));
                streams.push(StreamStats {
                    ssrc,
                    codec: codec_of(&all, e).or_else(|| media.get(&ssrc).cloned().flatten()),
                    bitrate_bps,
                    packets_received: e.u64("packets-received").unwrap_or(0),
                    packets_lost: e.i64("packets-lost").unwrap_or(0),
                    jitter_ms: e.f64("jitter").map(|s| s * 1000.0),
                });
            }
        }
        let seen = self.quality.seen(now);
        let frozen = seen.frozen.saturating_sub(self.last_frozen);
        self.last_frozen = seen.frozen;
        let video_bitrate_bps = streams
            .iter()
            .filter(|st| st.codec.as_deref().is_some_and(|c| c.starts_with("video/")))
            .fold(0.0, |sum, st| sum + st.bitrate_bps);
        let s = &self.shared;
        Snapshot {
            kind: "consumer-stats",
            producer_id: s.producer_id.lock().unwrap().clone(),
            session_id: s.session_id.lock().unwrap().clone(),
            frames,
            fps,
            first_frame_ms: *s.first_frame_ms.lock().unwrap(),
            elapsed_ms: self.started.elapsed().as_millis() as u64,
            sessions: s.sessions.load(Ordering::Relaxed),
            reconnects: s.reconnects.load(Ordering::Relaxed),
            width: seen.size.map(|(w, _)| w),
            height: seen.size.map(|(_, h)| h),
            video_bitrate_bps,
            frozen_ms: frozen.as_millis() as u64,
            switches: seen.switches,
            ice_pair: pair,
            streams,
        }
    }
}

/// The media streams webrtcbin hands out, by SSRC, with their codec (`video/VP8`): one src
/// pad each, from its first packet on (a repair SSRC gets none: its packets leave as the
/// stream they repair).
fn media_streams(webrtcbin: &gst::Element) -> HashMap<u64, Option<String>> {
    webrtcbin
        .src_pads()
        .iter()
        .filter_map(|pad| {
            let caps = pad.current_caps()?;
            let s = caps.structure(0)?;
            let ssrc = s.get::<u32>("ssrc").ok()?;
            let codec = match (s.get::<&str>("media"), s.get::<&str>("encoding-name")) {
                (Ok(media), Ok(name)) => Some(format!("{media}/{name}")),
                _ => None,
            };
            Some((u64::from(ssrc), codec))
        })
        .collect()
}

pub fn render(s: &Snapshot) -> String {
    let mut out = String::new();
    let base = vec![("producer", s.producer_id.clone().unwrap_or_default())];
    let per = |f: &dyn Fn(&StreamStats) -> Option<f64>| -> Vec<(Vec<(&str, String)>, f64)> {
        s.streams
            .iter()
            .filter_map(|st| {
                let mut labels = base.clone();
                labels.push(("ssrc", st.ssrc.to_string()));
                labels.push(("codec", st.codec.clone().unwrap_or_default()));
                Some((labels, f(st)?))
            })
            .collect()
    };
    write_metric(
        &mut out,
        "consumer_frames_total",
        "counter",
        "Video frames decoded (or recorded).",
        &[(base.clone(), s.frames as f64)],
    );
    write_metric(
        &mut out,
        "consumer_fps",
        "gauge",
        "Video frames per second over the last interval.",
        &[(base.clone(), s.fps)],
    );
    if let Some(ms) = s.first_frame_ms {
        write_metric(
            &mut out,
            "consumer_first_frame_seconds",
            "gauge",
            "Time from start to the first video frame.",
            &[(base.clone(), ms as f64 / 1000.0)],
        );
    }
    write_metric(
        &mut out,
        "consumer_sessions_total",
        "counter",
        "Sessions started (more than one: the producer was found again).",
        &[(base.clone(), s.sessions as f64)],
    );
    write_metric(
        &mut out,
        "consumer_signalling_reconnects_total",
        "counter",
        "Signalling connections replaced.",
        &[(base.clone(), s.reconnects as f64)],
    );
    write_metric(
        &mut out,
        "consumer_frozen_seconds",
        "gauge",
        "Time the video stood frozen during the last interval.",
        &[(base.clone(), s.frozen_ms as f64 / 1000.0)],
    );
    write_metric(
        &mut out,
        "consumer_resolution_switches_total",
        "counter",
        "Changes of the received video resolution.",
        &[(base.clone(), s.switches as f64)],
    );
    if let Some(h) = s.height {
        write_metric(
            &mut out,
            "consumer_video_height_pixels",
            "gauge",
            "Height of the last decoded video frame.",
            &[(base.clone(), f64::from(h))],
        );
    }
    write_metric(
        &mut out,
        "consumer_stream_bitrate_bps",
        "gauge",
        "Received bits per second.",
        &per(&|st| Some(st.bitrate_bps)),
    );
    write_metric(
        &mut out,
        "consumer_stream_packets_lost",
        "gauge",
        "Packets lost.",
        &per(&|st| Some(st.packets_lost as f64)),
    );
    write_metric(
        &mut out,
        "consumer_stream_jitter_seconds",
        "gauge",
        "Interarrival jitter.",
        &per(&|st| st.jitter_ms.map(|j| j / 1000.0)),
    );
    out
}
