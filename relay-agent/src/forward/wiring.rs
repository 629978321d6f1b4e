//! The forward engine's two signallers wired to the [`Forwarder`], signal by signal, as
//! webrtcsrc and webrtcsink wire theirs to webrtcbin (gst-plugin-webrtc 0.15,
//! `webrtcsrc/imp.rs` and `webrtcsink/imp.rs` `connect_signaller`):
//!
//! | signal | upstream (a consumer of the origin) | downstream (a producer for viewers) |
//! |---|---|---|
//! | `session-requested` | — | [`Forwarder::viewer_offer`] → `send_sdp` (offer) |
//! | `session-description` | offer → [`Forwarder::origin_offer`] → `send_sdp` (answer) | answer → [`Forwarder::viewer_answer`] |
//! | `handle-ice` | [`Forwarder::candidate`] | [`Forwarder::candidate`] |
//! | `session-ended` | [`Forwarder::end`] | [`Forwarder::end`] |
//! | `request-meta` | — | the relay's meta |
//!
//! The engine puts its candidates in its SDP (full ICE): nothing is trickled from here. A
//! description the engine cannot take ends that session in signalling. The handlers run on the
//! signalling client's thread.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use gst::glib;
use gst::prelude::*;
use gst_webrtc::{WebRTCSDPType, WebRTCSessionDescription};
use gstrswebrtc::signaller::prelude::*;
use gstrswebrtc::signaller::Signallable;
use sfu::forwarder::{ForwardError, Forwarder};
use tracing::{debug, info, warn};

use agent_core::signaller::ClusterSignaller;

/// The relay's meta, read by the viewers' signaller at each registration.
pub type Meta = Arc<Mutex<gst::Structure>>;

/// Ends the run with an error (exit code from it), from any thread.
pub type Fail = Arc<dyn Fn(anyhow::Error) + Send + Sync>;

/// The signaller emitting a signal (its first argument).
fn emitter(args: &[glib::Value]) -> Option<Signallable> {
    args.first()?.get::<Signallable>().ok()
}

fn string_arg(args: &[glib::Value], i: usize) -> Option<String> {
    args.get(i)?.get::<String>().ok()
}

/// `send_sdp` of `sdp` as `kind`; an SDP GStreamer cannot parse ends the session.
fn send(signaller: &Signallable, session: &str, kind: WebRTCSDPType, sdp: &str) {
    match gst_sdp::SDPMessage::parse_buffer(sdp.as_bytes()) {
        Ok(msg) => signaller.send_sdp(session, &WebRTCSessionDescription::new(kind, msg)),
        Err(e) => {
            warn!(session = %session, "the engine's SDP does not parse ({e}); ending the session");
            signaller.end_session(session);
        }
    }
}

/// The handlers every session needs on both sides: trickled candidates, the session's end.
fn connect_common(signaller: &ClusterSignaller, forwarder: &Forwarder) {
    let fwd = forwarder.clone();
    signaller.connect("handle-ice", false, move |args| {
        let (Some(session), Some(candidate)) = (string_arg(args, 1), string_arg(args, 4)) else {
            return None;
        };
        if let Err(e) = fwd.candidate(&session, &candidate) {
            debug!(session = %session, "remote candidate not taken: {e}");
        }
        None
    });
    let fwd = forwarder.clone();
    signaller.connect("session-ended", false, move |args| {
        if let Some(session) = string_arg(args, 1) {
            fwd.end(&session);
        }
        Some(false.to_value())
    });
}

/// The consumer side: the origin's offers answered by the engine.
pub fn receive_origin(
    signaller: &ClusterSignaller,
    forwarder: Forwarder,
    guard: Arc<CodecGuard>,
    ladder: crate::meta::SourceLadder,
) {
    connect_common(signaller, &forwarder);
    signaller.connect("session-description", false, move |args| {
        let (Some(me), Some(session)) = (emitter(args), string_arg(args, 1)) else {
            return None;
        };
        let desc = args.get(2).and_then(|v| v.get::<WebRTCSessionDescription>().ok())?;
        if desc.type_() != WebRTCSDPType::Offer {
            warn!(session = %session, "the origin sent a {:?}, not an offer; ignored", desc.type_());
            return None;
        }
        let Ok(offer) = desc.sdp().as_text() else {
            warn!(session = %session, "the origin's offer does not serialize; ending the session");
            me.end_session(&session);
            return None;
        };
        let layers = ladder.lock().unwrap().clone();
        match forwarder.origin_offer(&session, &offer, layers.as_ref()) {
            Ok(answer) => {
                if guard.check(&answer) {
                    info!(session = %session, "answering the origin's offer");
                    send(&me, &session, WebRTCSDPType::Answer, &answer);
                } else {
                    forwarder.end(&session);
                }
            }
            Err(e) => {
                warn!(session = %session, "cannot take the origin's offer: {e}; ending the session");
                forwarder.end(&session);
                me.end_session(&session);
            }
        }
        None
    });
}

/// The producer side: each viewer offered the origin's media; its answer to the engine.
pub fn serve_viewers(signaller: &ClusterSignaller, forwarder: Forwarder, meta: Meta, fail: Fail) {
    connect_common(signaller, &forwarder);
    signaller.connect("request-meta", false, move |_| {
        Some(Some(meta.lock().unwrap().clone()).to_value())
    });
    let fwd = forwarder.clone();
    signaller.connect("session-requested", false, move |args| {
        let (Some(me), Some(session)) = (emitter(args), string_arg(args, 1)) else {
            return None;
        };
        let offered = args
            .get(3)
            .and_then(|v| v.get::<Option<WebRTCSessionDescription>>().ok())
            .flatten();
        // The viewer's cap (v2 `startSession.maxHeight`): never a taller layer.
        let max_height = me
            .dynamic_cast_ref::<ClusterSignaller>()
            .and_then(|s| s.max_height(&session));
        // A viewer that offers (a WHEP player) is answered; otherwise the relay offers, as
        // webrtcsink does.
        let offered = offered.and_then(|o| o.sdp().as_text().ok());
        let ours = match &offered {
            Some(offer) => fwd
                .viewer_offered(&session, offer, max_height)
                .map(|sdp| (WebRTCSDPType::Answer, sdp)),
            None => fwd
                .viewer_offer(&session, max_height)
                .map(|sdp| (WebRTCSDPType::Offer, sdp)),
        };
        match ours {
            Ok((kind, sdp)) => send(&me, &session, kind, &sdp),
            Err(e @ ForwardError::Stopped) => {
                // A worker thread is gone: a relay that stayed registered would refuse every
                // viewer placed on it. Ending it (exit 1) lets the cluster place them elsewhere.
                me.end_session(&session);
                fail(anyhow::anyhow!("the forward engine stopped serving: {e}"));
            }
            Err(e) => {
                warn!(session = %session, "cannot serve a viewer: {e}; ending its session");
                me.end_session(&session);
            }
        }
        None
    });
    signaller.connect("session-description", false, move |args| {
        let (Some(me), Some(session)) = (emitter(args), string_arg(args, 1)) else {
            return None;
        };
        let desc = args
            .get(2)
            .and_then(|v| v.get::<WebRTCSessionDescription>().ok())?;
        let answer = match (desc.type_(), desc.sdp().as_text()) {
            (WebRTCSDPType::Answer, Ok(text)) => text,
            (kind, _) => {
                warn!(session = %session, "a viewer sent an unusable {kind:?}; ending its session");
                forwarder.end(&session);
                me.end_session(&session);
                return None;
            }
        };
        if let Err(e) = forwarder.viewer_answer(&session, &answer) {
            warn!(session = %session, "cannot take the viewer's answer: {e}; ending its session");
            forwarder.end(&session);
            me.end_session(&session);
        }
        None
    });
}

/// The codec of each media kind the relay's viewers negotiated is the one the engine answered
/// the first origin with: a returning origin answered with another cannot be served to them,
/// and ends the relay (exit 1; its viewers are placed again), as with the pipeline engine.
pub struct CodecGuard {
    first: Mutex<Option<HashMap<String, String>>>,
    fail: Fail,
}

impl CodecGuard {
    pub fn new(fail: Fail) -> Self {
        CodecGuard {
            first: Mutex::new(None),
            fail,
        }
    }

    /// Whether `answer` may be sent (on false, the run is ending).
    fn check(&self, answer: &str) -> bool {
        let now = codecs(answer);
        let mut first = self.first.lock().unwrap();
        let Some(was) = first.as_ref() else {
            *first = Some(now);
            return true;
        };
        for (kind, codec) in &now {
            if let Some(old) = was.get(kind).filter(|old| *old != codec) {
                (self.fail)(anyhow::anyhow!(
                    "the returning origin's codec changed ({old} → {codec}): the relay's consumers cannot take it"
                ));
                return false;
            }
        }
        true
    }
}

/// Per media kind (`audio`, `video`) of an answer, the codec of its first payload type that
/// carries media (not rtx, red, ulpfec, flexfec).
pub fn codecs(sdp: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut kind: Option<(String, Vec<String>)> = None;
    let mut names: HashMap<String, String> = HashMap::new();
    let mut flush = |kind: &mut Option<(String, Vec<String>)>,
                     names: &mut HashMap<String, String>| {
        if let Some((k, pts)) = kind.take() {
            let codec = pts.iter().filter_map(|pt| names.get(pt)).find(|n| {
                !matches!(
                    n.to_ascii_lowercase().as_str(),
                    "rtx" | "red" | "ulpfec" | "flexfec-03"
                )
            });
            if let Some(codec) = codec {
                out.entry(k).or_insert_with(|| codec.to_ascii_uppercase());
            }
        }
        names.clear();
    };
    for line in sdp.lines().map(str::trim) {
        if let Some(m) = line.strip_prefix("m=") {
            flush(&mut kind, &mut names);
            let mut parts = m.split_whitespace();
            let (media, port) = (parts.next().unwrap_or(""), parts.next().unwrap_or("0"));
            let pts: Vec<String> = parts.skip(1).map(String::from).collect();
            if matches!(media, "audio" | "video") && port != "0" {
                kind = Some((media.to_string(), pts));
            }
        } else if let Some(map) = line.strip_prefix("a=rtpmap:") {
            if let Some((pt, rest)) = map.split_once(' ') {
                let name = rest.split('/').next().unwrap_or("");
                names.insert(pt.to_string(), name.to_string());
            }
        }
    }
    flush(&mut kind, &mut names);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &str = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 97 96\r\na=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\na=rtpmap:96 VP8/90000\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n\
        m=video 0 UDP/TLS/RTP/SAVPF 98\r\na=rtpmap:98 H264/90000\r\n";

    #[test]
    fn the_codec_of_each_kind_is_its_first_media_payload_and_rejected_sections_are_skipped() {
        let c = codecs(ANSWER);
        assert_eq!(c.get("video").map(String::as_str), Some("VP8"));
        assert_eq!(c.get("audio").map(String::as_str), Some("OPUS"));
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn a_returning_origin_with_another_codec_fails_the_run_and_the_same_one_passes() {
        let failed = Arc::new(Mutex::new(Vec::<String>::new()));
        let seen = failed.clone();
        let guard = CodecGuard::new(Arc::new(move |e| seen.lock().unwrap().push(e.to_string())));
        assert!(guard.check(ANSWER));
        assert!(guard.check(ANSWER));
        let h264 = ANSWER.replace("96 VP8", "96 H264");
        assert!(!guard.check(&h264));
        let failed = failed.lock().unwrap();
        assert_eq!(failed.len(), 1);
        assert!(
            failed[0].contains("codec changed (VP8 → H264)"),
            "{failed:?}"
        );
    }
}
