//! What a light viewer makes of the VP8 RTP packets it receives, without decoding: frames
//! (packets of one RTP timestamp from a start-of-partition packet to the marker bit, none
//! missing), keyframes (the VP8 payload header's P bit), packets lost (sequence numbers never
//! received, retransmissions counted when they arrive), and each frame's arrival time and hash.
//! The hash is consumer-agent's `--frame-log` hash (std's `DefaultHasher` over the depayloaded
//! frame as one slice), so the two viewers' frames can be matched.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Instant;

/// Frames kept waiting for a missing packet (a retransmission) before they are given up.
const PENDING: usize = 12;

/// The parts of a VP8 RTP payload (RFC 7741) a viewer needs.
#[derive(Debug, PartialEq, Eq)]
pub struct Vp8Packet {
    /// Start of a frame: S bit set, partition index 0.
    pub start: bool,
    /// Length of the payload descriptor (the frame's bytes follow it).
    pub header_len: usize,
    /// A keyframe's first packet (meaningful when `start`).
    pub keyframe: bool,
}

/// Parses the VP8 payload descriptor; `None` for a payload too short for what it announces.
pub fn parse_vp8(p: &[u8]) -> Option<Vp8Packet> {
    let b0 = *p.first()?;
    let (x, s, pid) = (b0 & 0x80 != 0, b0 & 0x10 != 0, b0 & 0x07);
    let mut i = 1;
    if x {
        let b1 = *p.get(1)?;
        i = 2;
        if b1 & 0x80 != 0 {
            // picture id: 7 or 15 bits (M)
            i += if *p.get(i)? & 0x80 != 0 { 2 } else { 1 };
        }
        if b1 & 0x40 != 0 {
            i += 1; // TL0PICIDX
        }
        if b1 & 0x30 != 0 {
            i += 1; // TID/Y/KEYIDX
        }
    }
    let first = *p.get(i)?;
    let start = s && pid == 0;
    Some(Vp8Packet {
        start,
        header_len: i,
        keyframe: start && first & 0x01 == 0,
    })
}

/// consumer-agent's frame hash (`consumer-agent/src/sink.rs`, `FrameLog::record`).
pub fn frame_hash(frame: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    frame.hash(&mut h);
    h.finish()
}

#[derive(Default)]
struct Pending {
    parts: BTreeMap<u64, (Arc<[u8]>, usize)>,
    start: Option<u64>,
    end: Option<u64>,
    keyframe: bool,
}

/// Packets in, frames out, losses counted.
#[derive(Default)]
pub struct Tally {
    pending: BTreeMap<u32, Pending>,
    /// Sequence numbers seen (extended, as str0m gives them): the first and the highest.
    first_seq: Option<u64>,
    highest_seq: u64,
    /// Distinct packets received (str0m drops duplicates and unwraps retransmissions).
    pub packets: u64,
    pub frames: u64,
    pub keyframes: u64,
    /// Frames given up: a packet of theirs never came.
    pub incomplete: u64,
    /// Set at the first complete keyframe: frames before it could not be decoded.
    pub decodable: bool,
    pub first_frame_at: Option<Instant>,
    /// When each counted frame completed.
    pub arrivals: Vec<Instant>,
    /// `(hash, unix µs)` of each counted frame, when hashing is on.
    pub log: Option<Vec<(u64, u64)>>,
}

impl Tally {
    pub fn hashing(on: bool) -> Tally {
        Tally {
            log: on.then(Vec::new),
            ..Tally::default()
        }
    }

    /// Packets the sender sent since the first one received, by their sequence numbers.
    pub fn expected(&self) -> u64 {
        self.first_seq.map_or(0, |f| self.highest_seq - f + 1)
    }

    pub fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.packets)
    }

    /// One RTP packet (sequence number extended to 64 bits by str0m); a frame it completed
    /// and that counts: `Some(keyframe)`.
    pub fn packet(
        &mut self,
        seq: u64,
        ts: u32,
        marker: bool,
        payload: Arc<[u8]>,
        now: Instant,
    ) -> Option<bool> {
        self.packets += 1;
        if self.first_seq.is_none() {
            self.first_seq = Some(seq);
            self.highest_seq = seq;
        }
        self.highest_seq = self.highest_seq.max(seq);
        let vp8 = parse_vp8(&payload)?;
        if self.pending.len() >= PENDING && !self.pending.contains_key(&ts) {
            // the oldest frame (by its first packet) will not complete any more
            let oldest = self
                .pending
                .iter()
                .min_by_key(|(_, f)| f.parts.keys().next().copied())
                .map(|(ts, _)| *ts);
            if let Some(old) = oldest {
                self.pending.remove(&old);
                self.incomplete += 1;
            }
        }
        let f = self.pending.entry(ts).or_default();
        if vp8.start {
            f.start = Some(seq);
            f.keyframe = vp8.keyframe;
        }
        if marker {
            f.end = Some(seq);
        }
        f.parts.insert(seq, (payload, vp8.header_len));
        let (Some(s), Some(e)) = (f.start, f.end) else {
            return None;
        };
        if e < s || f.parts.range(s..=e).count() as u64 != e - s + 1 {
            return None;
        }
        let f = self.pending.remove(&ts)?;
        // frames that began before this one and are still missing parts are given up
        let older: Vec<u32> = self
            .pending
            .iter()
            .filter(|(_, p)| p.parts.keys().next().is_some_and(|&q| q < s))
            .map(|(ts, _)| *ts)
            .collect();
        for ts in older {
            self.pending.remove(&ts);
            self.incomplete += 1;
        }
        if !self.decodable && !f.keyframe {
            return None;
        }
        self.decodable = true;
        self.frames += 1;
        self.keyframes += u64::from(f.keyframe);
        self.first_frame_at.get_or_insert(now);
        self.arrivals.push(now);
        let hash = self.log.as_ref().map(|_| {
            let mut bytes = Vec::new();
            for (data, skip) in f.parts.range(s..=e).map(|(_, v)| v) {
                bytes.extend_from_slice(&data[*skip..]);
            }
            frame_hash(&bytes)
        });
        if let (Some(log), Some(h)) = (self.log.as_mut(), hash) {
            let at = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64);
            log.push((h, at));
        }
        Some(f.keyframe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(start: bool, key: bool) -> Arc<[u8]> {
        // X=1, I=1 (15-bit picture id), then the VP8 payload header byte
        let b0 = 0x80 | if start { 0x10 } else { 0 };
        let vp8 = if key { 0x00 } else { 0x01 };
        Arc::from(vec![b0, 0x80, 0x81, 0x02, vp8, 7, 7, 7])
    }

    #[test]
    fn descriptor_lengths_and_keyframes() {
        let p = parse_vp8(&pkt(true, true)).unwrap();
        assert_eq!((p.start, p.header_len, p.keyframe), (true, 4, true));
        let p = parse_vp8(&[0x10, 0x01]).unwrap();
        assert_eq!((p.start, p.header_len, p.keyframe), (true, 1, false));
        assert!(parse_vp8(&[0x90, 0x80]).is_none(), "truncated");
    }

    #[test]
    fn frames_need_every_packet_and_a_keyframe_first() {
        let now = Instant::now();
        let mut t = Tally::hashing(true);
        // a delta frame first: not decodable, not counted
        assert!(t.packet(1, 100, true, pkt(true, false), now).is_none());
        // a keyframe of three packets, the middle one late (a retransmission)
        assert!(t.packet(2, 200, false, pkt(true, true), now).is_none());
        assert!(t.packet(4, 200, true, pkt(false, false), now).is_none());
        assert_eq!(t.packet(3, 200, false, pkt(false, false), now), Some(true));
        // a delta frame whose middle packet never comes, then the next one completes
        t.packet(5, 300, false, pkt(true, false), now);
        t.packet(7, 300, true, pkt(false, false), now);
        assert!(t.packet(8, 400, true, pkt(true, false), now).is_some());
        assert_eq!((t.frames, t.keyframes, t.incomplete), (2, 1, 1));
        assert_eq!((t.expected(), t.packets, t.lost()), (8, 7, 1));
        // the hash is of the frame's bytes without the descriptors: 3 packets × [vp8, 7, 7, 7]
        let log = t.log.unwrap();
        assert_eq!(log[0].0, frame_hash(&[0, 7, 7, 7, 1, 7, 7, 7, 1, 7, 7, 7]));
    }
}
