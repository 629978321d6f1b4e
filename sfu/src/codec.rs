//! What the core knows per codec: its clock rate and which packet starts a keyframe (the only
//! place a viewer may start or switch source).

use crate::vp8::{self, Vp8Error};

/// The codecs the core can switch on so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Vp8,
    /// RFC 6184 packetization (single NAL unit, STAP-A, FU-A).
    H264,
    /// Audio: every packet decodes on its own, so every packet is a switch point.
    Opus,
}

impl Codec {
    /// RTP clock rate (RFC 7741 and RFC 7587).
    pub fn clock_rate(self) -> u32 {
        match self {
            Codec::Vp8 | Codec::H264 => 90_000,
            Codec::Opus => 48_000,
        }
    }

    /// Whether this RTP payload is the first packet of a keyframe.
    pub fn starts_keyframe(self, payload: &[u8]) -> Result<bool, Vp8Error> {
        match self {
            Codec::Vp8 => Ok(vp8::parse(payload)?.keyframe_start),
            Codec::H264 => Ok(h264_starts_keyframe(payload)),
            Codec::Opus => Ok(true),
        }
    }
}

/// NAL unit types a decoder can start at: an IDR slice, or the SPS that precedes it
/// (webrtcsink's encoders repeat SPS/PPS before each IDR, so the switch lands on the SPS).
fn h264_starts_decoding(nal_type: u8) -> bool {
    matches!(nal_type, 5 | 7)
}

/// RFC 6184: a single NAL unit (types 1–23) that is an IDR or SPS; a STAP-A (24) holding
/// one; the first fragment of an FU-A (28) of one. A truncated aggregate counts as no
/// keyframe (the viewer waits for the next one rather than start on a broken one).
fn h264_starts_keyframe(payload: &[u8]) -> bool {
    let Some(&first) = payload.first() else {
        return false;
    };
    match first & 0x1f {
        t @ 1..=23 => h264_starts_decoding(t),
        24 => {
            let mut rest = &payload[1..];
            while let [hi, lo, tail @ ..] = rest {
                let size = usize::from(u16::from_be_bytes([*hi, *lo]));
                let Some(nal) = tail.get(..size) else {
                    return false;
                };
                if nal.first().is_some_and(|h| h264_starts_decoding(h & 0x1f)) {
                    return true;
                }
                rest = &tail[size..];
            }
            false
        }
        28 => payload
            .get(1)
            .is_some_and(|fu| fu & 0x80 != 0 && h264_starts_decoding(fu & 0x1f)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp8_keyframes_are_found_and_audio_switches_anywhere() {
        assert!(Codec::Vp8.starts_keyframe(&[0x10, 0x00]).unwrap());
        assert!(!Codec::Vp8.starts_keyframe(&[0x10, 0x01]).unwrap());
        assert!(Codec::Vp8.starts_keyframe(&[]).is_err());
        assert!(Codec::Opus.starts_keyframe(&[]).unwrap());
    }

    #[test]
    fn h264_keyframes_are_found_in_single_nal_stap_a_and_fu_a_start() {
        let k = |p: &[u8]| Codec::H264.starts_keyframe(p).unwrap();
        assert!(k(&[0x65, 0x88]), "IDR slice");
        assert!(k(&[0x67, 0x42]), "SPS");
        assert!(!k(&[0x41, 0x9a]), "non-IDR slice");
        assert!(!k(&[0x68, 0xce]), "PPS alone is no start");
        assert!(!k(&[]));
        // STAP-A: SPS (2 bytes) then PPS (2 bytes).
        assert!(k(&[0x78, 0, 2, 0x67, 0x42, 0, 2, 0x68, 0xce]));
        assert!(k(&[0x78, 0, 2, 0x68, 0xce, 0, 1, 0x65]), "IDR second");
        assert!(!k(&[0x78, 0, 2, 0x68, 0xce, 0, 1, 0x41]));
        assert!(!k(&[0x78, 0, 9, 0x67]), "truncated aggregate");
        // FU-A: start of an IDR, middle of an IDR, start of a non-IDR.
        assert!(k(&[0x7c, 0x85, 0xb8]));
        assert!(!k(&[0x7c, 0x05, 0xb8]));
        assert!(!k(&[0x7c, 0x81, 0x9a]));
        assert!(!k(&[0x7c]), "truncated FU header");
    }
}
