//! The forward engine between real str0m peers over loopback UDP: an origin offering VP8 +
//! Opus, two viewers answering the engine's offers, the origin replaced mid-stream, and
//! garbage sent to the engine's port while the viewers receive.

mod harness;

use std::net::UdpSocket;

use harness::{events, forwarder, until, Node};
use sfu::forwarder::ForwardEvent;
use str0m::format::Codec;

/// Origin connected, two viewers receiving (on a 2-thread engine, so one viewer is fed
/// across threads).
fn setup() -> (
    sfu::forwarder::Forwarder,
    std::sync::mpsc::Receiver<ForwardEvent>,
    Node,
    Node,
    Node,
) {
    setup_with(Codec::Vp8)
}

fn setup_with(
    codec: Codec,
) -> (
    sfu::forwarder::Forwarder,
    std::sync::mpsc::Receiver<ForwardEvent>,
    Node,
    Node,
    Node,
) {
    let (fwd, rx) = forwarder(2);
    let (mut origin, offer) = Node::origin_of(1, None, codec);
    let answer = fwd
        .origin_offer("origin-1", &offer, None)
        .expect("the engine answers");
    assert!(answer.contains("a=candidate"), "candidates in the answer");
    origin.accept_answer(&answer);
    let mut evs = Vec::new();
    until(&mut [&mut origin], "OriginReady", |_| {
        evs.extend(events(&rx));
        evs.iter()
            .any(|e| matches!(e, ForwardEvent::OriginReady { session } if session == "origin-1"))
    });
    let (mut v1, a1) = Node::viewer(&fwd.viewer_offer("v1", None).expect("an offer for v1"));
    fwd.viewer_answer("v1", &a1).expect("v1's answer");
    let (mut v2, a2) = Node::viewer(&fwd.viewer_offer("v2", None).expect("an offer for v2"));
    fwd.viewer_answer("v2", &a2).expect("v2's answer");
    until(
        &mut [&mut origin, &mut v1, &mut v2],
        "both viewers get video and audio",
        |n| {
            n[1..]
                .iter()
                .all(|v| v.video().len() > 20 && !v.audio().is_empty())
        },
    );
    (fwd, rx, origin, v1, v2)
}

#[test]
fn viewers_receive_the_origins_media_under_their_own_ssrcs() {
    let (fwd, rx, mut origin, v1, v2) = setup();
    let origin_ssrc = origin.video_tx_ssrc().expect("the origin's video stream");
    for v in [&v1, &v2] {
        let video = v.video();
        let ssrc = video[0].ssrc;
        assert!(video.iter().all(|g| g.ssrc == ssrc), "one SSRC per track");
        assert!(
            video.iter().all(|g| g.payload[5] == 1),
            "the origin's payload"
        );
        // The engine's SSRC, not the origin's: the origin's stack numbered its own.
        assert_ne!(ssrc, origin_ssrc);
        // A joiner starts at a keyframe (VP8 payload header P bit clear).
        assert_eq!(video[0].payload[4] & 0x01, 0, "first frame is a keyframe");
        let seqs: Vec<u64> = video.iter().map(|g| g.seq).collect();
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "no gap: {seqs:?}"
        );
    }
    assert_ne!(
        v1.video()[0].ssrc,
        v2.video()[0].ssrc,
        "each viewer its own"
    );
    let evs = events(&rx);
    assert!(
        evs.iter()
            .filter(|e| matches!(e, ForwardEvent::ViewerConnected { .. }))
            .count()
            <= 2
    );
    let stats = fwd.stats();
    assert!(stats.origin_packets > 0);
    assert_eq!(stats.viewers.len(), 2);
    assert!(stats.viewers.iter().all(|v| v.packets > 20));
    fwd.stop();
}

#[test]
fn a_replaced_origin_is_invisible_to_viewers() {
    replaced_origin_is_invisible(Codec::Vp8);
}

#[test]
fn h264_is_forwarded_and_a_replaced_origin_switches_at_an_idr() {
    replaced_origin_is_invisible(Codec::H264);
}

#[test]
fn vp9_is_forwarded_and_a_replaced_origin_switches_at_a_keyframe() {
    replaced_origin_is_invisible(Codec::Vp9);
}

#[test]
fn h265_is_forwarded_and_a_replaced_origin_switches_at_an_irap() {
    replaced_origin_is_invisible(Codec::H265);
}

fn replaced_origin_is_invisible(codec: Codec) {
    let (fwd, rx, mut origin, mut v1, mut v2) = setup_with(codec);
    for v in [&v1, &v2] {
        assert_eq!(
            v.video()[0].payload[4] & 1,
            0,
            "a joiner starts at a keyframe"
        );
        if codec == Codec::H264 {
            assert_eq!(v.video()[0].payload[0] & 0x1f, 5, "an IDR");
        }
    }
    let before: Vec<(u32, u64)> = [&v1, &v2]
        .iter()
        .map(|v| {
            let last = v.video().last().map(|g| (g.ssrc, g.seq)).unwrap();
            last
        })
        .collect();
    // The origin restarts: a new session, new SSRCs and numbering; the old one goes silent.
    let (mut origin2, offer) = Node::origin_of(2, None, codec);
    let answer = fwd
        .origin_offer("origin-2", &offer, None)
        .expect("the engine answers");
    origin2.accept_answer(&answer);
    origin.connected = false; // stops sending
    until(
        &mut [&mut origin, &mut origin2, &mut v1, &mut v2],
        "both viewers get the new origin's video",
        |n| {
            n[2..]
                .iter()
                .all(|v| v.video().iter().filter(|g| g.payload[5] == 2).count() > 10)
        },
    );
    for (v, (ssrc, _)) in [&v1, &v2].into_iter().zip(before) {
        let video = v.video();
        assert!(video.iter().all(|g| g.ssrc == ssrc), "same SSRC throughout");
        let first_new = video.iter().position(|g| g.payload[5] == 2).unwrap();
        let last_old = &video[first_new - 1];
        assert_eq!(last_old.payload[5], 1);
        assert_eq!(
            video[first_new].seq,
            last_old.seq + 1,
            "the sequence continues across the switch"
        );
        assert_eq!(video[first_new].payload[4] & 1, 0, "switched at a keyframe");
        let ts_step = video[first_new].timestamp.wrapping_sub(last_old.timestamp);
        assert!(
            ts_step > 0 && ts_step < 90_000 * 30,
            "the timestamp moves forward: {ts_step}"
        );
        assert!(video[first_new..]
            .windows(2)
            .all(|w| w[1].seq == w[0].seq + 1));
    }
    let evs = events(&rx);
    assert!(
        !evs.iter()
            .any(|e| matches!(e, ForwardEvent::ViewerLost { .. })),
        "{evs:?}"
    );
    fwd.stop();
}

#[test]
fn garbage_on_the_port_harms_no_one() {
    let (fwd, _rx, mut origin, mut v1, mut v2) = setup();
    let target = fwd.local_addresses()[0];
    let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut random = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect()
    };
    let mut stun_wrong_ufrag = vec![0x00, 0x01, 0x00, 0x0c, 0x21, 0x12, 0xa4, 0x42];
    stun_wrong_ufrag.extend(random(12));
    stun_wrong_ufrag.extend([0x00, 0x06, 0x00, 0x07]);
    stun_wrong_ufrag.extend(b"nope:xy\0");
    let mut datagrams: Vec<Vec<u8>> = (0..200).map(|i| random(1 + i % 300)).collect();
    datagrams.extend([
        vec![0x80, 0x60, 0x00],                     // truncated RTP
        vec![0x80, 0x60, 0, 1, 0, 0, 0, 1, 0, 0],   // RTP without its SSRC
        vec![0x80, 200, 0, 6],                      // truncated RTCP
        vec![0x81, 205, 0, 3, 0, 0, 0, 1, 0, 0, 0], // truncated NACK
        stun_wrong_ufrag,
    ]);
    let mut dtls = vec![22, 0xfe, 0xfd];
    dtls.extend(random(60));
    datagrams.push(dtls);
    let count_before = v1.video().len() + v2.video().len();
    for d in &datagrams {
        stranger.send_to(d, target).unwrap();
        // The same from a viewer's own (bound) address: it reaches its stack, which refuses.
        v1.socket.send_to(d, target).unwrap();
    }
    until(
        &mut [&mut origin, &mut v1, &mut v2],
        "viewers keep receiving after the garbage",
        |n| n[1].video().len() + n[2].video().len() > count_before + 40,
    );
    assert_eq!(fwd.stats().viewers.len(), 2, "no viewer lost");
    fwd.stop();
}
