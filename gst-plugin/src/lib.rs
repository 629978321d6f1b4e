//! `libgstgwc.so`: the cluster's signaller as GStreamer elements (issue 28), so gst-launch,
//! gst-inspect and applications use it as they use upstream's per-service elements.
//!
//! | behaviour | file |
//! |---|---|
//! | the plugin: `gwcwebrtcsink`, `gwcwebrtcsrc`, and the stock `webrtcsink`, `webrtcsrc` (and `rtpgccbwe`) of the same gst-plugin-webrtc | `lib.rs` |
//! | the `signaller` child's properties (`servers`, `token-file`, `stream`, …, read-only `node-id`, `peer-id`) | `settings.rs` |
//! | properties → agent-core's `ClusterSignaller`; its refusals and giving up → element errors | `wiring.rs` |
//! | `gwcwebrtcsink`: webrtcsink with the cluster signaller (request pads ghosted, `meta`) | `sink.rs` |
//! | `gwcwebrtcsrc`: webrtcsrc with the cluster signaller (its pads ghosted as they come; re-placement when watching) | `src.rs` |
//! | the elements' pads: ghost pads with the stock pads' `msid` | `pad.rs` |
//! | the agents' flags as these elements' properties (the agents publish and watch through them) | `agent.rs` |
//!
//! `./dev plugin` builds it and prints the `GST_PLUGIN_PATH` line; docs/gstreamer.md.

use gst::glib;

pub mod agent;
pub mod pad;
pub mod settings;
pub mod sink;
pub mod src;
pub mod wiring;

/// The stock element's pad templates of `direction`, for ours (the same names and caps).
pub(crate) fn stock_templates(
    factory: &str,
    direction: gst::PadDirection,
) -> Vec<gst::PadTemplate> {
    let Some(factory) = gst::ElementFactory::find(factory) else {
        return Vec::new();
    };
    factory
        .static_pad_templates()
        .iter()
        .filter(|t| t.direction() == direction)
        .filter_map(|t| {
            gst::PadTemplate::new(t.name_template(), direction, t.presence(), &t.caps()).ok()
        })
        .collect()
}

/// Registers everything on `plugin` (`None`: statically, for a program linking this crate).
pub fn register(plugin: Option<&gst::Plugin>) -> Result<(), glib::BoolError> {
    use gst::prelude::*;
    // rustls needs a process-wide crypto provider (the stock plugin installs ring's in its
    // init; a second install is refused, harmlessly)
    let _ = rustls::crypto::ring::default_provider().install_default();
    match plugin {
        Some(p) => {
            gstrswebrtc::webrtcsink::register(p)?;
            gstrswebrtc::webrtcsrc::register(Some(p))?;
        }
        // (a program may have registered them already)
        None if gst::ElementFactory::find("webrtcsink").is_some() => {}
        None => gstrswebrtc::plugin_register_static()?,
    }
    // webrtcsink's congestion control needs rtpgccbwe (Debian 12 has no gst-plugins-rs)
    if gst::ElementFactory::find("rtpgccbwe").is_none() {
        gstrsrtp::plugin_register_static()?;
    }
    settings::SignallerSettings::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    pad::GwcPad::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    gst::Element::register(
        plugin,
        "gwcwebrtcsink",
        gst::Rank::NONE,
        sink::GwcWebRTCSink::static_type(),
    )?;
    gst::Element::register(
        plugin,
        "gwcwebrtcsrc",
        gst::Rank::NONE,
        src::GwcWebRTCSrc::static_type(),
    )?;
    Ok(())
}

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    register(Some(plugin))
}

gst::plugin_define!(
    gwc,
    env!("CARGO_PKG_DESCRIPTION"),
    plugin_init,
    env!("CARGO_PKG_VERSION"),
    "MPL-2.0",
    "gst-webrtc-cluster",
    "gst-webrtc-cluster",
    "https://github.com/gst-webrtc-cluster/gst-webrtc-cluster"
);
