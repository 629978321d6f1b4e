//! Loss repair through the forward engine, between real str0m peers on loopback: a packet
//! lost on the way to a viewer is resent by the engine (the viewer's NACK never reaches the
//! origin); a packet lost on the origin's leg is NACKed upstream by the engine once, for all
//! viewers, and its repair reaches every viewer.

mod harness;

use harness::{events, forwarder, until, Node};
use sfu::forwarder::{ForwardEvent, Forwarder};

fn connect(viewers: usize) -> (Forwarder, Node, Vec<Node>) {
    let (fwd, rx) = forwarder(2);
    let (mut origin, offer) = Node::origin(1);
    origin.accept_answer(&fwd.origin_offer("origin", &offer, None).expect("an answer"));
    let mut evs = Vec::new();
    until(&mut [&mut origin], "OriginReady", |_| {
        evs.extend(events(&rx));
        evs.iter()
            .any(|e| matches!(e, ForwardEvent::OriginReady { .. }))
    });
    let mut vs = Vec::new();
    for i in 0..viewers {
        let name = format!("v{i}");
        let (v, answer) = Node::viewer(&fwd.viewer_offer(&name, None).expect("an offer"));
        fwd.viewer_answer(&name, &answer).expect("the answer");
        vs.push(v);
    }
    let mut nodes: Vec<&mut Node> = std::iter::once(&mut origin).chain(vs.iter_mut()).collect();
    until(&mut nodes, "viewers receive video", |n| {
        n[1..].iter().all(|v| v.video().len() > 20)
    });
    (fwd, origin, vs)
}

#[test]
fn a_viewers_nack_is_answered_by_the_engine_without_reaching_the_origin() {
    let (fwd, mut origin, mut vs) = connect(1);
    let v = &mut vs[0];
    v.drop_video_in(5);
    let seen = v.video().len();
    until(&mut [&mut origin, v], "the lost packet resent", |n| {
        n[1].dropped() && n[1].video().len() > seen + 30 && n[1].video_complete()
    });
    let mut served = 0;
    until(&mut [&mut origin, v], "the engine counts the NACK", |_| {
        served = fwd.stats().viewers[0].nacks_served;
        served > 0
    });
    assert_eq!(origin.nacks_received, 0, "the origin never heard of it");
    assert_eq!(fwd.stats().nacks_upstream, 0);
    fwd.stop();
}

#[test]
fn a_loss_upstream_is_nacked_once_for_all_viewers() {
    let (fwd, mut origin, mut vs) = connect(2);
    origin.drop_video_out(10);
    let seen: Vec<usize> = vs.iter().map(|v| v.video().len()).collect();
    let (a, b) = vs.split_at_mut(1);
    until(
        &mut [&mut origin, &mut a[0], &mut b[0]],
        "every viewer gets the repaired packet",
        |n| {
            n[1..]
                .iter()
                .zip(&seen)
                .all(|(v, s)| v.video().len() > s + 30 && v.video_complete())
                && n[0].dropped()
                && n[0].nacks_received > 0
        },
    );
    // Let every viewer's own NACK of the gap (sent before the repair arrived) play out.
    let settle = std::time::Instant::now();
    until(&mut [&mut origin, &mut a[0], &mut b[0]], "a while", |_| {
        settle.elapsed() > std::time::Duration::from_millis(600)
    });
    assert_eq!(
        origin.nacks_received, 1,
        "one NACK upstream, not one per viewer"
    );
    fwd.stop();
}
