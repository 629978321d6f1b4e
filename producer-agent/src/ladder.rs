//! `--encoding shared --layers N` / `--ladder …`: an encoding ladder. One capture, encoded N
//! times at halved sizes, each layer a video stream of its own into webrtcsink (pad
//! `video_k`, msid [`proto::layers::msid`]`(k)`), so a relay can forward each viewer the layer
//! its link carries (docs/agents.md "Ladder", docs/protocol.md "Layers").
//!
//! ```text
//! source ─ videoconvert ─ tee ─ queue ─ videoscale ─ W₀xH₀ ─ tee ─┬─ queue ─ encoder₀ ─ out₀ ─► video_0
//!                                                                  └─ queue ─ videoscale ─ W₁xH₁ ─ tee ─┬─ queue ─ encoder₁ ─ out₁ ─► video_1
//!                                                                                                      └─ …
//! ```
//!
//! Each layer is scaled from the one above (a cascade: 360p → 180p reads a quarter of the
//! pixels 720p → 180p does), by `gwchalve` (a 2×2 box filter, `halve.rs`) when it is exactly
//! half of it, else by `videoscale`; from the capture when an explicit `--ladder` has a layer
//! larger than the one above it.
//!
//! Keyframes: the first frame, and every `--keyframe-interval`, is forced on every layer by
//! one downstream force-key-unit event sent into the tee, so each encoder makes the same frame
//! a keyframe. A request that reaches `out_k` (webrtcsink for a joining consumer, a
//! consumer's PLI/FIR on layer k's stream) is coalesced per layer (`agent_core::keyframes`,
//! one gate per layer) and forces encoder k only: a relay switching a viewer to layer k needs
//! a keyframe of that layer, not of the others.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_core::exit::Ending;
use agent_core::keyframes::KeyframeCounts;
use anyhow::Context;
use gst::prelude::*;
use proto::layers::{Ladder, Layer};
use tracing::info;

use crate::encoding;

/// Most layers `--layers` makes (720p halves down to 90p).
pub const MAX_LAYERS: u32 = 4;

/// Bitrate of layer k relative to the top one: each step has a quarter of the pixels and about
/// a quarter of the bits, close to LiveKit's defaults for 720p (1.7 M, 450 k, 160 k), with a
/// bottom that leaves a 250 kbit/s link room for Opus and the packets' headers (~60 kbit/s at
/// ~90 packets/s). 2000 kbit/s at the top gives 2000, 500, 100, 30. (0.3 and 0.075 were tried
/// first: a 600 kbit/s 360p layer + Opus filled 85 % of an 800 kbit/s link and a 150 kbit/s
/// bottom 90 % of a 250 kbit/s one, and every keyframe or probe overflowed them.)
const BITRATE_STEPS: [f64; MAX_LAYERS as usize] = [1.0, 0.25, 0.05, 0.015];

/// Smallest picture side a layer may have.
const MIN_SIDE: u32 = 16;

/// The ladder `--layers n` makes from a `width`x`height` capture whose top layer gets
/// `top_bps`: sizes halved per step (rounded down to even), bitrates by [`BITRATE_STEPS`].
pub fn derive(width: u32, height: u32, top_bps: u32, n: u32) -> Result<Ladder, Ending> {
    if !(1..=MAX_LAYERS).contains(&n) {
        return Err(Ending::Usage(format!(
            "--layers {n}: 1 to {MAX_LAYERS} layers"
        )));
    }
    let even = |v: u32| (v & !1).max(2);
    let layers: Vec<Layer> = (0..n)
        .map(|k| Layer {
            width: if k == 0 { width } else { even(width >> k) },
            height: if k == 0 { height } else { even(height >> k) },
            kbps: ((top_bps as f64 / 1000.0) * BITRATE_STEPS[k as usize]).round() as u32,
        })
        .collect();
    if let Some(small) = layers
        .iter()
        .find(|l| l.width < MIN_SIDE || l.height < MIN_SIDE || l.kbps == 0)
    {
        return Err(Ending::Usage(format!(
            "--layers {n} of a {width}x{height} picture at {top_bps} bits/s makes a layer of {small}: too small (sides of at least {MIN_SIDE}, at least 1 kbit/s)"
        )));
    }
    Ok(Ladder(layers))
}

/// What the ladder flags ask for, checked: `None` for one layer as before (`--layers`
/// absent or 1, no `--ladder`). Errors are usage errors (exit 2).
pub struct Request<'a> {
    pub layers: Option<u32>,
    pub ladder: Option<&'a Ladder>,
    pub shared: bool,
    pub bitrate: Option<u32>,
    /// `--min-bitrate`/`--max-bitrate` given (they bound the single shared encoder's following).
    pub follow_bounds: bool,
    /// The test source's picture; `None` for `uri:`/`pipeline:` sources (size unknown here).
    pub capture: Option<(u32, u32)>,
}

impl Request<'_> {
    pub fn resolve(&self) -> Result<Option<Ladder>, Ending> {
        let usage = |s: &str| Err(Ending::Usage(s.into()));
        if (self.layers.is_some() || self.ladder.is_some()) && !self.shared {
            return usage("--layers and --ladder need --encoding shared (webrtcsink's per-consumer encoders scale on their own)");
        }
        let ladder = match (self.layers, self.ladder) {
            (Some(_), Some(_)) => {
                return usage(
                    "--layers and --ladder exclude each other (--ladder lists the layers)",
                )
            }
            (_, Some(ladder)) => {
                if self.bitrate.is_some() {
                    return usage("--bitrate and --ladder exclude each other (--ladder gives each layer's bitrate)");
                }
                if let Some(l) = ladder.0.iter().find(|l| l.kbps > 2_000_000) {
                    return Err(Ending::Usage(format!(
                        "--ladder: {l} is above 2000000 kbit/s"
                    )));
                }
                ladder.clone()
            }
            (None | Some(1), None) => return Ok(None),
            (Some(n), None) => {
                let Some((w, h)) = self.capture else {
                    return usage("--layers needs the picture size, known only for --source test: with uri: or pipeline: give the layers with --ladder");
                };
                derive(w, h, self.bitrate.unwrap_or(2_000_000), n)?
            }
        };
        if self.follow_bounds {
            return usage("--min-bitrate/--max-bitrate bound the single shared encoder's bitrate as it follows the consumers; a ladder's bitrates are fixed (a relay picks each viewer's layer instead)");
        }
        Ok(Some(ladder))
    }
}

/// What the ladder reports (`ladder` in the stats), per layer.
pub struct Stats {
    pub layers: Vec<LayerStats>,
    /// Keyframes forced on every layer together (the start, `--keyframe-interval`).
    pub aligned_keyframes: AtomicU64,
    /// Set to have the next frame forced a keyframe on every layer.
    force_all: AtomicBool,
}

pub struct LayerStats {
    pub layer: Layer,
    /// Requests from consumers on this layer's stream, those forced, keyframes sent.
    pub keyframes: Arc<KeyframeCounts>,
    /// Presentation times (ms) of the layer's latest keyframes, oldest first.
    pub recent_keyframes_ms: Mutex<VecDeque<u64>>,
}

/// How many keyframe times each layer keeps for the stats.
const RECENT: usize = 8;

impl Stats {
    /// With a ladder, `shared_encoder` in the stats describes the top layer's encoder (its
    /// keyframe counts are the top layer's, see [`Stats::new`]).
    pub fn describe_top(&self, settings: &encoding::Settings, shared: &encoding::Stats) {
        *shared.codec.lock().unwrap() = Some(settings.video_codec.to_string());
        let top = self.layers.first().map(|l| l.layer.kbps as u64 * 1000);
        shared
            .bitrate
            .store(top.unwrap_or_default(), Ordering::Relaxed);
    }

    /// The ladder's stats; layer 0 counts into `top` (the shared encoder's, which the stats'
    /// `shared_encoder` reports).
    pub fn new(ladder: &Ladder, top: Arc<KeyframeCounts>) -> Stats {
        Stats {
            layers: ladder
                .0
                .iter()
                .enumerate()
                .map(|(k, l)| LayerStats {
                    layer: *l,
                    keyframes: if k == 0 { top.clone() } else { Arc::default() },
                    recent_keyframes_ms: Mutex::default(),
                })
                .collect(),
            aligned_keyframes: AtomicU64::new(0),
            force_all: AtomicBool::new(true),
        }
    }
}

/// The ladder's video bin: one sink pad, a src pad `src_k` per layer, top first.
pub fn build(
    settings: &encoding::Settings,
    ladder: &Ladder,
    stats: &Arc<Stats>,
    keyframe_interval: Option<Duration>,
) -> anyhow::Result<gst::Bin> {
    let bin = gst::Bin::new();
    let convert = gst::ElementFactory::make("videoconvert").build()?;
    let tee = gst::ElementFactory::make("tee").build()?;
    bin.add_many([&convert, &tee])?;
    convert.link(&tee)?;
    let sink = gst::GhostPad::with_target(&convert.static_pad("sink").context("convert sink")?)?;
    bin.add_pad(&sink)?;
    // Each layer is scaled from the one above when that is at least as large (a cascade), else
    // from the capture: scaling reads the input's pixels, and `videoscale`'s 720p → 360p cost
    // more than the 360p encoder (BENCHMARKS.md "Adaptive", the ladder's cost).
    let mut above: Option<(&Layer, gst::Element)> = None;
    for (k, layer) in ladder.0.iter().enumerate() {
        let (feed, scaler) = match &above {
            // Exactly half the layer above (the `--layers` ladders): `gwchalve` (halve.rs).
            Some((a, split)) if a.width / 2 == layer.width && a.height / 2 == layer.height => {
                (split, "gwchalve")
            }
            Some((a, split)) if a.width >= layer.width && a.height >= layer.height => {
                (split, "videoscale")
            }
            _ => (&tee, "videoscale"),
        };
        let scaled =
            scaled(&bin, feed, scaler, layer).with_context(|| format!("layer {k} ({layer})"))?;
        let desc = format!("queue ! {}", encoding::video_encoder(settings.video_codec)?);
        let branch = gst::parse::bin_from_description(&desc, true)
            .with_context(|| format!("layer {k} ({layer})"))?;
        let encoder = branch.by_name("encoder").context("no encoder")?;
        let out = branch.by_name("out").context("no encoder output")?;
        let bps = layer.kbps.saturating_mul(1000);
        encoding::configure(&encoder, bps);
        bin.add(&branch)?;
        scaled.link(&branch)?;
        above = Some((layer, scaled));
        let src = gst::GhostPad::builder_with_target(&branch.static_pad("src").context("src")?)?
            .name(format!("src_{k}"))
            .build();
        bin.add_pad(&src)?;
        let encoder_src = encoder.static_pad("src").context("encoder src")?;
        let layer_stats = &stats.layers[k];
        agent_core::keyframes::coalesce(
            &out.static_pad("src").context("encoder output src")?,
            settings.min_keyframe_interval,
            layer_stats.keyframes.clone(),
            move |event| {
                encoder_src.send_event(event);
            },
        );
        let s = stats.clone();
        out.static_pad("src")
            .context("encoder output src")?
            .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
                if let Some(buffer) = info.buffer() {
                    if !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT) {
                        let pts = buffer.pts().map(|t| t.mseconds()).unwrap_or_default();
                        let mut recent = s.layers[k].recent_keyframes_ms.lock().unwrap();
                        if recent.len() == RECENT {
                            recent.pop_front();
                        }
                        recent.push_back(pts);
                    }
                }
                gst::PadProbeReturn::Ok
            });
    }
    align_keyframes(&tee, stats.clone())?;
    if let Some(every) = keyframe_interval.filter(|d| !d.is_zero()) {
        let s = stats.clone();
        gst::glib::timeout_add(every, move || {
            s.force_all.store(true, Ordering::Relaxed);
            gst::glib::ControlFlow::Continue
        });
    }
    info!(
        codec = settings.video_codec,
        ladder = %ladder,
        "shared encoding with a ladder: one encoder per layer"
    );
    Ok(bin)
}

/// `queue ! scaler ! I420 WxH ! tee` in `bin`, fed from `feed` (a tee): the layer's picture, for
/// its encoder and the layers below; the tee is returned.
fn scaled(
    bin: &gst::Bin,
    feed: &gst::Element,
    scaler: &str,
    layer: &Layer,
) -> anyhow::Result<gst::Element> {
    let queue = gst::ElementFactory::make("queue").build()?;
    let scale = gst::ElementFactory::make(scaler).build()?;
    let caps = gst::Caps::builder("video/x-raw")
        .field("format", "I420")
        .field("width", layer.width as i32)
        .field("height", layer.height as i32)
        .field("pixel-aspect-ratio", gst::Fraction::new(1, 1))
        .build();
    let filter = gst::ElementFactory::make("capsfilter")
        .property("caps", caps)
        .build()?;
    let split = gst::ElementFactory::make("tee").build()?;
    bin.add_many([&queue, &scale, &filter, &split])?;
    gst::Element::link_many([feed, &queue, &scale, &filter, &split])?;
    Ok(split)
}

/// When a keyframe on every layer is due, a downstream force-key-unit event goes into the tee
/// just before the next frame: serialized with the frames, it reaches every encoder right
/// before that same frame, which each makes a keyframe.
fn align_keyframes(tee: &gst::Element, stats: Arc<Stats>) -> anyhow::Result<()> {
    let pad = tee.static_pad("sink").context("tee sink")?;
    pad.add_probe(gst::PadProbeType::BUFFER, move |pad, _| {
        if stats.force_all.swap(false, Ordering::Relaxed) {
            stats.aligned_keyframes.fetch_add(1, Ordering::Relaxed);
            let event = gst_video::DownstreamForceKeyUnitEvent::builder()
                .all_headers(true)
                .build();
            // (in the streaming thread, whose stream lock this re-takes)
            pad.send_event(event);
        }
        gst::PadProbeReturn::Ok
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::derive;

    #[test]
    fn layers_halve_the_picture_and_step_the_bitrate_down() {
        let three = derive(1280, 720, 2_000_000, 3).unwrap();
        assert_eq!(three.to_string(), "1280x720@2000,640x360@500,320x180@100");
        // Odd halves are rounded down to even sizes (4:2:0 encoders want them).
        let odd = derive(1280, 720, 2_000_000, 4).unwrap();
        assert_eq!(odd.0[3].to_string(), "160x90@30");
        assert_eq!(
            derive(640, 360, 1_000_000, 2).unwrap().to_string(),
            "640x360@1000,320x180@250"
        );
        assert!(derive(64, 64, 2_000_000, 4).is_err(), "8x8 is too small");
        assert!(derive(640, 360, 2_000_000, 0).is_err());
        assert!(derive(640, 360, 2_000_000, 5).is_err());
    }
}
