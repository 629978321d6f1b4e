//! GObject implementation of [`super::ClusterSignaller`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::Duration;

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gstrswebrtc::signaller::{Signallable, SignallableImpl};
use proto::{
    ClientMessage, EndReason, ErrorCode, PeerMessage, PeerRole, PeerStatus, RelayPayload, SdpType,
    ServerMessage,
};
use tracing::{debug, info, info_span, warn};

use super::{AgentEvent, EndedBy, Role, SignallerConfig, Target};
use crate::client::{Client, ClientEvent};

#[derive(Default)]
pub struct ClusterSignaller {
    config: OnceLock<Config>,
    state: Mutex<State>,
    /// The node's ICE servers and our policy, for each session's webrtcbin.
    pub(super) ice: crate::ice_servers::Ice,
}

struct Config {
    client: crate::client::ClientConfig,
    role: Role,
    events: Mutex<std::sync::mpsc::Sender<AgentEvent>>,
}

#[derive(Default)]
struct State {
    client: Option<Arc<Client>>,
    peer_id: Option<String>,
    /// Sessions we are a member of (a consumer has at most one).
    sessions: HashSet<String>,
    /// Consumer: the producer we asked for a session, once chosen.
    producer_id: Option<String>,
    /// Audio and video streams the other side's last description sends.
    remote_streams: Option<usize>,
    /// The server refused us for good: we act on nothing more (the agent is stopping).
    refused: bool,
    /// The connection speaks v2 (v2-only fields may be sent).
    v2: bool,
    /// Consumer: the cap on the video height to ask for (v2 `startSession.maxHeight`).
    max_height: Option<u32>,
    /// Producer: the cap each session's consumer asked for, while the session lasts.
    max_heights: HashMap<String, u32>,
}

impl ClusterSignaller {
    pub(super) fn configure(&self, config: SignallerConfig) {
        let producer_id = match &config.role {
            Role::Consumer {
                target: Target::Id(id),
            } => Some(id.clone()),
            _ => None,
        };
        self.state.lock().unwrap().producer_id = producer_id;
        let _ = self.config.set(Config {
            client: config.client,
            role: config.role,
            events: Mutex::new(config.events),
        });
    }

    pub(super) fn remote_streams(&self) -> Option<usize> {
        self.state.lock().unwrap().remote_streams
    }

    pub(super) fn set_max_height(&self, max_height: Option<u32>) {
        self.state.lock().unwrap().max_height = max_height;
    }

    pub(super) fn max_height_of(&self, session_id: &str) -> Option<u32> {
        self.state
            .lock()
            .unwrap()
            .max_heights
            .get(session_id)
            .copied()
    }

    /// The cap to write in our `startSession`: only on a v2 connection (a v1 server never
    /// sees the field; v1 bytes stay upstream's).
    fn wanted_max_height(&self) -> Option<u32> {
        let state = self.state.lock().unwrap();
        if state.max_height.is_some() && !state.v2 {
            warn!("--max-height is not sent: the server speaks protocol v1");
        }
        state.max_height.filter(|_| state.v2)
    }

    fn config(&self) -> &Config {
        self.config
            .get()
            .expect("ClusterSignaller used before ClusterSignaller::new configured it")
    }

    fn event(&self, event: AgentEvent) {
        let _ = self.config().events.lock().unwrap().send(event);
    }

    fn send(&self, msg: ClientMessage) {
        let client = self.state.lock().unwrap().client.clone();
        if let Some(client) = client {
            client.send(msg.to_json());
        }
    }

    fn meta(&self) -> Option<serde_json::Value> {
        self.obj()
            .emit_by_name::<Option<gst::Structure>>("request-meta", &[])
            .and_then(|meta| gstrswebrtc::utils::gvalue_to_json(&meta.to_value()))
    }

    /// Called on the client's runtime for every connection event.
    fn on_client_event(&self, event: ClientEvent) {
        match event {
            ClientEvent::Connected {
                url,
                peer_id,
                node_id,
                v2,
                resumed,
                ice_servers,
            } => {
                self.ice.from_node(&ice_servers);
                self.on_connected(url.to_string(), peer_id, node_id, v2, resumed)
            }
            ClientEvent::Message(msg) => self.on_message(msg),
            ClientEvent::Lost { url, reason } => self.event(AgentEvent::Reconnecting {
                server: url.to_string(),
                reason,
            }),
            ClientEvent::GaveUp { error } => self.event(AgentEvent::GaveUp { error }),
            ClientEvent::Refused { error } => self.event(AgentEvent::Refused { reason: error }),
            ClientEvent::Kicked { reason } => self.event(AgentEvent::Kicked {
                reason,
                reconnecting: self.config().client.reconnect_after_kick,
            }),
        }
    }

    fn on_connected(
        &self,
        server: String,
        peer_id: String,
        node_id: Option<String>,
        v2: bool,
        resumed: bool,
    ) {
        let _span = info_span!("signaller", peer = %peer_id).entered();
        let ended: Vec<String> = {
            let mut state = self.state.lock().unwrap();
            state.peer_id = Some(peer_id.clone());
            state.v2 = v2;
            if resumed {
                Vec::new()
            } else {
                state.max_heights.clear();
                state.sessions.drain().collect()
            }
        };
        self.obj().notify("client-id");
        self.event(AgentEvent::Registered {
            server,
            peer_id: peer_id.clone(),
            node_id,
            v2,
            resumed,
        });
        if resumed {
            return;
        }
        // A new identity: the server ended our sessions with the old one.
        for session_id in ended {
            info!(session = %session_id, "session lost with the old connection");
            self.obj()
                .emit_by_name::<bool>("session-ended", &[&session_id]);
            self.event(AgentEvent::SessionEnded {
                session_id,
                by: EndedBy::Other,
            });
        }
        let meta = self.meta();
        match &self.config().role {
            Role::Producer { .. } => self.send(ClientMessage::SetPeerStatus(PeerStatus {
                roles: vec![PeerRole::Producer],
                meta,
                peer_id: Some(peer_id),
            })),
            Role::Consumer { target } => {
                match target {
                    Target::Id(id) => {
                        self.send(ClientMessage::SetPeerStatus(PeerStatus {
                            roles: vec![],
                            meta,
                            peer_id: Some(peer_id),
                        }));
                        self.start_session(id.clone(), None);
                    }
                    Target::Stream(stream) => {
                        self.send(ClientMessage::SetPeerStatus(PeerStatus {
                            roles: vec![],
                            meta,
                            peer_id: Some(peer_id),
                        }));
                        info!(stream, "asking to be placed on a member of the stream");
                        self.send(ClientMessage::PlaceSession {
                            stream: stream.clone(),
                            offer: None,
                            max_height: self.wanted_max_height(),
                        });
                    }
                    Target::Name(_) | Target::First | Target::Ingest => {
                        // An ingest member is found by its name (`proto::ingest`).
                        let meta = match target {
                            Target::Ingest => {
                                Some(serde_json::json!({ "name": proto::ingest::MEMBER_NAME }))
                            }
                            _ => meta,
                        };
                        // Listen, then list: a producer registering in between is seen either
                        // way.
                        self.send(ClientMessage::SetPeerStatus(PeerStatus {
                            roles: vec![PeerRole::Listener],
                            meta,
                            peer_id: Some(peer_id),
                        }));
                        self.send(ClientMessage::List);
                    }
                }
            }
        }
    }

    fn start_session(&self, producer_id: String, meta: Option<serde_json::Value>) {
        self.state.lock().unwrap().producer_id = Some(producer_id.clone());
        self.obj().notify("producer-peer-id");
        info!(producer = %producer_id, "requesting a session");
        self.event(AgentEvent::ProducerChosen {
            producer_id: producer_id.clone(),
            meta,
        });
        self.send(ClientMessage::StartSession {
            peer_id: producer_id,
            offer: None,
            max_height: self.wanted_max_height(),
        });
    }

    /// Consumer selecting by name or first: a producer showed up.
    fn consider_producer(&self, id: &str, meta: Option<&serde_json::Value>) {
        let Role::Consumer { target } = &self.config().role else {
            return;
        };
        let me = self.state.lock().unwrap().peer_id.clone();
        if matches!(target, Target::Id(_)) || !target.matches(id, meta, me.as_deref()) {
            return;
        }
        {
            let state = self.state.lock().unwrap();
            if state.producer_id.is_some() || !state.sessions.is_empty() {
                return;
            }
        }
        self.start_session(id.to_string(), meta.cloned());
    }

    fn on_message(&self, msg: ServerMessage) {
        if self.state.lock().unwrap().refused {
            return;
        }
        match msg {
            ServerMessage::PeerStatusChanged(status) => {
                if let (true, Some(id)) = (status.producing(), status.peer_id.as_deref()) {
                    self.consider_producer(id, status.meta.as_ref());
                }
            }
            ServerMessage::List { producers } => {
                for p in producers {
                    self.consider_producer(&p.id, p.meta.as_ref());
                }
            }
            ServerMessage::StartSession {
                peer_id,
                session_id,
                offer,
                max_height,
            } => self.on_start_session(peer_id, session_id, offer, max_height),
            ServerMessage::SessionStarted {
                peer_id,
                session_id,
            } => {
                info!(session = %session_id, producer = %peer_id, "session started");
                let placed = {
                    let mut state = self.state.lock().unwrap();
                    state.sessions.insert(session_id.clone());
                    // Placed by the node: the session names the producer.
                    let placed = state.producer_id.is_none()
                        && matches!(
                            &self.config().role,
                            Role::Consumer {
                                target: Target::Stream(_)
                            }
                        );
                    if placed {
                        state.producer_id = Some(peer_id.clone());
                    }
                    placed
                };
                if placed {
                    self.obj().notify("producer-peer-id");
                    self.event(AgentEvent::ProducerChosen {
                        producer_id: peer_id.clone(),
                        meta: None,
                    });
                }
                self.obj()
                    .emit_by_name::<()>("session-started", &[&session_id, &peer_id]);
                self.event(AgentEvent::SessionStarted {
                    session_id,
                    peer_id,
                });
            }
            ServerMessage::EndSession { session_id, reason } => {
                let removed = {
                    let mut state = self.state.lock().unwrap();
                    state.max_heights.remove(&session_id);
                    state.sessions.remove(&session_id)
                };
                if removed {
                    let (by, who) = match reason {
                        Some(EndReason::Operator) => (EndedBy::Operator, "an operator"),
                        _ => (EndedBy::Other, "the other side"),
                    };
                    info!(session = %session_id, "session ended by {who}");
                    self.obj()
                        .emit_by_name::<bool>("session-ended", &[&session_id]);
                    self.event(AgentEvent::SessionEnded { session_id, by });
                }
            }
            ServerMessage::Peer(PeerMessage {
                session_id,
                payload,
            }) => self.on_peer_message(&session_id, &payload),
            ServerMessage::Error { details, code } if refuses_us(&code, &details) => {
                warn!("the signalling server refused us: {details}");
                self.state.lock().unwrap().refused = true;
                self.event(AgentEvent::Refused {
                    reason: self.refusal(&details),
                });
            }
            ServerMessage::Error { details, code } => {
                let shown = code.as_ref().map_or("-", ErrorCode::as_str);
                warn!(%details, code = %shown, "error from the signalling server");
                self.event(AgentEvent::ServerError { details, code });
            }
            ServerMessage::IceServers { ice_servers } => self.ice.from_node(&ice_servers),
            ServerMessage::Welcome { .. }
            | ServerMessage::ListConsumers { .. }
            | ServerMessage::GoAway { .. }
            | ServerMessage::TokenExpiring { .. } => {}
        }
    }

    /// What the agent prints when the server refused a grant: its reason, and what to do.
    fn refusal(&self, details: &str) -> String {
        let hint = match &self.config().role {
            Role::Producer { .. } => "the token's `produce` must cover the name",
            Role::Consumer {
                target: Target::Name(_) | Target::First | Target::Ingest,
            } if details.contains("listen") => {
                "finding a producer by name or the first one follows presence: the token needs `listen` (or use --producer-id)"
            }
            Role::Consumer { .. } => "the token's `consume` must cover the producer",
        };
        format!("refused by the signalling server: {details} ({hint})")
    }

    fn on_start_session(
        &self,
        peer_id: String,
        session_id: String,
        offer: Option<String>,
        max_height: Option<u32>,
    ) {
        let Role::Producer { max_sessions } = &self.config().role else {
            warn!(session = %session_id, "a consumer was asked to produce; refused");
            self.send(ClientMessage::EndSession { session_id });
            return;
        };
        {
            let mut state = self.state.lock().unwrap();
            if let Some(limit) = *max_sessions {
                if state.sessions.len() >= limit as usize {
                    drop(state);
                    // Refuse the newcomer rather than share the encoder budget.
                    warn!(consumer = %peer_id, limit, "refusing consumer: at --max-consumers");
                    self.send(ClientMessage::EndSession { session_id });
                    self.event(AgentEvent::ConsumerRefused { peer_id, limit });
                    return;
                }
            }
            state.sessions.insert(session_id.clone());
            // Known before `session-requested` is emitted: its handler may read it.
            if let Some(h) = max_height {
                state.max_heights.insert(session_id.clone(), h);
            }
        }
        let offer = match offer.map(|sdp| gst_sdp::SDPMessage::parse_buffer(sdp.as_bytes())) {
            None => None,
            Some(Ok(sdp)) => Some(gst_webrtc::WebRTCSessionDescription::new(
                gst_webrtc::WebRTCSDPType::Offer,
                sdp,
            )),
            Some(Err(e)) => {
                warn!(session = %session_id, "unparsable offer ({e}); ending the session");
                let mut state = self.state.lock().unwrap();
                state.sessions.remove(&session_id);
                state.max_heights.remove(&session_id);
                drop(state);
                self.send(ClientMessage::EndSession { session_id });
                return;
            }
        };
        info!(session = %session_id, consumer = %peer_id, ?max_height, "session requested");
        self.obj()
            .emit_by_name::<()>("session-requested", &[&session_id, &peer_id, &offer]);
        self.event(AgentEvent::SessionStarted {
            session_id,
            peer_id,
        });
    }

    fn on_peer_message(&self, session_id: &str, payload: &RelayPayload) {
        let value: serde_json::Value = match serde_json::from_str(payload.raw().get()) {
            Ok(v) => v,
            Err(e) => return warn!(session = %session_id, "unreadable relay payload: {e}"),
        };
        match payload {
            RelayPayload::Sdp { sdp_type, .. } => {
                let Some(text) = value.get("sdp").and_then(|s| s.as_str()) else {
                    return warn!(session = %session_id, "sdp payload without sdp");
                };
                let sdp = match gst_sdp::SDPMessage::parse_buffer(text.as_bytes()) {
                    Ok(sdp) => sdp,
                    Err(e) => return warn!(session = %session_id, "unparsable SDP: {e}"),
                };
                let kind = match sdp_type {
                    SdpType::Offer => gst_webrtc::WebRTCSDPType::Offer,
                    SdpType::Answer => gst_webrtc::WebRTCSDPType::Answer,
                };
                debug!(session = %session_id, ?sdp_type, "remote description");
                // Audio/video sections the other side sends (port 0 without bundle-only:
                // rejected): recorders wait for all of them before muxing.
                let sending = sdp
                    .medias()
                    .filter(|m| matches!(m.media(), Some("audio" | "video")))
                    .filter(|m| m.port() != 0 || m.attributes().any(|a| a.key() == "bundle-only"))
                    .filter(|m| {
                        !m.attributes()
                            .any(|a| matches!(a.key(), "inactive" | "recvonly"))
                    })
                    .count();
                self.state.lock().unwrap().remote_streams = Some(sending);
                let desc = gst_webrtc::WebRTCSessionDescription::new(kind, sdp);
                self.obj()
                    .emit_by_name::<()>("session-description", &[&session_id, &desc]);
            }
            RelayPayload::Ice { .. } => {
                let candidate = value.get("candidate").and_then(|c| c.as_str());
                let mline = value.get("sdpMLineIndex").and_then(|m| m.as_u64());
                let (Some(candidate), Some(mline)) = (candidate, mline) else {
                    return warn!(session = %session_id, "ice payload without candidate");
                };
                self.obj().emit_by_name::<()>(
                    "handle-ice",
                    &[&session_id, &(mline as u32), &None::<String>, &candidate],
                );
            }
        }
    }
}

/// Whether the server's error refuses what we registered as or asked for, for good: a grant
/// the token lacks (v2 code `forbidden`; a v1 peer of our nodes only has the text).
fn refuses_us(code: &Option<ErrorCode>, details: &str) -> bool {
    match code {
        Some(code) => *code == ErrorCode::Forbidden,
        None => details.starts_with("Not allowed to "),
    }
}

/// The runtime the signalling client runs on (one thread is plenty).
static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("agent-signalling")
        .enable_all()
        .build()
        .expect("cannot start the signalling runtime")
});

#[glib::object_subclass]
impl ObjectSubclass for ClusterSignaller {
    const NAME: &'static str = "GwcClusterSignaller";
    type Type = super::ClusterSignaller;
    type ParentType = glib::Object;
    type Interfaces = (Signallable,);
}

impl ObjectImpl for ClusterSignaller {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPS: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecBoolean::builder("manual-sdp-munging")
                    .nick("Manual SDP munging")
                    .blurb("Whether the signaller manages SDP munging itself")
                    .default_value(false)
                    .read_only()
                    .build(),
                // webrtcsrc reads it to name the producer in `request-encoded-filter`.
                glib::ParamSpecString::builder("producer-peer-id")
                    .nick("Producer peer id")
                    .blurb("The producer this consumer has a session with")
                    .read_only()
                    .build(),
                glib::ParamSpecString::builder("client-id")
                    .nick("Client id")
                    .blurb("Our peer id on the signalling server")
                    .read_only()
                    .build(),
            ]
        });
        PROPS.as_ref()
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let state = self.state.lock().unwrap();
        match pspec.name() {
            "manual-sdp-munging" => false.to_value(),
            "producer-peer-id" => state.producer_id.to_value(),
            "client-id" => state.peer_id.to_value(),
            other => unreachable!("no property {other}"),
        }
    }
}

impl SignallableImpl for ClusterSignaller {
    fn start(&self) {
        let config = self.config();
        let weak = self.obj().downgrade();
        let on_event = Arc::new(move |event: ClientEvent| {
            if let Some(obj) = weak.upgrade() {
                obj.imp().on_client_event(event);
            }
        });
        // Hold the state while spawning: the client may connect and call back (and send)
        // before `spawn` returns, and must find itself in the state when it does.
        let mut state = self.state.lock().unwrap();
        match Client::spawn(&RUNTIME, config.client.clone(), on_event) {
            Ok(client) => state.client = Some(Arc::new(client)),
            Err(e) => {
                drop(state);
                self.event(AgentEvent::GaveUp {
                    error: e.to_string(),
                });
                self.obj()
                    .emit_by_name::<()>("error", &[&format!("signalling: {e}")]);
            }
        }
    }

    fn stop(&self) {
        let client = {
            let mut state = self.state.lock().unwrap();
            state.sessions.clear();
            state.max_heights.clear();
            state.client.take()
        };
        if let Some(client) = client {
            // From the runtime's own thread we must not wait for it.
            let on_runtime = tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.id() == RUNTIME.handle().id());
            client.close(if on_runtime {
                Duration::ZERO
            } else {
                Duration::from_secs(3)
            });
        }
    }

    fn send_sdp(&self, session_id: &str, sdp: &gst_webrtc::WebRTCSessionDescription) {
        let sdp_type = match sdp.type_() {
            gst_webrtc::WebRTCSDPType::Offer => SdpType::Offer,
            gst_webrtc::WebRTCSDPType::Answer => SdpType::Answer,
            other => {
                let kind = other.to_str();
                return warn!(session = %session_id, "not sending a {kind} description");
            }
        };
        let Ok(text) = sdp.sdp().as_text() else {
            return warn!(session = %session_id, "cannot serialize our SDP");
        };
        let text = crate::dtls_certificate::correct_fingerprints(&text);
        let text = crate::msid::add_media_msids(&text);
        self.send(ClientMessage::Peer(PeerMessage {
            session_id: session_id.to_string(),
            payload: RelayPayload::from_sdp(sdp_type, &text),
        }));
    }

    fn add_ice(
        &self,
        session_id: &str,
        candidate: &str,
        sdp_m_line_index: u32,
        _sdp_mid: Option<String>,
    ) {
        self.send(ClientMessage::Peer(PeerMessage {
            session_id: session_id.to_string(),
            payload: RelayPayload::from_ice(candidate, sdp_m_line_index),
        }));
    }

    fn end_session(&self, session_id: &str) {
        // Only sessions still ours: the element also calls this for sessions the other side
        // ended, which the server has forgotten.
        let removed = {
            let mut state = self.state.lock().unwrap();
            state.max_heights.remove(session_id);
            state.sessions.remove(session_id)
        };
        if removed {
            info!(session = %session_id, "ending session");
            self.send(ClientMessage::EndSession {
                session_id: session_id.to_string(),
            });
            self.event(AgentEvent::SessionEnded {
                session_id: session_id.to_string(),
                by: EndedBy::Us,
            });
        }
    }
}
