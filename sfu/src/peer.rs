//! One session's WebRTC peer: a str0m `Rtc` in rtp mode, as the origin's answerer or as a
//! viewer's offerer. Everything str0m-specific of a session lives here (SDP, candidates,
//! writing a [`Write`] with its VP8 patch, reading its events); what to forward is decided in
//! [`crate::fanout`], and the sockets are the worker's ([`crate::worker`]).
//!
//! What str0m does for us per viewer: SRTP, sender reports, TWCC feedback read into a
//! bandwidth estimate, and NACKs answered from its own per-stream send buffer (RTX where the
//! viewer negotiated it). That buffer holds the same `Arc`'d payload the source packet came in
//! (only the header and the VP8 patch are per viewer), so it costs no copy per viewer. Loss
//! upstream is repaired by the origin session's own NACKs (str0m's receive side), once for all
//! viewers; the repaired packet is then forwarded like any other, under the sequence number
//! the viewers' gap left for it.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use str0m::bwe::{Bitrate, BweKind};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::config::DtlsCert;
use str0m::format::Codec as StackCodec;
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{RtpWrite, SeqNo, Vp8Descriptor};
use str0m::{Candidate, Event, IceConnectionState, IceCreds, Input, Output, Rtc, RtcConfig};

use crate::codec::Codec;
use crate::fanout::{Packet, ViewerTrack, Write};
use crate::forward_api::ForwardError;
use crate::layer_switching::LayerChoice;

/// The per-viewer retransmission buffer: at most this many packets, this old.
pub(crate) const RTX_PACKETS: usize = 512;
pub(crate) const RTX_AGE: std::time::Duration = std::time::Duration::from_secs(1);

/// How often str0m reports a session's media stats (NACK counts, receiver reports' loss).
pub(crate) const STATS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
/// The same for a viewer of a layered source only (stats cost work): its video's packets sent
/// and NACKs received per interval are its layer choice's fastest loss signal
/// (`layer_switching::NACK_INTERVALS`).
pub const LAYERED_STATS_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// One media of the origin, as viewers are offered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackInfo {
    pub kind: MediaKind,
    pub codec: Codec,
    /// The layer its `a=msid:` names (`proto::layers::msid`), if any ([`crate::layout`]).
    pub layer: Option<usize>,
}

/// The process's one DTLS certificate: ECDSA P-256, made once (str0m's openssl backend makes
/// it with `generate_certificate`) and handed to every `Rtc`, so no session start pays for a
/// key (RSA generation was ~160 ms) and ECDSA-only peers interoperate.
pub fn dtls_cert() -> Result<DtlsCert, ForwardError> {
    static CERT: OnceLock<Option<DtlsCert>> = OnceLock::new();
    CERT.get_or_init(|| {
        str0m::crypto::from_feature_flags()
            .dtls_provider
            .generate_certificate()
    })
    .clone()
    .ok_or_else(|| ForwardError::Sdp {
        session: String::new(),
        reason: "cannot make a DTLS certificate".into(),
    })
}

/// What an origin may send (webrtcsink's codecs), in str0m's order of preference.
const ORIGIN_CODECS: [Codec; 6] = [
    Codec::Vp8,
    Codec::Vp9,
    Codec::H264,
    Codec::H265,
    Codec::Av1,
    Codec::Opus,
];

pub(crate) fn stack_codec(c: StackCodec) -> Option<Codec> {
    match c {
        StackCodec::Vp8 => Some(Codec::Vp8),
        StackCodec::Vp9 => Some(Codec::Vp9),
        StackCodec::H264 => Some(Codec::H264),
        StackCodec::H265 => Some(Codec::H265),
        StackCodec::Av1 => Some(Codec::Av1),
        StackCodec::Opus => Some(Codec::Opus),
        _ => None,
    }
}

/// An `Rtc` for one session: rtp mode, the shared certificate, its own ICE credentials (the
/// ufrag is how the demultiplexer finds it), the codecs the core can switch on, and a
/// bandwidth estimate from TWCC feedback (viewers).
pub(crate) fn build(
    codecs: &[Codec],
    candidates: &[Candidate],
    bwe: bool,
    stats: std::time::Duration,
    now: Instant,
) -> Result<(Rtc, String), ForwardError> {
    let creds = IceCreds::new();
    let ufrag = creds.ufrag.clone();
    let mut config: RtcConfig = Rtc::builder()
        .set_rtp_mode(true)
        .set_dtls_cert(dtls_cert()?)
        .set_local_ice_credentials(creds)
        .set_stats_interval(Some(stats))
        .clear_codecs();
    for codec in codecs {
        config = match codec {
            Codec::Vp8 => config.enable_vp8(true),
            Codec::Vp9 => config.enable_vp9(true),
            Codec::H264 => config.enable_h264(true),
            Codec::H265 => config.enable_h265(true),
            Codec::Av1 => config.enable_av1(true),
            Codec::Opus => config.enable_opus(true, false),
        };
    }
    if bwe {
        config = config.enable_bwe(Some(Bitrate::kbps(2_500)));
    }
    let mut rtc = config.build(now);
    for c in candidates {
        rtc.add_local_candidate(c.clone());
    }
    Ok((rtc, ufrag))
}

/// What a session is for. (Not boxed: viewers are the many sessions, the origin one; a box
/// would put an indirection on every viewer's packet path for the origin's few bytes saved.)
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Role {
    Origin(Origin),
    Viewer(Viewer),
}

#[derive(Debug, Default)]
pub struct Origin {
    /// Its media in the order of the offer; viewers' tracks refer to them by index.
    pub tracks: Vec<(Mid, TrackInfo)>,
    /// SSRC → track index, learnt from the stack's receive streams.
    ssrcs: Vec<(u32, usize)>,
}

#[derive(Debug, Default)]
pub struct Viewer {
    /// Per source track (same index): its mid here, and once answered its fanout state.
    pub tracks: Vec<(Mid, TrackInfo, Option<ViewerTrack>)>,
    pub(crate) pending: Option<SdpPendingOffer>,
    /// Started from the keyframe cache (live packets are fed only from then on: one fed
    /// between the stack's connection and the join would look like a viewer waiting for a
    /// keyframe, and ask upstream for nothing).
    pub joined: bool,
    /// A layered source: which layer this viewer is sent ([`crate::layer_switching`]).
    pub choice: LayerChoice,
    /// Its cap (v2 `startSession.maxHeight`).
    pub max_height: Option<u32>,
    /// The bitrate str0m's estimator was last told to reach (it probes up to it).
    pub desired_bps: u64,
}

/// What the worker has to act on, from one drain of the `Rtc`.
#[derive(Debug)]
pub enum Happening {
    Connected,
    /// Origin: a packet of its track `0`.
    Media(usize, Packet),
    /// Viewer: a PLI/FIR for its track.
    KeyframeRequest(usize),
    /// Viewer: a new bandwidth estimate, bits per second (TWCC, computed here).
    Estimate(u64),
    /// Viewer: the estimate it sent (REMB), bits per second.
    Remb(u64),
    /// Viewer: a receiver report's fraction lost for its video.
    Loss(f32),
    /// Viewer: NACKs received so far (answered by str0m from its send buffer).
    Nacks(u64),
    /// Viewer: its video's packets sent and NACKs received so far.
    VideoEgress {
        packets: u64,
        nacks: u64,
    },
    /// Origin: NACKs str0m sent upstream so far.
    NacksUpstream(u64),
    Lost(String),
}

pub struct Peer {
    pub session: String,
    pub rtc: Rtc,
    pub ufrag: String,
    pub role: Role,
    /// When the `Rtc` wants a timeout input.
    pub next: Instant,
    pub created: Instant,
    /// The last datagram routed to it (silence detection).
    pub last_heard: Instant,
    /// Since when ICE says disconnected (None: not disconnected).
    pub disconnected_since: Option<Instant>,
    pub connected: bool,
    /// Why the stack cannot go on (a failed DTLS handshake): the session is reported lost and
    /// its `Rtc` gets no more input.
    failed: Option<String>,
    /// Per mid, NACKs counted by the stack's stats (they are cumulative per media).
    nacks: Vec<(Mid, u64)>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("session", &self.session)
            .field("connected", &self.connected)
            .finish()
    }
}

pub(crate) fn sdp_error(session: &str, reason: impl std::fmt::Display) -> ForwardError {
    ForwardError::Sdp {
        session: session.to_owned(),
        reason: reason.to_string(),
    }
}

/// Per `a=mid:` of `sdp`, the layer its section's `a=msid:` stream id names, if any.
fn msid_layers(sdp: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    let (mut mid, mut layer) = (None, None);
    let mut flush = |mid: &mut Option<String>, layer: &mut Option<usize>| {
        if let (Some(m), Some(l)) = (mid.take(), layer.take()) {
            out.push((m, l));
        }
    };
    for line in sdp.lines() {
        let line = line.trim_end();
        if line.starts_with("m=") {
            flush(&mut mid, &mut layer);
        } else if let Some(m) = line.strip_prefix("a=mid:") {
            mid = Some(m.to_owned());
        } else if let Some(msid) = line.strip_prefix("a=msid:") {
            layer = msid
                .split_whitespace()
                .next()
                .and_then(proto::layers::layer_of_msid);
        }
    }
    flush(&mut mid, &mut layer);
    out
}

/// The `a=mid:` of every media section of `sdp` that is not rejected (port 0).
pub(crate) fn mids(sdp: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rejected = false;
    for line in sdp.lines() {
        let line = line.trim_end();
        if let Some(m) = line.strip_prefix("m=") {
            rejected = m.split_whitespace().nth(1) == Some("0");
        } else if let Some(mid) = line.strip_prefix("a=mid:") {
            if !rejected {
                out.push(mid.to_owned());
            }
        }
    }
    out
}

impl Peer {
    pub(crate) fn new(session: &str, rtc: Rtc, ufrag: String, role: Role, now: Instant) -> Peer {
        Peer {
            session: session.to_owned(),
            rtc,
            ufrag,
            role,
            next: now,
            created: now,
            last_heard: now,
            disconnected_since: None,
            connected: false,
            failed: None,
            nacks: Vec::new(),
        }
    }

    /// The origin's session from its offer: the peer, our answer, and its tracks (those in a
    /// codec the core forwards; others are answered as rejected by the stack).
    pub fn origin(
        session: &str,
        offer_sdp: &str,
        candidates: &[Candidate],
        now: Instant,
    ) -> Result<(Peer, String, Vec<TrackInfo>), ForwardError> {
        let offer = SdpOffer::from_sdp_string(offer_sdp).map_err(|e| sdp_error(session, e))?;
        let (mut rtc, ufrag) = build(&ORIGIN_CODECS, candidates, false, STATS_INTERVAL, now)?;
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| sdp_error(session, e))?
            .to_sdp_string();
        let layers = msid_layers(offer_sdp);
        let mut tracks = Vec::new();
        for mid in mids(&answer) {
            let layer = layers.iter().find(|(m, _)| *m == mid).map(|(_, l)| *l);
            let mid = Mid::from(mid.as_str());
            let Some(media) = rtc.media(mid) else {
                continue;
            };
            let (kind, remote) = (media.kind(), media.remote_pts().to_vec());
            let codec = rtc.codec_config().params().iter().find_map(|p| {
                (remote.is_empty() || remote.contains(&p.pt()))
                    .then(|| stack_codec(p.spec().codec))
                    .flatten()
                    .filter(|c| (*c == Codec::Opus) == (kind == MediaKind::Audio))
            });
            if let Some(codec) = codec {
                tracks.push((mid, TrackInfo { kind, codec, layer }));
            }
        }
        if tracks.is_empty() {
            return Err(sdp_error(
                session,
                "no VP8, VP9, H.264, H.265, AV1 or Opus media",
            ));
        }
        let infos = tracks.iter().map(|(_, t)| *t).collect();
        let role = Role::Origin(Origin {
            tracks,
            ssrcs: Vec::new(),
        });
        Ok((Peer::new(session, rtc, ufrag, role, now), answer, infos))
    }

    /// A viewer's session: our offer mirroring the source's tracks (each in the source's codec
    /// only, so the answer cannot pick another); `layered`: a layer choice will be made for it.
    pub fn viewer(
        session: &str,
        tracks: &[TrackInfo],
        layered: bool,
        candidates: &[Candidate],
        now: Instant,
    ) -> Result<(Peer, String), ForwardError> {
        let codecs: Vec<Codec> = tracks.iter().map(|t| t.codec).collect();
        let stats = if layered {
            LAYERED_STATS_INTERVAL
        } else {
            STATS_INTERVAL
        };
        let (mut rtc, ufrag) = build(&codecs, candidates, true, stats, now)?;
        let mut api = rtc.sdp_api();
        let mids: Vec<Mid> = tracks
            .iter()
            .enumerate()
            .map(|(i, t)| {
                api.add_media(
                    t.kind,
                    Direction::SendOnly,
                    Some("sfu".into()),
                    Some(format!("track{i}")),
                    None,
                )
            })
            .collect();
        let (offer, pending) = api
            .apply()
            .ok_or_else(|| sdp_error(session, "nothing to offer"))?;
        let viewer = Viewer {
            tracks: mids
                .into_iter()
                .zip(tracks)
                .map(|(m, t)| (m, *t, None))
                .collect(),
            pending: Some(pending),
            joined: false,
            choice: LayerChoice::new(),
            max_height: None,
            desired_bps: 0,
        };
        let peer = Peer::new(session, rtc, ufrag, Role::Viewer(viewer), now);
        Ok((peer, offer.to_sdp_string()))
    }

    /// The viewer's answer: its payload type per track, from then on packets can be written.
    pub fn accept_answer(&mut self, answer_sdp: &str) -> Result<(), ForwardError> {
        let session = self.session.clone();
        let Role::Viewer(viewer) = &mut self.role else {
            return Err(sdp_error(&session, "an answer for the origin's session"));
        };
        let pending = viewer
            .pending
            .take()
            .ok_or_else(|| sdp_error(&session, "no offer pending"))?;
        let answer = SdpAnswer::from_sdp_string(answer_sdp).map_err(|e| sdp_error(&session, e))?;
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| sdp_error(&session, e))?;
        self.start_viewer_tracks();
        Ok(())
    }

    /// A trickled remote candidate (`candidate:…`, with or without `a=`).
    pub fn add_candidate(&mut self, line: &str) -> Result<(), ForwardError> {
        let line = line.trim();
        let line = line.strip_prefix("a=").unwrap_or(line);
        if line.is_empty() {
            return Ok(()); // end of candidates
        }
        // A browser's mDNS host candidate (`<uuid>.local`) cannot be resolved here; its
        // checks still reach us and pair as peer-reflexive.
        if line
            .split_whitespace()
            .nth(4)
            .is_some_and(|a| a.ends_with(".local"))
        {
            return Ok(());
        }
        let c = Candidate::from_sdp_string(line).map_err(|e| sdp_error(&self.session, e))?;
        self.rtc.add_remote_candidate(c);
        Ok(())
    }

    /// Hands a datagram (already routed here) to the stack.
    pub fn receive(&mut self, from: SocketAddr, to: SocketAddr, data: &[u8], now: Instant) {
        if self.failed.is_some() {
            return;
        }
        self.last_heard = now;
        if let Ok(r) = Receive::new(Protocol::Udp, from, to, data) {
            // An error here is the stack refusing this datagram (bad SRTP, bad DTLS): it is
            // dropped, the session goes on. Except a DTLS error before the session is up: the
            // handshake failed, which leaves str0m-openssl 0.6's DTLS state empty, and its
            // next input panics the worker ("inner_mut on empty dtls state"), every session
            // on it lost. Such a session is lost alone (tests/forward_clients.rs).
            if let Err(e) = self.rtc.handle_input(Input::Receive(now, r)) {
                if !self.connected && matches!(e, str0m::RtcError::Dtls(_)) {
                    self.failed = Some(format!("DTLS handshake failed: {e}"));
                }
            }
        }
    }

    pub fn timeout(&mut self, now: Instant) {
        if self.failed.is_none() {
            let _ = self.rtc.handle_input(Input::Timeout(now));
        }
    }

    /// Writes a packet for the viewer's track `track` (the caller drains afterwards).
    pub fn write(&mut self, track: usize, w: &Write, now: Instant) -> bool {
        let Role::Viewer(viewer) = &self.role else {
            return false;
        };
        let Some((mid, info, _)) = viewer.tracks.get(track) else {
            return false;
        };
        let video = info.kind == MediaKind::Video;
        let mid = *mid;
        let mut rtp = RtpWrite::new(
            Pt::from(w.payload_type),
            SeqNo::from(w.sequence),
            w.timestamp,
            now,
            w.payload.clone(),
        )
        .marker(w.marker)
        .nackable(video);
        if let Some(v) = w.vp8 {
            if let Ok(d) = Vp8Descriptor::parse(&w.payload) {
                let mut b = d.patch();
                if let Some(id) = v.picture_id {
                    b = b.picture_id(id);
                }
                if let Some(t) = v.tl0_pic_idx {
                    b = b.tl0_pic_idx(t);
                }
                if let Ok(patch) = b.build() {
                    rtp = rtp.vp8_patch(patch);
                }
            }
        }
        let mut api = self.rtc.direct_api();
        let Some(tx) = api.stream_tx_by_mid(mid, None) else {
            return false;
        };
        tx.write_rtp(rtp);
        true
    }

    /// Origin: asks the source of its track `track` for a keyframe (PLI).
    pub fn request_keyframe(&mut self, track: usize) {
        let Role::Origin(origin) = &self.role else {
            return;
        };
        let Some((mid, _)) = origin.tracks.get(track) else {
            return;
        };
        if let Some(rx) = self.rtc.direct_api().stream_rx_by_mid(*mid, None) {
            rx.request_keyframe(KeyframeRequestKind::Pli);
        }
    }

    /// Drains the `Rtc`: datagrams to `send` (from, to, bytes), the rest into `out`.
    pub fn drain(
        &mut self,
        send: &mut dyn FnMut(SocketAddr, SocketAddr, &[u8]),
        out: &mut Vec<Happening>,
    ) {
        if let Some(reason) = &self.failed {
            out.push(Happening::Lost(reason.clone()));
            return;
        }
        loop {
            let output = match self.rtc.poll_output() {
                Ok(o) => o,
                Err(e) => {
                    out.push(Happening::Lost(format!("WebRTC stack: {e}")));
                    return;
                }
            };
            match output {
                Output::Timeout(t) => {
                    self.next = t;
                    break;
                }
                Output::Transmit(t) => send(t.source, t.destination, &t.contents),
                Output::Event(e) => self.event(e, out),
            }
        }
        if !self.rtc.is_alive() {
            out.push(Happening::Lost("the WebRTC session closed".into()));
        }
    }

    fn event(&mut self, e: Event, out: &mut Vec<Happening>) {
        match e {
            Event::Connected => {
                self.connected = true;
                out.push(Happening::Connected);
            }
            // Not lost at once: with trickled candidates the agent may be disconnected for a
            // moment (the first pairs failed, the next not added yet); the worker gives it
            // `Timeouts::ice_disconnected`.
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                self.disconnected_since.get_or_insert_with(Instant::now);
            }
            Event::IceConnectionStateChange(_) => self.disconnected_since = None,
            Event::RtpPacket(p) => {
                let ssrc = *p.header.ssrc;
                let Some(track) = self.track_of(ssrc) else {
                    return;
                };
                let Role::Origin(origin) = &self.role else {
                    return;
                };
                let codec = origin.tracks[track].1.codec;
                let keyframe = codec.starts_keyframe(&p.payload).unwrap_or(false);
                out.push(Happening::Media(
                    track,
                    Packet {
                        ssrc,
                        sequence: p.header.sequence_number,
                        timestamp: p.header.timestamp,
                        marker: p.header.marker,
                        payload: Arc::clone(&p.payload),
                        arrival: p.timestamp,
                        keyframe,
                    },
                ));
            }
            Event::KeyframeRequest(r) => {
                if let Role::Viewer(v) = &self.role {
                    if let Some(i) = v.tracks.iter().position(|(m, _, _)| *m == r.mid) {
                        out.push(Happening::KeyframeRequest(i));
                    }
                }
            }
            Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }) => {
                out.push(Happening::Estimate(estimate.as_u64()))
            }
            Event::EgressBitrateEstimate(BweKind::Remb { estimate, .. }) => {
                out.push(Happening::Remb(estimate.as_u64()))
            }
            Event::MediaEgressStats(s) => {
                let video = match &self.role {
                    Role::Viewer(v) => v
                        .tracks
                        .iter()
                        .any(|(m, t, _)| *m == s.mid && t.kind == MediaKind::Video),
                    Role::Origin(_) => false,
                };
                if video {
                    if let Some(loss) = s.loss {
                        out.push(Happening::Loss(loss));
                    }
                    out.push(Happening::VideoEgress {
                        packets: s.packets,
                        nacks: s.nacks,
                    });
                }
                let total = self.count_nacks(s.mid, s.nacks);
                out.push(Happening::Nacks(total));
            }
            Event::MediaIngressStats(s) => {
                let total = self.count_nacks(s.mid, s.nacks);
                out.push(Happening::NacksUpstream(total));
            }
            _ => {}
        }
    }

    /// Keeps the latest cumulative count of a media; the session's total.
    fn count_nacks(&mut self, mid: Mid, nacks: u64) -> u64 {
        match self.nacks.iter_mut().find(|(m, _)| *m == mid) {
            Some(entry) => entry.1 = nacks,
            None => self.nacks.push((mid, nacks)),
        }
        self.nacks.iter().map(|(_, n)| n).sum()
    }

    /// The origin's track an SSRC belongs to (its receive stream's mid).
    fn track_of(&mut self, ssrc: u32) -> Option<usize> {
        let Role::Origin(origin) = &mut self.role else {
            return None;
        };
        if let Some((_, t)) = origin.ssrcs.iter().find(|(s, _)| *s == ssrc) {
            return Some(*t);
        }
        let mid = self.rtc.direct_api().stream_rx(&ssrc.into())?.mid();
        let track = origin.tracks.iter().position(|(m, _)| *m == mid)?;
        origin.ssrcs.push((ssrc, track));
        Some(track)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_parse_and_mdns_ones_are_let_go() {
        let (mut p, _) = Peer::viewer(
            "v",
            &[TrackInfo {
                kind: MediaKind::Audio,
                codec: Codec::Opus,
                layer: None,
            }],
            false,
            &[],
            Instant::now(),
        )
        .unwrap();
        p.add_candidate("a=candidate:1 1 UDP 2122252543 192.0.2.7 50000 typ host")
            .unwrap();
        p.add_candidate("candidate:2 1 udp 2122252543 0b6a-4e.local 50001 typ host")
            .unwrap();
        p.add_candidate("").unwrap();
        assert!(p.add_candidate("candidate:garbage").is_err());
    }

    #[test]
    fn msids_name_the_layer_of_their_section() {
        let sdp = "v=0\r\nm=audio 9 X 111\r\na=mid:0\r\na=msid:gwc-layer-0 a\r\nm=video 9 X 96\r\na=msid:gwc-layer-2 v\r\na=mid:1\r\nm=video 9 X 96\r\na=mid:2\r\na=msid:other v\r\n";
        assert_eq!(
            msid_layers(sdp),
            vec![("0".to_owned(), 0), ("1".to_owned(), 2)]
        );
    }

    #[test]
    fn mids_of_accepted_sections_only() {
        let sdp = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\nm=audio 0 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:a2\r\n";
        assert_eq!(mids(sdp), vec!["0".to_owned(), "a2".to_owned()]);
    }
}
