//! What producer-agent and consumer-agent share.
//!
//! * [`signaller::ClusterSignaller`]: the `Signallable` GObject both agents give their
//!   webrtcsink/webrtcsrc, built on the [`proto`] crate and on [`client`], the signalling
//!   connection that fails over through a list of servers and resumes (v2) after a loss.
//! * [`events`]: what an agent does with the signaller's events: one main-loop poll (shutdown
//!   check, lost connections counted, giving up ends the run) handing the rest to the
//!   agent's [`events::EventHandler`].
//! * [`cli`]: the options every agent has (servers, headers, TLS, logging, stats, metrics).
//! * [`ice_servers`]: the node's STUN/TURN servers (credentials minted for us) added to each
//!   session's webrtcbin, and `--ice-transport-policy`.
//! * [`reporting`]: stats JSON lines and [`metrics`], a tiny Prometheus text endpoint;
//!   [`stats`]: reading webrtcbin statistics.
//! * [`shutdown`]: SIGINT/SIGTERM as a flag the GLib main loop polls.
//! * [`keyframes`]: keyframe requests of many consumers of one encoded stream, coalesced.
//! * [`dtls_certificate`]: the process's one ECDSA P-256 DTLS certificate, given to every
//!   webrtcbin the signaller serves (ECDSA-only peers such as aiortc need it).
//! * [`msid`]: `a=msid` lines for a layered origin's SDP (webrtcbin 1.22 writes the msid only on
//!   `a=ssrc` lines).
//! * [`exit`]: the exit codes every agent documents, and the errors that carry them.

pub mod cli;
pub mod client;
pub mod dtls_certificate;
pub mod events;
pub mod exit;
pub mod ice_servers;
pub mod keyframes;
pub mod metrics;
pub mod msid;
pub mod reporting;
pub mod shutdown;
pub mod signaller;
pub mod stats;
pub mod tls;

use anyhow::Context;

/// GStreamer, with the webrtc elements and `rtpgccbwe` registered from this binary.
pub fn init_gstreamer() -> anyhow::Result<()> {
    gst::init().context("cannot initialize GStreamer")?;
    gstrswebrtc::plugin_register_static().context("cannot register webrtc elements")?;
    gstrsrtp::plugin_register_static().context("cannot register rtp elements")?;
    warm_up_dtls();
    Ok(())
}

/// What a pad probe returns to keep an event (or buffer) from going on: `Handled`, not
/// `Drop`. gstreamer-rs takes the object out of the probe info before calling the closure and
/// disposes of it itself; after `Drop`, GStreamer 1.22's `gst_pad_push_event` then unrefs the
/// NULL left in its place (`gst_mini_object_unref: assertion 'mini_object != NULL' failed`,
/// once per keyframe request the relay coalesced away). `Handled` means "the probe disposed
/// of it", which is what happened.
pub const DISCARD: gst::PadProbeReturn = gst::PadProbeReturn::Handled;

/// GStreamer 1.22 makes an RSA certificate for the process when the first DTLS element is
/// made (each `dtlsdec` asks for the default one in its init, even though
/// [`dtls_certificate`] then gives it ours): 160 ms measured here, inside a fresh agent's first
/// offer-to-answer. Made now, in the background, it is ready (or partly done) by the time
/// signalling has found a peer: a consumer that finds its producer at once still waits for
/// the rest (measured 125 ms of the 160). Our ECDSA certificate is made here too (well under
/// a millisecond).
fn warm_up_dtls() {
    let handle = std::thread::spawn(|| {
        let started = std::time::Instant::now();
        if let Err(e) = dtls_certificate::get() {
            tracing::warn!("{e}");
        }
        if gst::ElementFactory::make("dtlsdec").build().is_ok() {
            tracing::debug!(took = ?started.elapsed(), "DTLS certificate ready");
        }
    });
    *WARM_UP.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
}

static WARM_UP: std::sync::Mutex<Option<std::thread::JoinHandle<()>>> = std::sync::Mutex::new(None);

/// Call before the process exits: a process that exits while the certificate is being made
/// (an agent stopped by a bad argument within milliseconds) crashes in OpenSSL's clean-up.
pub fn settle() {
    let handle = WARM_UP.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(handle) = handle {
        let _ = handle.join();
    }
}
