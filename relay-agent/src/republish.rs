//! The serving side's inputs: each stream of the origin, as webrtcsrc adds it, goes through
//! `capsfilter(encoded) ! queue` into webrtcsink. Until webrtcsink has started, the chains are
//! held (webrtcsink negotiates its consumers' streams from the inputs it has when it starts).
//! After that the chains stay, and a returning origin's streams are linked into them
//! (`upstream.rs`): the relay's consumers keep their sessions, unless the codec changed.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_core::keyframes;
use anyhow::{anyhow, Context};
use gst::glib;
use gst::prelude::*;
use tracing::{info, warn};

use crate::Shared;

/// Called (from a streaming thread) when a returning origin's codec is not the one the relay's
/// consumers negotiated: the relay cannot serve it to them.
pub type CodecChanged = Arc<dyn Fn(String) + Send + Sync>;

/// One stream kind's chain into webrtcsink.
struct Chain {
    /// The chain's sink pad: where the origin's pad links.
    entry: gst::Pad,
    /// Its src pad, and the probe holding it until webrtcsink starts.
    out: gst::Pad,
    hold: Option<gst::PadProbeId>,
}

pub struct Republish {
    pipeline: glib::WeakRef<gst::Pipeline>,
    sink: gst::Element,
    interval: Duration,
    shared: Arc<Shared>,
    codec_changed: CodecChanged,
    /// By kind (`video`, `audio`).
    chains: Mutex<HashMap<&'static str, Chain>>,
    started: Mutex<bool>,
}

impl Republish {
    pub fn new(
        pipeline: &gst::Pipeline,
        sink: gst::Element,
        interval: Duration,
        shared: Arc<Shared>,
        codec_changed: CodecChanged,
    ) -> Self {
        Republish {
            pipeline: pipeline.downgrade(),
            sink,
            interval,
            shared,
            codec_changed,
            chains: Mutex::default(),
            started: Mutex::new(false),
        }
    }

    /// A stream of the origin; `expected`: how many the origin sends (webrtcsink starts once
    /// they are all there).
    pub fn add(&self, pad: &gst::Pad, expected: Option<usize>) -> anyhow::Result<()> {
        let pipeline = self.pipeline.upgrade().context("no pipeline")?;
        let kind = match pad.name().starts_with("video") {
            true => "video",
            false => "audio",
        };
        seal(pad);
        let mut chains = self.chains.lock().unwrap();
        if let Some(chain) = chains.get(kind) {
            if chain.entry.is_linked() {
                return Err(anyhow!(
                    "a second {kind} stream: the relay serves one of each"
                ));
            }
            info!("a returning origin's {kind} stream: serving it to the same consumers");
            return pad
                .link(&chain.entry)
                .map(|_| ())
                .map_err(|e| anyhow!("cannot link {}: {e}", pad.name()));
        }
        if *self.started.lock().unwrap() {
            // webrtcsink cannot take a new input once serving.
            warn!("the returning origin has a {kind} stream the relay did not serve: dropped");
            let drop = gst::ElementFactory::make("fakesink")
                .property("async", false)
                .build()?;
            pipeline.add(&drop)?;
            drop.sync_state_with_parent()?;
            let sink = drop.static_pad("sink").context("fakesink pad")?;
            return pad.link(&sink).map(|_| ()).map_err(|e| anyhow!("{e}"));
        }
        let chain = self.chain(&pipeline, kind)?;
        pad.link(&chain.entry)
            .map_err(|e| anyhow!("cannot link {}: {e}", pad.name()))?;
        chains.insert(kind, chain);
        if chains.len() >= expected.unwrap_or(1) {
            self.start(&mut chains)?;
        }
        Ok(())
    }

    /// `capsfilter(encoded) ! queue` for `kind`, held, with the relay's probes on it.
    fn chain(&self, pipeline: &gst::Pipeline, kind: &'static str) -> anyhow::Result<Chain> {
        let caps = match kind {
            "video" => "video/x-vp8;video/x-vp9;video/x-h264;video/x-h265;video/x-av1",
            _ => "audio/x-opus",
        };
        let bin =
            gst::parse::bin_from_description(&format!("capsfilter caps=\"{caps}\" ! queue"), true)?;
        pipeline.add(&bin)?;
        bin.sync_state_with_parent()?;
        let entry = bin.static_pad("sink").context("chain sink")?;
        let out = bin.static_pad("src").context("chain src")?;
        self.guard(&entry);
        let block =
            gst::PadProbeType::BLOCK | gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST;
        let hold = out
            .add_probe(block, |_, _| gst::PadProbeReturn::Ok)
            .context("cannot hold the stream")?;
        let shared = self.shared.clone();
        let video = kind == "video";
        out.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if let Some(buffer) = info.buffer() {
                shared
                    .bytes_in
                    .fetch_add(buffer.size() as u64, Ordering::Relaxed);
                if video {
                    shared.frames_in.fetch_add(1, Ordering::Relaxed);
                }
            }
            gst::PadProbeReturn::Ok
        });
        if video {
            // One request upstream (a PLI to the origin) per interval, however many ask.
            let upstream = entry.clone();
            keyframes::coalesce(
                &out,
                self.interval,
                self.shared.keyframes.clone(),
                move |ev| {
                    upstream.push_event(ev);
                },
            );
        }
        Ok(Chain {
            entry,
            out,
            hold: Some(hold),
        })
    }

    /// A codec other than the first the relay served is refused (its consumers negotiated
    /// that one).
    fn guard(&self, entry: &gst::Pad) {
        let first = Mutex::new(None::<String>);
        let changed = self.codec_changed.clone();
        entry.add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, move |_, info| {
            let Some(gst::EventView::Caps(c)) = info.event().map(|e| e.view()) else {
                return gst::PadProbeReturn::Ok;
            };
            let name = c.caps().structure(0).map(|s| s.name().to_string());
            let mut first = first.lock().unwrap();
            match (&*first, name) {
                (None, Some(name)) => *first = Some(name),
                (Some(was), Some(now)) if *was != now => {
                    changed(format!("{was} → {now}"));
                    return agent_core::DISCARD;
                }
                _ => {}
            }
            gst::PadProbeReturn::Ok
        });
    }

    /// Every stream is there: webrtcsink joins the pipeline with one input per stream.
    fn start(&self, chains: &mut HashMap<&'static str, Chain>) -> anyhow::Result<()> {
        let pipeline = self.pipeline.upgrade().context("no pipeline")?;
        pipeline.add(&self.sink)?;
        for (kind, chain) in chains.iter_mut() {
            let input = self
                .sink
                .request_pad_simple(&format!("{kind}_%u"))
                .ok_or_else(|| anyhow!("webrtcsink gave no {kind} pad"))?;
            chain
                .out
                .link(&input)
                .map_err(|e| anyhow!("cannot link to webrtcsink: {e}"))?;
            if let Some(hold) = chain.hold.take() {
                chain.out.remove_probe(hold);
            }
        }
        self.sink.sync_state_with_parent()?;
        *self.started.lock().unwrap() = true;
        info!("the origin's streams are here: serving them");
        Ok(())
    }
}

/// The end of an origin's stream must not end or flush the relay's: EOS and flushes from the
/// origin's pad are dropped before they reach the chain (webrtcsrc flushes a session's pads as
/// it ends; a flush-start arriving at the chain would leave it flushing for the next origin,
/// and a probe on the chain's side runs too late to stop that).
fn seal(pad: &gst::Pad) {
    let events = gst::PadProbeType::EVENT_DOWNSTREAM | gst::PadProbeType::EVENT_FLUSH;
    pad.add_probe(events, |_, info| match info.event().map(|e| e.view()) {
        Some(
            gst::EventView::Eos(_) | gst::EventView::FlushStart(_) | gst::EventView::FlushStop(_),
        ) => agent_core::DISCARD,
        _ => gst::PadProbeReturn::Ok,
    });
}
