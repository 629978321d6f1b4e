//! `gwcwebrtcsink`: the stock `webrtcsink` with the cluster signaller inside.
//!
//! gst-plugin-webrtc 0.15 keeps its base class's subclassing trait crate-private, so this is a
//! bin around a `webrtcsink` child (named `webrtcsink`) rather than a subclass: request pads
//! are the child's, ghosted; `meta` is forwarded; every other webrtcsink property is reached
//! as `webrtcsink::NAME`, and the signaller's as `signaller::NAME` (`ChildProxy`).
//!
//! Pre-encoded video (shared encoding: one encoder upstream for every consumer) gets what
//! producer-agent's shared encoder has: the consumers' keyframe requests coalesced to at most
//! one per `min-keyframe-interval` (agent-core's `keyframes.rs`), instead of one forced
//! keyframe per joining or lossy consumer.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use agent_core::keyframes::KeyframeCounts;

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use crate::settings::SignallerSettings;
use crate::wiring;

/// As producer-agent's `--min-keyframe-interval`.
const DEFAULT_MIN_KEYFRAME_INTERVAL_MS: u32 = 250;

glib::wrapper! {
    pub struct GwcWebRTCSink(ObjectSubclass<imp::GwcWebRTCSink>)
        @extends gst::Bin, gst::Element, gst::Object, @implements gst::ChildProxy;
}

mod imp {
    use super::*;

    pub struct GwcWebRTCSink {
        pub(super) inner: gst::Element,
        settings: SignallerSettings,
        min_keyframe_interval_ms: AtomicU32,
        /// Keyframe requests of the consumers of pre-encoded video, and what was passed on.
        pub(super) keyframes: Arc<KeyframeCounts>,
        /// Ghost pad → the child's request pad it stands for.
        pads: Mutex<Vec<(gst::Pad, gst::Pad)>>,
        /// An application's receiver of the signaller's events (`set_events`).
        pub(super) tap: wiring::Tap,
    }

    impl Default for GwcWebRTCSink {
        fn default() -> Self {
            GwcWebRTCSink {
                inner: gst::ElementFactory::make("webrtcsink")
                    .name("webrtcsink")
                    .build()
                    .expect("webrtcsink is registered by this plugin"),
                settings: SignallerSettings::new(false),
                min_keyframe_interval_ms: AtomicU32::new(DEFAULT_MIN_KEYFRAME_INTERVAL_MS),
                keyframes: Arc::default(),
                pads: Mutex::default(),
                tap: wiring::Tap::default(),
            }
        }
    }

    #[glib::object_subclass]
    impl ObjectSubclass for GwcWebRTCSink {
        const NAME: &'static str = "GwcWebRTCSink";
        type Type = super::GwcWebRTCSink;
        type ParentType = gst::Bin;
        type Interfaces = (gst::ChildProxy,);
    }

    impl ObjectImpl for GwcWebRTCSink {
        fn properties() -> &'static [glib::ParamSpec] {
            static PROPS: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
                vec![
                    glib::ParamSpecBoxed::builder::<gst::Structure>("meta")
                        .blurb(
                            "Meta of this producer in the cluster's lists (meta,name=cam: the \
                             stream name viewers ask for)",
                        )
                        .mutable_ready()
                        .build(),
                    glib::ParamSpecUInt::builder("min-keyframe-interval")
                        .blurb(
                            "Pre-encoded video: at most one keyframe is asked of the encoder \
                             upstream per this many milliseconds, however many consumers ask \
                             (joining, or on loss); one asked in between is passed on at the \
                             end of the interval (0: every request passed on)",
                        )
                        .maximum(60_000)
                        .default_value(DEFAULT_MIN_KEYFRAME_INTERVAL_MS)
                        .mutable_ready()
                        .build(),
                    glib::ParamSpecObject::builder::<SignallerSettings>("signaller")
                        .blurb(&crate::settings::describe())
                        .read_only()
                        .build(),
                ]
            });
            PROPS.as_ref()
        }

        fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
            match pspec.name() {
                "meta" => self.inner.set_property_from_value("meta", value),
                "min-keyframe-interval" => self.min_keyframe_interval_ms.store(
                    value.get().unwrap_or(DEFAULT_MIN_KEYFRAME_INTERVAL_MS),
                    Ordering::Relaxed,
                ),
                _ => {}
            }
        }

        fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
            match pspec.name() {
                "min-keyframe-interval" => self
                    .min_keyframe_interval_ms
                    .load(Ordering::Relaxed)
                    .to_value(),
                "signaller" => self.settings.to_value(),
                name => self.inner.property_value(name),
            }
        }

        fn constructed(&self) {
            self.parent_constructed();
            let obj = self.obj();
            // No public STUN server (the stock default): the node hands out its own.
            self.inner.set_property("stun-server", None::<String>);
            obj.add(&self.inner).expect("a fresh bin takes its child");
        }
    }

    impl GstObjectImpl for GwcWebRTCSink {}

    impl ElementImpl for GwcWebRTCSink {
        fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
            static META: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
                gst::subclass::ElementMetadata::new(
                    "WebRTC sink (gst-webrtc-cluster)",
                    "Sink/Network/WebRTC",
                    "webrtcsink publishing into a gst-webrtc-cluster: node failover, session \
                     resume, tokens (signaller::servers, signaller::token-file, meta)",
                    "gst-webrtc-cluster",
                )
            });
            Some(&*META)
        }

        fn pad_templates() -> &'static [gst::PadTemplate] {
            static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> =
                LazyLock::new(|| crate::stock_templates("webrtcsink", gst::PadDirection::Sink));
            TEMPLATES.as_ref()
        }

        fn request_new_pad(
            &self,
            templ: &gst::PadTemplate,
            name: Option<&str>,
            caps: Option<&gst::Caps>,
        ) -> Option<gst::Pad> {
            let inner_templ = self.inner.pad_template(templ.name_template())?;
            let target = self.inner.request_pad(&inner_templ, name, caps)?;
            let ghost = crate::pad::ghost(Some(templ), &target).ok()?;
            self.obj().add_pad(&ghost).ok()?;
            if target.name().starts_with("video_") {
                self.coalesce_keyframes(&ghost);
            }
            let ghost = ghost.upcast::<gst::Pad>();
            self.pads.lock().unwrap().push((ghost.clone(), target));
            Some(ghost)
        }

        fn release_pad(&self, pad: &gst::Pad) {
            let target = {
                let mut pads = self.pads.lock().unwrap();
                let at = pads.iter().position(|(ghost, _)| ghost == pad);
                at.map(|i| pads.remove(i).1)
            };
            let _ = self.obj().remove_pad(pad);
            if let Some(target) = target {
                self.inner.release_request_pad(&target);
            }
        }

        fn change_state(
            &self,
            transition: gst::StateChange,
        ) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
            if transition == gst::StateChange::NullToReady {
                let element = self.obj().upcast_ref::<gst::Element>().clone();
                match wiring::signaller(&element, &self.settings, &self.tap, |_, _| {}) {
                    Ok(signaller) => self.inner.set_property("signaller", &signaller),
                    Err(e) => {
                        wiring::post(&element, &e);
                        return Err(gst::StateChangeError);
                    }
                }
            }
            self.parent_change_state(transition)
        }
    }

    impl GwcWebRTCSink {
        /// The consumers' keyframe requests, as they leave webrtcsink for upstream through
        /// `ghost`, coalesced (they reach upstream only for pre-encoded input: webrtcsink's
        /// own encoders take raw input's).
        fn coalesce_keyframes(&self, ghost: &crate::pad::GwcPad) {
            let Some(inside) = ghost.internal() else {
                return;
            };
            let interval = self.min_keyframe_interval_ms.load(Ordering::Relaxed);
            if interval == 0 {
                return;
            }
            let outside = ghost.downgrade();
            agent_core::keyframes::coalesce(
                inside.upcast_ref(),
                Duration::from_millis(u64::from(interval)),
                self.keyframes.clone(),
                // (a deferred one goes on from the ghost pad, past the probe)
                move |event| {
                    if let Some(ghost) = outside.upgrade() {
                        ghost.push_event(event);
                    }
                },
            );
        }
    }

    impl BinImpl for GwcWebRTCSink {}

    impl ChildProxyImpl for GwcWebRTCSink {
        fn child_by_index(&self, index: u32) -> Option<glib::Object> {
            match index {
                0 => Some(self.settings.clone().upcast()),
                1 => Some(self.inner.clone().upcast()),
                _ => None,
            }
        }

        fn children_count(&self) -> u32 {
            2
        }

        fn child_by_name(&self, name: &str) -> Option<glib::Object> {
            wiring::child(name, &self.settings, &self.inner)
        }
    }
}

impl GwcWebRTCSink {
    /// The stock webrtcsink inside (`webrtcsink::NAME`): its other properties, signals and
    /// `stats`.
    pub fn webrtcsink(&self) -> gst::Element {
        self.imp().inner.clone()
    }

    /// The signaller's events go to `events` from the next start on, and the final ones (a
    /// refusal, giving up, a kick) are left to the receiver instead of being element errors.
    pub fn set_events(&self, events: std::sync::mpsc::Sender<agent_core::signaller::AgentEvent>) {
        *self.imp().tap.lock().unwrap() = Some(events);
    }

    /// Keyframe requests of pre-encoded video's consumers: (asked, passed on upstream).
    pub fn keyframe_requests(&self) -> (u64, u64) {
        let k = &self.imp().keyframes;
        (
            k.requests.load(std::sync::atomic::Ordering::Relaxed),
            k.forced.load(std::sync::atomic::Ordering::Relaxed),
        )
    }
}
