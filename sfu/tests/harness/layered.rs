//! A layered origin (issue 26) as producer-agent's `--layers N` offers it: one audio
//! m-section and N video ones, layer k's with `a=msid:gwc-layer-k`, each layer its own
//! encoder (own SSRC, sequence numbers, picture ids), keyframes when asked (per layer). And a
//! viewer's incoming link limited by a token bucket, as `tc tbf` limits a real one.

use super::*;

/// A token bucket: `rate` bits per second, `depth` bytes deep; a datagram it has no tokens
/// for is dropped (the queue of a tbf is its depth).
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: f64,
    depth: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub fn new(bps: u64, depth: usize) -> Bucket {
        Bucket {
            rate: bps as f64 / 8.0,
            depth: depth as f64,
            tokens: depth as f64,
            at: Instant::now(),
        }
    }

    /// Whether a datagram of `bytes` passes (its tokens taken).
    pub fn take(&mut self, bytes: usize) -> bool {
        let now = Instant::now();
        let dt = now.duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.depth);
        if self.tokens < bytes as f64 {
            return false;
        }
        self.tokens -= bytes as f64;
        true
    }
}

pub struct LayeredOrigin {
    pub node: Node,
    audio: Mid,
    /// Per layer (top first): its mid, next sequence number and picture id, payload bytes.
    layers: Vec<(Mid, u64, u16, usize)>,
    frames: u32,
    last: Option<Instant>,
    /// Layers that send nothing (an encoder that never started).
    pub silent: Vec<usize>,
}

impl LayeredOrigin {
    /// `sizes`: per layer, top first, the payload bytes of each of its frames (one packet
    /// every 10 ms: 1000 bytes is ~840 kbit/s with headers).
    pub fn new(sizes: &[usize]) -> (LayeredOrigin, String) {
        let mut node = Node::with_cert(Instant::now(), None, Some(Codec::Vp8));
        let mut api = node.rtc.sdp_api();
        let msid = |k: usize| Some(format!("gwc-layer-{k}"));
        let audio = api.add_media(MediaKind::Audio, Direction::SendOnly, msid(0), None, None);
        let mids: Vec<Mid> = (0..sizes.len())
            .map(|k| api.add_media(MediaKind::Video, Direction::SendOnly, msid(k), None, None))
            .collect();
        let (offer, pending) = api.apply().expect("an offer");
        node.pending = Some(pending);
        let layers = mids
            .into_iter()
            .zip(sizes)
            .enumerate()
            .map(|(k, (m, s))| (m, 1000 + 20_000 * k as u64, 100 + 5000 * k as u16, *s))
            .collect();
        let origin = LayeredOrigin {
            node,
            audio,
            layers,
            frames: 0,
            last: None,
            silent: Vec::new(),
        };
        (origin, offer.to_sdp_string())
    }

    /// One frame of every layer every 10 ms (a keyframe first, every 200 frames and when that
    /// layer is asked for one), audio every 20 ms. A payload's byte 5 is its layer.
    pub fn send(&mut self) {
        let n = &mut self.node;
        if !n.connected || n.pending.is_some() {
            return;
        }
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_millis(10))
        {
            return;
        }
        self.last = Some(now);
        let periodic = self.frames.is_multiple_of(200);
        self.frames += 1;
        let ts = self.frames * 900;
        let pt = |rtc: &Rtc, c: Codec| {
            rtc.codec_config()
                .params()
                .iter()
                .find(|p| p.spec().codec == c)
                .map(|p| p.pt())
        };
        let wanted = std::mem::take(&mut n.keys_wanted);
        for (k, (mid, seq, pid, size)) in self.layers.iter_mut().enumerate() {
            if self.silent.contains(&k) {
                continue;
            }
            let key = periodic || wanted.contains(mid);
            *seq += 1;
            *pid = (*pid + 1) & 0x7fff;
            let (hi, lo) = (0x80 | (*pid >> 8) as u8, *pid as u8);
            let mut payload = vec![0x90, 0x80, hi, lo, 0x10 | u8::from(!key), k as u8];
            payload.resize(*size, 0x5a);
            let Some(pt) = pt(&n.rtc, Codec::Vp8) else {
                return;
            };
            if let Some(tx) = n.rtc.direct_api().stream_tx_by_mid(*mid, None) {
                let w = RtpWrite::new(pt, SeqNo::from(*seq), ts, now, payload).marker(true);
                tx.write_rtp(w.nackable(true));
            }
        }
        if self.frames.is_multiple_of(2) {
            if let Some(pt) = pt(&n.rtc, Codec::Opus) {
                n.audio_seq += 1;
                let (seq, ts) = (n.audio_seq, self.frames * 480);
                if let Some(tx) = n.rtc.direct_api().stream_tx_by_mid(self.audio, None) {
                    let payload = vec![0xfc, 0, 1, 2, 3];
                    tx.write_rtp(RtpWrite::new(pt, SeqNo::from(seq), ts, now, payload));
                }
            }
        }
        n.drain();
    }
}

/// Drives the layered origin and `viewers` until `done` holds; panics with `what` after the
/// deadline.
pub fn until_layered(
    origin: &mut LayeredOrigin,
    viewers: &mut [&mut Node],
    what: &str,
    mut done: impl FnMut(&mut LayeredOrigin, &mut [&mut Node]) -> bool,
) {
    super::drive(what, || {
        origin.node.pump();
        origin.send();
        for v in viewers.iter_mut() {
            v.pump();
        }
        done(origin, viewers)
    })
}
