//! The transport-free core of a forwarding relay (issue 25): the part that decides, per
//! packet, what each viewer is sent. No I/O, no GStreamer, no WebRTC stack: a sans-IO stack
//! (str0m in rtp mode is the candidate) will feed it received packets and viewers' feedback,
//! and send what it returns. Not yet wired into relay-agent.
//!
//! | behaviour | file |
//! |---|---|
//! | RTP header fields read and rewritten in place (SSRC, sequence, timestamp, payload type); wraparound arithmetic | [`rtp`] (on `rtp-types`) |
//! | VP8 payload descriptor: picture id (7/15-bit), TL0PICIDX, keyframe start; rewritten in place | [`vp8`] |
//! | per codec: clock rate, which packet starts a keyframe (where a viewer may start or switch) | [`codec`] |
//! | **per viewer**: own SSRC, continuous sequence/timestamp/picture id across a change of source (switch at a keyframe only), gaps kept, viewer sequence → source packet for NACKs, a cached packet rewritten again for a retransmission | [`rewrite`] (tests in `rewrite_tests.rs`) |
//! | **per source**: the last packets by sequence number, a viewer's NACK answered, a miss asked upstream once per window | [`nack_cache`] |
//! | **per source**: the last keyframe and what followed, so a joiner starts at once | [`keyframe_cache`] |
//! | the one UDP port: STUN / DTLS / RTP / RTCP told apart (RFC 7983, RFC 5761); a binding request routed by its local ufrag, everything else by the peer's bound address; the rest dropped and counted per reason | [`demux`] |
//! | **per source**: keyframe requests (viewers' PLI/FIR, joiners and switches waiting) coalesced: at most one upstream per interval, a deferred one sent at its end unless a keyframe came, an unanswered one sent again | [`keyframe_requests`] |
//!
//! How the I/O loop will use them, per source packet and per viewer NACK:
//!
//! ```text
//!  origin packet ─► rtp::parse ─► codec::starts_keyframe ─┬─► NackCache::insert
//!                                                         ├─► KeyframeCache::push
//!                                                         └─► for each viewer: copy ─► Munger::forward
//!                                                               ├─ Forward: protect (SRTP), send
//!                                                               └─ Drop(WaitingForKeyframe): ask upstream (coalesced)
//!  viewer joins   ─► Munger::new + select(source) ─► KeyframeCache::packets ─► Munger::forward each ─► send
//!  viewer NACK n  ─► Munger::source_of(n) ─► NackCache::nack ─┬─ Hit: copy ─► Munger::retransmit ─► send (RTX)
//!                                                               ├─ AskUpstream: one NACK to the origin
//!                                                               └─ AlreadyAsked: nothing
//!  origin reattached with a new SSRC ─► each viewer's Munger::select(new) (the switch is at its keyframe)
//! ```

pub mod addresses;
pub mod codec;
pub mod demux;
pub mod fanout;
pub mod forwarder;
pub mod keyframe_cache;
pub mod keyframe_requests;
pub mod nack_cache;
pub mod peer;
pub mod rewrite;
pub mod rtp;
pub mod vp8;
pub mod worker;
