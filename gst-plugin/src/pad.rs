//! The elements' pads: ghost pads standing for the stock element's, with its `msid` property
//! (a layered origin's layers are told apart by it: docs/protocol.md "Layers"), read from and
//! written to the pad it stands for.

use std::sync::LazyLock;

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

glib::wrapper! {
    pub struct GwcPad(ObjectSubclass<imp::GwcPad>)
        @extends gst::GhostPad, gst::ProxyPad, gst::Pad, gst::Object;
}

/// A pad of ours standing for `target`, named as it, from our template `templ`.
pub fn ghost(
    templ: Option<&gst::PadTemplate>,
    target: &gst::Pad,
) -> Result<GwcPad, glib::BoolError> {
    let builder = match templ {
        Some(templ) => gst::PadBuilder::<GwcPad>::from_template(templ),
        None => gst::PadBuilder::<GwcPad>::new(target.direction()),
    };
    Ok(builder.with_target(target)?.name(target.name()).build())
}

mod imp {
    use super::*;

    #[derive(Default)]
    pub struct GwcPad;

    #[glib::object_subclass]
    impl ObjectSubclass for GwcPad {
        const NAME: &'static str = "GwcPad";
        type Type = super::GwcPad;
        type ParentType = gst::GhostPad;
    }

    impl ObjectImpl for GwcPad {
        fn properties() -> &'static [glib::ParamSpec] {
            static PROPS: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
                vec![glib::ParamSpecString::builder("msid")
                    .blurb(
                        "The track's stream id (a=msid): a gwcwebrtcsink pad's is sent to \
                         consumers (set it before the start); a gwcwebrtcsrc pad's is the \
                         producer's",
                    )
                    .build()]
            });
            PROPS.as_ref()
        }

        fn set_property(&self, _id: usize, value: &glib::Value, _pspec: &glib::ParamSpec) {
            let Some(target) = self.obj().target() else {
                return;
            };
            let writable = target
                .find_property("msid")
                .is_some_and(|p| p.flags().contains(glib::ParamFlags::WRITABLE));
            if writable {
                target.set_property_from_value("msid", value);
            }
        }

        fn property(&self, _id: usize, _pspec: &glib::ParamSpec) -> glib::Value {
            match self.obj().target() {
                Some(target) if target.find_property("msid").is_some() => {
                    target.property_value("msid")
                }
                _ => None::<String>.to_value(),
            }
        }
    }

    impl GstObjectImpl for GwcPad {}
    impl PadImpl for GwcPad {}
    impl ProxyPadImpl for GwcPad {}
    impl GhostPadImpl for GwcPad {}
}
