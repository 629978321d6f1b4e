//! The deciding part of the forward engine, apart from any I/O and any WebRTC stack: what a
//! source packet becomes for each viewer. Per source track (one per worker thread that has
//! viewers of it): its keyframe cache. Per viewer track: its [`Munger`], the payload type the
//! viewer's answer gave the codec, and the extended sequence number the WebRTC stack wants.
//!
//! The payload itself is never copied per viewer: a [`Packet`] carries it behind an `Arc`
//! (the same bytes the stack received), and what differs per viewer (sequence number,
//! timestamp, VP8 picture id / TL0PICIDX) is returned as numbers for the stack to write into
//! the header it builds (and, for VP8, to patch into the descriptor as it serialises).

use std::sync::Arc;
use std::time::Instant;

use crate::codec::Codec;
use crate::keyframe_cache::KeyframeCache;
use crate::rewrite::{DropReason, MungeError, Munger, Verdict};
use crate::rtp::{self, seq_diff};
use crate::vp8;

/// Fixed RTP header, version 2, no CSRC, no extension.
const RTP_HEADER: usize = 12;
/// Payload bytes a following viewer's rewrite reads: more than any VP8 descriptor (≤ 6).
const FOLLOW_HEAD: usize = 16;

/// A packet of the source as the origin's stack received it, shared by every viewer.
#[derive(Debug, Clone)]
pub struct Packet {
    pub ssrc: u32,
    pub sequence: u16,
    pub timestamp: u32,
    pub marker: bool,
    /// The RTP payload (no header).
    pub payload: Arc<[u8]>,
    /// When it arrived (a switch of source advances the viewer's timestamps by the time
    /// elapsed since its last packet).
    pub arrival: Instant,
    /// It starts a keyframe ([`Codec::starts_keyframe`], decided once, on the origin's thread).
    pub keyframe: bool,
}

impl Packet {
    /// A minimal RTP packet of it (fixed header + payload), the form the [`Munger`] and the
    /// [`KeyframeCache`] work on. `buf` is reused.
    pub fn write_raw(&self, buf: &mut Vec<u8>) {
        self.write_head(buf, usize::MAX);
    }

    /// Like [`Packet::write_raw`] with at most `payload` bytes of the payload: a viewer that
    /// follows its source needs only the header and the codec's descriptor rewritten (the
    /// payload itself goes out shared), so the rest is not copied per viewer.
    pub fn write_head(&self, buf: &mut Vec<u8>, payload: usize) {
        buf.clear();
        buf.push(0x80);
        buf.push(if self.marker { 0x80 } else { 0 });
        buf.extend_from_slice(&self.sequence.to_be_bytes());
        buf.extend_from_slice(&self.timestamp.to_be_bytes());
        buf.extend_from_slice(&self.ssrc.to_be_bytes());
        buf.extend_from_slice(&self.payload[..payload.min(self.payload.len())]);
    }

    /// Back from [`Packet::write_raw`]'s form (a joiner's packets from the keyframe cache).
    pub fn from_raw(raw: &[u8], arrival: Instant, keyframe: bool) -> Result<Packet, MungeError> {
        let h = rtp::parse(raw)?;
        Ok(Packet {
            ssrc: h.ssrc,
            sequence: h.sequence,
            timestamp: h.timestamp,
            marker: h.marker,
            payload: Arc::from(h.payload(raw)),
            arrival,
            keyframe,
        })
    }
}

/// One track of the source, as a worker thread keeps it: the codec and the last keyframe with
/// what followed (each worker keeps its own, so a joiner on any thread starts without a lock).
#[derive(Debug)]
pub struct SourceTrack {
    pub codec: Codec,
    keyframes: KeyframeCache,
    raw: Vec<u8>,
}

impl SourceTrack {
    /// `keyframe_budget`: bytes of the last group of pictures kept for joiners.
    pub fn new(codec: Codec, keyframe_budget: usize) -> Self {
        SourceTrack {
            codec,
            keyframes: KeyframeCache::new(keyframe_budget),
            raw: Vec::with_capacity(1500),
        }
    }

    /// Every packet of the source passes here before it goes to the viewers.
    pub fn push(&mut self, packet: &Packet) {
        packet.write_raw(&mut self.raw);
        self.keyframes.push(&self.raw, packet.keyframe);
    }

    /// The source went away (the next origin starts a new group).
    pub fn clear(&mut self) {
        self.keyframes.clear();
    }
}

/// What a source packet is for one viewer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Send it with these header fields (and this VP8 descriptor rewrite).
    Send(Write),
    /// The viewer waits for a keyframe of this source: ask upstream (coalesced).
    NeedKeyframe,
    /// Not for this viewer.
    Skip,
}

/// A packet as the viewer gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub payload_type: u8,
    /// Extended (wraparound-counted) sequence number, as the stack's send side wants it.
    pub sequence: u64,
    pub timestamp: u32,
    pub marker: bool,
    pub payload: Arc<[u8]>,
    /// VP8: the picture id and TL0PICIDX to write into the descriptor (None: unchanged).
    pub vp8: Option<Vp8Rewrite>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vp8Rewrite {
    pub picture_id: Option<u16>,
    pub tl0_pic_idx: Option<u8>,
}

/// One track of one viewer.
#[derive(Debug)]
pub struct ViewerTrack {
    munger: Munger,
    codec: Codec,
    payload_type: u8,
    /// The source SSRC followed or switched to.
    selected: Option<u32>,
    /// The highest extended sequence number handed out.
    extended: Option<u64>,
    scratch: Vec<u8>,
    /// A layered source: the layer to switch to (at its keyframe) and the one followed now.
    target: usize,
    current: Option<usize>,
    /// The viewer asked for a keyframe while a switch down was pending: its decoder waits for
    /// one, so the followed layer's packets are only load on the link the switch's keyframe
    /// must cross, and are skipped until the switch.
    stuck: bool,
    /// Switches done (at a keyframe), to a higher layer and to a lower one.
    pub switches_up: u64,
    pub switches_down: u64,
}

impl ViewerTrack {
    /// `payload_type`: the viewer's number for the codec (from its answer).
    pub fn new(codec: Codec, payload_type: u8) -> Self {
        ViewerTrack {
            // The SSRC is the stack's (it writes the header): the munger's is never sent.
            munger: Munger::new(0, codec, None),
            codec,
            payload_type,
            selected: None,
            extended: None,
            scratch: Vec::with_capacity(1500),
            target: 0,
            current: None,
            stuck: false,
            switches_up: 0,
            switches_down: 0,
        }
    }

    /// The layer followed now (a layered source; None before its first keyframe).
    pub fn layer(&self) -> Option<usize> {
        self.current
    }

    pub fn target(&self) -> usize {
        self.target
    }

    /// Switch to `layer` at its next keyframe; until then the layer followed keeps flowing.
    pub fn set_target(&mut self, layer: usize) {
        if layer == self.target {
            return;
        }
        self.target = layer;
        self.stuck = false;
        if self.current == Some(layer) {
            // Back to the layer still followed: no switch (and no keyframe) needed.
            self.munger.unselect();
            self.selected = self.munger.following();
        } else {
            self.selected = None;
        }
    }

    /// The viewer asked for a keyframe (PLI/FIR). During a switch down the followed layer stops
    /// until the target's keyframe (see `stuck`); otherwise nothing changes here.
    pub fn keyframe_asked(&mut self) {
        self.stuck = self.current.is_some_and(|c| self.target > c);
    }

    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// A joining viewer: the source's cached keyframe and what followed, at once (empty when
    /// there is none: the caller asks upstream, and live packets start it at the next one).
    pub fn join(&mut self, source: &SourceTrack, now: Instant) -> Vec<Outcome> {
        self.join_layer(source, None, now)
    }

    /// [`ViewerTrack::join`] from the cache of `layer` (a layered source's target layer).
    pub fn join_layer(
        &mut self,
        source: &SourceTrack,
        layer: Option<usize>,
        now: Instant,
    ) -> Vec<Outcome> {
        let Some(cached) = source.keyframes.packets() else {
            return vec![Outcome::NeedKeyframe];
        };
        let mut first = true;
        let packets: Vec<Packet> = cached
            .filter_map(|raw| {
                let keyframe = std::mem::take(&mut first);
                Packet::from_raw(raw, now, keyframe).ok()
            })
            .collect();
        packets
            .iter()
            .map(|p| self.forward_layer(p, layer, now))
            .collect()
    }

    /// What `packet` of the source is for this viewer. A new source SSRC (a reattached
    /// origin) is switched to at its first keyframe; until then the old one keeps flowing.
    pub fn forward(&mut self, packet: &Packet, now: Instant) -> Outcome {
        self.forward_layer(packet, None, now)
    }

    /// [`ViewerTrack::forward`] for a packet of a layered source's `layer`: only the target
    /// layer and the one followed now concern the viewer; the target is switched to at its
    /// first keyframe (asked upstream through [`Outcome::NeedKeyframe`]), the followed one
    /// flows until then. `None`: not layered.
    pub fn forward_layer(
        &mut self,
        packet: &Packet,
        layer: Option<usize>,
        now: Instant,
    ) -> Outcome {
        let to_target = layer.is_none_or(|l| l == self.target);
        if !to_target && (layer != self.current || self.stuck) {
            return Outcome::Skip;
        }
        if to_target && self.selected != Some(packet.ssrc) {
            self.selected = Some(packet.ssrc);
            self.munger.select(packet.ssrc);
        }
        // Switching reads the whole payload (is it a keyframe start?); following reads at most
        // the VP8 descriptor (6 bytes).
        let head = if self.munger.waiting_for_keyframe() {
            usize::MAX
        } else {
            FOLLOW_HEAD
        };
        packet.write_head(&mut self.scratch, head);
        let verdict = match self.munger.forward(&mut self.scratch, now) {
            Ok(v) => v,
            // A payload the codec cannot read is dropped for everyone alike.
            Err(_) => return Outcome::Skip,
        };
        match verdict {
            Verdict::Forward {
                sequence,
                timestamp,
                switched,
            } => {
                if switched && layer.is_some() {
                    match (self.current, layer) {
                        (Some(c), Some(l)) if l < c => self.switches_up += 1,
                        (Some(c), Some(l)) if l > c => self.switches_down += 1,
                        _ => {}
                    }
                    self.current = layer;
                    self.stuck = false;
                }
                Outcome::Send(Write {
                    payload_type: self.payload_type,
                    sequence: self.extend(sequence),
                    timestamp,
                    marker: packet.marker,
                    payload: packet.payload.clone(),
                    vp8: self.vp8_rewrite(),
                })
            }
            Verdict::Drop(DropReason::WaitingForKeyframe) => Outcome::NeedKeyframe,
            Verdict::Drop(_) => Outcome::Skip,
        }
    }

    /// The descriptor fields the munger wrote into the scratch copy.
    fn vp8_rewrite(&self) -> Option<Vp8Rewrite> {
        if self.codec != Codec::Vp8 {
            return None;
        }
        let d = vp8::parse(self.scratch.get(RTP_HEADER..)?).ok()?;
        Some(Vp8Rewrite {
            picture_id: d.picture_id.map(|p| p.value()),
            tl0_pic_idx: d.tl0_pic_idx,
        })
    }

    /// The 16-bit viewer sequence number extended against the highest one handed out.
    fn extend(&mut self, sequence: u16) -> u64 {
        let extended = match self.extended {
            None => u64::from(sequence),
            Some(last) => {
                let delta = i64::from(seq_diff(sequence, last as u16));
                // Never below 0: the first packets keep their own numbers (RFC 3550 random).
                (last as i64 + delta).max(0) as u64
            }
        };
        if self.extended.is_none_or(|last| extended > last) {
            self.extended = Some(extended);
        }
        extended
    }
}

#[cfg(test)]
#[path = "fanout_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "fanout_layers_tests.rs"]
mod layer_tests;
