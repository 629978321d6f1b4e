//! `gwchalve`: an I420 picture halved in each direction, each output sample the rounded mean of
//! a 2×2 block (a box filter). The ladder's layers are halves of the one above
//! ([`crate::ladder`]), and GStreamer's generic `videoscale` (its video converter, Orc
//! bilinear) was the costliest part of a 3-layer ladder after the 720p encoder: 720p → 360p
//! took 5.3 % of a core at 30 fps (perf, BENCHMARKS.md "Adaptive"). This element does the same
//! halving with a loop the compiler vectorises (its cost is in BENCHMARKS.md, `./dev bench
//! ladder`). Registered in-process by [`register`]; not a plugin.

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_video::gst_base::subclass::BaseTransformMode;
use gst_video::subclass::prelude::*;
use gst_video::VideoFrameExt;

/// Halves one plane: `dst` (`dst_w`×`dst_h`, `dst_stride` bytes a row) from `src` (`src_stride`
/// bytes a row, at least 2×`dst_w` wide and 2×`dst_h` high).
pub fn halve_plane(
    src: &[u8],
    src_stride: usize,
    dst: &mut [u8],
    dst_stride: usize,
    dst_w: usize,
    dst_h: usize,
) {
    for y in 0..dst_h {
        let top = &src[2 * y * src_stride..][..2 * dst_w];
        let bottom = &src[(2 * y + 1) * src_stride..][..2 * dst_w];
        let out = &mut dst[y * dst_stride..][..dst_w];
        // Plain slices and chunks: the compiler vectorises this loop.
        for ((o, t), b) in out
            .iter_mut()
            .zip(top.chunks_exact(2))
            .zip(bottom.chunks_exact(2))
        {
            let sum = u16::from(t[0]) + u16::from(t[1]) + u16::from(b[0]) + u16::from(b[1]);
            *o = ((sum + 2) >> 2) as u8;
        }
    }
}

/// Registers `gwchalve` with GStreamer for this process.
pub fn register() -> Result<(), glib::BoolError> {
    gst::Element::register(None, "gwchalve", gst::Rank::NONE, Halve::static_type())
}

glib::wrapper! {
    pub struct Halve(ObjectSubclass<imp::Halve>)
        @extends gst_video::VideoFilter, gst_video::gst_base::BaseTransform, gst::Element, gst::Object;
}

mod imp {
    use super::*;

    #[derive(Default)]
    pub struct Halve;

    #[glib::object_subclass]
    impl ObjectSubclass for Halve {
        const NAME: &'static str = "GwcHalve";
        type Type = super::Halve;
        type ParentType = gst_video::VideoFilter;
    }

    impl ObjectImpl for Halve {}
    impl GstObjectImpl for Halve {}

    impl ElementImpl for Halve {
        fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
            static META: std::sync::OnceLock<gst::subclass::ElementMetadata> =
                std::sync::OnceLock::new();
            Some(META.get_or_init(|| {
                gst::subclass::ElementMetadata::new(
                    "Halve",
                    "Filter/Converter/Video/Scaler",
                    "Halves an I420 picture in each direction (2x2 box filter)",
                    "gst-webrtc-cluster",
                )
            }))
        }

        fn pad_templates() -> &'static [gst::PadTemplate] {
            static TEMPLATES: std::sync::OnceLock<Vec<gst::PadTemplate>> =
                std::sync::OnceLock::new();
            TEMPLATES.get_or_init(|| {
                let caps = gst_video::VideoCapsBuilder::new()
                    .format(gst_video::VideoFormat::I420)
                    .build();
                [gst::PadDirection::Src, gst::PadDirection::Sink]
                    .into_iter()
                    .map(|d| {
                        let name = if d == gst::PadDirection::Src {
                            "src"
                        } else {
                            "sink"
                        };
                        gst::PadTemplate::new(name, d, gst::PadPresence::Always, &caps)
                            .expect("a pad template")
                    })
                    .collect()
            })
        }
    }

    impl BaseTransformImpl for Halve {
        const MODE: BaseTransformMode = BaseTransformMode::NeverInPlace;
        const PASSTHROUGH_ON_SAME_CAPS: bool = false;
        const TRANSFORM_IP_ON_PASSTHROUGH: bool = false;

        fn transform_caps(
            &self,
            direction: gst::PadDirection,
            caps: &gst::Caps,
            filter: Option<&gst::Caps>,
        ) -> Option<gst::Caps> {
            let mut out = caps.clone();
            for s in out.make_mut().iter_mut() {
                for field in ["width", "height"] {
                    let Ok(v) = s.get::<i32>(field) else {
                        // A range (unfixed caps): any size.
                        s.set(field, gst::IntRange::new(1, i32::MAX));
                        continue;
                    };
                    match direction {
                        // Downstream: half (an odd side loses its last row or column).
                        gst::PadDirection::Sink => s.set(field, (v / 2).max(1)),
                        // Upstream: twice, or twice plus one.
                        _ => s.set(field, gst::IntRange::new(v * 2, v * 2 + 1)),
                    }
                }
            }
            Some(match filter {
                Some(f) => f.intersect_with_mode(&out, gst::CapsIntersectMode::First),
                None => out,
            })
        }
    }

    impl VideoFilterImpl for Halve {
        fn transform_frame(
            &self,
            inframe: &gst_video::VideoFrameRef<&gst::BufferRef>,
            outframe: &mut gst_video::VideoFrameRef<&mut gst::BufferRef>,
        ) -> Result<gst::FlowSuccess, gst::FlowError> {
            for plane in 0..3u32 {
                let (w, h) = (
                    outframe.comp_width(plane) as usize,
                    outframe.comp_height(plane) as usize,
                );
                let src_stride = inframe.plane_stride()[plane as usize] as usize;
                let dst_stride = outframe.plane_stride()[plane as usize] as usize;
                let (iw, ih) = (
                    inframe.comp_width(plane) as usize,
                    inframe.comp_height(plane) as usize,
                );
                if iw < 2 * w || ih < 2 * h {
                    return Err(gst::FlowError::NotNegotiated);
                }
                let src = inframe
                    .plane_data(plane)
                    .map_err(|_| gst::FlowError::Error)?;
                let dst = outframe
                    .plane_data_mut(plane)
                    .map_err(|_| gst::FlowError::Error)?;
                halve_plane(src, src_stride, dst, dst_stride, w, h);
            }
            Ok(gst::FlowSuccess::Ok)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_sample_is_the_rounded_mean_of_its_block_and_strides_are_kept() {
        // 4x2 source with 1 byte of row padding, 2x1 destination with 2 of padding.
        let src = [10, 20, 30, 41, 99, 14, 24, 50, 60, 99];
        let mut dst = [0u8; 4];
        halve_plane(&src, 5, &mut dst, 4, 2, 1);
        assert_eq!(
            dst,
            [17, 45, 0, 0],
            "(10+20+14+24)/4 = 17; (30+41+50+60+2)/4 = 45"
        );
    }

    #[test]
    fn the_element_halves_a_frame_in_a_pipeline() {
        gst::init().unwrap();
        register().unwrap();
        let pipeline = gst::parse::launch(
            "videotestsrc num-buffers=3 pattern=white ! video/x-raw,format=I420,width=1280,height=720 \
             ! gwchalve ! fakesink name=sink",
        )
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
        let pad = pipeline
            .by_name("sink")
            .unwrap()
            .static_pad("sink")
            .unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
        let s = seen.clone();
        pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
            let caps = pad.current_caps().unwrap();
            let vinfo = gst_video::VideoInfo::from_caps(&caps).unwrap();
            let buffer = info.buffer().unwrap();
            let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, &vinfo).unwrap();
            let y = frame.plane_data(0).unwrap()[0];
            let u = frame.plane_data(1).unwrap()[0];
            *s.lock().unwrap() = Some((vinfo.width(), vinfo.height(), y, u));
            gst::PadProbeReturn::Ok
        });
        pipeline.set_state(gst::State::Playing).unwrap();
        let msg = pipeline
            .bus()
            .unwrap()
            .timed_pop_filtered(
                gst::ClockTime::from_seconds(10),
                &[gst::MessageType::Eos, gst::MessageType::Error],
            )
            .expect("a message");
        pipeline.set_state(gst::State::Null).unwrap();
        assert!(matches!(msg.view(), gst::MessageView::Eos(_)), "{msg:?}");
        // White in I420 (limited range): Y 235, U and V 128.
        assert_eq!(*seen.lock().unwrap(), Some((640, 360, 235, 128)));
    }
}
