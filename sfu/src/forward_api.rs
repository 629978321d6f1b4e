//! The engine's public vocabulary: its configuration, errors, events and stats. Apart from
//! the handle ([`crate::forwarder`], which re-exports them all) so that the worker threads and
//! peers use them without importing the handle (no import loop).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// How the engine meets the network (relay-agent's `--udp-port`, `--ice-address`,
/// `--public-ip`, `--threads`).
#[derive(Debug, Clone, Default)]
pub struct ForwardConfig {
    /// The first UDP port (0: any). Worker thread `i` listens on `udp_port + i` when fixed.
    pub udp_port: u16,
    /// The local addresses announced as host candidates (empty: the host's non-loopback ones).
    pub ice_addresses: Vec<IpAddr>,
    /// A NAT 1:1 address announced instead of (as well as) the local ones.
    pub public_ip: Option<IpAddr>,
    /// Worker threads the viewers are sharded over (0: the cores).
    pub threads: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// Kept for callers written against the skeleton; the engine no longer returns it.
    #[error("the forward engine is not built yet")]
    NotBuilt,
    #[error("cannot listen on UDP {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("session {session}: unusable SDP: {reason}")]
    Sdp { session: String, reason: String },
    #[error("no origin media yet")]
    NoOrigin,
    #[error("unknown session {0}")]
    UnknownSession(String),
    #[error("the forward engine has stopped")]
    Stopped,
    #[error("no local address to listen on (give --ice-address)")]
    NoAddress,
    #[error("cannot start a worker thread: {0}")]
    Thread(std::io::Error),
}

/// What the engine tells its owner, on the receiver [`Forwarder::start`] returns.
#[derive(Debug, Clone)]
pub enum ForwardEvent {
    /// The origin's session is connected (ICE + DTLS) and its media is flowing.
    OriginReady {
        session: String,
    },
    /// The origin's session failed or timed out (ICE/DTLS), or the origin stopped sending.
    OriginLost {
        session: String,
        reason: String,
    },
    ViewerConnected {
        session: String,
    },
    /// A viewer's session failed (ICE/DTLS) or went silent: the owner ends it in signalling.
    ViewerLost {
        session: String,
        reason: String,
    },
}

/// Per viewer, for `relay-stats` and metrics.
#[derive(Debug, Clone, Default)]
pub struct ViewerStats {
    pub session: String,
    pub packets: u64,
    pub bytes: u64,
    /// NACKs the viewer sent; str0m answers them from the viewer's send buffer, which holds
    /// the source's own payload (shared, not copied), with RTX where negotiated.
    pub nacks_served: u64,
    /// Always 0 in this engine: a loss upstream is NACKed by the origin's session itself, once
    /// for all viewers ([`ForwardStats::nacks_upstream`]), not per viewer NACK.
    pub nacks_upstream: u64,
    /// Keyframe requests (PLI/FIR) the viewer sent.
    pub keyframe_requests: u64,
    /// The viewer's bandwidth estimate (TWCC), bits per second.
    pub estimate_bps: Option<u64>,
    /// A layered source (issue 26): the layer the viewer is sent (0 = the top; None before
    /// its first keyframe, or not layered), its height, and the layer it is to switch to.
    pub layer: Option<usize>,
    pub layer_height: Option<u32>,
    pub target_layer: Option<usize>,
    /// Layer switches done (at a keyframe of the new layer), up and down.
    pub layer_switches_up: u64,
    pub layer_switches_down: u64,
}

#[derive(Debug, Clone, Default)]
pub struct ForwardStats {
    /// Packets received from the current origin.
    pub origin_packets: u64,
    /// Keyframe requests sent upstream (after coalescing).
    pub keyframe_requests_upstream: u64,
    /// NACKs sent to the origin (losses on the origin's leg, asked once for all viewers).
    pub nacks_upstream: u64,
    pub viewers: Vec<ViewerStats>,
}

/// When a session counts as lost ([`ForwardEvent::OriginLost`], [`ForwardEvent::ViewerLost`]),
/// besides the session closing (DTLS closed, a fatal stack error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Not connected (ICE + DTLS) this long after its offer/answer.
    pub connect: Duration,
    /// Connected, and no datagram from it for this long.
    pub silence: Duration,
    /// The origin sent media, then none for this long.
    pub origin_media: Duration,
    /// ICE disconnected (str0m's agent: its checks unanswered, or no pair left) for this long.
    pub ice_disconnected: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(20),
            silence: Duration::from_secs(15),
            origin_media: Duration::from_secs(5),
            ice_disconnected: Duration::from_secs(5),
        }
    }
}
