//! The ICE servers a session's webrtcbin uses, and `--ice-transport-policy`.
//!
//! Two sources add up: the agent's own (`--stun-server`, `--turn-server`: set on
//! webrtcsink/webrtcsrc, which hand them to each webrtcbin they make) and the node's (v2
//! `welcome.iceServers`, TURN credentials minted for this peer, renewed by `iceServers`
//! messages; docs/networking.md). The signaller keeps the node's latest in an [`Ice`] and adds
//! them to each webrtcbin when the element announces it (`webrtcbin-ready`, before any
//! negotiation), so every new session uses credentials that are still valid.
//!
//! libnice 0.1.21 (Debian 12) speaks TURN over UDP and TCP but not TLS: a `turns:` URL would
//! become plain TCP to a TLS port, so the node's `turns:` URLs are left to browsers.

use std::sync::Mutex;

use gst::prelude::*;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use proto::IceServer;
use tracing::{info, warn};

/// Which candidates webrtcbin may use: all, or only relayed ones (through TURN).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Policy {
    #[default]
    All,
    Relay,
}

/// The node's servers as webrtcbin takes them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeServers {
    /// `stun://host:port` (webrtcbin takes one).
    pub stun: Option<String>,
    /// `turn://user:credential@host:port?transport=…`, user and credential percent-encoded.
    pub turn: Vec<String>,
}

/// What a URL component keeps as is: RFC 3986's unreserved characters. The rest of a TURN
/// username (`EXPIRY:ID`) or credential (base64: `+`, `/`, `=`) is percent-encoded, and
/// webrtcbin decodes it again.
const USERINFO: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

impl NodeServers {
    /// From `RTCIceServer` entries (`stun:host:port`, `turn:host:port?transport=udp`, …). What
    /// libnice cannot use (`turns:`, `stuns:`, TURN without a credential) is left out and
    /// returned as the second value, for the log.
    pub fn from_entries(entries: &[IceServer]) -> (NodeServers, Vec<String>) {
        let mut servers = NodeServers::default();
        let mut left_out = Vec::new();
        for entry in entries {
            for url in &entry.urls {
                let Some((scheme, rest)) = url.split_once(':') else {
                    left_out.push(url.clone());
                    continue;
                };
                let rest = rest.trim_start_matches("//");
                match (scheme, &entry.username, &entry.credential) {
                    ("stun", _, _) if servers.stun.is_none() => {
                        servers.stun = Some(format!("stun://{rest}"));
                    }
                    ("turn", Some(user), Some(credential)) => servers.turn.push(format!(
                        "turn://{}:{}@{rest}",
                        utf8_percent_encode(user, USERINFO),
                        utf8_percent_encode(credential, USERINFO)
                    )),
                    _ => left_out.push(url.clone()),
                }
            }
        }
        (servers, left_out)
    }
}

/// The signaller's view: the node's latest servers and the agent's policy.
#[derive(Default)]
pub struct Ice {
    node: Mutex<NodeServers>,
    policy: Mutex<Policy>,
}

impl Ice {
    /// The node gave servers (a `welcome`, or fresh credentials): they serve the next sessions.
    pub fn from_node(&self, entries: &[IceServer]) {
        let (servers, left_out) = NodeServers::from_entries(entries);
        if !left_out.is_empty() {
            warn!(
                ?left_out,
                "ICE servers libnice cannot use (no TLS to TURN): left out"
            );
        }
        let mut node = self.node.lock().unwrap();
        if *node != servers && !entries.is_empty() {
            // (the URLs without the credentials)
            let turn: Vec<&str> = servers
                .turn
                .iter()
                .filter_map(|u| u.rsplit_once('@').map(|(_, host)| host))
                .collect();
            info!(stun = ?servers.stun, ?turn, "the node's ICE servers");
        }
        *node = servers;
    }

    pub fn set_policy(&self, policy: Policy) {
        *self.policy.lock().unwrap() = policy;
    }

    /// Adds the node's servers to a session's webrtcbin (the agent's own are set already: a
    /// STUN server of its own wins), and applies the policy. Returns how many TURN servers
    /// webrtcbin accepted.
    pub fn prepare(&self, webrtcbin: &gst::Element) -> usize {
        let node = self.node.lock().unwrap().clone();
        if let Some(stun) = &node.stun {
            if webrtcbin
                .property::<Option<String>>("stun-server")
                .is_none()
            {
                webrtcbin.set_property("stun-server", stun);
            }
        }
        let mut accepted = 0;
        for url in &node.turn {
            if webrtcbin.emit_by_name::<bool>("add-turn-server", &[url]) {
                accepted += 1;
            } else {
                let host = url.rsplit_once('@').map_or("?", |(_, h)| h);
                warn!(server = host, "webrtcbin refused the node's TURN server");
            }
        }
        if *self.policy.lock().unwrap() == Policy::Relay {
            webrtcbin.set_property_from_str("ice-transport-policy", "relay");
            explain_no_relay(webrtcbin);
        }
        webrtcbin.connect_notify(Some("ice-connection-state"), |bin, _| {
            let state = bin.property_value("ice-connection-state");
            if gst::glib::EnumValue::from_value(&state).is_some_and(|(_, v)| v.nick() == "failed") {
                warn!(webrtcbin = %bin.name(), "ICE failed: no candidate pair connected");
            }
        });
        accepted
    }
}

/// Relay-only, a session whose gathering ends without a relayed candidate cannot connect:
/// say why (no TURN allocation: the server refused the credentials or cannot be reached)
/// rather than leave it to the first-frame timeout.
fn explain_no_relay(webrtcbin: &gst::Element) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let relayed = Arc::new(AtomicBool::new(false));
    let seen = relayed.clone();
    webrtcbin.connect("on-ice-candidate", false, move |values| {
        let candidate = values.get(2).and_then(|v| v.get::<String>().ok());
        if candidate.is_some_and(|c| c.contains(" typ relay")) {
            seen.store(true, Ordering::Relaxed);
        }
        None
    });
    webrtcbin.connect_notify(Some("ice-gathering-state"), move |bin, _| {
        let state = bin.property_value("ice-gathering-state");
        let complete =
            gst::glib::EnumValue::from_value(&state).is_some_and(|(_, v)| v.nick() == "complete");
        if complete && !relayed.load(Ordering::Relaxed) {
            warn!(
                webrtcbin = %bin.name(),
                "relay-only ICE has no relayed candidate: no TURN allocation succeeded \
                 (credentials refused, or the TURN server unreachable); the session cannot connect"
            );
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(urls: &[&str], user: Option<&str>, credential: Option<&str>) -> IceServer {
        IceServer {
            urls: urls.iter().map(|u| u.to_string()).collect(),
            username: user.map(str::to_string),
            credential: credential.map(str::to_string),
        }
    }

    #[test]
    fn turn_urls_carry_the_credential_percent_encoded_and_turns_is_left_out() {
        let (servers, left_out) = NodeServers::from_entries(&[
            entry(&["stun:s.example:3478"], None, None),
            entry(
                &[
                    "turn:t.example:3478?transport=udp",
                    "turn:[2001:db8::1]:3478?transport=tcp",
                    "turns:t.example:5349?transport=tcp",
                ],
                Some("1700000000:sub:peer 1"),
                Some("a+b/c="),
            ),
        ]);
        assert_eq!(servers.stun.as_deref(), Some("stun://s.example:3478"));
        assert_eq!(
            servers.turn,
            [
                "turn://1700000000%3Asub%3Apeer%201:a%2Bb%2Fc%3D@t.example:3478?transport=udp",
                "turn://1700000000%3Asub%3Apeer%201:a%2Bb%2Fc%3D@[2001:db8::1]:3478?transport=tcp",
            ]
        );
        assert_eq!(left_out, ["turns:t.example:5349?transport=tcp"]);
    }

    #[test]
    fn a_turn_url_without_a_credential_is_left_out() {
        let (servers, left_out) =
            NodeServers::from_entries(&[entry(&["turn:t.example:3478"], Some("u"), None)]);
        assert!(servers.turn.is_empty());
        assert_eq!(left_out, ["turn:t.example:3478"]);
    }

    /// webrtcbin takes what we make of the node's entries, and the policy.
    #[test]
    fn webrtcbin_takes_the_node_servers_and_the_relay_policy() {
        if gst::init().is_err() || gst::ElementFactory::find("webrtcbin").is_none() {
            panic!("GStreamer's webrtcbin is needed (./dev setup installs it)");
        }
        let ice = Ice::default();
        ice.from_node(&[
            entry(&["stun:127.0.0.1:3478"], None, None),
            entry(
                &["turn:127.0.0.1:3478?transport=tcp"],
                Some("1700000000:p"),
                Some("x/y="),
            ),
        ]);
        ice.set_policy(Policy::Relay);
        let webrtcbin = gst::ElementFactory::make("webrtcbin").build().unwrap();
        assert_eq!(ice.prepare(&webrtcbin), 1, "webrtcbin parses the TURN URL");
        assert_eq!(
            webrtcbin
                .property::<Option<String>>("stun-server")
                .as_deref(),
            Some("stun://127.0.0.1:3478")
        );
        let policy = webrtcbin.property_value("ice-transport-policy");
        let policy = gst::glib::EnumValue::from_value(&policy).unwrap().1.nick();
        assert_eq!(policy, "relay");
    }
}
