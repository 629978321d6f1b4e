//! The depayloaders of what webrtcsrc receives, set as a browser's receiver behaves: after a
//! loss that retransmission did not repair, wait for the next keyframe and ask for one (PLI).
//! GStreamer 1.22's `rtpvp8depay`, `rtpvp9depay`, `rtph264depay` and `rtph265depay` do
//! neither by default: they pass the delta frames that follow to the decoder, which decodes
//! them against a stale picture, with no error. Measured behind a forward relay: a viewer
//! whose switch keyframe (720p to 360p, on a link just cut) was lost decoded the new layer's
//! delta frames at 720 lines for 4 s, and the relay received no keyframe request.

use gst::prelude::*;

/// Sets `wait-for-keyframe` and `request-keyframe` on every depayloader that has them, as
/// it joins `pipeline`.
pub fn like_a_browser(pipeline: &gst::Pipeline) {
    pipeline.connect_deep_element_added(|_, _, element| {
        for property in ["wait-for-keyframe", "request-keyframe"] {
            let boolean = element
                .find_property(property)
                .is_some_and(|p| p.value_type() == bool::static_type());
            if boolean {
                element.set_property(property, true);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depayloaders_joining_the_pipeline_wait_for_and_ask_for_a_keyframe_after_loss() {
        gst::init().unwrap();
        let pipeline = gst::Pipeline::new();
        like_a_browser(&pipeline);
        // Deep inside, as webrtcsrc adds them (a bin in a bin).
        let outer = gst::Bin::new();
        let inner = gst::Bin::new();
        let vp8 = gst::ElementFactory::make("rtpvp8depay").build().unwrap();
        let h264 = gst::ElementFactory::make("rtph264depay").build().unwrap();
        pipeline.add(&outer).unwrap();
        outer.add(&inner).unwrap();
        inner.add_many([&vp8, &h264]).unwrap();
        for depay in [&vp8, &h264] {
            for property in ["wait-for-keyframe", "request-keyframe"] {
                assert!(
                    depay.property::<bool>(property),
                    "{} {property}",
                    depay.name()
                );
            }
        }
        // An element without them is left alone (setting a property it lacks would panic).
        let other = gst::ElementFactory::make("identity").build().unwrap();
        inner.add(&other).unwrap();
    }
}
