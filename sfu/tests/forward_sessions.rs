//! The forward engine's sessions between real str0m peers on loopback: a joiner starts from
//! the cached keyframe (no keyframe request), viewers' keyframe requests reach the origin
//! coalesced, an origin with an RSA certificate (as GStreamer 1.22's) is relayed, a silent
//! origin is reported lost, and each viewer's bandwidth estimate shows in the stats.

mod harness;

use std::time::{Duration, Instant};

use harness::{events, forwarder, rsa_cert, until, Node};
use sfu::forwarder::{ForwardEvent, Forwarder, Timeouts};

fn origin(fwd: &Forwarder, rx: &std::sync::mpsc::Receiver<ForwardEvent>, rsa: bool) -> Node {
    let (mut origin, offer) = Node::origin_with(1, rsa.then(rsa_cert));
    origin.accept_answer(&fwd.origin_offer("origin", &offer, None).expect("an answer"));
    let mut evs = Vec::new();
    until(&mut [&mut origin], "OriginReady", |_| {
        evs.extend(events(rx));
        evs.iter()
            .any(|e| matches!(e, ForwardEvent::OriginReady { .. }))
    });
    origin
}

fn viewer(fwd: &Forwarder, name: &str) -> Node {
    let (v, answer) = Node::viewer(&fwd.viewer_offer(name, None).expect("an offer"));
    fwd.viewer_answer(name, &answer).expect("the answer");
    v
}

#[test]
fn a_joiner_starts_from_the_cached_keyframe_without_asking_the_origin() {
    let (fwd, rx) = forwarder(2);
    let mut origin = origin(&fwd, &rx, false);
    // Past the first keyframe: the next periodic one is 50 frames away.
    let start = Instant::now();
    until(&mut [&mut origin], "some frames", |_| {
        start.elapsed() > Duration::from_millis(150)
    });
    let asked = origin.keyframe_requests;
    let mut v = viewer(&fwd, "joiner");
    until(
        &mut [&mut origin, &mut v],
        "the joiner's first frames",
        |n| n[1].video().len() >= 3,
    );
    let first = v.video()[0].clone();
    assert_eq!(first.payload[4] & 1, 0, "the first frame is a keyframe");
    assert_eq!(
        origin.keyframe_requests, asked,
        "no keyframe request went upstream for the joiner"
    );
    assert_eq!(fwd.stats().keyframe_requests_upstream, 0);
    fwd.stop();
}

#[test]
fn viewers_keyframe_requests_reach_the_origin_coalesced() {
    let (fwd, rx) = forwarder(2);
    let mut origin = origin(&fwd, &rx, false);
    let mut a = viewer(&fwd, "a");
    let mut b = viewer(&fwd, "b");
    until(&mut [&mut origin, &mut a, &mut b], "both receive", |n| {
        n[1].video().len() > 5 && n[2].video().len() > 5
    });
    // The origin is slow to answer (no keyframe comes): a second viewer's request while the
    // first is unanswered adds nothing upstream.
    origin.keyframes = false;
    let before = origin.keyframe_requests;
    let upstream_before = fwd.stats().keyframe_requests_upstream;
    a.request_keyframe();
    until(
        &mut [&mut origin, &mut a, &mut b],
        "the origin asked",
        |n| n[0].keyframe_requests > before,
    );
    b.request_keyframe();
    until(&mut [&mut origin, &mut a, &mut b], "both counted", |_| {
        fwd.stats().viewers.iter().all(|v| v.keyframe_requests >= 1)
    });
    // Time for a request sent on b's behalf to reach the origin (well under the 1 s after
    // which an unanswered request is repeated).
    let t = Instant::now();
    until(&mut [&mut origin, &mut a, &mut b], "a moment", |_| {
        t.elapsed() > Duration::from_millis(150)
    });
    assert_eq!(origin.keyframe_requests, before + 1, "coalesced into one");
    assert_eq!(fwd.stats().keyframe_requests_upstream, upstream_before + 1);
    fwd.stop();
}

#[test]
fn an_origin_with_an_rsa_certificate_is_relayed() {
    let (fwd, rx) = forwarder(1);
    let mut origin = origin(&fwd, &rx, true);
    let mut v = viewer(&fwd, "v");
    until(&mut [&mut origin, &mut v], "the viewer receives", |n| {
        n[1].video().len() > 10 && !n[1].audio().is_empty()
    });
    fwd.stop();
}

#[test]
fn a_silent_origin_is_reported_lost_and_viewers_get_their_bandwidth_estimate() {
    let (fwd, rx) = forwarder(1);
    let mut origin = origin(&fwd, &rx, false);
    let mut v = viewer(&fwd, "v");
    until(
        &mut [&mut origin, &mut v],
        "an estimate for the viewer",
        |_| fwd.stats().viewers[0].estimate_bps.is_some_and(|b| b > 0),
    );
    origin.connected = false; // stops sending media (its transport stays up)
    let mut evs = Vec::new();
    until(&mut [&mut origin, &mut v], "OriginLost", |_| {
        evs.extend(events(&rx));
        evs.iter()
            .any(|e| matches!(e, ForwardEvent::OriginLost { .. }))
    });
    fwd.stop();
}

#[test]
fn a_viewer_gone_silent_is_reported_lost_and_leaves_the_stats() {
    let reason = gone_viewer_is_lost(Timeouts {
        silence: Duration::from_secs(1),
        ..Timeouts::default()
    });
    assert!(reason.contains("nothing received"), "{reason}");
}

#[test]
fn a_viewer_whose_ice_disconnects_is_reported_lost() {
    // str0m's agent calls a peer that answers no check disconnected after some seconds.
    let reason = gone_viewer_is_lost(Timeouts {
        silence: Duration::from_secs(3600),
        ice_disconnected: Duration::from_secs(1),
        ..Timeouts::default()
    });
    assert!(reason.contains("ICE disconnected"), "{reason}");
}

/// Two viewers, one stops: its loss reason; the other keeps receiving.
fn gone_viewer_is_lost(timeouts: Timeouts) -> String {
    let (fwd, rx) = harness::forwarder_with(2, timeouts);
    let mut origin = origin(&fwd, &rx, false);
    let mut gone = viewer(&fwd, "gone");
    let mut stays = viewer(&fwd, "stays");
    until(
        &mut [&mut origin, &mut gone, &mut stays],
        "both receive",
        |n| n[1].video().len() > 5 && n[2].video().len() > 5,
    );
    // "gone" is no longer driven: it neither answers checks nor sends feedback.
    let mut evs = Vec::new();
    until(
        &mut [&mut origin, &mut stays],
        "ViewerLost for gone",
        |_| {
            evs.extend(events(&rx));
            evs.iter()
                .any(|e| matches!(e, ForwardEvent::ViewerLost { session, .. } if session == "gone"))
        },
    );
    assert!(
        !evs.iter()
            .any(|e| matches!(e, ForwardEvent::ViewerLost { session, .. } if session == "stays")),
        "{evs:?}"
    );
    let stats = fwd.stats();
    assert_eq!(stats.viewers.len(), 1);
    assert_eq!(stats.viewers[0].session, "stays");
    let seen = stays.video().len();
    until(
        &mut [&mut origin, &mut stays],
        "the other keeps receiving",
        |n| n[1].video().len() > seen + 10,
    );
    fwd.stop();
    evs.into_iter()
        .find_map(|e| match e {
            ForwardEvent::ViewerLost { session, reason } if session == "gone" => Some(reason),
            _ => None,
        })
        .unwrap_or_default()
}
