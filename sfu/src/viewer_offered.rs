//! A viewer that offers (a WHEP player, through the node's `startSession` with `offer`):
//! the engine answers instead of offering, each source track sent on the first m-section of
//! its kind the viewer offered to receive, in the source's codec (a section the viewer offered
//! without it is rejected by the stack, and a track with none is an error). The viewer's
//! candidates come in its offer; ours are in the answer. From then on it is a viewer like any
//! other (`peer.rs`). Both kinds start their tracks here once negotiated
//! ([`Peer::start_viewer_tracks`]: payload types, unpaced sending, the NACK buffer).

use std::time::Instant;

use str0m::change::SdpOffer;
use str0m::media::Mid;
use str0m::Candidate;

use crate::codec::Codec;
use crate::fanout::ViewerTrack;
use crate::forward_api::ForwardError;
use crate::layer_switching::LayerChoice;
use crate::peer::{
    build, mids, sdp_error, stack_codec, Peer, Role, TrackInfo, Viewer, LAYERED_STATS_INTERVAL,
    RTX_AGE, RTX_PACKETS, STATS_INTERVAL,
};

impl Peer {
    /// The viewer's session from its offer: the peer and our answer.
    pub fn viewer_offered(
        session: &str,
        tracks: &[TrackInfo],
        layered: bool,
        candidates: &[Candidate],
        offer_sdp: &str,
        now: Instant,
    ) -> Result<(Peer, String), ForwardError> {
        let offer = as_str0m_reads(offer_sdp);
        let offer = SdpOffer::from_sdp_string(&offer).map_err(|e| sdp_error(session, e))?;
        let codecs: Vec<Codec> = tracks.iter().map(|t| t.codec).collect();
        let stats = match layered {
            true => LAYERED_STATS_INTERVAL,
            false => STATS_INTERVAL,
        };
        let (mut rtc, ufrag) = build(&codecs, candidates, true, stats, now)?;
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| sdp_error(session, e))?
            .to_sdp_string();
        let sections: Vec<Mid> = mids(&answer)
            .iter()
            .map(|m| Mid::from(m.as_str()))
            .collect();
        let mut taken: Vec<Mid> = Vec::new();
        let mut viewer_tracks = Vec::new();
        for track in tracks {
            let mid = sections.iter().copied().find(|mid| {
                !taken.contains(mid)
                    && rtc
                        .media(*mid)
                        .is_some_and(|m| m.kind() == track.kind && m.direction().is_sending())
            });
            let Some(mid) = mid else {
                let offered: Vec<String> = sections
                    .iter()
                    .filter_map(|mid| rtc.media(*mid))
                    .map(|m| format!("{} {:?} {:?}", m.mid(), m.kind(), m.direction()))
                    .collect();
                let why = format!(
                    "the offer has no {:?} section in {:?} to receive the source's (its sections, as answered: {offered:?})",
                    track.kind, track.codec
                );
                return Err(sdp_error(session, why));
            };
            taken.push(mid);
            viewer_tracks.push((mid, *track, None));
        }
        let viewer = Viewer {
            tracks: viewer_tracks,
            pending: None,
            joined: false,
            choice: LayerChoice::new(),
            max_height: None,
            desired_bps: 0,
        };
        let mut peer = Peer::new(session, rtc, ufrag, Role::Viewer(viewer), now);
        peer.start_viewer_tracks();
        Ok((peer, answer))
    }

    /// Each track's payload type from the negotiated media: from then on packets can be
    /// written.
    pub(crate) fn start_viewer_tracks(&mut self) {
        let Role::Viewer(viewer) = &mut self.role else {
            return;
        };
        for (mid, info, track) in &mut viewer.tracks {
            let remote = self
                .rtc
                .media(*mid)
                .map(|m| m.remote_pts().to_vec())
                .unwrap_or_default();
            let pt = self.rtc.codec_config().params().iter().find_map(|p| {
                (stack_codec(p.spec().codec) == Some(info.codec)
                    && (remote.is_empty() || remote.contains(&p.pt())))
                .then_some(*p.pt())
            });
            let Some(pt) = pt else { continue };
            *track = Some(ViewerTrack::new(info.codec, pt));
            // One layer, one encoding: holding packets back to a paced rate would only add
            // delay. The estimate is still computed and reported.
            if let Some(tx) = self.rtc.direct_api().stream_tx_by_mid(*mid, None) {
                tx.set_unpaced(true);
                // The send buffer NACKs are answered from: an entry is ~430 bytes of header
                // per viewer (the payload is the shared one), so str0m's default 3 s (~600
                // entries at 2 Mbit/s, ~280 KB per viewer) is cut to 1 s, longer than any
                // viewer's jitter buffer waits for a retransmission.
                tx.set_rtx_cache(RTX_PACKETS, RTX_AGE, Some(0.15));
            }
        }
    }
}

/// `offer` as str0m reads it, from what GStreamer's webrtcbin (whepclientsrc) writes:
/// * a section offered `a=bundle-only` (RFC 8843: port 0, "use the BUNDLE transport") gets
///   port 9: str0m reads port 0 as a rejected section, and the port means nothing in a group;
/// * `a=rtpmap:N OPUS/48000` gets its channel count, `/2` (RFC 7587 writes opus as
///   `opus/48000/2` whatever is sent; str0m matches no Opus without it).
fn as_str0m_reads(offer: &str) -> std::borrow::Cow<'_, str> {
    let opus = |l: &str| {
        l.starts_with("a=rtpmap:") && l.trim_end().to_ascii_lowercase().ends_with(" opus/48000")
    };
    if !offer.contains("a=bundle-only") && !offer.lines().any(opus) {
        return offer.into();
    }
    let lines: Vec<&str> = offer.split_inclusive('\n').collect();
    let mut out = String::with_capacity(offer.len() + 16);
    for (i, line) in lines.iter().enumerate() {
        let section_end = lines[i + 1..]
            .iter()
            .position(|l| l.starts_with("m="))
            .map_or(lines.len(), |at| i + 1 + at);
        let bundle_only = line.starts_with("m=")
            && lines[i + 1..section_end]
                .iter()
                .any(|l| l.trim_end() == "a=bundle-only");
        let end = &line[line.trim_end().len()..];
        match line.split_once(' ') {
            Some((kind, rest)) if bundle_only && rest.starts_with("0 ") => {
                out.push_str(kind);
                out.push_str(" 9 ");
                out.push_str(&rest[2..]);
            }
            _ if opus(line) => {
                out.push_str(line.trim_end());
                out.push_str("/2");
                out.push_str(end);
            }
            _ => out.push_str(line),
        }
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_only_section_is_taken_as_bundled_and_opus_gets_its_channels() {
        let offer = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\n\
            m=audio 0 UDP/TLS/RTP/SAVPF 101\r\na=bundle-only\r\na=mid:1\r\n\
            a=rtpmap:101 OPUS/48000\r\n\
            m=application 0 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:2\r\n";
        let out = as_str0m_reads(offer);
        assert!(out.contains("m=audio 9 UDP/TLS/RTP/SAVPF 101\r\n"), "{out}");
        assert!(out.contains("a=rtpmap:101 OPUS/48000/2\r\n"), "{out}");
        // a rejected section (no bundle-only) stays rejected
        assert!(out.contains("m=application 0 UDP/DTLS/SCTP"), "{out}");
        let plain = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n";
        assert!(matches!(
            as_str0m_reads(plain),
            std::borrow::Cow::Borrowed(_)
        ));
    }
}
