//! The forward engine as relay-agent holds it: one handle, callable from any thread (the
//! signaller's callbacks), behind which the I/O threads run.
//!
//! CONTRACT SKELETON (issue 25, being built): the signatures are what relay-agent codes
//! against; the engine behind them is not there yet, so every call answers
//! [`ForwardError::NotBuilt`].

use std::net::{IpAddr, SocketAddr};
use std::sync::mpsc;

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
    /// Viewer NACKs answered from the source's packet cache.
    pub nacks_served: u64,
    /// Viewer NACKs that missed the cache and went upstream.
    pub nacks_upstream: u64,
    /// Keyframe requests (PLI/FIR) the viewer sent.
    pub keyframe_requests: u64,
    /// The viewer's bandwidth estimate (TWCC), bits per second.
    pub estimate_bps: Option<u64>,
}

#[derive(Debug, Clone, Default)]
pub struct ForwardStats {
    /// Packets received from the current origin.
    pub origin_packets: u64,
    /// Keyframe requests sent upstream (after coalescing).
    pub keyframe_requests_upstream: u64,
    pub viewers: Vec<ViewerStats>,
}

/// The handle. Cheap to clone; every method may be called from any thread.
#[derive(Debug, Clone)]
pub struct Forwarder {
    _private: (),
}

impl Forwarder {
    /// Binds the UDP socket(s) and starts the worker threads.
    pub fn start(
        _config: ForwardConfig,
    ) -> Result<(Forwarder, mpsc::Receiver<ForwardEvent>), ForwardError> {
        Err(ForwardError::NotBuilt)
    }

    /// The origin's offer (webrtcsink offers): the engine's answer, with its candidates in it.
    /// A second origin session replaces the first (reattach): viewers' sessions continue and
    /// switch to it at its first keyframe.
    pub fn origin_offer(&self, _session: &str, _offer_sdp: &str) -> Result<String, ForwardError> {
        Err(ForwardError::NotBuilt)
    }

    /// A new viewer: the engine's offer mirroring the origin's media, candidates in it.
    pub fn viewer_offer(&self, _session: &str) -> Result<String, ForwardError> {
        Err(ForwardError::NotBuilt)
    }

    /// A viewer's answer to [`Forwarder::viewer_offer`].
    pub fn viewer_answer(&self, _session: &str, _answer_sdp: &str) -> Result<(), ForwardError> {
        Err(ForwardError::NotBuilt)
    }

    /// A trickled remote candidate (`candidate:…` line, with or without `a=`) of any session.
    pub fn candidate(&self, _session: &str, _candidate: &str) -> Result<(), ForwardError> {
        Err(ForwardError::NotBuilt)
    }

    /// A session (origin or viewer) ended in signalling.
    pub fn end(&self, _session: &str) {}

    pub fn stats(&self) -> ForwardStats {
        ForwardStats::default()
    }

    /// The addresses the worker threads listen on.
    pub fn local_addresses(&self) -> Vec<SocketAddr> {
        Vec::new()
    }

    /// Stops the worker threads and closes every session's transport.
    pub fn stop(&self) {}
}
