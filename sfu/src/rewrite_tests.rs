use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::rtp::tests::packet;
use crate::vp8::tests::payload;

const VIEWER: u32 = 0x5eed;
const A: u32 = 0xa;
const B: u32 = 0xb;

/// A VP8 packet of `ssrc`; `key` marks a keyframe start.
fn vp8(ssrc: u32, seq: u16, ts: u32, key: bool, picture_id: u16, tl0: u8) -> Vec<u8> {
    packet(ssrc, seq, ts, false, &payload(true, key, picture_id, tl0))
}

/// Forwards `p`, returning the rewritten header and descriptor, or the drop reason.
fn send(
    m: &mut Munger,
    mut p: Vec<u8>,
    at: Instant,
) -> Result<(rtp::Header, vp8::Descriptor), DropReason> {
    match m.forward(&mut p, at).unwrap() {
        Verdict::Forward { .. } => {
            let h = rtp::parse(&p).unwrap();
            let d = vp8::parse(h.payload(&p)).unwrap();
            Ok((h, d))
        }
        Verdict::Drop(r) => Err(r),
    }
}

#[test]
fn a_viewer_starts_at_a_keyframe_under_its_own_ssrc() {
    let t = Instant::now();
    let mut m = Munger::new(VIEWER, Codec::Vp8, Some(100));
    assert_eq!(
        send(&mut m, vp8(A, 1, 0, true, 1, 1), t).unwrap_err(),
        DropReason::NotSelected
    );
    m.select(A);
    assert_eq!(
        send(&mut m, vp8(A, 2, 0, false, 1, 1), t).unwrap_err(),
        DropReason::WaitingForKeyframe
    );
    assert!(m.waiting_for_keyframe());
    let (h, _) = send(&mut m, vp8(A, 3, 3000, true, 2, 1), t).unwrap();
    assert_eq!(
        (h.ssrc, h.sequence, h.timestamp, h.payload_type),
        (VIEWER, 3, 3000, 100)
    );
    assert!(!m.waiting_for_keyframe());
    assert_eq!(
        send(&mut m, vp8(A, 4, 6000, false, 3, 1), t)
            .unwrap()
            .0
            .sequence,
        4
    );
}

#[test]
fn a_gap_upstream_stays_a_gap_and_maps_back_for_nacks() {
    let t = Instant::now();
    let mut m = Munger::new(VIEWER, Codec::Vp8, None);
    m.select(A);
    send(&mut m, vp8(A, 10, 0, true, 1, 1), t).unwrap();
    send(&mut m, vp8(A, 11, 0, false, 1, 1), t).unwrap();
    let (h, _) = send(&mut m, vp8(A, 13, 0, false, 1, 1), t).unwrap();
    assert_eq!(h.sequence, 13, "12 is missing for the viewer too");
    // The late 12 still goes out, in its place.
    assert_eq!(
        send(&mut m, vp8(A, 12, 0, false, 1, 1), t)
            .unwrap()
            .0
            .sequence,
        12
    );
    assert_eq!(m.source_of(12), Some((A, 12)));
    assert_eq!(m.source_of(14), None, "never sent");
    assert_eq!(m.source_of(9), None, "before the viewer started");
}

#[test]
fn a_reattached_origin_with_a_new_ssrc_continues_seamlessly() {
    let t = Instant::now();
    let mut m = Munger::new(VIEWER, Codec::Vp8, None);
    m.select(A);
    send(&mut m, vp8(A, 100, 9000, true, 500, 7), t).unwrap();
    send(&mut m, vp8(A, 101, 12000, false, 501, 7), t).unwrap();
    m.select(B);
    // The old source keeps flowing until the new one's keyframe.
    let (h, _) = send(&mut m, vp8(A, 102, 15000, false, 502, 7), t).unwrap();
    assert_eq!(h.sequence, 102);
    assert_eq!(
        send(&mut m, vp8(B, 40000, 1, false, 9, 0), t).unwrap_err(),
        DropReason::WaitingForKeyframe
    );
    let later = t + Duration::from_millis(100);
    let (h, d) = send(&mut m, vp8(B, 40001, 777, true, 30000, 200), later).unwrap();
    assert_eq!(h.ssrc, VIEWER);
    assert_eq!(h.sequence, 103, "sequence continues");
    assert_eq!(
        h.timestamp,
        15000 + 9000,
        "timestamp advances by the 100 ms elapsed"
    );
    assert_eq!(
        d.picture_id,
        Some(vp8::PictureId::Long(503)),
        "picture id continues"
    );
    assert_eq!(d.tl0_pic_idx, Some(8), "TL0PICIDX continues");
    let (h, d) = send(&mut m, vp8(B, 40002, 3777, false, 30001, 200), later).unwrap();
    assert_eq!((h.sequence, h.timestamp), (104, 27000));
    assert_eq!(d.picture_id, Some(vp8::PictureId::Long(504)));
    // After the switch the old source is gone for this viewer.
    assert_eq!(
        send(&mut m, vp8(A, 103, 18000, false, 503, 7), later).unwrap_err(),
        DropReason::NotSelected
    );
    // NACKs of either side map to their own source.
    assert_eq!(m.source_of(101), Some((A, 101)));
    assert_eq!(m.source_of(104), Some((B, 40002)));
}

#[test]
fn a_late_packet_from_before_the_switch_is_dropped() {
    let t = Instant::now();
    let mut m = Munger::new(VIEWER, Codec::Vp8, None);
    m.select(A);
    send(&mut m, vp8(A, 1, 0, true, 1, 1), t).unwrap();
    m.select(B);
    send(&mut m, vp8(B, 65535, 0, true, 1, 1), t).unwrap();
    assert_eq!(
        send(&mut m, vp8(B, 65534, 0, false, 1, 1), t).unwrap_err(),
        DropReason::BeforeSwitch
    );
    // Across the wrap it is newer, and forwarded.
    assert_eq!(
        send(&mut m, vp8(B, 0, 0, false, 1, 1), t)
            .unwrap()
            .0
            .sequence,
        3
    );
}

#[test]
fn a_long_run_wraps_without_dropping_anything() {
    let t = Instant::now();
    let mut m = Munger::new(VIEWER, Codec::Opus, None);
    m.select(A);
    let mut seq = 60000u16;
    for _ in 0..70_000 {
        let mut p = packet(A, seq, 0, false, &[1]);
        assert!(
            matches!(m.forward(&mut p, t).unwrap(), Verdict::Forward { .. }),
            "seq {seq}"
        );
        seq = seq.wrapping_add(1);
    }
    // A reordered packet shortly behind the newest still goes out.
    let mut p = packet(A, seq.wrapping_sub(5), 0, false, &[1]);
    assert!(matches!(
        m.forward(&mut p, t).unwrap(),
        Verdict::Forward { .. }
    ));
}

#[test]
fn a_short_picture_id_continues_modulo_128() {
    let t = Instant::now();
    let mut m = Munger::new(VIEWER, Codec::Vp8, None);
    m.select(A);
    send(&mut m, vp8(A, 1, 0, true, 127, 1), t).unwrap();
    m.select(B);
    let mut p = packet(B, 50, 0, false, &[0x90, 0x80, 0x05, 0x00]);
    m.forward(&mut p, t).unwrap();
    let h = rtp::parse(&p).unwrap();
    assert_eq!(
        vp8::parse(h.payload(&p)).unwrap().picture_id,
        Some(vp8::PictureId::Short(0))
    );
}

proptest! {
    #[test]
    fn random_packets_never_panic(packets in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..20)) {
        let t = Instant::now();
        let mut m = Munger::new(VIEWER, Codec::Vp8, Some(96));
        for mut p in packets {
            if p.len() >= 12 {
                m.select(u32::from_be_bytes([p[8], p[9], p[10], p[11]]));
            }
            let _ = m.forward(&mut p, t);
        }
    }

    /// Within one source, the viewer's sequence numbers keep the source's spacing.
    #[test]
    fn offsets_are_constant_within_a_source(start in any::<u16>(), steps in proptest::collection::vec(1u16..5, 1..50)) {
        let t = Instant::now();
        let mut m = Munger::new(VIEWER, Codec::Opus, None);
        m.select(A);
        send_opus(&mut m, A, start, t);
        m.select(B);
        let mut seq = 1000u16;
        let first = send_opus(&mut m, B, seq, t);
        prop_assert_eq!(first, start.wrapping_add(1));
        for s in steps {
            seq = seq.wrapping_add(s);
            prop_assert_eq!(send_opus(&mut m, B, seq, t), first.wrapping_add(seq.wrapping_sub(1000)));
        }
    }
}

fn send_opus(m: &mut Munger, ssrc: u32, seq: u16, t: Instant) -> u16 {
    let mut p = packet(ssrc, seq, 0, false, &[1]);
    match m.forward(&mut p, t).unwrap() {
        Verdict::Forward { sequence, .. } => sequence,
        Verdict::Drop(r) => panic!("dropped: {r:?}"),
    }
}

/// Loss repair, sans I/O: the source's packets go into the NACK cache and to the viewer; the
/// viewer NACKs one from before a switch and one never received upstream.
#[test]
fn a_nack_is_answered_from_the_cache_as_the_viewer_first_got_it_and_a_miss_goes_upstream_once() {
    use crate::nack_cache::{Lookup, NackCache};
    let t = Instant::now();
    let mut m = Munger::new(VIEWER, Codec::Vp8, None);
    let (mut cache_a, mut cache_b) = (
        NackCache::new(64, Duration::from_millis(100)),
        NackCache::new(64, Duration::from_millis(100)),
    );
    let mut first_sent = std::collections::HashMap::new();
    m.select(A);
    for (seq, key) in [(100u16, true), (101, false), (102, false)] {
        let p = vp8(A, seq, u32::from(seq) * 3000, key, seq, 1);
        cache_a.insert(seq, &p);
        let mut copy = p.clone();
        let Verdict::Forward { sequence, .. } = m.forward(&mut copy, t).unwrap() else {
            panic!()
        };
        first_sent.insert(sequence, copy);
    }
    m.select(B);
    for seq in [7u16, 9] {
        // 8 is lost on the way from the origin.
        let p = vp8(B, seq, 0, seq == 7, 40, 3);
        cache_b.insert(seq, &p);
        let mut copy = p.clone();
        let Verdict::Forward { sequence, .. } = m.forward(&mut copy, t).unwrap() else {
            panic!()
        };
        first_sent.insert(sequence, copy);
    }
    // The viewer got 100..=102 from A, then 103 (B 7) and 105 (B 9): it NACKs 101 and 104.
    let (ssrc, seq) = m.source_of(101).unwrap();
    assert_eq!((ssrc, seq), (A, 101));
    let Lookup::Hit(p) = cache_a.nack(seq, t) else {
        panic!("101 is cached")
    };
    let mut again = p.to_vec();
    assert_eq!(m.retransmit(&mut again).unwrap(), Some(101));
    assert_eq!(
        again, first_sent[&101],
        "byte for byte what the viewer first got"
    );
    // From the source followed now, with its picture id moved on.
    let Lookup::Hit(p) = cache_b.nack(m.source_of(103).unwrap().1, t) else {
        panic!("B 7 is cached")
    };
    let mut again = p.to_vec();
    assert_eq!(m.retransmit(&mut again).unwrap(), Some(103));
    assert_eq!(again, first_sent[&103]);
    let (ssrc, seq) = m.source_of(104).unwrap();
    assert_eq!((ssrc, seq), (B, 8));
    assert_eq!(cache_b.nack(seq, t), Lookup::AskUpstream);
    assert_eq!(
        cache_b.nack(seq, t),
        Lookup::AlreadyAsked,
        "a second viewer's NACK of it is coalesced"
    );
    // A packet that was never the viewer's is not retransmitted to it.
    let mut stranger = vp8(A, 99, 0, false, 1, 1);
    assert_eq!(m.retransmit(&mut stranger).unwrap(), None);
}
