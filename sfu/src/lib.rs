//! The forwarding relay (issue 25). Its deciding parts are transport-free: fed received
//! packets and viewers' feedback, they say what each viewer is sent. Around them the engine
//! ([`forwarder::Forwarder`]) runs str0m (rtp mode, openssl DTLS) on worker threads.
//!
//! | behaviour | file |
//! |---|---|
//! | RTP header fields read and rewritten in place (SSRC, sequence, timestamp, payload type); wraparound arithmetic | [`rtp`] (on `rtp-types`) |
//! | VP8 payload descriptor: picture id (7/15-bit), TL0PICIDX, keyframe start; rewritten in place | [`vp8`] |
//! | per codec: clock rate, which packet starts a keyframe (VP8; H.264 IDR/SPS in a single NAL, STAP-A, FU-A start; Opus; VP9, H.265, AV1 by their own files) | [`codec`] |
//! | which packet starts a keyframe: VP9 (RFC 9628 descriptor, spatial layer 0, frame header KEY_FRAME), H.265 (RFC 7798: IRAP/VPS/SPS whole, in an AP or an FU start), AV1 (N bit, or a sequence header OBU); tests on GStreamer-made payloads in `testdata/` | [`vp9`], [`h265`], [`av1`] |
//! | **per viewer**: own SSRC, continuous sequence/timestamp/picture id across a change of source (switch at a keyframe only), gaps kept, viewer sequence → source packet for NACKs, a cached packet rewritten again for a retransmission | [`rewrite`] (tests in `rewrite_tests.rs`) |
//! | **per source**: the last packets by sequence number, a viewer's NACK answered, a miss asked upstream once per window (not on the str0m path: str0m answers NACKs, see [`peer`]) | [`nack_cache`] |
//! | **per source**: the last keyframe and what followed, so a joiner starts at once | [`keyframe_cache`] |
//! | the one UDP port: STUN / DTLS / RTP / RTCP told apart (RFC 7983, RFC 5761); a binding request routed by its local ufrag, everything else by the peer's bound address; the rest dropped and counted per reason | [`demux`] |
//! | **per source**: keyframe requests (viewers' PLI/FIR, joiners and switches waiting) coalesced: at most one upstream per interval, a deferred one sent at its end unless a keyframe came, an unanswered one sent again; an origin's requests 50 ms apart whatever the track | [`keyframe_requests`] |
//! | **fanout**: a source packet (shared `Arc` payload) → per viewer track its header fields, VP8 ids and payload type (a [`rewrite::Munger`] each); joiners from the keyframe cache; a new source SSRC switched to at its keyframe; a layered viewer switched to its target layer at that layer's keyframe (the old layer paused once it asks for a keyframe during a switch down) | [`fanout`] (tests in `fanout_tests.rs`, `fanout_layers_tests.rs`) |
//! | a session's WebRTC peer (str0m `Rtc`): origin answer, viewer offer/answer, candidates, writes with VP8 patch, events; the process's one ECDSA P-256 DTLS certificate | [`peer`] |
//! | a viewer that offers (a WHEP player): our answer, each track on the first offered section of its kind, webrtcbin's offer read as str0m reads it (bundle-only, Opus channels); every viewer's tracks started once negotiated | [`viewer_offered`] |
//! | worker threads: sockets, demux, str0m timeouts, source packets to the other workers, keyframe asks to the origin's worker, sessions lost; its messages and sessions in `worker_sessions.rs`, its viewers' layer choice in `worker_layers.rs` | [`worker`] |
//! | a layered origin (issue 26): its video layers (msid `gwc-layer-k`, under its ladder) collapsed into one viewer track, the other tracks mirrored | [`layout`] |
//! | **per viewer**: which layer of a layered source (estimate, loss, layer bitrates, cap, time → target, probe), a pure state machine; docs/sfu.md "Layers" | [`layer_switching`] (tests in `layer_switching_tests.rs`) |
//! | a worker's outgoing datagrams of one loop turn, sent with `sendmmsg` (64 per call) | [`send_batch`] |
//! | how a worker is reached: its messages (handle calls, source packets as `Arc`s, keyframe asks) and its channel + waker | [`mailbox`] |
//! | the handle relay-agent holds: start, sessions placed on the least loaded worker, stats, stop | [`forwarder`] |
//! | the engine's config, timeouts, errors, events and stats (re-exported by [`forwarder`]) | [`forward_api`] |
//! | the engine thread's CPU per viewer and per packet sent (str0m origin, str0m viewers on their own threads; fit per packet, RSS upper bound); figures in docs/architecture.md | `examples/fanout_cost.rs` |
//! | HMAC-SHA1 for str0m on OpenSSL's plain SHA-1 (its backend looked the algorithm up per packet), installed by the engine and the light viewers | [`hmac`] |
//! | the addresses announced as host candidates (configured, else non-loopback interfaces), a worker's sockets bound on them | [`addresses`] |
//!
//! Per source packet and per viewer feedback:
//!
//! ```text
//!  origin datagram ─► worker: Demux ─► Peer (origin Rtc) ─► Event::RtpPacket
//!      ─► fanout::Packet { header fields, Arc payload, codec::starts_keyframe }
//!      ─► to every worker (Arc over a channel) ─► SourceTrack::push (keyframe cache)
//!                                             └─► each viewer: ViewerTrack::forward (Munger)
//!                                                   ├─ Send: Peer::write (str0m: SRTP, RTX buffer, SR, TWCC)
//!                                                   └─ NeedKeyframe: KeyframeRequests on the origin's worker
//!  viewer connected ─► ViewerTrack::join: the cached keyframe and what followed, at once
//!  viewer NACK      ─► str0m answers from the viewer's send buffer (the same Arc payload), RTX
//!  loss upstream    ─► the origin Rtc NACKs once; the repair is forwarded into the viewers' gap
//!  viewer PLI/FIR   ─► KeyframeRequests (coalesced) ─► one PLI to the origin
//!  origin reattached with a new SSRC ─► each viewer switches at its first keyframe
//! ```

pub mod addresses;
pub mod av1;
pub mod codec;
pub mod demux;
pub mod fanout;
pub mod forward_api;
pub mod forwarder;
pub mod h265;
pub mod hmac;
pub mod keyframe_cache;
pub mod keyframe_requests;
pub mod layer_switching;
pub mod layout;
pub mod mailbox;
pub mod nack_cache;
pub mod peer;
pub mod rewrite;
pub mod rtp;
pub mod send_batch;
pub mod viewer_offered;
pub mod vp8;
pub mod vp9;
pub mod worker;
