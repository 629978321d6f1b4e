//! The forward engine (`sfu`) with GStreamer 1.22's own WebRTC stack on both sides: a
//! webrtcbin origin (RSA DTLS certificate, libnice full ICE) offering VP8 + Opus, and a
//! webrtcbin viewer answering the engine's offer, decoding the video. What relay-agent's
//! forward engine will meet in webrtcsink and webrtcsrc, without the signalling around them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster_tests::media::{init, Running};
use gst::prelude::*;
use gst_webrtc::{
    WebRTCICEGatheringState, WebRTCRTPTransceiverDirection, WebRTCSDPType, WebRTCSessionDescription,
};
use sfu::forwarder::{ForwardConfig, ForwardEvent, Forwarder};

const DEADLINE: Duration = Duration::from_secs(60);

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a webrtcbin action whose last argument is a promise, and waits for its reply.
fn promise(webrtc: &gst::Element, action: &str, arg: &dyn ToValue) -> Option<gst::Structure> {
    let p = gst::Promise::new();
    webrtc.emit_by_name::<()>(action, &[arg, &p]);
    p.wait();
    p.get_reply().map(|s| s.to_owned())
}

fn description(sdp: &str, kind: WebRTCSDPType) -> WebRTCSessionDescription {
    let msg = gst_sdp::SDPMessage::parse_buffer(sdp.as_bytes()).expect("the SDP parses");
    WebRTCSessionDescription::new(kind, msg)
}

/// `create-offer` / `create-answer`, set as local; the SDP once gathering is complete (with
/// every candidate in it, so no trickling is needed).
fn local_sdp(webrtc: &gst::Element, offer: bool) -> String {
    let (action, field) = if offer {
        ("create-offer", "offer")
    } else {
        ("create-answer", "answer")
    };
    let reply = promise(webrtc, action, &None::<gst::Structure>).expect("a reply");
    let desc = reply
        .get::<WebRTCSessionDescription>(field)
        .expect("a description");
    promise(webrtc, "set-local-description", &desc);
    wait_for("ICE gathering", || {
        webrtc.property::<WebRTCICEGatheringState>("ice-gathering-state")
            == WebRTCICEGatheringState::Complete
    });
    webrtc
        .property::<WebRTCSessionDescription>("local-description")
        .sdp()
        .as_text()
        .expect("the SDP as text")
}

#[test]
fn webrtcbin_origin_and_viewer_through_the_forward_engine() {
    init();
    // The host's non-loopback addresses, as libnice gathers too.
    let (fwd, events) = Forwarder::start(ForwardConfig {
        threads: 2,
        ..ForwardConfig::default()
    })
    .expect("the engine starts");

    let origin = gst::parse::launch(
        "webrtcbin name=w bundle-policy=max-bundle \
         videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=30/1 \
         ! vp8enc deadline=1 keyframe-max-dist=60 ! rtpvp8pay picture-id-mode=15-bit \
         ! application/x-rtp,media=video,encoding-name=VP8,payload=96,clock-rate=90000 ! w. \
         audiotestsrc is-live=true ! opusenc ! rtpopuspay \
         ! application/x-rtp,media=audio,encoding-name=OPUS,payload=97,clock-rate=48000 ! w.",
    )
    .expect("the origin pipeline")
    .downcast::<gst::Pipeline>()
    .expect("a pipeline");
    let ow = origin.by_name("w").expect("webrtcbin");
    let negotiate = Arc::new(AtomicBool::new(false));
    let n = Arc::clone(&negotiate);
    ow.connect("on-negotiation-needed", false, move |_| {
        n.store(true, Ordering::SeqCst);
        None
    });
    let origin = Running::start(origin).expect("the origin plays");
    wait_for("negotiation needed", || negotiate.load(Ordering::SeqCst));
    for i in 0..2 {
        let t = ow.emit_by_name::<gst_webrtc::WebRTCRTPTransceiver>("get-transceiver", &[&i]);
        t.set_property("direction", WebRTCRTPTransceiverDirection::Sendonly);
    }
    let offer = local_sdp(&ow, true);
    let answer = fwd
        .origin_offer("origin", &offer, None)
        .expect("the engine answers");
    promise(
        &ow,
        "set-remote-description",
        &description(&answer, WebRTCSDPType::Answer),
    );
    let mut seen = Vec::new();
    wait_for("OriginReady", || {
        seen.extend(events.try_iter());
        seen.iter()
            .any(|e| matches!(e, ForwardEvent::OriginReady { .. }))
    });

    let viewer = gst::Pipeline::new();
    let vw = gst::ElementFactory::make("webrtcbin")
        .property_from_str("bundle-policy", "max-bundle")
        .build()
        .expect("webrtcbin");
    viewer.add(&vw).expect("added");
    let frames = Arc::new(AtomicU64::new(0));
    let audio = Arc::new(AtomicU64::new(0));
    let (f, a) = (Arc::clone(&frames), Arc::clone(&audio));
    let pipeline = viewer.clone();
    vw.connect_pad_added(move |_, pad| {
        let video = pad
            .current_caps()
            .and_then(|c| c.structure(0).and_then(|s| s.get::<String>("media").ok()))
            .is_some_and(|m| m == "video");
        let desc = if video {
            "rtpvp8depay ! vp8dec name=dec ! fakesink"
        } else {
            "fakesink"
        };
        let bin = gst::parse::bin_from_description(desc, true).expect("a sink bin");
        pipeline.add(&bin).expect("added");
        bin.sync_state_with_parent().expect("playing");
        pad.link(&bin.static_pad("sink").expect("a sink pad"))
            .expect("linked");
        let (probe_pad, count) = if video {
            let dec = bin.by_name("dec").expect("the decoder");
            (dec.static_pad("src").expect("its src pad"), Arc::clone(&f))
        } else {
            (pad.clone(), Arc::clone(&a))
        };
        probe_pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            count.fetch_add(1, Ordering::SeqCst);
            gst::PadProbeReturn::Ok
        });
    });
    let viewer = Running::start(viewer).expect("the viewer plays");
    let offer = fwd.viewer_offer("viewer", None).expect("an offer");
    promise(
        &vw,
        "set-remote-description",
        &description(&offer, WebRTCSDPType::Offer),
    );
    let answer = local_sdp(&vw, false);
    fwd.viewer_answer("viewer", &answer)
        .expect("the engine takes the answer");
    wait_for("decoded frames and audio at the viewer", || {
        frames.load(Ordering::SeqCst) > 30 && audio.load(Ordering::SeqCst) > 10
    });
    assert!(viewer.error().is_none(), "{:?}", viewer.error());
    assert!(origin.error().is_none(), "{:?}", origin.error());
    let stats = fwd.stats();
    assert!(stats.viewers[0].packets > 30);
    drop(viewer);
    drop(origin);
    fwd.stop();
}
