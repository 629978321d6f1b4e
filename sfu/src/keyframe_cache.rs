//! Per source: the packets of its last keyframe and all that followed, so a joining viewer
//! is sent a decodable start at once instead of waiting for a keyframe request's round trip.
//! A new keyframe replaces it all. A keyframe may take several packets that each can start it
//! (H.264 from webrtcsink: SPS, PPS and the IDR as separate packets of one timestamp): those
//! continue the group they started, or a joiner would get an IDR without its parameter sets
//! and never decode (h264parse drops slices it cannot parse). A group of pictures larger than the budget is not kept
//! (the joiner then asks for a keyframe, as without the cache).

/// The last keyframe of one source and what followed, in arrival order.
#[derive(Debug)]
pub struct KeyframeCache {
    packets: Vec<Vec<u8>>,
    /// Buffers of replaced packets, reused (no allocation per packet once warm).
    spare: Vec<Vec<u8>>,
    bytes: usize,
    max_bytes: usize,
    /// The packets held start at a keyframe and nothing since was left out.
    valid: bool,
    /// The RTP timestamp of the keyframe the group starts with.
    keyframe_timestamp: Option<u32>,
}

impl KeyframeCache {
    /// Holds at most `max_bytes` of packets (at 2 Mbit/s a 2 s group of pictures is 500 KB).
    pub fn new(max_bytes: usize) -> Self {
        KeyframeCache {
            packets: Vec::new(),
            spare: Vec::new(),
            bytes: 0,
            max_bytes,
            valid: false,
            keyframe_timestamp: None,
        }
    }

    /// A packet of the source, as received (`keyframe_start`: from [`crate::codec::Codec`]).
    pub fn push(&mut self, packet: &[u8], keyframe_start: bool) {
        if keyframe_start {
            let timestamp = crate::rtp::parse(packet).ok().map(|h| h.timestamp);
            let same_keyframe =
                self.valid && timestamp.is_some() && timestamp == self.keyframe_timestamp;
            if !same_keyframe {
                self.clear();
                self.valid = true;
                self.keyframe_timestamp = timestamp;
            }
        }
        if !self.valid {
            return;
        }
        if self.bytes + packet.len() > self.max_bytes {
            self.clear();
            return;
        }
        let mut buffer = self.spare.pop().unwrap_or_default();
        buffer.clear();
        buffer.extend_from_slice(packet);
        self.bytes += packet.len();
        self.packets.push(buffer);
    }

    /// What a joining viewer is sent first, keyframe first; None when there is no complete
    /// keyframe (the viewer waits for one, and the caller asks upstream).
    pub fn packets(&self) -> Option<impl Iterator<Item = &[u8]>> {
        (self.valid && !self.packets.is_empty()).then(|| self.packets.iter().map(Vec::as_slice))
    }

    /// Forget everything (the source went away, or it outgrew the budget).
    pub fn clear(&mut self) {
        self.spare.append(&mut self.packets);
        self.bytes = 0;
        self.valid = false;
        self.keyframe_timestamp = None;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::codec::Codec;
    use crate::rewrite::{Munger, Verdict};
    use crate::rtp::tests::packet;
    use crate::vp8::tests::payload;

    fn vp8(seq: u16, key: bool) -> Vec<u8> {
        packet(
            7,
            seq,
            u32::from(seq) * 10,
            false,
            &payload(true, key, seq, 0),
        )
    }

    /// The source's path: every packet through the codec's keyframe test into the cache.
    fn feed(c: &mut KeyframeCache, p: &[u8]) {
        let h = crate::rtp::parse(p).unwrap();
        let key = Codec::Vp8.starts_keyframe(h.payload(p)).unwrap();
        c.push(p, key);
    }

    #[test]
    fn holds_the_last_keyframe_and_what_followed() {
        let mut c = KeyframeCache::new(10_000);
        feed(&mut c, &vp8(1, false));
        assert!(c.packets().is_none(), "nothing before a first keyframe");
        for (seq, key) in [(2, true), (3, false), (4, false), (5, true), (6, false)] {
            feed(&mut c, &vp8(seq, key));
        }
        let held: Vec<_> = c.packets().unwrap().map(<[u8]>::to_vec).collect();
        assert_eq!(
            held,
            vec![vp8(5, true), vp8(6, false)],
            "a new keyframe replaced the old group"
        );
    }

    #[test]
    fn an_h264_keyframe_in_several_starting_packets_is_kept_whole() {
        // webrtcsink's H.264: SPS, PPS, then the IDR's fragments, one timestamp; each of SPS and
        // the IDR's first fragment can start a keyframe.
        let nal = |t: u8| [0x60 | t, 0x42, 0x00];
        let fu_start = [0x7c, 0x85, 0x88];
        let sps = packet(7, 1, 3000, false, &nal(7));
        let pps = packet(7, 2, 3000, false, &nal(8));
        let idr = packet(7, 3, 3000, true, &fu_start);
        let next = packet(7, 4, 6000, true, &[0x41, 0x9a]);
        let mut c = KeyframeCache::new(10_000);
        for p in [&sps, &pps, &idr, &next] {
            let h = crate::rtp::parse(p).unwrap();
            c.push(p, Codec::H264.starts_keyframe(h.payload(p)).unwrap());
        }
        let held: Vec<_> = c.packets().unwrap().map(<[u8]>::to_vec).collect();
        assert_eq!(
            held,
            vec![sps.clone(), pps, idr, next],
            "parameter sets kept before the IDR"
        );
        let later_idr = packet(7, 5, 9000, false, &nal(5));
        c.push(&later_idr, true);
        assert_eq!(
            c.packets().unwrap().count(),
            1,
            "a keyframe of another timestamp starts a new group"
        );
    }

    #[test]
    fn a_group_over_the_budget_is_not_kept() {
        let p = vp8(1, true);
        let mut c = KeyframeCache::new(p.len() * 2);
        c.push(&p, true);
        c.push(&vp8(2, false), false);
        assert!(c.packets().is_some());
        c.push(&vp8(3, false), false);
        assert!(
            c.packets().is_none(),
            "a partial group would leave the joiner a gap"
        );
        c.push(&vp8(4, false), false);
        assert!(c.packets().is_none(), "stays empty until the next keyframe");
        c.push(&vp8(5, true), true);
        assert_eq!(c.packets().unwrap().count(), 1);
    }

    #[test]
    fn a_joiner_starts_from_the_cache_and_continues_live_without_a_gap() {
        let mut c = KeyframeCache::new(10_000);
        for (seq, key) in [(1, false), (2, true), (3, false)] {
            feed(&mut c, &vp8(seq, key));
        }
        let t = Instant::now();
        let mut viewer = Munger::new(99, Codec::Vp8, None);
        viewer.select(7);
        let mut sent = Vec::new();
        let cached: Vec<Vec<u8>> = c.packets().unwrap().map(<[u8]>::to_vec).collect();
        for mut p in cached.into_iter().chain([vp8(4, false), vp8(5, false)]) {
            if let Verdict::Forward { sequence, .. } = viewer.forward(&mut p, t).unwrap() {
                sent.push(sequence);
            }
        }
        assert_eq!(sent, vec![2, 3, 4, 5], "keyframe first, no waiting, no gap");
    }
}
