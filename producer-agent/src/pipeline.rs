//! The webrtcsink pipeline of the producer.

use std::str::FromStr;

use anyhow::{anyhow, Context};
use gst::prelude::*;
use tracing::info;

use crate::Args;

/// Where the published media comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A live test pattern (and tone with --audio).
    Test,
}

impl FromStr for Source {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "test" => Ok(Source::Test),
            other => Err(format!("unknown source '{other}' (supported: test)")),
        }
    }
}

/// GStreamer, with webrtcsink and rtpgccbwe registered from this binary.
pub fn init() -> anyhow::Result<()> {
    gst::init().context("cannot initialize GStreamer")?;
    gstrswebrtc::plugin_register_static().context("cannot register webrtc elements")?;
    gstrsrtp::plugin_register_static().context("cannot register rtp elements")?;
    Ok(())
}

pub fn build(args: &Args) -> anyhow::Result<gst::Pipeline> {
    let Source::Test = args.source;
    let mut desc = format!(
        "videotestsrc is-live=true pattern=smpte ! video/x-raw,width={},height={},framerate={}/1 ! queue ! ws.",
        args.width, args.height, args.fps
    );
    if args.audio {
        desc.push_str(" audiotestsrc is-live=true wave=sine ! queue ! ws.");
    }
    desc.push_str(" webrtcsink name=ws");
    let pipeline = gst::parse::launch(&desc)
        .context("cannot build the pipeline")?
        .downcast::<gst::Pipeline>()
        .map_err(|_| anyhow!("not a pipeline"))?;
    let sink = pipeline.by_name("ws").context("no webrtcsink")?;
    let meta = gst::Structure::builder("meta")
        .field("name", &args.name)
        .build();
    sink.set_property("meta", &meta);
    sink.set_property("stun-server", args.stun_server.as_deref());
    sink.property::<gst::glib::Object>("signaller")
        .set_property("uri", &args.server);

    sink.connect("consumer-added", false, |values| {
        let peer = values.get(1).and_then(|v| v.get::<String>().ok());
        info!(consumer = ?peer, "consumer added");
        eprintln!(
            "producer-agent: consumer {} added",
            peer.unwrap_or_default()
        );
        None
    });
    sink.connect("consumer-removed", false, |values| {
        let peer = values.get(1).and_then(|v| v.get::<String>().ok());
        info!(consumer = ?peer, "consumer removed");
        eprintln!(
            "producer-agent: consumer {} removed",
            peer.unwrap_or_default()
        );
        None
    });
    Ok(pipeline)
}
