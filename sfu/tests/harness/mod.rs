//! Real str0m peers on loopback UDP for the forward engine's tests: an origin that offers
//! VP8 + Opus and sends packets, viewers that answer the engine's offers and record what they
//! receive. One test thread drives them all (each has its own socket), so no timing between
//! threads is assumed: tests wait for conditions with generous deadlines.

#![allow(dead_code)]

pub mod layered;

use std::net::{SocketAddr, UdpSocket};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use sfu::forwarder::{ForwardConfig, ForwardEvent, Forwarder, Timeouts};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::config::DtlsCert;
use str0m::format::Codec;
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{RtpWrite, SeqNo};
use str0m::{Candidate, Event, Input, Output, Rtc};

/// How long any condition may take on a loaded 2-core machine.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// A packet a viewer received.
#[derive(Debug, Clone)]
pub struct Got {
    pub ssrc: u32,
    pub seq: u64,
    pub timestamp: u32,
    pub kind: MediaKind,
    pub payload: Vec<u8>,
}

pub struct Node {
    pub rtc: Rtc,
    pub socket: UdpSocket,
    pub addr: SocketAddr,
    pub connected: bool,
    pub got: Vec<Got>,
    pub keyframe_requests: u64,
    /// NACKs this node received for what it sends (str0m's egress stats).
    pub nacks_received: u64,
    /// Drop the n-th (0-based, counted from when it was set) incoming / outgoing RTP
    /// datagram of this SSRC, once (the SSRC is in the clear in SRTP).
    drop_in: Option<(u32, usize)>,
    drop_out: Option<(u32, usize)>,
    pending: Option<SdpPendingOffer>,
    /// Origin: media to send on (mid, kind).
    mids: Vec<(Mid, MediaKind)>,
    pub generation: u8,
    seq: u64,
    audio_seq: u64,
    picture_id: u16,
    frames: u32,
    last_send: Option<Instant>,
    key_wanted: bool,
    /// Origin: sends a keyframe when asked, and every 50 frames (else only its first).
    pub keyframes: bool,
    /// Origin: its video codec.
    pub video: Codec,
    /// Origin: one video packet per interval (10 ms), this many bytes more in each.
    pub frame_interval: Duration,
    pub padding: usize,
    pub sent: u64,
    /// Origin: the mids keyframes were asked for since the last frame.
    keys_wanted: Vec<Mid>,
    /// Viewer: its incoming link, a token bucket (RTP datagrams over it are dropped).
    pub link_in: Option<layered::Bucket>,
}

fn is_rtp(d: &[u8]) -> bool {
    matches!(d.first(), Some(128..=191)) && !matches!(d.get(1), Some(192..=223))
}

/// Whether `d` is the datagram `drop` counts down to (and counts it).
fn drops(drop: &mut Option<(u32, usize)>, d: &[u8]) -> bool {
    let Some((ssrc, left)) = drop else {
        return false;
    };
    if !is_rtp(d) || d.len() < 12 || u32::from_be_bytes([d[8], d[9], d[10], d[11]]) != *ssrc {
        return false;
    }
    if *left == 0 {
        *drop = None;
        return true;
    }
    *left -= 1;
    false
}

/// A self-signed RSA-2048 certificate, as GStreamer 1.22's DTLS presents.
pub fn rsa_cert() -> DtlsCert {
    use openssl::asn1::Asn1Time;
    use openssl::bn::{BigNum, MsbOption};
    use openssl::hash::MessageDigest;
    use openssl::pkey::PKey;
    use openssl::rsa::Rsa;
    use openssl::x509::{X509Builder, X509NameBuilder};
    let key = PKey::from_rsa(Rsa::generate(2048).expect("an RSA key")).expect("a key");
    let mut name = X509NameBuilder::new().expect("a name");
    name.append_entry_by_text("CN", "gst-webrtc").expect("a CN");
    let name = name.build();
    let mut b = X509Builder::new().expect("a builder");
    b.set_version(2).expect("v3");
    let mut serial = BigNum::new().expect("a number");
    serial
        .rand(64, MsbOption::MAYBE_ZERO, false)
        .expect("random");
    b.set_serial_number(&serial.to_asn1_integer().expect("asn1"))
        .expect("serial");
    b.set_subject_name(&name).expect("subject");
    b.set_issuer_name(&name).expect("issuer");
    b.set_pubkey(&key).expect("pubkey");
    b.set_not_before(&Asn1Time::days_from_now(0).expect("now"))
        .expect("not before");
    b.set_not_after(&Asn1Time::days_from_now(30).expect("later"))
        .expect("not after");
    b.sign(&key, MessageDigest::sha256()).expect("signed");
    DtlsCert {
        certificate: b.build().to_der().expect("DER"),
        private_key: key.private_key_to_der().expect("DER key"),
    }
}

impl Node {
    /// A viewer: takes VP8, VP9, H.264 or H.265, whichever the engine offers.
    fn new(now: Instant) -> Node {
        Node::with_cert(now, None, None)
    }

    /// `video`: an origin's one video codec (None: a viewer's VP8, VP9, H.264 and H.265).
    fn with_cert(now: Instant, cert: Option<DtlsCert>, video: Option<Codec>) -> Node {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a test socket");
        socket.set_nonblocking(true).expect("nonblocking");
        let addr = socket.local_addr().expect("its address");
        let mut config = Rtc::builder();
        if let Some(cert) = cert {
            config = config.set_dtls_cert(cert);
        }
        let mut rtc = config
            .set_rtp_mode(true)
            .set_stats_interval(Some(Duration::from_millis(200)))
            .clear_codecs()
            .enable_vp8(video.is_none_or(|c| c == Codec::Vp8))
            .enable_vp9(video.is_none_or(|c| c == Codec::Vp9))
            .enable_h264(video.is_none_or(|c| c == Codec::H264))
            .enable_h265(video.is_none_or(|c| c == Codec::H265))
            .enable_opus(true, false)
            .build(now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").expect("a host candidate"));
        Node {
            rtc,
            socket,
            addr,
            connected: false,
            got: Vec::new(),
            keyframe_requests: 0,
            nacks_received: 0,
            drop_in: None,
            drop_out: None,
            pending: None,
            mids: Vec::new(),
            generation: 0,
            seq: 1000,
            audio_seq: 5000,
            picture_id: 100,
            frames: 0,
            last_send: None,
            key_wanted: true,
            keyframes: true,
            video: video.unwrap_or(Codec::Vp8),
            frame_interval: Duration::from_millis(10),
            padding: 0,
            sent: 0,
            keys_wanted: Vec::new(),
            link_in: None,
        }
    }

    /// An origin offering VP8 video and Opus audio (as webrtcsink does); `generation` is
    /// written into every payload so a viewer can tell which origin a packet came from.
    pub fn origin(generation: u8) -> (Node, String) {
        Node::origin_with(generation, None)
    }

    /// An origin presenting `cert` (None: str0m's own, ECDSA).
    pub fn origin_with(generation: u8, cert: Option<DtlsCert>) -> (Node, String) {
        Node::origin_of(generation, cert, Codec::Vp8)
    }

    /// An origin sending `video` (VP8, VP9, H.264 or H.265) and Opus.
    pub fn origin_of(generation: u8, cert: Option<DtlsCert>, video: Codec) -> (Node, String) {
        let mut n = Node::with_cert(Instant::now(), cert, Some(video));
        n.generation = generation;
        // A different numbering per origin, as a restarted webrtcsink has.
        n.seq = 1000 + u64::from(generation) * 20_000;
        n.picture_id = 100 + u16::from(generation) * 3000;
        let mut api = n.rtc.sdp_api();
        let video = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
        let audio = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
        let (offer, pending) = api.apply().expect("an offer");
        n.pending = Some(pending);
        n.mids = vec![(video, MediaKind::Video), (audio, MediaKind::Audio)];
        (n, offer.to_sdp_string())
    }

    pub fn accept_answer(&mut self, answer: &str) {
        let answer = SdpAnswer::from_sdp_string(answer).expect("the engine's answer parses");
        let pending = self.pending.take().expect("an offer pending");
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .expect("the engine's answer is accepted");
    }

    /// A viewer answering the engine's offer.
    pub fn viewer(offer: &str) -> (Node, String) {
        let mut n = Node::new(Instant::now());
        let offer = SdpOffer::from_sdp_string(offer).expect("the engine's offer parses");
        let answer = n
            .rtc
            .sdp_api()
            .accept_offer(offer)
            .expect("the engine's offer is accepted");
        (n, answer.to_sdp_string())
    }

    /// Reads what arrived, feeds timeouts, sends what the stack wants sent.
    pub fn pump(&mut self) {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = self.socket.recv_from(&mut buf) {
            let data = &buf[..n];
            if drops(&mut self.drop_in, data) {
                continue;
            }
            if is_rtp(data) && self.link_in.as_mut().is_some_and(|b| !b.take(n)) {
                continue;
            }
            if let Ok(r) = Receive::new(Protocol::Udp, from, self.addr, data) {
                let _ = self.rtc.handle_input(Input::Receive(Instant::now(), r));
                self.drain();
            }
        }
        let _ = self.rtc.handle_input(Input::Timeout(Instant::now()));
        self.drain();
    }

    fn drain(&mut self) {
        while let Ok(out) = self.rtc.poll_output() {
            match out {
                Output::Timeout(_) => break,
                Output::Transmit(t) => {
                    if drops(&mut self.drop_out, &t.contents) {
                        continue;
                    }
                    let _ = self.socket.send_to(&t.contents, t.destination);
                }
                Output::Event(e) => self.event(e),
            }
        }
    }

    fn event(&mut self, e: Event) {
        match e {
            Event::Connected => self.connected = true,
            Event::RtpPacket(p) => {
                let mid = self
                    .rtc
                    .direct_api()
                    .stream_rx(&p.header.ssrc)
                    .map(|s| s.mid());
                let kind = mid
                    .and_then(|m| self.rtc.media(m))
                    .map_or(MediaKind::Video, |m| m.kind());
                self.got.push(Got {
                    ssrc: *p.header.ssrc,
                    seq: *p.seq_no,
                    timestamp: p.header.timestamp,
                    kind,
                    payload: p.payload.to_vec(),
                })
            }
            Event::KeyframeRequest(r) => {
                self.keyframe_requests += 1;
                self.key_wanted = true;
                self.keys_wanted.push(r.mid);
            }
            Event::MediaEgressStats(s) if s.nacks > 0 => {
                self.nacks_received = self.nacks_received.max(s.nacks)
            }
            _ => {}
        }
    }

    /// Origin: one video frame (one packet) every 10 ms and one audio packet every 20 ms; a
    /// keyframe first, every 50 frames, and when asked.
    pub fn send_media(&mut self) {
        if !self.connected || self.pending.is_some() {
            return;
        }
        let now = Instant::now();
        if self
            .last_send
            .is_some_and(|t| now.duration_since(t) < self.frame_interval)
        {
            return;
        }
        self.last_send = Some(now);
        let key = self.frames == 0
            || (self.keyframes && (self.key_wanted || self.frames.is_multiple_of(50)));
        self.key_wanted = false;
        self.frames += 1;
        self.picture_id = (self.picture_id + 1) & 0x7fff;
        self.seq += 1;
        let pid = self.picture_id;
        // Byte 4's low bit says "not a keyframe" and byte 5 is the generation, in every codec.
        let (pid_hi, pid_lo) = (0x80 | (pid >> 8) as u8, pid as u8);
        let not_key = if key { 0 } else { 1 };
        let payload = match self.video {
            // A single NAL unit: an IDR slice or a non-IDR one (RFC 6184).
            Codec::H264 => vec![if key { 0x65 } else { 0x41 }, 0x88, 0x84, 0, not_key],
            // A single NAL unit: IDR_W_RADL (19) or TRAIL_R (1), layer 0, TID 1 (RFC 7798).
            Codec::H265 => vec![if key { 0x26 } else { 0x02 }, 0x01, 0xaf, 0, not_key],
            // RFC 9628 descriptor: I, P (inter frames), B, E; a 15-bit picture id; then the
            // frame header's first byte (frame marker, profile 0, frame_type).
            Codec::Vp9 => vec![
                if key { 0x8c } else { 0xcc },
                pid_hi,
                pid_lo,
                if key { 0x80 } else { 0x84 },
                not_key,
            ],
            _ => vec![0x90, 0x80, pid_hi, pid_lo, 0x10 | not_key],
        };
        let mut payload = payload;
        payload.extend_from_slice(&[self.generation, 0xaa, 0xbb]);
        payload.resize(payload.len() + self.padding, 0x5a);
        let ts = self.frames * 900;
        self.write(MediaKind::Video, self.video, self.seq, ts, payload);
        if self.frames.is_multiple_of(2) {
            self.audio_seq += 1;
            let ts = self.frames * 480;
            let payload = vec![0xfc, self.generation, 1, 2, 3];
            self.write(MediaKind::Audio, Codec::Opus, self.audio_seq, ts, payload);
        }
        self.drain();
    }

    fn write(&mut self, kind: MediaKind, codec: Codec, seq: u64, ts: u32, payload: Vec<u8>) {
        let Some((mid, _)) = self.mids.iter().find(|(_, k)| *k == kind).copied() else {
            return;
        };
        let Some(pt) = self
            .rtc
            .codec_config()
            .params()
            .iter()
            .find(|p| p.spec().codec == codec)
            .map(|p| p.pt())
        else {
            return;
        };
        let mut api = self.rtc.direct_api();
        let Some(tx) = api.stream_tx_by_mid(mid, None) else {
            return;
        };
        let w = RtpWrite::new(pt, SeqNo::from(seq), ts, Instant::now(), payload)
            .marker(true)
            .nackable(kind == MediaKind::Video);
        tx.write_rtp(w);
        self.sent += 1;
    }

    /// Viewer: asks for a keyframe of the video it receives (PLI).
    pub fn request_keyframe(&mut self) {
        let Some(ssrc) = self.video().first().map(|g| g.ssrc) else {
            return;
        };
        if let Some(rx) = self.rtc.direct_api().stream_rx(&ssrc.into()) {
            rx.request_keyframe(KeyframeRequestKind::Pli);
        }
        self.drain();
    }

    /// Origin: drops the `k`-th video datagram sent from now on (0: the next one).
    pub fn drop_video_out(&mut self, k: usize) {
        self.drop_out = self.video_tx_ssrc().map(|s| (s, k));
    }

    /// Viewer: drops the `k`-th video datagram received from now on.
    pub fn drop_video_in(&mut self, k: usize) {
        self.drop_in = self.video().first().map(|g| (g.ssrc, k));
    }

    /// The drop asked for has happened.
    pub fn dropped(&self) -> bool {
        self.drop_in.is_none() && self.drop_out.is_none()
    }

    /// Whether the video sequence numbers received (in any order) are without a hole.
    pub fn video_complete(&self) -> bool {
        let mut seqs: Vec<u64> = self.video().iter().map(|g| g.seq).collect();
        seqs.sort_unstable();
        seqs.dedup();
        seqs.windows(2).all(|w| w[1] == w[0] + 1)
    }

    /// Origin: the SSRC its stack sends video under.
    pub fn video_tx_ssrc(&mut self) -> Option<u32> {
        let (mid, _) = self
            .mids
            .iter()
            .find(|(_, k)| *k == MediaKind::Video)
            .copied()?;
        let mut api = self.rtc.direct_api();
        api.stream_tx_by_mid(mid, None).map(|s| *s.ssrc())
    }

    pub fn video(&self) -> Vec<&Got> {
        self.got
            .iter()
            .filter(|g| g.kind == MediaKind::Video)
            .collect()
    }

    pub fn audio(&self) -> Vec<&Got> {
        self.got
            .iter()
            .filter(|g| g.kind == MediaKind::Audio)
            .collect()
    }
}

/// The engine on loopback, with `threads` workers.
pub fn forwarder(threads: usize) -> (Forwarder, Receiver<ForwardEvent>) {
    Forwarder::start(ForwardConfig {
        ice_addresses: vec!["127.0.0.1".parse().expect("an address")],
        threads,
        ..ForwardConfig::default()
    })
    .expect("the engine starts on loopback")
}

/// The engine on loopback with short timeouts (loss tests).
pub fn forwarder_with(threads: usize, timeouts: Timeouts) -> (Forwarder, Receiver<ForwardEvent>) {
    Forwarder::start_with(
        ForwardConfig {
            ice_addresses: vec!["127.0.0.1".parse().expect("an address")],
            threads,
            ..ForwardConfig::default()
        },
        timeouts,
    )
    .expect("the engine starts on loopback")
}

/// Runs `step` (one round of driving the peers, then the condition) every millisecond until
/// it holds; panics with `what` after [`DEADLINE`] (a bound for a stuck test, not a speed
/// target).
pub fn drive(what: &str, mut step: impl FnMut() -> bool) {
    let start = Instant::now();
    while !step() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Drives `nodes` (origins send media) until `done` holds; panics with `what` after the
/// deadline.
pub fn until(nodes: &mut [&mut Node], what: &str, mut done: impl FnMut(&mut [&mut Node]) -> bool) {
    drive(what, || {
        for n in nodes.iter_mut() {
            n.pump();
            n.send_media();
        }
        done(nodes)
    })
}

/// The events so far.
pub fn events(rx: &Receiver<ForwardEvent>) -> Vec<ForwardEvent> {
    rx.try_iter().collect()
}
