//! A viewer of a layered source: packets of three layers (three SSRCs) interleaved as the
//! origin sends them; the viewer switches only at the target layer's keyframe and sees one
//! continuous stream.

use std::time::Duration;

use super::*;
use crate::vp8::tests::payload;

/// Layer k's SSRC, and where its sequence numbers, timestamps and picture ids start (each
/// layer its own, as separate encoders make them; the bottom's sequence wraps).
const LAYERS: [(u32, u16, u32, u16); 3] = [
    (0xa, 1_000, 7_000, 100),
    (0xb, 20_000, 900_000, 2_000),
    (0xc, 65_530, 4_000_000_000, 30_000),
];

/// Frame `f` of layer `k`: one packet, VP8, TL0PICIDX = f.
fn frame(k: usize, f: u16, key: bool, t0: Instant) -> Packet {
    let (ssrc, seq, ts, pic) = LAYERS[k];
    Packet {
        ssrc,
        sequence: seq.wrapping_add(f),
        timestamp: ts.wrapping_add(u32::from(f) * 3000),
        marker: true,
        payload: Arc::from(payload(true, key, pic.wrapping_add(f) & 0x7fff, f as u8)),
        arrival: t0 + Duration::from_millis(33 * u64::from(f)),
        keyframe: key,
    }
}

/// Feeds frame `f` of every layer (top first), `key` naming the layer whose frame is a
/// keyframe; what the viewer got, and whether it asked for a keyframe.
fn feed(
    v: &mut ViewerTrack,
    f: u16,
    key: Option<usize>,
    t0: Instant,
) -> (Vec<(usize, Write)>, bool) {
    let (mut sent, mut asked) = (Vec::new(), false);
    for k in 0..3 {
        let p = frame(k, f, key == Some(k), t0);
        match v.forward_layer(&p, Some(k), p.arrival) {
            Outcome::Send(w) => sent.push((k, w)),
            Outcome::NeedKeyframe => asked = true,
            Outcome::Skip => {}
        }
    }
    (sent, asked)
}

#[test]
fn a_layer_switch_happens_at_the_target_s_keyframe_and_the_stream_stays_continuous() {
    let t0 = Instant::now();
    let mut v = ViewerTrack::new(Codec::Vp8, 96);
    v.set_target(1);
    let mut got = Vec::new();
    // Joined on the middle layer at its keyframe.
    let (sent, _) = feed(&mut v, 0, Some(1), t0);
    assert_eq!(sent.iter().map(|(k, _)| *k).collect::<Vec<_>>(), vec![1]);
    got.extend(sent);
    for f in 1..5 {
        got.extend(feed(&mut v, f, None, t0).0);
    }
    // Down to the bottom: the middle keeps flowing, a keyframe is asked for, and the top's
    // keyframe does not switch the viewer anywhere.
    v.set_target(2);
    for f in 5..9 {
        let key = (f == 7).then_some(0);
        let (sent, asked) = feed(&mut v, f, key, t0);
        assert!(asked, "frame {f}: the bottom's keyframe is asked for");
        assert_eq!(
            sent.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            vec![1],
            "frame {f}"
        );
        got.extend(sent);
    }
    let (sent, _) = feed(&mut v, 9, Some(2), t0);
    assert_eq!(
        sent.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
        vec![1, 2],
        "the middle's frame 9 came before the bottom's keyframe"
    );
    got.extend(sent);
    assert_eq!((v.layer(), v.switches_down), (Some(2), 1));
    for f in 10..13 {
        let (sent, asked) = feed(&mut v, f, None, t0);
        assert!(!asked);
        assert_eq!(sent.iter().map(|(k, _)| *k).collect::<Vec<_>>(), vec![2]);
        got.extend(sent);
    }
    // Up to the top, at its keyframe.
    v.set_target(0);
    for f in 13..16 {
        got.extend(feed(&mut v, f, (f == 15).then_some(0), t0).0);
    }
    for f in 16..18 {
        got.extend(feed(&mut v, f, None, t0).0);
    }
    assert_eq!((v.layer(), v.switches_up), (Some(0), 1));
    let layers: Vec<usize> = got.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        layers,
        [vec![1; 10], vec![2; 6], vec![0; 3]].concat(),
        "middle to frame 9, bottom from its keyframe at 9, top from its keyframe at 15"
    );
    for pair in got.windows(2) {
        let (a, b) = (&pair[0].1, &pair[1].1);
        assert_eq!(b.sequence, a.sequence + 1, "sequence contiguous");
        assert!(
            b.timestamp.wrapping_sub(a.timestamp) as i32 > 0,
            "timestamps move forward"
        );
        let (pa, pb) = (a.vp8.unwrap(), b.vp8.unwrap());
        assert_eq!(
            pb.picture_id.unwrap(),
            (pa.picture_id.unwrap() + 1) & 0x7fff,
            "picture id continuous"
        );
        assert_eq!(
            pb.tl0_pic_idx.unwrap(),
            pa.tl0_pic_idx.unwrap().wrapping_add(1),
            "TL0PICIDX continuous"
        );
    }
}

#[test]
fn a_switch_given_up_before_its_keyframe_keeps_the_followed_layer_without_a_keyframe() {
    let t0 = Instant::now();
    let mut v = ViewerTrack::new(Codec::Vp8, 96);
    v.set_target(1);
    feed(&mut v, 0, Some(1), t0);
    v.set_target(0);
    assert!(feed(&mut v, 1, None, t0).1);
    v.set_target(1);
    assert!(!v.munger.waiting_for_keyframe(), "the switch is forgotten");
    for f in 2..6 {
        let (sent, asked) = feed(&mut v, f, None, t0);
        assert!(!asked, "nothing to wait for");
        assert_eq!(sent.len(), 1);
    }
    assert_eq!((v.switches_up, v.switches_down), (0, 0));
}

#[test]
fn a_viewer_asking_for_a_keyframe_during_a_switch_down_gets_nothing_more_of_the_old_layer() {
    let t0 = Instant::now();
    let mut v = ViewerTrack::new(Codec::Vp8, 96);
    v.set_target(0);
    feed(&mut v, 0, Some(0), t0);
    // A switch down pending: the top keeps flowing.
    v.set_target(1);
    let (sent, _) = feed(&mut v, 1, None, t0);
    assert_eq!(sent.iter().map(|(k, _)| *k).collect::<Vec<_>>(), vec![0]);
    // The viewer asks for a keyframe (it lost the top's packets): the top stops.
    v.keyframe_asked();
    let (sent, asked) = feed(&mut v, 2, None, t0);
    assert!(sent.is_empty(), "nothing of the old layer: {sent:?}");
    assert!(asked, "the target's keyframe is still asked for");
    // The switch at the target's keyframe, the stream continuous across the gap.
    let (sent, _) = feed(&mut v, 3, Some(1), t0);
    assert_eq!(sent.iter().map(|(k, _)| *k).collect::<Vec<_>>(), vec![1]);
    assert_eq!(v.layer(), Some(1));
    let (sent, _) = feed(&mut v, 4, None, t0);
    assert_eq!(sent.iter().map(|(k, _)| *k).collect::<Vec<_>>(), vec![1]);
    assert_eq!(v.switches_down, 1);
}

#[test]
fn a_keyframe_request_without_a_switch_down_stops_nothing() {
    let t0 = Instant::now();
    let mut v = ViewerTrack::new(Codec::Vp8, 96);
    v.set_target(1);
    feed(&mut v, 0, Some(1), t0);
    v.keyframe_asked();
    assert_eq!(feed(&mut v, 1, None, t0).0.len(), 1, "no switch pending");
    // A switch up pending: the followed layer keeps flowing whatever the viewer asks.
    v.set_target(0);
    v.keyframe_asked();
    let (sent, _) = feed(&mut v, 2, None, t0);
    assert_eq!(sent.iter().map(|(k, _)| *k).collect::<Vec<_>>(), vec![1]);
}

/// H.264 packets: SPS, PPS, IDR slice (a keyframe starts at the SPS) or a non-IDR slice.
fn h264(ssrc: u32, seq: u16, ts: u32, nal: u8, t: Instant) -> Packet {
    Packet {
        ssrc,
        sequence: seq,
        timestamp: ts,
        marker: nal != 0x67 && nal != 0x68,
        payload: Arc::from(vec![nal, 0xaa, 0xbb]),
        arrival: t,
        keyframe: matches!(nal, 0x67 | 0x65),
    }
}

#[test]
fn an_h264_layer_switch_waits_for_the_sps_pps_idr() {
    let t = Instant::now();
    let mut v = ViewerTrack::new(Codec::H264, 102);
    v.set_target(0);
    assert!(matches!(
        v.forward_layer(&h264(0xa, 10, 0, 0x65, t), Some(0), t),
        Outcome::Send(_)
    ));
    v.set_target(1);
    // The lower layer's non-IDR slices: asked, the top keeps flowing.
    assert_eq!(
        v.forward_layer(&h264(0xb, 500, 90, 0x41, t), Some(1), t),
        Outcome::NeedKeyframe
    );
    let top = sent(v.forward_layer(&h264(0xa, 11, 3000, 0x41, t), Some(0), t));
    let mut last = top.sequence;
    for (seq, nal) in [(501, 0x67), (502, 0x68), (503, 0x65), (504, 0x41)] {
        let w = sent(v.forward_layer(&h264(0xb, seq, 3090, nal, t), Some(1), t));
        assert_eq!(
            w.sequence,
            last + 1,
            "NAL {nal:#x} right after the top's last"
        );
        last = w.sequence;
    }
    assert_eq!(
        v.forward_layer(&h264(0xa, 12, 6000, 0x41, t), Some(0), t),
        Outcome::Skip
    );
    assert_eq!((v.layer(), v.switches_down), (Some(1), 1));
}

fn sent(o: Outcome) -> Write {
    match o {
        Outcome::Send(w) => w,
        other => panic!("expected a send, got {other:?}"),
    }
}
