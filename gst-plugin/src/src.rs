//! `gwcwebrtcsrc`: the stock `webrtcsrc` with the cluster signaller inside, watching a stream
//! by name (`signaller::stream`, placed by the cluster), a producer by name or id, or the first
//! one listed.
//!
//! A bin, as `gwcwebrtcsink` is (`sink.rs` says why). webrtcsrc takes its signaller at
//! construction only, so the child (named `webrtcsrc`, reached as `webrtcsrc::NAME`) is made
//! when the element starts; its pads are ghosted as they come, and a ghost pad stays (and is
//! retargeted) when a later session brings a pad of the same name, so downstream stays linked.
//! Until then `webrtcsrc::NAME` reaches a template webrtcsrc (never started) whose properties
//! set are copied to each webrtcsrc made (`webrtcsrc::video-codecs=…` in gst-launch).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Instant;

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use agent_core::signaller::{AgentEvent, ClusterSignaller, EndedBy};

use crate::settings::SignallerSettings;
use crate::wiring;

/// As consumer-agent's `--stall-timeout`.
const DEFAULT_STALL_TIMEOUT_MS: u32 = 3000;

/// How long a watching source waits before asking again.
const AGAIN_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

glib::wrapper! {
    pub struct GwcWebRTCSrc(ObjectSubclass<imp::GwcWebRTCSrc>)
        @extends gst::Bin, gst::Element, gst::Object, @implements gst::ChildProxy;
}

mod imp {
    use super::*;

    pub struct GwcWebRTCSrc {
        settings: SignallerSettings,
        inner: Mutex<Option<gst::Element>>,
        /// When the last buffer left through one of our pads (none since the last rebuild).
        last_buffer: Arc<Mutex<Option<Instant>>>,
        stall_timeout_ms: AtomicU32,
        watch: AtomicBool,
        /// Stands for the webrtcsrc before it exists: what is set on it is copied.
        template: gst::Element,
        /// The template's properties that were set.
        changed: Arc<Mutex<Vec<String>>>,
        pub(super) tap: wiring::Tap,
    }

    impl Default for GwcWebRTCSrc {
        fn default() -> Self {
            let template = gst::ElementFactory::make("webrtcsrc")
                .name("webrtcsrc")
                .build()
                .expect("webrtcsrc is registered by this plugin");
            let changed: Arc<Mutex<Vec<String>>> = Arc::default();
            let seen = changed.clone();
            template.connect_notify(None, move |_, pspec| {
                let mut seen = seen.lock().unwrap();
                if !seen.iter().any(|name| name == pspec.name()) {
                    seen.push(pspec.name().to_string());
                }
            });
            GwcWebRTCSrc {
                settings: SignallerSettings::new(true),
                inner: Mutex::default(),
                last_buffer: Arc::default(),
                stall_timeout_ms: AtomicU32::new(DEFAULT_STALL_TIMEOUT_MS),
                watch: AtomicBool::new(true),
                template,
                changed,
                tap: wiring::Tap::default(),
            }
        }
    }

    #[glib::object_subclass]
    impl ObjectSubclass for GwcWebRTCSrc {
        const NAME: &'static str = "GwcWebRTCSrc";
        type Type = super::GwcWebRTCSrc;
        type ParentType = gst::Bin;
        type Interfaces = (gst::ChildProxy,);
    }

    impl ObjectImpl for GwcWebRTCSrc {
        fn properties() -> &'static [glib::ParamSpec] {
            static PROPS: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
                vec![
                    glib::ParamSpecObject::builder::<SignallerSettings>("signaller")
                        .blurb(&crate::settings::describe())
                        .read_only()
                        .build(),
                    glib::ParamSpecBoolean::builder("watch")
                        .blurb(
                            "Keep watching: a stream not there yet (or no member with room), a \
                             session the other side ended, or media stalled is asked for again \
                             a second later with a fresh webrtcsrc (off: the source just ends, \
                             for an application that decides itself, as the agents do)",
                        )
                        .default_value(true)
                        .mutable_ready()
                        .build(),
                    glib::ParamSpecUInt::builder("stall-timeout")
                        .blurb(
                            "Media stopped this many milliseconds after it flowed (a relay \
                             died; its session waits for a resume that will not come): be \
                             placed again, as consumer-agent's --stall-timeout (0: never)",
                        )
                        .default_value(DEFAULT_STALL_TIMEOUT_MS)
                        .mutable_ready()
                        .build(),
                ]
            });
            PROPS.as_ref()
        }

        fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
            match pspec.name() {
                "stall-timeout" => {
                    let ms = value.get().unwrap_or(DEFAULT_STALL_TIMEOUT_MS);
                    self.stall_timeout_ms.store(ms, Ordering::Relaxed);
                }
                "watch" => self
                    .watch
                    .store(value.get().unwrap_or(true), Ordering::Relaxed),
                _ => {}
            }
        }

        fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
            match pspec.name() {
                "stall-timeout" => self.stall_timeout_ms.load(Ordering::Relaxed).to_value(),
                "watch" => self.watch.load(Ordering::Relaxed).to_value(),
                _ => self.settings.to_value(),
            }
        }
    }

    impl GstObjectImpl for GwcWebRTCSrc {}

    impl GwcWebRTCSrc {
        /// A webrtcsrc with a signaller made from the settings, its pads ghosted on ours.
        fn make_inner(&self) -> Result<gst::Element, wiring::SettingsError> {
            let obj = self.obj();
            let element = obj.upcast_ref::<gst::Element>();
            let signaller = wiring::signaller(element, &self.settings, &self.tap, watch_again)?;
            let inner = gst::ElementFactory::make("webrtcsrc")
                .name("webrtcsrc")
                .property("signaller", &signaller)
                // No public STUN server (the stock default): the node hands out its own.
                .property("stun-server", None::<String>)
                .build()
                .expect("webrtcsrc is registered by this plugin");
            for name in self.changed.lock().unwrap().iter() {
                inner.set_property_from_value(name, &self.template.property_value(name));
            }
            let weak = obj.downgrade();
            inner.connect_pad_added(move |_, pad| {
                let Some(obj) = weak.upgrade() else { return };
                // A session after the first: the same ghost pad, so downstream stays linked.
                let same = obj.static_pad(&pad.name());
                if let Some(ghost) = same.and_then(|p| p.downcast::<gst::GhostPad>().ok()) {
                    let _ = ghost.set_target(Some(pad));
                    return;
                }
                let templ = obj.pad_template(
                    &pad.pad_template()
                        .map_or_else(|| pad.name().to_string(), |t| t.name_template().to_string()),
                );
                if let Ok(ghost) = crate::pad::ghost(templ.as_ref(), pad) {
                    let seen = obj.imp().last_buffer.clone();
                    ghost.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
                        *seen.lock().unwrap() = Some(Instant::now());
                        gst::PadProbeReturn::Ok
                    });
                    let _ = ghost.set_active(true);
                    let _ = obj.add_pad(&ghost);
                }
            });
            let weak = obj.downgrade();
            inner.connect_pad_removed(move |_, pad| {
                let Some(obj) = weak.upgrade() else { return };
                // Kept, untargeted, for the next session's pad of the same name.
                let ghost = obj.static_pad(&pad.name());
                if let Some(ghost) = ghost.and_then(|p| p.downcast::<gst::GhostPad>().ok()) {
                    let _ = ghost.set_target(None::<&gst::Pad>);
                }
            });
            let weak = obj.downgrade();
            inner.connect_no_more_pads(move |_| {
                if let Some(obj) = weak.upgrade() {
                    obj.no_more_pads();
                }
            });
            Ok(inner)
        }
    }

    /// What consumer-agent does, for a pipeline that keeps watching: a stream not there yet
    /// (or no member with room), or a session the other side ended, is asked for again a
    /// second later with a fresh webrtcsrc (a new placement: the relay that died is not
    /// asked again).
    fn watch_again(element: &gst::Element, event: &AgentEvent) {
        let watching = element
            .downcast_ref::<super::GwcWebRTCSrc>()
            .is_some_and(|src| src.imp().watch.load(Ordering::Relaxed));
        let again = watching
            && match event {
                AgentEvent::ServerError { .. } => true,
                AgentEvent::SessionEnded { by, .. } => *by == EndedBy::Other,
                _ => false,
            };
        if !again {
            return;
        }
        let weak = element.downgrade();
        std::thread::spawn(move || {
            std::thread::sleep(AGAIN_AFTER);
            if let Some(element) = weak.upgrade() {
                element.call_async(|element| {
                    if let Some(src) = element.downcast_ref::<super::GwcWebRTCSrc>() {
                        src.imp().rebuild();
                    }
                });
            }
        });
    }

    /// Media that flowed and stopped for `timeout_ms` (a dead relay's session is parked for
    /// its resume, so no `endSession` comes soon): a fresh webrtcsrc, placed again. Checked
    /// every quarter of a second while the element lives and is not stopped.
    fn watch_stalls(obj: &super::GwcWebRTCSrc, timeout_ms: u32) {
        if timeout_ms == 0 {
            return;
        }
        let timeout = std::time::Duration::from_millis(u64::from(timeout_ms));
        let weak = obj.downgrade();
        std::thread::spawn(move || loop {
            std::thread::sleep(std::time::Duration::from_millis(250));
            let Some(obj) = weak.upgrade() else { return };
            if obj.current_state() == gst::State::Null {
                return;
            }
            let imp = obj.imp();
            let stalled = imp
                .last_buffer
                .lock()
                .unwrap()
                .is_some_and(|at| at.elapsed() > timeout);
            if stalled {
                *imp.last_buffer.lock().unwrap() = None;
                obj.call_async(|element| {
                    if let Some(src) = element.downcast_ref::<super::GwcWebRTCSrc>() {
                        src.imp().rebuild();
                    }
                });
            }
        });
    }

    impl GwcWebRTCSrc {
        /// A fresh webrtcsrc (and signaller) in place of the current one, while playing.
        fn rebuild(&self) {
            let obj = self.obj();
            if obj.current_state() == gst::State::Null {
                return;
            }
            *self.last_buffer.lock().unwrap() = None;
            if let Some(old) = self.inner.lock().unwrap().take() {
                let _ = old.set_state(gst::State::Null);
                let _ = obj.remove(&old);
            }
            match self.make_inner() {
                Ok(inner) => {
                    let _ = obj.add(&inner);
                    let _ = inner.sync_state_with_parent();
                    *self.inner.lock().unwrap() = Some(inner);
                }
                Err(e) => wiring::post(obj.upcast_ref(), &e),
            }
        }
    }

    impl ElementImpl for GwcWebRTCSrc {
        fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
            static META: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
                gst::subclass::ElementMetadata::new(
                    "WebRTC source (gst-webrtc-cluster)",
                    "Source/Network/WebRTC",
                    "webrtcsrc watching a stream of a gst-webrtc-cluster: placement by stream \
                     name, node failover, session resume, tokens (signaller::stream, \
                     signaller::servers, signaller::token-file)",
                    "gst-webrtc-cluster",
                )
            });
            Some(&*META)
        }

        fn pad_templates() -> &'static [gst::PadTemplate] {
            static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> =
                LazyLock::new(|| crate::stock_templates("webrtcsrc", gst::PadDirection::Src));
            TEMPLATES.as_ref()
        }

        fn change_state(
            &self,
            transition: gst::StateChange,
        ) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
            if transition == gst::StateChange::NullToReady {
                let obj = self.obj();
                if let Some(old) = self.inner.lock().unwrap().take() {
                    let _ = obj.remove(&old);
                }
                match self.make_inner() {
                    Ok(inner) => {
                        obj.add(&inner).map_err(|_| gst::StateChangeError)?;
                        *self.inner.lock().unwrap() = Some(inner);
                        *self.last_buffer.lock().unwrap() = None;
                        if self.watch.load(Ordering::Relaxed) {
                            watch_stalls(&obj, self.stall_timeout_ms.load(Ordering::Relaxed));
                        }
                    }
                    Err(e) => {
                        wiring::post(obj.upcast_ref(), &e);
                        return Err(gst::StateChangeError);
                    }
                }
            }
            self.parent_change_state(transition)
        }
    }

    impl BinImpl for GwcWebRTCSrc {}

    impl ChildProxyImpl for GwcWebRTCSrc {
        fn child_by_index(&self, index: u32) -> Option<glib::Object> {
            match index {
                0 => Some(self.settings.clone().upcast()),
                1 => Some(self.webrtcsrc().upcast()),
                _ => None,
            }
        }

        fn children_count(&self) -> u32 {
            2
        }

        fn child_by_name(&self, name: &str) -> Option<glib::Object> {
            wiring::child(name, &self.settings, &self.webrtcsrc())
        }
    }

    impl GwcWebRTCSrc {
        /// The running webrtcsrc, or the template before the element starts.
        pub(super) fn webrtcsrc(&self) -> gst::Element {
            let inner = self.inner.lock().unwrap().clone();
            inner.unwrap_or_else(|| self.template.clone())
        }
    }
}

impl GwcWebRTCSrc {
    /// The webrtcsrc inside: the running one, or before the start the template whose
    /// properties set are copied to each one made (`stun-server`, `video-codecs`, …).
    pub fn webrtcsrc(&self) -> gst::Element {
        self.imp().webrtcsrc()
    }

    /// The cluster signaller of the running webrtcsrc.
    pub fn cluster_signaller(&self) -> Option<ClusterSignaller> {
        let inner = self.imp().webrtcsrc();
        inner
            .property::<glib::Object>("signaller")
            .downcast::<ClusterSignaller>()
            .ok()
    }

    /// The signaller's events go to `events` from the next start on, and the final ones (a
    /// refusal, giving up, a kick) are left to the receiver instead of being element errors.
    pub fn set_events(&self, events: std::sync::mpsc::Sender<AgentEvent>) {
        *self.imp().tap.lock().unwrap() = Some(events);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `webrtcsrc::NAME` set before the start (gst-launch sets it then) reaches the webrtcsrc
    /// made at the start, and the running one is the child from then on.
    #[test]
    fn what_is_set_on_the_webrtcsrc_before_the_start_reaches_the_one_made() {
        gst::init().unwrap();
        crate::register(None).unwrap();
        let src: GwcWebRTCSrc = glib::Object::new();
        src.set_child_property("webrtcsrc::video-codecs", gst::Array::new(["H264"]));
        let template = src.webrtcsrc();
        src.set_state(gst::State::Ready).unwrap();
        let running = src.webrtcsrc();
        assert_ne!(running, template);
        let codecs = running.property::<gst::Array>("video-codecs");
        let codecs: Vec<String> = codecs.iter().filter_map(|v| v.get().ok()).collect();
        assert_eq!(codecs, ["H264"]);
        assert!(src.cluster_signaller().is_some());
        src.set_state(gst::State::Null).unwrap();
    }
}
