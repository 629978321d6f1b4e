//! `a=msid` lines for the SDP we send. webrtcbin 1.22 writes a pad's `msid` only as a source
//! attribute, `a=ssrc:N msid:STREAM TRACK` (on the media SSRC and its RTX), never as the media
//! section's `a=msid:STREAM TRACK` (RFC 8830) that unified-plan parsers (browsers, str0m) read
//! first. A layered origin's layers are told apart by their msid (docs/protocol.md "Layers"),
//! so each m-section whose source msid names a layer (`gwc-layer-k`) and that has no `a=msid`
//! gets one, copied from it. Other SDP (webrtcbin's default msid, the cname) is left as it is.

use std::borrow::Cow;

/// `sdp` with an `a=msid:` line added to every m-section that has `a=ssrc:N msid:gwc-layer-k …`
/// but no `a=msid:` (at the end of the section); unchanged if none needs one.
pub fn add_media_msids(sdp: &str) -> Cow<'_, str> {
    if !sdp.contains(" msid:gwc-layer-") {
        return sdp.into();
    }
    let eol = if sdp.contains("\r\n") { "\r\n" } else { "\n" };
    let mut out = String::with_capacity(sdp.len() + 128);
    let mut section = Section::default();
    let mut changed = false;
    for line in sdp.split_terminator(eol) {
        if line.starts_with("m=") {
            changed |= section.close(&mut out, eol);
        }
        section.see(line);
        out.push_str(line);
        out.push_str(eol);
    }
    changed |= section.close(&mut out, eol);
    if changed {
        out.into()
    } else {
        sdp.into()
    }
}

/// What one m-section says about its msid.
#[derive(Default)]
struct Section {
    has_media_msid: bool,
    source_msid: Option<String>,
}

impl Section {
    fn see(&mut self, line: &str) {
        if line.starts_with("m=") {
            *self = Section::default();
        } else if line.starts_with("a=msid:") {
            self.has_media_msid = true;
        } else if let Some(rest) = line.strip_prefix("a=ssrc:") {
            if self.source_msid.is_none() {
                self.source_msid = rest
                    .split_once(" msid:")
                    .map(|(_, msid)| msid.trim().to_string())
                    .filter(|msid| {
                        let stream = msid.split(' ').next().unwrap_or_default();
                        proto::layers::layer_of_msid(stream).is_some()
                    });
            }
        }
    }

    /// Adds the section's `a=msid` if it needs one; whether it did.
    fn close(&mut self, out: &mut String, eol: &str) -> bool {
        let add = match (&self.source_msid, self.has_media_msid) {
            (Some(msid), false) => {
                out.push_str("a=msid:");
                out.push_str(msid);
                out.push_str(eol);
                true
            }
            _ => false,
        };
        *self = Section::default();
        add
    }
}

#[cfg(test)]
mod tests {
    use super::add_media_msids;

    #[test]
    fn a_source_msid_gets_its_media_line() {
        let sdp = "v=0\r\nm=video 9 X 96\r\na=ssrc:1 msid:gwc-layer-1 t0\r\na=ssrc:2 msid:gwc-layer-1 t0\r\na=mid:video0\r\nm=audio 9 X 111\r\na=mid:audio1\r\n";
        let out = add_media_msids(sdp);
        assert_eq!(
            out,
            "v=0\r\nm=video 9 X 96\r\na=ssrc:1 msid:gwc-layer-1 t0\r\na=ssrc:2 msid:gwc-layer-1 t0\r\na=mid:video0\r\na=msid:gwc-layer-1 t0\r\nm=audio 9 X 111\r\na=mid:audio1\r\n"
        );
    }

    #[test]
    fn sections_with_a_media_msid_or_none_are_kept() {
        let sdp = "v=0\r\nm=video 9 X 96\r\na=msid:s t\r\na=ssrc:1 msid:s t\r\n";
        assert!(matches!(
            add_media_msids(sdp),
            std::borrow::Cow::Borrowed(_)
        ));
        let plain = "v=0\r\nm=video 9 X 96\r\na=ssrc:1 cname:x\r\n";
        assert!(matches!(
            add_media_msids(plain),
            std::borrow::Cow::Borrowed(_)
        ));
        // webrtcbin's default msid (the cname): not ours, kept byte for byte.
        let default = "v=0\r\nm=video 9 X 96\r\na=ssrc:1 msid:user1@host-2 webrtctransceiver0\r\n";
        assert!(matches!(
            add_media_msids(default),
            std::borrow::Cow::Borrowed(_)
        ));
    }
}
