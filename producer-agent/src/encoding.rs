//! `--encoding shared`: encode once, serve many. One encoder per stream runs in the producer's
//! own pipeline and its output goes into webrtcsink as pre-encoded caps, which webrtcsink
//! then only payloads per consumer (its default, `per-consumer`, runs one encoder per
//! consumer, each at the bitrate its own congestion control picks).
//!
//! Keyframes: a consumer that joins needs one at once (webrtcsink asks on its behalf, and
//! keeps asking on every frame until it gets one), and consumers send PLI/FIR on loss. All of
//! those requests reach the one shared encoder, coalesced (`agent_core::keyframes`): a request is served
//! at once if no keyframe was forced in the last `--min-keyframe-interval`; otherwise at the end
//! of that interval, unless a keyframe went out meanwhile (which satisfies every consumer
//! waiting then). So at most one forced keyframe per interval, and no request waits longer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use gst::prelude::*;
use tracing::info;

/// `--encoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Encoding {
    /// webrtcsink encodes for each consumer (per-consumer congestion control).
    PerConsumer,
    /// One encoder per stream, shared by every consumer.
    Shared,
}

impl Encoding {
    pub fn name(self) -> &'static str {
        match self {
            Encoding::PerConsumer => "per-consumer",
            Encoding::Shared => "shared",
        }
    }
}

/// How the shared encoders are set up.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Caps name of the video codec (`video/x-vp8`, `video/x-h264`, …).
    pub video_codec: &'static str,
    /// Target of the video encoder, bits/s (the start, when it follows the audience).
    pub bitrate: u32,
    pub min_keyframe_interval: Duration,
    /// Follow the consumers' bandwidth estimates (congestion control on) within these bounds,
    /// bits/s; `None`: keep `bitrate`.
    pub follow: Option<(u32, u32)>,
}

/// What the shared encoders report (`sharedEncoder` in the stats).
#[derive(Default)]
pub struct Stats {
    /// The video codec, once the chain exists.
    pub codec: Mutex<Option<String>>,
    pub bitrate: AtomicU64,
    /// Keyframe requests that reached the shared video encoder, those forced, keyframes sent.
    pub keyframes: Arc<agent_core::keyframes::KeyframeCounts>,
    /// The consumers' latest bandwidth estimates (bits/s), when the bitrate follows them.
    pub estimates: Mutex<Vec<u64>>,
    /// The shared video encoder and the bounds of its bitrate, when it follows the audience.
    encoder: Mutex<Option<Followed>>,
}

/// The shared video encoder and the bounds its bitrate follows the audience within.
type Followed = (gst::glib::WeakRef<gst::Element>, (u32, u32));

/// `ENCODER name=encoder ! CAPS ! … name=out` for the shared video codec `codec`: what follows
/// the raw video in a shared chain (and in each layer of a ladder, `ladder.rs`).
pub fn video_encoder(codec: &str) -> anyhow::Result<&'static str> {
    Ok(match codec {
        "video/x-vp8" => "vp8enc name=encoder ! video/x-vp8 ! identity name=out",
        "video/x-vp9" => "vp9enc name=encoder ! video/x-vp9 ! identity name=out",
        // Constrained baseline: what every browser decodes; the parser repeats SPS/PPS before
        // every keyframe, so a joining consumer can start at any of them.
        "video/x-h264" => "x264enc name=encoder ! video/x-h264,profile=constrained-baseline ! h264parse config-interval=-1 name=out",
        other => anyhow::bail!("--encoding shared cannot encode {other} here (vp8, vp9, h264)"),
    })
}

/// The shared encoder's chain for a raw `kind` stream.
pub fn shared(kind: &str, settings: &Settings, stats: &Arc<Stats>) -> anyhow::Result<gst::Bin> {
    let desc = match kind {
        "audio" => "audioconvert ! audioresample ! queue ! opusenc name=encoder bitrate=32000 ! audio/x-opus ! identity name=out".to_string(),
        _ => format!("videoconvert ! queue ! {}", video_encoder(settings.video_codec)?),
    };
    let bin = gst::parse::bin_from_description(&desc, true)
        .with_context(|| format!("the shared {kind} encoder"))?;
    let encoder = bin.by_name("encoder").context("no encoder")?;
    let out = bin.by_name("out").context("no encoder output")?;
    if kind == "audio" {
        // Chrome's audio decoder expects perfect timestamps (as webrtcsink sets).
        encoder.set_property("perfect-timestamp", true);
        return Ok(bin);
    }
    configure(&encoder, settings.bitrate);
    *stats.codec.lock().unwrap() = Some(settings.video_codec.to_string());
    stats
        .bitrate
        .store(settings.bitrate as u64, Ordering::Relaxed);
    let encoder_src = encoder.static_pad("src").context("encoder src")?;
    agent_core::keyframes::coalesce(
        &out.static_pad("src").context("encoder output src")?,
        settings.min_keyframe_interval,
        stats.keyframes.clone(),
        // (sent to the encoder's own pad: past the probe on the output)
        move |event| {
            encoder_src.send_event(event);
        },
    );
    if let Some(bounds) = settings.follow {
        *stats.encoder.lock().unwrap() = Some((encoder.downgrade(), bounds));
    }
    info!(
        codec = settings.video_codec,
        bitrate = settings.bitrate,
        "shared encoding: one encoder for every consumer"
    );
    Ok(bin)
}

/// Real-time settings, as webrtcsink gives its own encoders: no lookahead or B-frames,
/// constant bitrate, fastest presets, keyframes only when asked for.
pub fn configure(encoder: &gst::Element, bitrate: u32) {
    let name = encoder.factory().map(|f| f.name().to_string());
    match name.as_deref() {
        Some("vp8enc") | Some("vp9enc") => {
            encoder.set_property("deadline", 1i64);
            encoder.set_property("target-bitrate", bitrate as i32);
            encoder.set_property("cpu-used", -16i32);
            encoder.set_property("keyframe-max-dist", 2000i32);
            encoder.set_property_from_str("keyframe-mode", "disabled");
            encoder.set_property_from_str("end-usage", "cbr");
            encoder.set_property("buffer-initial-size", 100i32);
            encoder.set_property("buffer-optimal-size", 120i32);
            encoder.set_property("buffer-size", 150i32);
            encoder.set_property("max-intra-bitrate", 250i32);
            encoder.set_property_from_str("error-resilient", "default");
            encoder.set_property("lag-in-frames", 0i32);
            // One thread: libvpx's second thread spins. Measured here (gst-launch, 10 s of
            // 30 fps, realtime settings as above): 720p 15 % of a core with 1 thread, 38 % with
            // 2; 360p 4.5 % against 38 %. A 3-layer ladder cost 154 % with 2 threads each.
            encoder.set_property("threads", 1i32);
        }
        Some("x264enc") => {
            encoder.set_property("bitrate", bitrate / 1000);
            encoder.set_property_from_str("tune", "zerolatency");
            encoder.set_property_from_str("speed-preset", "ultrafast");
            encoder.set_property("key-int-max", 2000u32);
            encoder.set_property("b-adapt", false);
            encoder.set_property("vbv-buf-capacity", 120u32);
            encoder.set_property("threads", 2u32);
        }
        _ => {}
    }
}

/// The share of consumers whose estimate the shared bitrate may exceed: the 20th percentile
/// of the estimates, so that the weakest fifth of the audience (one bad link among a few) does
/// not pull everyone down, while a bitrate most links cannot carry is never chosen.
const PERCENTILE: f64 = 0.2;

/// Below this relative change the encoder is left alone (estimates move all the time, and
/// every change of target makes the rate control hunt).
const DEADBAND: f64 = 0.05;

/// The bitrate the shared encoder should have for `estimates` (bits/s), within `bounds`.
pub fn audience_bitrate(estimates: &[u64], bounds: (u32, u32)) -> Option<u32> {
    if estimates.is_empty() {
        return None;
    }
    let mut sorted = estimates.to_vec();
    sorted.sort_unstable();
    let i = ((sorted.len() - 1) as f64 * PERCENTILE).floor() as usize;
    Some((sorted[i].min(u32::MAX as u64) as u32).clamp(bounds.0, bounds.1))
}

impl Stats {
    /// With the bitrate following the audience: reads each consumer's congestion-control
    /// estimate (webrtcsink's `rtpgccbwe` in each consumer's `webrtcbin`) and sets the shared
    /// encoder's target to [`audience_bitrate`]. Called every second.
    pub fn follow_audience(&self, webrtcbins: &[gst::Element]) {
        let Some((encoder, bounds)) = self.encoder.lock().unwrap().clone() else {
            return;
        };
        let Some(encoder) = encoder.upgrade() else {
            return;
        };
        let estimates: Vec<u64> = webrtcbins
            .iter()
            .filter_map(|w| w.downcast_ref::<gst::Bin>())
            .filter_map(|bin| {
                bin.iterate_recurse()
                    .into_iter()
                    .filter_map(Result::ok)
                    .find(|e| e.factory().is_some_and(|f| f.name() == "rtpgccbwe"))
            })
            .map(|bwe| bwe.property::<u32>("estimated-bitrate") as u64)
            .collect();
        *self.estimates.lock().unwrap() = estimates.clone();
        let Some(target) = audience_bitrate(&estimates, bounds) else {
            return;
        };
        let now = self.bitrate.load(Ordering::Relaxed) as f64;
        if (target as f64 - now).abs() <= now * DEADBAND {
            return;
        }
        info!(
            target,
            consumers = estimates.len(),
            "the shared encoder's bitrate follows the audience"
        );
        match encoder.factory().map(|f| f.name().to_string()).as_deref() {
            Some("x264enc") => encoder.set_property("bitrate", target / 1000),
            _ => encoder.set_property("target-bitrate", target as i32),
        }
        self.bitrate.store(target as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::audience_bitrate;

    #[test]
    fn the_audience_bitrate_is_a_low_percentile_within_bounds() {
        let bounds = (300_000, 4_000_000);
        assert_eq!(audience_bitrate(&[], bounds), None);
        assert_eq!(audience_bitrate(&[2_000_000], bounds), Some(2_000_000));
        // With four consumers the weakest sets the pace; with ten, one bad link does not.
        let four = [400_000, 2_500_000, 3_000_000, 3_500_000];
        assert_eq!(audience_bitrate(&four, bounds), Some(400_000));
        let ten = [
            100_000, 2_000_000, 2_100_000, 2_200_000, 2_300_000, 2_400_000, 2_500_000, 2_600_000,
            2_700_000, 2_800_000,
        ];
        assert_eq!(audience_bitrate(&ten, bounds), Some(2_000_000));
        // Within the bounds whatever the estimates say.
        assert_eq!(audience_bitrate(&[50_000], bounds), Some(300_000));
        assert_eq!(audience_bitrate(&[9_000_000], bounds), Some(4_000_000));
    }
}
