//! Per source: the last packets by sequence number, to answer a viewer's NACK without asking
//! the origin (the "NACK cache"). A miss is reported so that the caller sends one upstream NACK;
//! more misses of the same packet within a window are coalesced (every viewer that lost it
//! NACKs it, the origin hears once).
//!
//! Slots are indexed by sequence number modulo the capacity, each tagged with the extended
//! (wraparound-counted) sequence number, so a slot left over from an earlier cycle of the
//! 16-bit counter is never taken for the packet asked for.

use std::time::{Duration, Instant};

use crate::rtp::seq_diff;

/// How many coalesced upstream NACKs are remembered at most (oldest forgotten first).
const ASKED_MAX: usize = 1024;

#[derive(Debug)]
struct Slot {
    extended: i64,
    data: Vec<u8>,
}

/// The answer to a viewer's NACK of one packet.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// The source packet: rewrite a copy for the viewer (RTX where negotiated) and send it.
    Hit(&'a [u8]),
    /// Not here: send one NACK upstream for it.
    AskUpstream,
    /// Not here, and already asked upstream within the window: nothing to send.
    AlreadyAsked,
}

/// The last `capacity` packets of one source.
#[derive(Debug)]
pub struct NackCache {
    slots: Vec<Option<Slot>>,
    /// The highest sequence number seen, and its extended value.
    highest: Option<(u16, i64)>,
    asked: Vec<(u16, Instant)>,
    window: Duration,
}

impl NackCache {
    /// Room for `capacity` packets (rounded up to a power of two, at most 32768: half the
    /// sequence space, so "older" and "newer" stay unambiguous); a miss asked upstream is
    /// not asked again within `nack_window`.
    pub fn new(capacity: usize, nack_window: Duration) -> Self {
        let capacity = capacity.clamp(1, 1 << 15).next_power_of_two();
        NackCache {
            slots: (0..capacity).map(|_| None).collect(),
            highest: None,
            asked: Vec::new(),
            window: nack_window,
        }
    }

    fn extended(&self, seq: u16) -> i64 {
        match self.highest {
            Some((h, ext)) => ext + i64::from(seq_diff(seq, h)),
            None => i64::from(seq),
        }
    }

    fn index(&self, extended: i64) -> usize {
        (extended.rem_euclid(self.slots.len() as i64)) as usize
    }

    /// Keeps a packet of the source (a retransmission too: it also settles an upstream ask).
    /// One older than the whole cache is not kept.
    pub fn insert(&mut self, seq: u16, packet: &[u8]) {
        let extended = self.extended(seq);
        match self.highest {
            Some((_, h)) if extended > h => self.highest = Some((seq, extended)),
            Some((_, h)) if h - extended >= self.slots.len() as i64 => return,
            None => self.highest = Some((seq, extended)),
            _ => {}
        }
        self.asked.retain(|(s, _)| *s != seq);
        let i = self.index(extended);
        match &mut self.slots[i] {
            Some(slot) => {
                slot.extended = extended;
                slot.data.clear();
                slot.data.extend_from_slice(packet);
            }
            empty => {
                *empty = Some(Slot {
                    extended,
                    data: packet.to_vec(),
                })
            }
        }
    }

    /// The packet `seq`, if it is still here.
    pub fn get(&self, seq: u16) -> Option<&[u8]> {
        self.highest?;
        let extended = self.extended(seq);
        match &self.slots[self.index(extended)] {
            Some(slot) if slot.extended == extended => Some(&slot.data),
            _ => None,
        }
    }

    /// A viewer NACKed `seq` (already mapped back to this source's numbers).
    pub fn nack(&mut self, seq: u16, now: Instant) -> Lookup<'_> {
        // Looked up twice: returning the first borrow from inside the `if` does not pass the
        // borrow checker (the `asked` list is changed below).
        if self.get(seq).is_some() {
            return self.get(seq).map_or(Lookup::AskUpstream, Lookup::Hit);
        }
        let window = self.window;
        self.asked
            .retain(|(_, at)| now.saturating_duration_since(*at) < window);
        if self.asked.iter().any(|(s, _)| *s == seq) {
            return Lookup::AlreadyAsked;
        }
        if self.asked.len() >= ASKED_MAX {
            self.asked.remove(0);
        }
        self.asked.push((seq, now));
        Lookup::AskUpstream
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cache() -> NackCache {
        NackCache::new(8, Duration::from_millis(100))
    }

    #[test]
    fn a_nack_of_a_cached_packet_is_answered_from_the_cache() {
        let mut c = cache();
        for seq in 10..15u16 {
            c.insert(seq, &[seq as u8]);
        }
        let t = Instant::now();
        assert_eq!(c.nack(12, t), Lookup::Hit(&[12]));
        assert_eq!(
            c.nack(12, t),
            Lookup::Hit(&[12]),
            "served as often as asked"
        );
    }

    #[test]
    fn a_miss_goes_upstream_once_within_the_window() {
        let mut c = cache();
        c.insert(10, &[10]);
        c.insert(12, &[12]);
        let t = Instant::now();
        assert_eq!(c.nack(11, t), Lookup::AskUpstream);
        assert_eq!(
            c.nack(11, t + Duration::from_millis(50)),
            Lookup::AlreadyAsked
        );
        assert_eq!(
            c.nack(11, t + Duration::from_millis(150)),
            Lookup::AskUpstream,
            "asked again after the window"
        );
        // The retransmission arrives: served from then on.
        c.insert(11, &[11]);
        assert_eq!(
            c.nack(11, t + Duration::from_millis(160)),
            Lookup::Hit(&[11])
        );
    }

    #[test]
    fn old_packets_fall_out_and_are_never_mistaken_across_the_wrap() {
        let mut c = cache();
        for seq in 65530..=65535u16 {
            c.insert(seq, &[1]);
        }
        for seq in 0..4u16 {
            c.insert(seq, &[2]);
        }
        assert_eq!(c.get(65535), Some(&[1][..]));
        assert_eq!(c.get(3), Some(&[2][..]));
        assert_eq!(c.get(65530), None, "fell out: 8 newer packets since");
        c.insert(65525, &[9]);
        assert_eq!(c.get(65525), None, "older than the whole cache: not kept");
    }

    #[test]
    fn a_lost_packet_is_not_answered_with_the_previous_cycles_one() {
        let mut c = cache();
        c.insert(5, &[0xaa]);
        // One cycle of the counter later, with every packet of 5's slot lost (5, 13, 21, ...),
        // the slot still holds the old 5.
        for s in 6u32..65536 + 10 {
            if s % 8 != 5 {
                c.insert(s as u16, &[0]);
            }
        }
        assert_eq!(c.get(5), None, "the old 5 is not the new 5");
        assert_eq!(c.nack(5, Instant::now()), Lookup::AskUpstream);
    }

    proptest! {
        #[test]
        fn whatever_arrives_a_hit_is_the_packet_asked_for(seqs in proptest::collection::vec(any::<u16>(), 0..200), asks in proptest::collection::vec(any::<u16>(), 0..50)) {
            let mut c = cache();
            for s in &seqs {
                c.insert(*s, &s.to_be_bytes());
            }
            let t = Instant::now();
            for a in asks {
                if let Lookup::Hit(p) = c.nack(a, t) {
                    prop_assert_eq!(p, &a.to_be_bytes()[..]);
                }
            }
        }
    }
}
