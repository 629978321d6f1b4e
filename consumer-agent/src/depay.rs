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
