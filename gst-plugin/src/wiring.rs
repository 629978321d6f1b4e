//! From the `signaller` child's properties to agent-core's `ClusterSignaller`, and from the
//! signaller's events back to the element: what both elements do when they start.
//!
//! Bad values (a malformed URL, an unreadable token file, two targets) fail the state change
//! with an element error naming the property; a node refusing the token, or no node reachable
//! for `retry-for`, is an element error too (the pipeline stops instead of hanging).

use std::sync::mpsc::Sender;
use std::time::Duration;

use agent_core::cli::{parse_cafile, parse_server, parse_token_file};
use agent_core::client::{ClientConfig, ProtocolChoice, Token};
use agent_core::ice_servers::Policy;
use agent_core::signaller::{AgentEvent, ClusterSignaller, Role, SignallerConfig, Target};
use clap::ValueEnum;
use gst::glib;
use gst::prelude::*;

use crate::settings::{SignallerSettings, Values};

/// A property value the element cannot start with.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("signaller::servers: {0}")]
    Servers(String),
    #[error("signaller::token-file: {0}")]
    TokenFile(String),
    #[error(
        "give one of signaller::stream, signaller::producer-name, signaller::producer-peer-id"
    )]
    Targets,
    #[error("signaller::cafile: {0}")]
    Cafile(String),
    #[error("signaller::headers: {0} is not a string")]
    Header(String),
    #[error("cannot start the signaller's event thread: {0}")]
    Thread(String),
    #[error("signaller::ice-transport-policy: {0:?} is neither all nor relay")]
    Policy(String),
}

/// The client configuration the properties describe.
pub fn client_config(v: &Values) -> Result<ClientConfig, SettingsError> {
    let servers = v
        .servers
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(parse_server)
        .collect::<Result<Vec<_>, _>>()
        .map_err(SettingsError::Servers)?;
    if servers.is_empty() {
        return Err(SettingsError::Servers("no URL given".into()));
    }
    let token = match (&v.token_file, &v.token) {
        (Some(file), _) => Some(Token::File(
            parse_token_file(file).map_err(SettingsError::TokenFile)?,
        )),
        (None, Some(token)) => Some(Token::Value(token.clone())),
        (None, None) => None,
    };
    let cafile = match &v.cafile {
        Some(path) => Some(parse_cafile(path).map_err(SettingsError::Cafile)?),
        None => None,
    };
    let headers = match &v.headers {
        Some(s) => s
            .iter()
            .map(|(name, value)| match value.get::<String>() {
                Ok(value) => Ok((name.to_string(), value)),
                Err(_) => Err(SettingsError::Header(name.to_string())),
            })
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    Ok(ClientConfig {
        servers,
        headers,
        token,
        cafile,
        insecure_tls: v.insecure_tls,
        protocol: match v.resume {
            true => ProtocolChoice::Auto,
            false => ProtocolChoice::V1,
        },
        retry_for: Duration::from_secs(u64::from(v.retry_for)),
        backoff_max: Duration::from_secs(u64::from(v.backoff_max.max(1))),
        reconnect_after_kick: v.reconnect_after_kick,
    })
}

/// Whom the signaller registers as: a producer (the sink), or a consumer of what the
/// properties name (the first producer listed when none is given).
pub fn role(v: &Values) -> Result<Role, SettingsError> {
    if !v.consumer {
        let max_sessions = (v.max_sessions > 0).then_some(v.max_sessions);
        return Ok(Role::Producer { max_sessions });
    }
    let given = [&v.stream, &v.producer_name, &v.producer_peer_id];
    let target = match given.map(Option::clone) {
        [None, None, None] => Target::First,
        [Some(stream), None, None] => Target::Stream(stream),
        [None, Some(name), None] => Target::Name(name),
        [None, None, Some(id)] => Target::Id(id),
        _ => return Err(SettingsError::Targets),
    };
    Ok(Role::Consumer { target })
}

/// `signaller::ice-transport-policy`.
pub fn policy(v: &Values) -> Result<Policy, SettingsError> {
    Policy::from_str(&v.ice_transport_policy, true)
        .map_err(|_| SettingsError::Policy(v.ice_transport_policy.clone()))
}

/// Where the signaller's events go besides the element: an application that takes them
/// (`set_events`, as the agents do) handles the final ones (a refusal, giving up, a kick)
/// itself; otherwise they are element errors.
pub type Tap = std::sync::Arc<std::sync::Mutex<Option<Sender<AgentEvent>>>>;

/// A signaller for `element` from its settings; its events update the read-only properties
/// and turn a refusal or giving up into an element error (unless `tap` takes them); `also`
/// sees every event too.
pub fn signaller(
    element: &gst::Element,
    settings: &SignallerSettings,
    tap: &Tap,
    also: impl Fn(&gst::Element, &AgentEvent) + Send + 'static,
) -> Result<ClusterSignaller, SettingsError> {
    let values = settings.values();
    let client = client_config(&values)?;
    let role = role(&values)?;
    let policy = policy(&values)?;
    let (events, receive) = std::sync::mpsc::channel();
    let signaller = ClusterSignaller::new(SignallerConfig {
        client,
        role,
        events,
    });
    signaller.set_ice_policy(policy);
    if values.consumer {
        signaller.set_max_height((values.max_height > 0).then_some(values.max_height));
    }
    let tap = tap.lock().unwrap().clone();
    let (element, settings) = (element.downgrade(), settings.downgrade());
    std::thread::Builder::new()
        .name("gwc-signaller-events".into())
        .spawn(move || {
            for event in receive {
                let Some(element) = element.upgrade() else {
                    return;
                };
                also(&element, &event);
                let taken = tap
                    .as_ref()
                    .is_some_and(|tap| tap.send(event.clone()).is_ok());
                on_event(&element, settings.upgrade().as_ref(), event, taken);
            }
        })
        .map_err(|e| SettingsError::Thread(e.to_string()))?;
    Ok(signaller)
}

fn on_event(
    element: &gst::Element,
    settings: Option<&SignallerSettings>,
    event: AgentEvent,
    taken: bool,
) {
    match event {
        AgentEvent::Registered {
            peer_id, node_id, ..
        } => {
            if let Some(settings) = settings {
                settings.set_registered(node_id, peer_id);
            }
        }
        _ if taken => {}
        AgentEvent::Refused { reason } => gst::element_error!(
            element,
            gst::ResourceError::NotAuthorized,
            ("refused by the signalling cluster: {}", reason)
        ),
        AgentEvent::GaveUp { error } => gst::element_error!(
            element,
            gst::ResourceError::OpenReadWrite,
            ("no signalling node reachable: {}", error)
        ),
        AgentEvent::Kicked {
            reason,
            reconnecting: false,
        } => gst::element_error!(
            element,
            gst::ResourceError::NotAuthorized,
            ("disconnected by an operator: {}", reason)
        ),
        _ => {}
    }
}

/// Posts `e` as the element's error (at a state change: the pipeline does not start).
pub fn post(element: &gst::Element, e: &SettingsError) {
    gst::element_error!(element, gst::LibraryError::Settings, ("{}", e));
}

/// The `signaller` child and `inner` as children of `ChildProxy` (gst-launch's
/// `signaller::servers=…`, `webrtcsink::video-caps=…`).
pub fn child(
    name: &str,
    settings: &SignallerSettings,
    inner: &gst::Element,
) -> Option<glib::Object> {
    if name == "signaller" {
        Some(settings.clone().upcast())
    } else if name == inner.name() {
        Some(inner.clone().upcast())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> Values {
        Values::default()
    }

    #[test]
    fn servers_are_a_comma_separated_failover_list_of_websocket_urls() {
        let v = Values {
            servers: "ws://a:1, wss://b:2".into(),
            ..values()
        };
        let urls: Vec<String> = client_config(&v)
            .unwrap()
            .servers
            .iter()
            .map(|u| u.to_string())
            .collect();
        assert_eq!(urls, ["ws://a:1/", "wss://b:2/"]);
        for bad in ["http://a", "not a url", " , "] {
            let v = Values {
                servers: bad.into(),
                ..values()
            };
            let e = client_config(&v).unwrap_err().to_string();
            assert!(e.starts_with("signaller::servers"), "{bad}: {e}");
        }
    }

    #[test]
    fn resume_off_speaks_v1_and_a_token_file_wins_over_a_token() {
        let file = std::env::temp_dir().join(format!("gwc-wiring-{}", std::process::id()));
        std::fs::write(&file, "t0ken\n").unwrap();
        let v = Values {
            resume: false,
            token: Some("other".into()),
            token_file: Some(file.display().to_string()),
            ..values()
        };
        let c = client_config(&v).unwrap();
        assert!(matches!(c.protocol, ProtocolChoice::V1));
        assert!(matches!(c.token, Some(Token::File(_))));
        let _ = std::fs::remove_file(file);
    }

    #[test]
    fn a_source_watches_one_target_and_a_sink_produces() {
        let consumer = |stream: Option<&str>, name: Option<&str>| Values {
            consumer: true,
            stream: stream.map(str::to_string),
            producer_name: name.map(str::to_string),
            ..values()
        };
        let target = |v: &Values| match role(v) {
            Ok(Role::Consumer { target }) => Some(target),
            _ => None,
        };
        assert_eq!(
            target(&consumer(Some("cam"), None)),
            Some(Target::Stream("cam".into()))
        );
        assert_eq!(target(&consumer(None, None)), Some(Target::First));
        assert!(matches!(
            role(&consumer(Some("cam"), Some("cam"))),
            Err(SettingsError::Targets)
        ));
        assert!(matches!(
            role(&values()),
            Ok(Role::Producer { max_sessions: None })
        ));
    }
}
