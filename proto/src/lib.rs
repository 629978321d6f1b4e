//! The one shared, versioned JSON protocol of gst-webrtc-cluster.
//!
//! * [`ClientMessage`] is what a peer sends to a signalling node, [`ServerMessage`] what a node
//!   sends to a peer. Version 1 of both is byte-compatible with the gst-plugins-rs signalling
//!   protocol (`gst-plugin-webrtc-signalling-protocol` 0.15), so stock `webrtcsink`, `webrtcsrc`
//!   and `gstwebrtc-api` work unchanged.
//! * [`ProtocolVersion`] is negotiated once per connection through the WebSocket subprotocol
//!   (see [`ProtocolVersion::negotiate`]). A client that asks for nothing gets version 1 and never
//!   sees a version 2 field or message: [`ServerMessage::encode`] takes the peer's version.
//! * The `sdp`/`ice` payload of a `peer` message is kept as raw JSON ([`RelayPayload`]): it is
//!   validated once on the way in and written out verbatim on the way out.
//! * [`envelope`] holds the node-to-node envelope carried over the cluster bus; its kinds are
//!   declared once, in the `node_messages!` table.
//!
//! | file | holds |
//! |---|---|
//! | `client.rs` | [`ClientMessage`], [`PeerMessage`], [`RelayPayload`] |
//! | `server.rs` | [`ServerMessage`], [`PeerInfo`], [`WelcomeV2`], encoding per version |
//! | `version.rs` | [`ProtocolVersion`] and its negotiation |
//! | `error.rs` | [`ErrorCode`] (v2 error codes), [`ParseError`] |
//! | `layers.rs` | a layered source's [`layers::Ladder`]: the meta's `layers`, the layers' msids |
//! | `envelope/mod.rs`, `envelope/read.rs` | node-to-node envelopes, batches; the one-pass reader |
//! | `envelope/bodies.rs` | the body of each node-message kind |
//! | `envelope/tests.rs` | the envelope's tests (round trips, both readers, old and new nodes) |
//!
//! The protocol is documented with examples in `docs/protocol.md`.

mod client;
pub mod envelope;
mod error;
pub mod ingest;
pub mod layers;
mod server;
mod version;

pub use client::{max_height, ClientMessage, PeerMessage, RelayPayload, SdpType, MAX_HEIGHT_LIMIT};
pub use error::{ErrorCode, ParseError};
pub use server::{EndReason, IceServer, PeerInfo, ServerMessage, WelcomeV2};
pub use version::{ProtocolVersion, SUBPROTOCOL_V1, SUBPROTOCOL_V2};

use serde::{Deserialize, Serialize};

/// A peer identifier, a UUID string chosen by the server at connection time.
pub type PeerId = String;

/// A session identifier, a UUID string chosen by the server in `startSession`.
pub type SessionId = String;

/// The roles a peer may register with `setPeerStatus`.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq, Clone, Copy, Hash)]
#[serde(rename_all = "camelCase")]
pub enum PeerRole {
    /// Offers media; consumers start sessions with it.
    Producer,
    /// Receives `peerStatusChanged` for every peer.
    Listener,
    /// Passive consumer: waits for a producer to start a session with it.
    Consumer,
}

/// A peer's registration: its roles and free-form metadata.
///
/// Field order matters: it is the upstream serialization order (`roles`, `meta`, `peerId`).
#[derive(Serialize, Deserialize, Debug, PartialEq, Clone, Default)]
#[serde(rename_all = "camelCase")]
pub struct PeerStatus {
    pub roles: Vec<PeerRole>,
    pub meta: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub peer_id: Option<PeerId>,
}

impl PeerStatus {
    pub fn producing(&self) -> bool {
        self.roles.contains(&PeerRole::Producer)
    }
    pub fn listening(&self) -> bool {
        self.roles.contains(&PeerRole::Listener)
    }
    pub fn consuming(&self) -> bool {
        self.roles.contains(&PeerRole::Consumer)
    }
}

/// Every field any message of either direction may carry, for one-pass parsing.
///
/// Serde's tagged enums buffer their content, which `RawValue` cannot be read from; a flat struct
/// keeps the relay payload borrowed-then-boxed without a second parse.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireFields<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    peer_id: Option<String>,
    session_id: Option<String>,
    offer: Option<String>,
    roles: Option<Vec<PeerRole>>,
    #[serde(default, deserialize_with = "present")]
    meta: Option<Option<serde_json::Value>>,
    sdp: Option<Box<serde_json::value::RawValue>>,
    ice: Option<Box<serde_json::value::RawValue>>,
    producers: Option<Vec<PeerInfo>>,
    consumers: Option<Vec<PeerInfo>>,
    details: Option<String>,
    code: Option<ErrorCode>,
    protocol_version: Option<u16>,
    node_id: Option<String>,
    resume_token: Option<String>,
    resumed: Option<bool>,
    ice_servers: Option<Vec<server::IceServer>>,
    reason: Option<String>,
    reconnect_in_ms: Option<u64>,
    expires_at: Option<u64>,
    stream: Option<String>,
    /// Read as any value so that a bad one is refused with a clear reason ([`max_height`]).
    max_height: Option<serde_json::Value>,
}

/// Distinguishes `"meta": null` (Some(None)) from a missing `meta` (None).
fn present<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<serde_json::Value>>, D::Error> {
    Option::<serde_json::Value>::deserialize(d).map(Some)
}

impl<'a> WireFields<'a> {
    fn parse(text: &'a str) -> Result<Self, ParseError> {
        serde_json::from_str(text).map_err(|e| {
            if e.is_syntax() || e.is_eof() {
                ParseError::Malformed(e.to_string())
            } else {
                ParseError::Invalid(e.to_string())
            }
        })
    }
}

fn required<T>(field: Option<T>, name: &'static str, kind: &str) -> Result<T, ParseError> {
    field.ok_or_else(|| ParseError::MissingField {
        kind: kind.to_string(),
        field: name,
    })
}
