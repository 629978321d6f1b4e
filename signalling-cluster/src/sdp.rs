//! The little SDP the node reads and writes for WHIP and WHEP (`whip.rs`, `whep.rs`): whether
//! a body is an offer with media it can carry, and the answer with the candidates that
//! trickled in beside it (a client gets one complete answer: we do not take trickle ICE,
//! RFC 9725 section 4.3).

/// Largest offer taken (a browser's is 5-10 KB): above, 413.
pub const MAX_OFFER_BYTES: usize = 64 * 1024;

/// Why an offer is refused (400, with this text).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BadOffer {
    #[error("the body is not UTF-8 text")]
    NotText,
    #[error("not an SDP offer (no v=0 line)")]
    NotSdp,
    #[error("the offer has no audio or video media section")]
    NoMedia,
    #[error("the offer's media is all inactive or sendonly: nothing to receive")]
    NothingToReceive,
    #[error("the offer's media is all inactive or recvonly: nothing to publish")]
    NothingToSend,
}

/// What the offerer does with its media: a WHEP player receives, a WHIP publisher sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wants {
    Receive,
    Send,
}

/// Checks `body` is an SDP offer with an audio or video section that can do what `wants`.
pub fn check_offer(body: &[u8], wants: Wants) -> Result<&str, BadOffer> {
    let text = std::str::from_utf8(body).map_err(|_| BadOffer::NotText)?;
    let mut lines = text.lines().map(str::trim_end);
    if lines.next() != Some("v=0") {
        return Err(BadOffer::NotSdp);
    }
    let mut media = 0;
    let mut usable = 0;
    for section in sections(text).iter().skip(1) {
        let first = section.first().copied().unwrap_or_default();
        if !(first.starts_with("m=audio ") || first.starts_with("m=video ")) {
            continue;
        }
        media += 1;
        let against = match wants {
            Wants::Receive => "a=sendonly",
            Wants::Send => "a=recvonly",
        };
        let blocked = section.iter().any(|l| *l == "a=inactive" || *l == against);
        if !blocked && !first.contains(" 0 ") {
            usable += 1;
        }
    }
    match (media, usable, wants) {
        (0, _, _) => Err(BadOffer::NoMedia),
        (_, 0, Wants::Receive) => Err(BadOffer::NothingToReceive),
        (_, 0, Wants::Send) => Err(BadOffer::NothingToSend),
        _ => Ok(text),
    }
}

/// The session part, then each media section, as lines (`\r\n` or `\n`).
fn sections(text: &str) -> Vec<Vec<&str>> {
    let mut out = vec![Vec::new()];
    for line in text.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
        if line.starts_with("m=") {
            out.push(Vec::new());
        }
        if let Some(section) = out.last_mut() {
            section.push(line);
        }
    }
    out
}

/// `answer` with each candidate (`candidate:…`, for media section `mline`) added to its
/// section, unless the answer has it already; CRLF line ends, as SDP wants.
pub fn with_candidates(answer: &str, candidates: &[(u32, String)]) -> String {
    let sections = sections(answer);
    let mut out = String::with_capacity(answer.len() + candidates.len() * 80);
    for (index, section) in sections.iter().enumerate() {
        for line in section {
            out.push_str(line);
            out.push_str("\r\n");
        }
        let Some(mline) = index.checked_sub(1) else {
            continue;
        };
        let mut added: Vec<String> = Vec::new();
        for (at, candidate) in candidates {
            let line = format!("a={}", candidate.trim());
            if *at as usize == mline && !section.contains(&line.as_str()) && !added.contains(&line)
            {
                out.push_str(&line);
                out.push_str("\r\n");
                added.push(line);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=- 1 0 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=recvonly\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=recvonly\r\n";

    #[test]
    fn an_offer_needs_sdp_and_a_media_section_that_can_receive() {
        fn check(body: &[u8]) -> Result<&str, BadOffer> {
            check_offer(body, Wants::Receive)
        }
        assert_eq!(check(OFFER.as_bytes()), Ok(OFFER));
        assert_eq!(check(b"hello"), Err(BadOffer::NotSdp));
        assert_eq!(check(&[0xff, 0xfe]), Err(BadOffer::NotText));
        let no_media = "v=0\r\no=- 1 0 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n";
        assert_eq!(check(no_media.as_bytes()), Err(BadOffer::NoMedia));
        let data_only = format!("{no_media}m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n");
        assert_eq!(check(data_only.as_bytes()), Err(BadOffer::NoMedia));
        let sending = OFFER.replace("a=recvonly", "a=sendonly");
        assert_eq!(check(sending.as_bytes()), Err(BadOffer::NothingToReceive));
        // a publisher's offer is the other way round
        fn publish(body: &[u8]) -> Result<&str, BadOffer> {
            check_offer(body, Wants::Send)
        }
        assert_eq!(publish(sending.as_bytes()), Ok(sending.as_str()));
        assert_eq!(publish(OFFER.as_bytes()), Err(BadOffer::NothingToSend));
    }

    #[test]
    fn candidates_go_to_their_section_once() {
        let answer = OFFER.replace("a=recvonly", "a=sendonly");
        let candidates = [
            (
                0,
                "candidate:1 1 UDP 2015363327 10.0.0.1 5000 typ host".to_string(),
            ),
            (
                1,
                "candidate:2 1 UDP 2015363327 10.0.0.1 5002 typ host".to_string(),
            ),
            (
                0,
                "candidate:1 1 UDP 2015363327 10.0.0.1 5000 typ host".to_string(),
            ),
        ];
        let out = with_candidates(&answer, &candidates);
        let sections = sections(&out);
        assert_eq!(sections.len(), 3);
        let count = |s: &Vec<&str>| s.iter().filter(|l| l.starts_with("a=candidate:")).count();
        assert_eq!((count(&sections[1]), count(&sections[2])), (1, 1));
        assert!(sections[2].contains(&"a=candidate:2 1 UDP 2015363327 10.0.0.1 5002 typ host"));
        assert!(out.ends_with("\r\n") && !out.contains("\n\n"));
    }
}
