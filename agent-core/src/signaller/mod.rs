//! The agents' own signaller: a GObject implementing gst-plugins-rs' `Signallable` interface
//! (so `webrtcsink`/`webrtcsrc` drive it like their stock one) on top of [`crate::client`].
//!
//! Compared with the stock signaller it speaks v2 when the server offers it, survives the loss
//! of its server (reconnecting through a list, resuming its identity and sessions), selects a
//! producer by name, and enforces a producer's consumer limit.

mod imp;

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use crate::client::ClientConfig;

glib::wrapper! {
    /// Set it as the `signaller` property of webrtcsink or webrtcsrc.
    pub struct ClusterSignaller(ObjectSubclass<imp::ClusterSignaller>)
        @implements gstrswebrtc::signaller::Signallable;
}

/// What the signaller registers as.
#[derive(Debug, Clone)]
pub enum Role {
    /// webrtcsink: accepts sessions, at most `max_sessions` at once.
    Producer { max_sessions: Option<u32> },
    /// webrtcsrc: starts one session with the producer `target` designates.
    Consumer { target: Target },
}

/// How a consumer picks its producer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Id(String),
    /// The first producer whose `meta.name` is this.
    Name(String),
    /// The first producer listed.
    First,
    /// Whichever member of this stream (its origin or a relay) the node places us on (a v2
    /// `startSession` naming the stream; see docs/relays.md).
    Stream(String),
    /// An ingest member (`relay-agent --whip`): waits as a listener named
    /// `proto::ingest::MEMBER_NAME` for the WHIP publication a node hands it (a producer whose
    /// `meta.ingest-by` is our peer id; docs/whip-whep.md).
    Ingest,
}

impl Target {
    /// Whether producer `id` with `meta` is the one to watch; `me`: our own peer id. A WHIP
    /// publisher's stand-in serves no one but its ingest member.
    fn matches(&self, id: &str, meta: Option<&serde_json::Value>, me: Option<&str>) -> bool {
        let text = |key: &str| meta.and_then(|m| m.get(key)).and_then(|n| n.as_str());
        let whip = proto::ingest::is_whip(meta);
        match self {
            Target::Id(want) => want == id,
            Target::Name(name) => !whip && text("name") == Some(name.as_str()),
            Target::First => !whip,
            Target::Stream(_) => false,
            Target::Ingest => whip && me.is_some() && text(proto::ingest::BY) == me,
        }
    }
}

/// What the signaller tells the agent (progress, sessions, failures), in order.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentEvent {
    /// Registered with a server (`resumed`: same peer id and sessions as before).
    Registered {
        server: String,
        peer_id: String,
        node_id: Option<String>,
        v2: bool,
        resumed: bool,
    },
    /// The connection was lost; reconnecting.
    Reconnecting {
        server: String,
        reason: String,
    },
    /// Consumer: the producer was found and a session requested.
    ProducerChosen {
        producer_id: String,
        /// Its `meta`, when it was chosen from the list (not by id).
        meta: Option<serde_json::Value>,
    },
    SessionStarted {
        session_id: String,
        peer_id: String,
    },
    SessionEnded {
        session_id: String,
        by: EndedBy,
    },
    /// Producer: a consumer was turned away because of `max_sessions`.
    ConsumerRefused {
        peer_id: String,
        limit: u32,
    },
    /// An `error` from the server.
    ServerError {
        details: String,
        code: Option<proto::ErrorCode>,
    },
    /// No server could be reached for the configured time.
    GaveUp {
        error: String,
    },
    /// The server refused us for good (the token's grants, a token or certificate refused
    /// at the door): the signaller stopped.
    Refused {
        reason: String,
    },
    /// An operator disconnected us. `reconnecting`: `--reconnect-after-kick` was given and
    /// the signaller registers anew; otherwise it stopped.
    Kicked {
        reason: String,
        reconnecting: bool,
    },
}

/// Who ended a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndedBy {
    /// Our element.
    Us,
    /// The other member, or the server (its peer left, our identity was lost).
    Other,
    /// An operator, through the operations API (v2 `endSession` with reason `operator`): not
    /// to be started again by ourselves.
    Operator,
}

/// Everything a signaller needs; set once, before the element starts.
pub struct SignallerConfig {
    pub client: ClientConfig,
    pub role: Role,
    pub events: std::sync::mpsc::Sender<AgentEvent>,
}

impl ClusterSignaller {
    pub fn new(config: SignallerConfig) -> Self {
        let obj: Self = glib::Object::new();
        obj.imp().configure(config);
        // webrtcsink/webrtcsrc emit it for each session's webrtcbin, before negotiating.
        obj.connect("webrtcbin-ready", false, |values| {
            let signaller = values[0].get::<ClusterSignaller>();
            if let (Ok(webrtcbin), Ok(signaller)) = (values[2].get::<gst::Element>(), signaller) {
                crate::dtls_certificate::use_in(&webrtcbin);
                signaller.imp().ice.prepare(&webrtcbin);
            }
            None
        });
        obj
    }

    /// `--ice-transport-policy`, for each session's webrtcbin (`ice_servers.rs`).
    pub fn set_ice_policy(&self, policy: crate::ice_servers::Policy) {
        self.imp().ice.set_policy(policy)
    }

    /// Consumer: ask for video no taller than `max_height` pixels (v2 `startSession.maxHeight`,
    /// sent on a v2 connection only). Set before the element starts.
    pub fn set_max_height(&self, max_height: Option<u32>) {
        self.imp().set_max_height(max_height)
    }

    /// Producer: the cap on the video height the consumer of `session_id` asked for (its
    /// v2 `startSession.maxHeight`), while the session lasts; known when `session-requested`
    /// is emitted.
    pub fn max_height(&self, session_id: &str) -> Option<u32> {
        self.imp().max_height_of(session_id)
    }

    /// How many audio/video streams the other side's last SDP sends (None before any).
    pub fn remote_streams(&self) -> Option<usize> {
        self.imp().remote_streams()
    }
}
