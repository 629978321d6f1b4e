use std::time::Duration;

use super::*;
use crate::vp8::tests::payload;

const A: u32 = 0xa;
const B: u32 = 0xb;

fn vp8(ssrc: u32, seq: u16, ts: u32, key: bool, picture_id: u16) -> Packet {
    Packet {
        ssrc,
        sequence: seq,
        timestamp: ts,
        marker: true,
        payload: Arc::from(payload(true, key, picture_id, 5)),
        arrival: Instant::now(),
        keyframe: key,
    }
}

fn sent(o: Outcome) -> Write {
    match o {
        Outcome::Send(w) => w,
        other => panic!("expected a send, got {other:?}"),
    }
}

#[test]
fn a_joiner_gets_the_cached_keyframe_first_without_asking_upstream() {
    let t = Instant::now();
    let mut source = SourceTrack::new(Codec::Vp8, 100_000);
    for (seq, key) in [(10, false), (11, true), (12, false), (13, false)] {
        source.push(&vp8(A, seq, u32::from(seq) * 3000, key, seq));
    }
    let mut viewer = ViewerTrack::new(Codec::Vp8, 96);
    let first = viewer.join(&source, t);
    let seqs: Vec<u64> = first.into_iter().map(|o| sent(o).sequence).collect();
    assert_eq!(seqs, vec![11, 12, 13], "keyframe first, then what followed");
    let live = sent(viewer.forward(&vp8(A, 14, 42_000, false, 14), t));
    assert_eq!(live.sequence, 14, "live packets continue without a gap");
    assert_eq!(live.payload_type, 96, "the viewer's payload type");
}

#[test]
fn a_joiner_without_a_cached_keyframe_asks_for_one_and_starts_at_the_next() {
    let t = Instant::now();
    let mut source = SourceTrack::new(Codec::Vp8, 100_000);
    source.push(&vp8(A, 1, 0, false, 1));
    let mut viewer = ViewerTrack::new(Codec::Vp8, 96);
    assert_eq!(viewer.join(&source, t), vec![Outcome::NeedKeyframe]);
    assert_eq!(
        viewer.forward(&vp8(A, 2, 3000, false, 2), t),
        Outcome::NeedKeyframe
    );
    assert_eq!(
        sent(viewer.forward(&vp8(A, 3, 6000, true, 3), t)).sequence,
        3
    );
}

#[test]
fn a_replaced_origin_is_invisible_sequence_timestamp_and_picture_id_continue() {
    let t = Instant::now();
    let mut viewer = ViewerTrack::new(Codec::Vp8, 96);
    let mut last = None;
    for seq in 100..110u16 {
        last = Some(sent(
            viewer.forward(&vp8(A, seq, u32::from(seq) * 3000, seq == 100, seq), t),
        ));
    }
    let before = last.unwrap();
    // The origin reattaches: new SSRC, numbers from elsewhere; its first packets are no
    // keyframe (the viewer waits for one), then a keyframe.
    let later = t + Duration::from_millis(100);
    assert_eq!(
        viewer.forward(&vp8(B, 7000, 1_000_000, false, 500), later),
        Outcome::NeedKeyframe
    );
    let switched = sent(viewer.forward(&vp8(B, 7001, 1_003_000, true, 501), later));
    assert_eq!(switched.sequence, before.sequence + 1, "sequence continues");
    let elapsed = switched.timestamp.wrapping_sub(before.timestamp);
    assert!(
        (1..=90_000).contains(&elapsed),
        "timestamp moves on by about the time elapsed, got {elapsed}"
    );
    let id = |w: &Write| w.vp8.unwrap().picture_id.unwrap();
    assert_eq!(
        id(&switched),
        (id(&before) + 1) & 0x7fff,
        "picture id continues"
    );
    assert_eq!(
        sent(viewer.forward(&vp8(B, 7002, 1_006_000, false, 502), later)).sequence,
        before.sequence + 2
    );
}

#[test]
fn extended_sequence_numbers_cross_the_wrap() {
    let t = Instant::now();
    let mut viewer = ViewerTrack::new(Codec::Opus, 111);
    let mut got = Vec::new();
    for seq in [65534u16, 65535, 0, 1] {
        let p = Packet {
            ssrc: A,
            sequence: seq,
            timestamp: 0,
            marker: false,
            payload: Arc::from(&[1u8][..]),
            arrival: t,
            keyframe: true,
        };
        got.push(sent(viewer.forward(&p, t)).sequence);
    }
    assert_eq!(got, vec![65534, 65535, 65536, 65537]);
}
