//! The `signaller` child of `gwcwebrtcsink`/`gwcwebrtcsrc`: the cluster signaller's settings as
//! GObject properties (`signaller::servers=…` in gst-launch), as upstream's elements keep theirs
//! on their `signaller` child. The element builds agent-core's `ClusterSignaller` from them when
//! it starts (`wiring.rs`); `node-id` and `peer-id` report where it registered.

use std::sync::{LazyLock, Mutex};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

glib::wrapper! {
    pub struct SignallerSettings(ObjectSubclass<imp::SignallerSettings>);
}

impl SignallerSettings {
    pub fn new(consumer: bool) -> Self {
        let obj: Self = glib::Object::new();
        obj.imp().values.lock().unwrap().consumer = consumer;
        obj
    }

    pub fn values(&self) -> Values {
        self.imp().values.lock().unwrap().clone()
    }

    /// Where the signaller registered (read-only properties), notified.
    pub fn set_registered(&self, node_id: Option<String>, peer_id: String) {
        {
            let mut v = self.imp().values.lock().unwrap();
            v.node_id = node_id;
            v.peer_id = Some(peer_id);
        }
        self.notify("node-id");
        self.notify("peer-id");
    }
}

/// Every property of the `signaller` child, its blurb and default, one per line: the
/// elements' `signaller` blurb, so that `gst-inspect-1.0 gwcwebrtcsink` documents them
/// (gst-inspect lists an element's own properties, not its children's).
pub fn describe() -> String {
    let mut text = String::from("The cluster signaller's settings, set as signaller::NAME=VALUE:");
    for pspec in imp::SignallerSettings::properties() {
        let default = pspec.default_value();
        let default = match default.get::<Option<String>>() {
            Ok(Some(s)) => format!("\"{s}\""),
            Ok(None) => "none".into(),
            // (a boxed default is NULL; transforming it would hand NULL to its serializer)
            Err(_) if default.type_().is_a(glib::Type::BOXED) => "none".into(),
            Err(_) => default
                .transform::<String>()
                .ok()
                .and_then(|v| v.get::<String>().ok())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "none".into()),
        };
        let access = match pspec.flags().contains(glib::ParamFlags::WRITABLE) {
            true => format!("default {default}"),
            false => "read-only".into(),
        };
        let blurb = pspec.blurb().unwrap_or_default();
        text.push_str(&format!("\n    {}: {blurb} ({access})", pspec.name()));
    }
    text
}

pub const DEFAULT_SERVERS: &str = "ws://127.0.0.1:8443";
pub const DEFAULT_RETRY_FOR: u32 = 60;
pub const DEFAULT_BACKOFF_MAX: u32 = 10;
pub const DEFAULT_POLICY: &str = "all";

#[derive(Clone, Debug)]
pub struct Values {
    /// webrtcsrc's side (the consumer properties apply).
    pub consumer: bool,
    pub servers: String,
    pub token: Option<String>,
    pub token_file: Option<String>,
    pub stream: Option<String>,
    pub producer_name: Option<String>,
    pub producer_peer_id: Option<String>,
    pub resume: bool,
    pub retry_for: u32,
    /// Extra headers of the WebSocket upgrade (`headers,cookie="gwc-route=…"`), as upstream's.
    pub headers: Option<gst::Structure>,
    pub cafile: Option<String>,
    pub insecure_tls: bool,
    /// Longest wait between two connection attempts, seconds.
    pub backoff_max: u32,
    pub reconnect_after_kick: bool,
    /// Sink: consumers served at once (0: no limit).
    pub max_sessions: u32,
    /// Source: the tallest video asked for (0: any).
    pub max_height: u32,
    /// `all` or `relay` (only TURN-relayed candidates).
    pub ice_transport_policy: String,
    pub node_id: Option<String>,
    pub peer_id: Option<String>,
}

impl Default for Values {
    fn default() -> Self {
        Values {
            consumer: false,
            servers: DEFAULT_SERVERS.into(),
            token: None,
            token_file: None,
            stream: None,
            producer_name: None,
            producer_peer_id: None,
            resume: true,
            retry_for: DEFAULT_RETRY_FOR,
            headers: None,
            cafile: None,
            insecure_tls: false,
            backoff_max: DEFAULT_BACKOFF_MAX,
            reconnect_after_kick: false,
            max_sessions: 0,
            max_height: 0,
            ice_transport_policy: DEFAULT_POLICY.into(),
            node_id: None,
            peer_id: None,
        }
    }
}

mod imp {
    use super::*;

    #[derive(Default)]
    pub struct SignallerSettings {
        pub(super) values: Mutex<Values>,
    }

    #[glib::object_subclass]
    impl ObjectSubclass for SignallerSettings {
        const NAME: &'static str = "GwcSignallerSettings";
        type Type = super::SignallerSettings;
        type ParentType = glib::Object;
    }

    fn string(name: &str, blurb: &str) -> glib::ParamSpec {
        glib::ParamSpecString::builder(name)
            .blurb(blurb)
            .mutable_ready()
            .build()
    }

    impl ObjectImpl for SignallerSettings {
        fn properties() -> &'static [glib::ParamSpec] {
            static PROPS: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
                vec![
                    glib::ParamSpecString::builder("servers")
                        .blurb(
                            "The cluster's nodes, comma-separated ws:// or wss:// URLs, tried in \
                             this order and again after a node is lost (failover)",
                        )
                        .default_value(Some(DEFAULT_SERVERS))
                        .mutable_ready()
                        .build(),
                    string(
                        "token",
                        "JWT sent as Authorization: Bearer (nodes with auth on); token-file wins",
                    ),
                    string(
                        "token-file",
                        "File holding the JWT, read again at every connection (a rotated \
                         Kubernetes Secret is picked up)",
                    ),
                    string(
                        "stream",
                        "gwcwebrtcsrc: watch this stream by name; the cluster places the \
                         session on its origin or a relay with room",
                    ),
                    string(
                        "producer-name",
                        "gwcwebrtcsrc: watch the first producer whose meta name is this",
                    ),
                    string(
                        "producer-peer-id",
                        "gwcwebrtcsrc: watch the producer with this peer id",
                    ),
                    glib::ParamSpecBoolean::builder("resume")
                        .blurb(
                            "Speak protocol v2 when the node offers it: keep the peer and its \
                             sessions across a lost connection or a dead node (off: v1, as the \
                             stock signaller)",
                        )
                        .default_value(true)
                        .mutable_ready()
                        .build(),
                    glib::ParamSpecUInt::builder("retry-for")
                        .blurb("Give up (element error) after this many seconds without any node")
                        .default_value(DEFAULT_RETRY_FOR)
                        .mutable_ready()
                        .build(),
                    glib::ParamSpecBoxed::builder::<gst::Structure>("headers")
                        .blurb(
                            "Extra HTTP headers of the WebSocket upgrade, as upstream's \
                             signaller (headers,cookie=\"gwc-route=…\": a load balancer's \
                             sticky cookie)",
                        )
                        .mutable_ready()
                        .build(),
                    string(
                        "cafile",
                        "PEM file of the CA that signed the nodes' certificate (wss://)",
                    ),
                    glib::ParamSpecBoolean::builder("insecure-tls")
                        .blurb("Accept any certificate (self-signed test setups only)")
                        .default_value(false)
                        .mutable_ready()
                        .build(),
                    glib::ParamSpecUInt::builder("backoff-max")
                        .blurb(
                            "Longest wait between two connection attempts, in seconds (the wait \
                             doubles from 250 ms, with jitter)",
                        )
                        .minimum(1)
                        .maximum(3600)
                        .default_value(DEFAULT_BACKOFF_MAX)
                        .mutable_ready()
                        .build(),
                    glib::ParamSpecBoolean::builder("reconnect-after-kick")
                        .blurb(
                            "Disconnected by an operator, register again as a new peer (off: \
                             an element error)",
                        )
                        .default_value(false)
                        .mutable_ready()
                        .build(),
                    glib::ParamSpecUInt::builder("max-sessions")
                        .blurb(
                            "gwcwebrtcsink: consumers served at once; one more is turned away \
                             and placed elsewhere by the cluster (0: no limit)",
                        )
                        .default_value(0)
                        .mutable_ready()
                        .build(),
                    glib::ParamSpecUInt::builder("max-height")
                        .blurb(
                            "gwcwebrtcsrc: ask for video no taller than this many pixels (a \
                             producer with an encoding ladder sends the layer that fits; 0: any)",
                        )
                        .default_value(0)
                        .mutable_ready()
                        .build(),
                    glib::ParamSpecString::builder("ice-transport-policy")
                        .blurb(
                            "all, or relay: media only through TURN (the node's minted \
                             credentials, or webrtcsink::turn-servers)",
                        )
                        .default_value(Some(DEFAULT_POLICY))
                        .mutable_ready()
                        .build(),
                    glib::ParamSpecString::builder("node-id")
                        .blurb("The node the signaller is registered on (v2)")
                        .read_only()
                        .build(),
                    glib::ParamSpecString::builder("peer-id")
                        .blurb("Our peer id in the cluster")
                        .read_only()
                        .build(),
                ]
            });
            PROPS.as_ref()
        }

        fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
            let mut v = self.values.lock().unwrap();
            let text = || value.get::<Option<String>>().ok().flatten();
            match pspec.name() {
                "servers" => v.servers = text().unwrap_or_else(|| DEFAULT_SERVERS.into()),
                "token" => v.token = text(),
                "token-file" => v.token_file = text(),
                "stream" => v.stream = text(),
                "producer-name" => v.producer_name = text(),
                "producer-peer-id" => v.producer_peer_id = text(),
                "resume" => v.resume = value.get().unwrap_or(true),
                "retry-for" => v.retry_for = value.get().unwrap_or(DEFAULT_RETRY_FOR),
                "headers" => v.headers = value.get().ok().flatten(),
                "cafile" => v.cafile = text(),
                "insecure-tls" => v.insecure_tls = value.get().unwrap_or(false),
                "backoff-max" => v.backoff_max = value.get().unwrap_or(DEFAULT_BACKOFF_MAX),
                "reconnect-after-kick" => v.reconnect_after_kick = value.get().unwrap_or(false),
                "max-sessions" => v.max_sessions = value.get().unwrap_or(0),
                "max-height" => v.max_height = value.get().unwrap_or(0),
                "ice-transport-policy" => {
                    v.ice_transport_policy = text().unwrap_or_else(|| DEFAULT_POLICY.into())
                }
                _ => {}
            }
        }

        fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
            let v = self.values.lock().unwrap();
            match pspec.name() {
                "servers" => v.servers.to_value(),
                "token" => v.token.to_value(),
                "token-file" => v.token_file.to_value(),
                "stream" => v.stream.to_value(),
                "producer-name" => v.producer_name.to_value(),
                "producer-peer-id" => v.producer_peer_id.to_value(),
                "resume" => v.resume.to_value(),
                "retry-for" => v.retry_for.to_value(),
                "headers" => v.headers.to_value(),
                "cafile" => v.cafile.to_value(),
                "insecure-tls" => v.insecure_tls.to_value(),
                "backoff-max" => v.backoff_max.to_value(),
                "reconnect-after-kick" => v.reconnect_after_kick.to_value(),
                "max-sessions" => v.max_sessions.to_value(),
                "max-height" => v.max_height.to_value(),
                "ice-transport-policy" => v.ice_transport_policy.to_value(),
                "node-id" => v.node_id.to_value(),
                "peer-id" => v.peer_id.to_value(),
                _ => None::<String>.to_value(),
            }
        }
    }
}
