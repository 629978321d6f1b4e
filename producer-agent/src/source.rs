//! What the producer publishes: a test pattern, a URI, or a gst-launch fragment, linked to
//! webrtcsink's request pads.

use std::str::FromStr;

use agent_core::exit::Ending;
use anyhow::{anyhow, Context};
use gst::prelude::*;
use tracing::{info, warn};

use crate::chain::Chain;

/// `--source`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A live test pattern (and a tone with `--audio`).
    Test,
    /// Anything uridecodebin opens: file://, rtsp://, http(s)://. Files loop.
    Uri(String),
    /// A gst-launch fragment whose unlinked source pads give raw video and/or audio.
    Pipeline(String),
}

impl FromStr for Source {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "test" {
            Ok(Source::Test)
        } else if let Some(uri) = s.strip_prefix("uri:") {
            if gst::glib::uri_parse_scheme(uri).is_none() {
                return Err(format!(
                    "'{uri}' is not a URI (file:///path, rtsp://…, http://…)"
                ));
            }
            Ok(Source::Uri(uri.to_string()))
        } else if let Some(fragment) = s.strip_prefix("pipeline:") {
            if fragment.trim().is_empty() {
                return Err("pipeline: needs a gst-launch fragment".into());
            }
            Ok(Source::Pipeline(fragment.to_string()))
        } else {
            Err(format!(
                "unknown source '{s}' (supported: test, uri:URI, pipeline:'FRAGMENT')"
            ))
        }
    }
}

/// Parameters of the test source.
pub struct TestParams {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub audio: bool,
}

/// Adds the source to `pipeline` and links it to `sink` (webrtcsink) through `chain`. Streams
/// that appear later (uridecodebin) are linked when they do; `on_stream` sees every link.
pub fn add(
    pipeline: &gst::Pipeline,
    sink: &gst::Element,
    source: &Source,
    test: &TestParams,
    chain: &Chain,
    on_stream: impl Fn(&gst::Pad) + Send + Sync + Clone + 'static,
) -> anyhow::Result<()> {
    match source {
        Source::Test => {
            let video = gst::parse::bin_from_description(
                &format!(
                    "videotestsrc is-live=true pattern=smpte ! capsfilter caps=\"video/x-raw,width={},height={},framerate={}/1\"",
                    test.width, test.height, test.fps
                ),
                true,
            )
            .context("test video source")?;
            add_and_link(
                pipeline,
                sink,
                video.upcast_ref(),
                "video",
                chain,
                &on_stream,
            )?;
            if test.audio {
                let audio = gst::parse::bin_from_description(
                    "audiotestsrc is-live=true wave=sine volume=0.2",
                    true,
                )
                .context("test audio source")?;
                add_and_link(
                    pipeline,
                    sink,
                    audio.upcast_ref(),
                    "audio",
                    chain,
                    &on_stream,
                )?;
            }
        }
        Source::Pipeline(fragment) => {
            // gst-launch accepts a fragment ending in caps (`… ! video/x-raw,width=320`), a
            // bin description does not: give such a fragment something to end in.
            let bin = gst::parse::bin_from_description(fragment, true)
                .or_else(|e| {
                    gst::parse::bin_from_description(&format!("{fragment} ! identity"), true)
                        .map_err(|_| e)
                })
                .map_err(|e| Ending::Usage(format!("cannot parse the pipeline fragment: {e}")))?;
            let pads: Vec<gst::Pad> = bin.src_pads();
            if pads.is_empty() {
                return Err(Ending::Usage(
                    "the pipeline fragment has no unlinked source pad (end it with the element that gives raw video or audio)".into(),
                )
                .into());
            }
            pipeline.add(&bin)?;
            for pad in pads {
                let caps = pad.query_caps(None);
                let Some(kind) = media_kind(&caps) else {
                    return Err(Ending::Usage(format!(
                        "pad {} of the fragment gives '{caps}', neither audio nor video",
                        pad.name()
                    ))
                    .into());
                };
                link_pad(pipeline, sink, &pad, kind, chain, &on_stream)?;
            }
        }
        Source::Uri(uri) => {
            if let Some(path) = uri.strip_prefix("file://") {
                let path = gst::glib::filename_from_uri(uri)
                    .map(|(p, _)| p)
                    .unwrap_or_else(|_| path.into());
                std::fs::File::open(&path)
                    .map_err(|e| Ending::Usage(format!("cannot open {}: {e}", path.display())))?;
            }
            let decode = gst::ElementFactory::make("uridecodebin")
                .name("source")
                .property("uri", uri)
                .build()
                .context("uridecodebin is not available")?;
            pipeline.add(&decode)?;
            let (weak_pipeline, sink, chain) = (pipeline.downgrade(), sink.clone(), chain.clone());
            decode.connect_pad_added(move |_, pad| {
                let Some(pipeline) = weak_pipeline.upgrade() else {
                    return;
                };
                let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
                let Some(kind) = media_kind(&caps) else {
                    return info!("ignoring a '{caps}' stream of the source");
                };
                if let Err(e) = link_pad(&pipeline, &sink, pad, kind, &chain, &on_stream) {
                    warn!("cannot publish the {kind} stream of the source: {e:#}");
                }
            });
        }
    }
    Ok(())
}

/// `video` or `audio`, from the first structure of `caps`.
fn media_kind(caps: &gst::CapsRef) -> Option<&'static str> {
    let name = caps.structure(0)?.name();
    if name.starts_with("video/") {
        Some("video")
    } else if name.starts_with("audio/") {
        Some("audio")
    } else {
        None
    }
}

fn add_and_link(
    pipeline: &gst::Pipeline,
    sink: &gst::Element,
    bin: &gst::Element,
    kind: &str,
    chain: &Chain,
    on_stream: &(impl Fn(&gst::Pad) + Clone),
) -> anyhow::Result<()> {
    pipeline.add(bin)?;
    let pad = bin
        .static_pad("src")
        .ok_or_else(|| anyhow!("source bin without src pad"))?;
    link_pad(pipeline, sink, &pad, kind, chain, on_stream)
}

/// `pad ! chain ! webrtcsink.(video|audio)_%u`; the chain converts (and in shared mode
/// encodes, see `encoding.rs`). A ladder's chain has a src pad per layer (`src_0`, top first),
/// each fed to a webrtcsink pad of its own with the layer's msid (`ladder.rs`).
fn link_pad(
    pipeline: &gst::Pipeline,
    sink: &gst::Element,
    pad: &gst::Pad,
    kind: &str,
    chain: &Chain,
    on_stream: &(impl Fn(&gst::Pad) + Clone),
) -> anyhow::Result<()> {
    let bin = chain.build(kind)?;
    pipeline.add(&bin)?;
    let mut outputs = bin.src_pads();
    outputs.sort_by_key(|p| p.name());
    for (index, chain_src) in outputs.iter().enumerate() {
        let sink_pad = sink
            .request_pad_simple(&format!("{kind}_%u"))
            .ok_or_else(|| anyhow!("webrtcsink gave no {kind} pad"))?;
        if let Some(msid) = chain.msid(kind, index) {
            // (gwcwebrtcsink's pads stand for webrtcsink's, which have the msid)
            let target = sink_pad
                .downcast_ref::<gst::GhostPad>()
                .and_then(|g| g.target());
            target
                .unwrap_or_else(|| sink_pad.clone())
                .set_property("msid", msid);
        }
        chain_src
            .link(&sink_pad)
            .map_err(|e| anyhow!("cannot link to webrtcsink: {e}"))?;
    }
    let chain_sink = bin.static_pad("sink").context("chain sink")?;
    pad.link(&chain_sink)
        .map_err(|e| anyhow!("cannot link the {kind} source: {e}"))?;
    bin.sync_state_with_parent()?;
    // (the top layer's: navigation events are counted once)
    on_stream(outputs.first().context("chain src")?);
    Ok(())
}
