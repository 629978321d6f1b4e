//! What goes between each raw stream of the source and webrtcsink, by `--encoding`: nothing
//! (webrtcsink encodes per consumer), the shared encoder (`encoding.rs`), or one encoder per
//! layer of a ladder (`ladder.rs`). Apart from both so that neither imports the other.

use std::sync::Arc;
use std::time::Duration;

use crate::encoding::{self, Settings, Stats};
use crate::ladder;

/// What goes between each raw stream of the source and webrtcsink.
#[derive(Clone)]
pub enum Chain {
    /// Raw video/audio: webrtcsink encodes per consumer.
    Raw,
    Shared(Settings, Arc<Stats>),
    /// Shared, video encoded once per layer of the ladder (`ladder.rs`).
    Ladder(Settings, Arc<ladder::Stats>, Option<Duration>),
}

impl Chain {
    /// A bin with one sink and one src pad for a raw `kind` (`video`/`audio`) stream.
    pub fn build(&self, kind: &str) -> anyhow::Result<gst::Bin> {
        match self {
            Chain::Raw => {
                let desc = match kind {
                    "video" => "videoconvert ! queue",
                    _ => "audioconvert ! audioresample ! queue",
                };
                Ok(gst::parse::bin_from_description(desc, true)?)
            }
            Chain::Shared(settings, stats) => encoding::shared(kind, settings, stats),
            Chain::Ladder(settings, _, _) if kind == "audio" => {
                encoding::shared(kind, settings, &Arc::default())
            }
            Chain::Ladder(settings, stats, interval) => {
                let ladder = proto::layers::Ladder(stats.layers.iter().map(|l| l.layer).collect());
                ladder::build(settings, &ladder, stats, *interval)
            }
        }
    }

    /// The msid of the webrtcsink pad fed by the chain's `index`-th src pad: with a ladder,
    /// layer k's video is `gwc-layer-k` and the audio joins the top layer's (`gwc-layer-0`),
    /// so that a browser plays them as one stream; none otherwise.
    pub fn msid(&self, kind: &str, index: usize) -> Option<String> {
        match self {
            Chain::Ladder(..) => Some(proto::layers::msid(if kind == "audio" { 0 } else { index })),
            _ => None,
        }
    }
}
