//! Per viewer: the rewriting that makes a change upstream invisible (the "munger" of LiveKit's
//! `rtpmunger` + `codecmunger/vp8`). The viewer sees one SSRC of its own, sequence numbers and
//! timestamps that continue across a change of source (an origin reattached with a new SSRC,
//! later a simulcast layer), and VP8 picture ids / TL0PICIDX that continue too, so its decoder
//! sees neither a jump nor a missing picture.
//!
//! Within one source the mapping is a fixed offset, so a gap upstream stays a gap for the
//! viewer (its NACKs name real losses) and [`Munger::source_of`] maps a viewer's NACK back to
//! the source packet in the packet cache. A switch happens only at a keyframe start; until
//! then the old source keeps flowing, and after it the old source's packets, and late ones of
//! the new source from before the keyframe, are dropped.

use std::collections::VecDeque;
use std::time::Instant;

use crate::codec::Codec;
use crate::rtp::{self, seq_diff, RtpError};
use crate::vp8::{self, Vp8Error};

/// How many past sources a viewer's NACKs can still be mapped to.
const SEGMENTS: usize = 4;

/// Why a packet could not be rewritten (it is dropped for this viewer).
#[derive(Debug, thiserror::Error)]
pub enum MungeError {
    #[error(transparent)]
    Rtp(#[from] RtpError),
    #[error(transparent)]
    Vp8(#[from] Vp8Error),
    #[error(transparent)]
    Payload(#[from] crate::codec::PayloadError),
}

/// What to do with a packet for this viewer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Rewritten in place: send it.
    Forward {
        sequence: u16,
        timestamp: u32,
        /// This packet is the first of a new source (a keyframe).
        switched: bool,
    },
    /// Not for this viewer (the packet is left as it was).
    Drop(DropReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// From a source the viewer neither follows nor switches to.
    NotSelected,
    /// From the source the viewer switches to, before its keyframe: the caller asks upstream
    /// for one (coalesced, [`crate::keyframe_requests`]).
    WaitingForKeyframe,
    /// From the followed source but older than the keyframe the viewer started at.
    BeforeSwitch,
}

/// A run of viewer sequence numbers taken from one source.
#[derive(Debug, Clone, Copy)]
struct Segment {
    ssrc: u32,
    /// The viewer sequence number of the keyframe the run started at.
    viewer_start: u16,
    /// How many viewer sequence numbers the run covers so far (to its highest packet).
    len: u32,
    /// viewer sequence = source sequence + this (mod 2^16).
    seq_offset: u16,
    /// viewer timestamp = source timestamp + this (mod 2^32).
    ts_offset: u32,
    /// VP8 picture id offset, mod 2^15, and TL0PICIDX offset, mod 2^8.
    picture_id_offset: u16,
    tl0_offset: u8,
}

/// What the viewer got last (its highest sequence number), to continue from at a switch.
#[derive(Debug, Clone, Copy)]
struct Last {
    sequence: u16,
    timestamp: u32,
    at: Instant,
    picture_id: Option<u16>,
    tl0_pic_idx: Option<u8>,
}

/// One viewer's rewriting state for one track.
#[derive(Debug)]
pub struct Munger {
    viewer_ssrc: u32,
    codec: Codec,
    payload_type: Option<u8>,
    /// The source to switch to at its next keyframe start.
    pending: Option<u32>,
    /// Newest first; the front one is the source followed now.
    segments: VecDeque<Segment>,
    last: Option<Last>,
}

impl Munger {
    /// A viewer's track: its own SSRC, and the payload type its answer gave the codec (None:
    /// the source's number is kept).
    pub fn new(viewer_ssrc: u32, codec: Codec, payload_type: Option<u8>) -> Self {
        Munger {
            viewer_ssrc,
            codec,
            payload_type,
            pending: None,
            segments: VecDeque::with_capacity(SEGMENTS),
            last: None,
        }
    }

    /// Follow `ssrc` from its next keyframe start on (a joining viewer, a reattached origin,
    /// a layer). The source followed now keeps flowing until then.
    pub fn select(&mut self, ssrc: u32) {
        self.pending = Some(ssrc);
    }

    /// Keep following the source followed now (a switch given up before its keyframe).
    pub fn unselect(&mut self) {
        self.pending = None;
    }

    /// The source followed now.
    pub fn following(&self) -> Option<u32> {
        self.segments.front().map(|s| s.ssrc)
    }

    /// Whether the viewer waits for a keyframe of the source it switches to.
    pub fn waiting_for_keyframe(&self) -> bool {
        self.pending.is_some()
    }

    /// Rewrites `packet` (the viewer's own copy) in place for this viewer, or says why not.
    /// `now` is when it arrived: a switch advances the timestamp by the time elapsed.
    pub fn forward(&mut self, packet: &mut [u8], now: Instant) -> Result<Verdict, MungeError> {
        let header = rtp::parse(packet)?;
        let follows = matches!(self.segments.front(), Some(s) if s.ssrc == header.ssrc);
        let switching = self.pending == Some(header.ssrc);
        if !follows && !switching {
            return Ok(Verdict::Drop(DropReason::NotSelected));
        }
        let payload = header.payload(packet);
        let descriptor = match self.codec {
            Codec::Vp8 => Some(vp8::parse(payload)?),
            // VP9 picture ids are not rewritten yet (a change of source shows as a jump).
            Codec::Vp9 | Codec::H264 | Codec::H265 | Codec::Av1 | Codec::Opus => None,
        };
        let switched = switching && self.codec.starts_keyframe(payload)?;
        if switched {
            self.start_segment(&header, descriptor.as_ref(), now);
        } else if !follows {
            return Ok(Verdict::Drop(DropReason::WaitingForKeyframe));
        }
        let Some(&segment) = self.segments.front() else {
            return Ok(Verdict::Drop(DropReason::NotSelected));
        };
        let sequence = header.sequence.wrapping_add(segment.seq_offset);
        // Where this packet falls in the run: before its start means from before the switch.
        let highest = segment
            .viewer_start
            .wrapping_add((segment.len as u16).wrapping_sub(1));
        let ahead = seq_diff(sequence, highest);
        let position = i64::from(segment.len) - 1 + i64::from(ahead);
        if position < 0 {
            return Ok(Verdict::Drop(DropReason::BeforeSwitch));
        }
        let (timestamp, picture_id, tl0_pic_idx) =
            self.apply(&segment, &header, descriptor.as_ref(), packet)?;
        if let Some(run) = self.segments.front_mut() {
            if position >= i64::from(run.len) {
                run.len = u32::try_from(position + 1).unwrap_or(u32::MAX);
            }
        }
        let newest = match self.last {
            Some(l) => seq_diff(sequence, l.sequence) > 0,
            None => true,
        };
        if newest {
            self.last = Some(Last {
                sequence,
                timestamp,
                at: now,
                picture_id,
                tl0_pic_idx,
            });
        }
        Ok(Verdict::Forward {
            sequence,
            timestamp,
            switched,
        })
    }

    /// Writes the viewer's header (and VP8 picture id / TL0PICIDX) into `packet` by
    /// `segment`'s offsets; returns the timestamp, picture id and TL0PICIDX written.
    fn apply(
        &self,
        segment: &Segment,
        header: &rtp::Header,
        descriptor: Option<&vp8::Descriptor>,
        packet: &mut [u8],
    ) -> Result<(u32, Option<u16>, Option<u8>), MungeError> {
        let timestamp = header.timestamp.wrapping_add(segment.ts_offset);
        rtp::rewrite(
            packet,
            &rtp::Rewrite {
                ssrc: self.viewer_ssrc,
                sequence: header.sequence.wrapping_add(segment.seq_offset),
                timestamp,
                payload_type: self.payload_type,
            },
        )?;
        let (mut picture_id, mut tl0_pic_idx) = (None, None);
        if let Some(d) = descriptor {
            let payload = rtp::payload_mut(packet)?;
            if let Some(id) = d.picture_id {
                let v = id.value().wrapping_add(segment.picture_id_offset) & 0x7fff;
                d.set_picture_id(payload, v);
                picture_id = Some(v);
            }
            if let Some(t) = d.tl0_pic_idx {
                let v = t.wrapping_add(segment.tl0_offset);
                d.set_tl0_pic_idx(payload, v);
                tl0_pic_idx = Some(v);
            }
        }
        Ok((timestamp, picture_id, tl0_pic_idx))
    }

    /// Rewrites a copy of a source packet that a viewer NACKed (found through
    /// [`Munger::source_of`] in the packet cache) exactly as the viewer first got it, even from
    /// a source it has since left; None when it never was one of the viewer's packets. The
    /// state is not changed: a retransmission is no new packet.
    pub fn retransmit(&self, packet: &mut [u8]) -> Result<Option<u16>, MungeError> {
        let header = rtp::parse(packet)?;
        let Some(segment) = self.segments.iter().find(|s| {
            let viewer = header.sequence.wrapping_add(s.seq_offset);
            s.ssrc == header.ssrc && u32::from(viewer.wrapping_sub(s.viewer_start)) < s.len
        }) else {
            return Ok(None);
        };
        let descriptor = match self.codec {
            Codec::Vp8 => Some(vp8::parse(header.payload(packet))?),
            // VP9 picture ids are not rewritten yet (a change of source shows as a jump).
            Codec::Vp9 | Codec::H264 | Codec::H265 | Codec::Av1 | Codec::Opus => None,
        };
        self.apply(segment, &header, descriptor.as_ref(), packet)?;
        Ok(Some(header.sequence.wrapping_add(segment.seq_offset)))
    }

    /// The source packet (SSRC, sequence number) a viewer's NACKed sequence number was, for
    /// the packet cache; None for one never sent or from a source too long ago.
    pub fn source_of(&self, viewer_sequence: u16) -> Option<(u32, u16)> {
        self.segments.iter().find_map(|s| {
            let d = u32::from(viewer_sequence.wrapping_sub(s.viewer_start));
            (d < s.len).then(|| (s.ssrc, viewer_sequence.wrapping_sub(s.seq_offset)))
        })
    }

    /// Offsets that make the keyframe `header` follow on from what the viewer got last.
    fn start_segment(&mut self, header: &rtp::Header, d: Option<&vp8::Descriptor>, now: Instant) {
        self.pending = None;
        let mut segment = Segment {
            ssrc: header.ssrc,
            viewer_start: header.sequence,
            len: 0,
            seq_offset: 0,
            ts_offset: 0,
            picture_id_offset: 0,
            tl0_offset: 0,
        };
        // A first source keeps its own numbers (already random, RFC 3550); later ones continue.
        if let Some(last) = self.last {
            let sequence = last.sequence.wrapping_add(1);
            segment.viewer_start = sequence;
            segment.seq_offset = sequence.wrapping_sub(header.sequence);
            // The time since the viewer's last packet, in clock ticks (at least one: a new
            // picture must not share the last one's timestamp).
            let elapsed = now.saturating_duration_since(last.at);
            let ticks = (elapsed.as_secs_f64() * f64::from(self.codec.clock_rate())) as u64;
            let timestamp = last
                .timestamp
                .wrapping_add(ticks.clamp(1, u64::from(u32::MAX >> 1)) as u32);
            segment.ts_offset = timestamp.wrapping_sub(header.timestamp);
            if let (Some(from), Some(id)) = (last.picture_id, d.and_then(|d| d.picture_id)) {
                segment.picture_id_offset = from.wrapping_add(1).wrapping_sub(id.value()) & 0x7fff;
            }
            if let (Some(from), Some(t)) = (last.tl0_pic_idx, d.and_then(|d| d.tl0_pic_idx)) {
                segment.tl0_offset = from.wrapping_add(1).wrapping_sub(t);
            }
        }
        self.segments.push_front(segment);
        self.segments.truncate(SEGMENTS);
    }
}

#[cfg(test)]
#[path = "rewrite_tests.rs"]
mod tests;
