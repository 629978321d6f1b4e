//! The webrtcsrc pipeline of the consumer: decoded video frames are counted, audio is dropped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context;
use gst::prelude::*;
use tracing::{info, warn};

use crate::Args;

/// GStreamer, with webrtcsrc and rtpgccbwe registered from this binary.
pub fn init() -> anyhow::Result<()> {
    gst::init().context("cannot initialize GStreamer")?;
    gstrswebrtc::plugin_register_static().context("cannot register webrtc elements")?;
    gstrsrtp::plugin_register_static().context("cannot register rtp elements")?;
    Ok(())
}

/// Builds `webrtcsrc ! fakesink` (one sink per stream); returns the video frame counter.
pub fn build(args: &Args, producer_id: &str) -> anyhow::Result<(gst::Pipeline, Arc<AtomicU64>)> {
    let pipeline = gst::Pipeline::new();
    let src = gst::ElementFactory::make("webrtcsrc")
        .property("stun-server", args.stun_server.as_deref())
        .build()
        .context("webrtcsrc is not available")?;
    let signaller = src.property::<gst::glib::Object>("signaller");
    signaller.set_property("uri", &args.server);
    signaller.set_property("producer-peer-id", producer_id);
    pipeline.add(&src)?;

    let frames = Arc::new(AtomicU64::new(0));
    let counter = frames.clone();
    let weak = pipeline.downgrade();
    src.connect_pad_added(move |_, pad| {
        let Some(pipeline) = weak.upgrade() else {
            return;
        };
        let is_video = pad.name().starts_with("video");
        info!(pad = %pad.name(), "new stream");
        // Raw caps downstream make webrtcsrc decode: with a sink that accepts anything it
        // would hand out RTP, and we would count packets instead of frames.
        let desc = if is_video {
            "videoconvert ! video/x-raw ! fakesink name=sink sync=false"
        } else {
            "audioconvert ! fakesink sync=false"
        };
        let bin = match gst::parse::bin_from_description(desc, true) {
            Ok(b) => b,
            Err(e) => return warn!("cannot create sink for {}: {e}", pad.name()),
        };
        if is_video {
            let counter = counter.clone();
            if let Some(sinkpad) = bin.by_name("sink").and_then(|s| s.static_pad("sink")) {
                sinkpad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
                    counter.fetch_add(1, Ordering::Relaxed);
                    gst::PadProbeReturn::Ok
                });
            }
        }
        if pipeline.add(&bin).is_err() || bin.sync_state_with_parent().is_err() {
            return warn!("cannot add sink for {}", pad.name());
        }
        if let Some(sinkpad) = bin.static_pad("sink") {
            if let Err(e) = pad.link(&sinkpad) {
                warn!("cannot link {}: {e:?}", pad.name());
            }
        }
    });
    Ok((pipeline, frames))
}
