//! The agents build their webrtcsink/webrtcsrc as these elements, their flags set as the
//! `signaller` child's properties here: a flag and the property it stands for go through the
//! same wiring (`wiring.rs`), so agent and element cannot drift. What only an application
//! can take (the signaller's events, as a channel) is the elements' Rust API.

use std::sync::mpsc::Sender;

use agent_core::cli::{IceArgs, SignallingArgs};
use agent_core::client::ProtocolChoice;
use agent_core::signaller::{AgentEvent, Target};
use gst::prelude::*;

use crate::settings::SignallerSettings;
use crate::sink::GwcWebRTCSink;
use crate::src::GwcWebRTCSrc;

/// GStreamer, the stock elements and ours, registered in the agent's process.
pub fn init() -> anyhow::Result<()> {
    agent_core::init_gstreamer()?;
    crate::register(None).map_err(|e| anyhow::anyhow!("cannot register gwc elements: {e}"))
}

/// A `gwcwebrtcsink` publishing as the agent's flags say, serving at most `max_sessions`,
/// its events to `events`. The agents coalesce keyframe requests at their encoders (where
/// their stats are), so the element passes every request on.
pub fn sink(
    signalling: &SignallingArgs,
    ice: &IceArgs,
    max_sessions: Option<u32>,
    events: Sender<AgentEvent>,
) -> GwcWebRTCSink {
    let sink: GwcWebRTCSink = gst::glib::Object::builder()
        .property("name", "ws")
        .property("min-keyframe-interval", 0u32)
        .build();
    let settings = sink.property::<SignallerSettings>("signaller");
    set_signalling(&settings, signalling, ice);
    settings.set_property("max-sessions", max_sessions.unwrap_or(0));
    ice.apply(&sink.webrtcsink());
    sink.set_events(events);
    sink
}

/// A `gwcwebrtcsrc` watching `target` once (the agents decide what to do when it ends: their
/// exit codes and reports), as the agent's flags say, its events to `events`.
pub fn src(
    signalling: &SignallingArgs,
    ice: &IceArgs,
    target: &Target,
    max_height: Option<u32>,
    events: Sender<AgentEvent>,
) -> GwcWebRTCSrc {
    let src: GwcWebRTCSrc = gst::glib::Object::builder()
        .property("watch", false)
        .build();
    let settings = src.property::<SignallerSettings>("signaller");
    set_signalling(&settings, signalling, ice);
    let (property, value) = match target {
        Target::Stream(stream) => ("stream", stream),
        Target::Name(name) => ("producer-name", name),
        Target::Id(id) => ("producer-peer-id", id),
        // (an ingest member answers a publisher itself: relay-agent's forward engine only)
        Target::First | Target::Ingest => ("stream", &String::new()),
    };
    if !value.is_empty() {
        settings.set_property(property, value);
    }
    settings.set_property("max-height", max_height.unwrap_or(0));
    ice.apply(&src.webrtcsrc());
    src.set_events(events);
    src
}

/// `SignallingArgs` and `--ice-transport-policy` as the `signaller` child's properties.
fn set_signalling(settings: &SignallerSettings, s: &SignallingArgs, ice: &IceArgs) {
    let servers: Vec<&str> = s.servers.iter().map(url::Url::as_str).collect();
    settings.set_property("servers", servers.join(","));
    settings.set_property("token", s.token.as_deref());
    let token_file = s.token_file.as_ref().map(|p| p.display().to_string());
    settings.set_property("token-file", token_file);
    if !s.headers.is_empty() {
        let mut headers = gst::Structure::builder("headers");
        for (name, value) in &s.headers {
            headers = headers.field(name.as_str(), value);
        }
        settings.set_property("headers", headers.build());
    }
    let cafile = s.cafile.as_ref().map(|p| p.display().to_string());
    settings.set_property("cafile", cafile);
    settings.set_property("insecure-tls", s.insecure_tls);
    settings.set_property("resume", s.protocol == ProtocolChoice::Auto);
    let retry_for = u32::try_from(s.retry_for).unwrap_or(u32::MAX);
    settings.set_property("retry-for", retry_for);
    let backoff_max = u32::try_from(s.backoff_max).unwrap_or(3600).clamp(1, 3600);
    settings.set_property("backoff-max", backoff_max);
    settings.set_property("reconnect-after-kick", s.reconnect_after_kick);
    let policy = match ice.ice_transport_policy {
        agent_core::ice_servers::Policy::All => "all",
        agent_core::ice_servers::Policy::Relay => "relay",
    };
    settings.set_property("ice-transport-policy", policy);
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        signalling: SignallingArgs,
        #[command(flatten)]
        ice: IceArgs,
    }

    /// Every flag lands in the client configuration the element builds: what the agent's
    /// own `client_config` made before the agents used the element.
    #[test]
    fn an_agents_flags_make_the_same_client_configuration_through_the_element() {
        gst::init().unwrap();
        crate::register(None).unwrap();
        let dir = std::env::temp_dir().join(format!("gwc-agent-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let token = dir.join("token");
        std::fs::write(&token, "t0ken\n").unwrap();
        let token = token.display().to_string();
        let flags = Flags::parse_from([
            "agent",
            "--server=ws://a:1,wss://b:2",
            "--header=Cookie=gwc-node=a",
            "--token-file",
            &token,
            "--insecure-tls",
            "--protocol=v1",
            "--retry-for=7",
            "--backoff-max=3",
            "--reconnect-after-kick",
            "--ice-transport-policy=relay",
        ]);
        let (tx, _rx) = std::sync::mpsc::channel();
        let sink = self::sink(&flags.signalling, &flags.ice, Some(5), tx);
        let values = sink.property::<SignallerSettings>("signaller").values();
        let ours = crate::wiring::client_config(&values).unwrap();
        let theirs = flags.signalling.client_config();
        assert_eq!(format!("{ours:?}"), format!("{theirs:?}"));
        assert_eq!(values.max_sessions, 5);
        assert_eq!(
            crate::wiring::policy(&values).unwrap(),
            agent_core::ice_servers::Policy::Relay
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
