//! What the core knows per codec: its clock rate and which packet starts a keyframe (the only
//! place a viewer may start or switch source).

use crate::av1::{self, Av1Error};
use crate::h265::{self, H265Error};
use crate::vp8::{self, Vp8Error};
use crate::vp9::{self, Vp9Error};

/// The codecs the core forwards (webrtcsink's: VP8, VP9, H.264, H.265, AV1, Opus).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Vp8,
    /// RFC 9628 (flexible and non-flexible mode).
    Vp9,
    /// RFC 6184 packetization (single NAL unit, STAP-A, FU-A).
    H264,
    /// RFC 7798 packetization (single NAL unit, AP, FU).
    H265,
    /// The AOM AV1 RTP payload format (aggregation header, OBUs).
    Av1,
    /// Audio: every packet decodes on its own, so every packet is a switch point.
    Opus,
}

impl Codec {
    /// RTP clock rate (every video payload format here: 90 kHz; Opus, RFC 7587: 48 kHz).
    pub fn clock_rate(self) -> u32 {
        match self {
            Codec::Vp8 | Codec::Vp9 | Codec::H264 | Codec::H265 | Codec::Av1 => 90_000,
            Codec::Opus => 48_000,
        }
    }

    /// Whether this RTP payload is the first packet of a keyframe.
    pub fn starts_keyframe(self, payload: &[u8]) -> Result<bool, PayloadError> {
        Ok(match self {
            Codec::Vp8 => vp8::parse(payload)?.keyframe_start,
            Codec::Vp9 => vp9::starts_keyframe(payload)?,
            Codec::H264 => h264_starts_keyframe(payload),
            Codec::H265 => h265::starts_keyframe(payload)?,
            Codec::Av1 => av1::starts_keyframe(payload)?,
            Codec::Opus => true,
        })
    }
}

/// Why a payload could not be read as its codec's (the packet is no switch point).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error(transparent)]
    Vp8(#[from] Vp8Error),
    #[error(transparent)]
    Vp9(#[from] Vp9Error),
    #[error(transparent)]
    H265(#[from] H265Error),
    #[error(transparent)]
    Av1(#[from] Av1Error),
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

    mod fixture {
        include!("testdata/fixture.rs");
    }

    /// The GStreamer-made payloads (rtpvp9pay, rtph265pay, rtpav1pay) through `Codec`: a
    /// frame's first packet is a switch point exactly when the encoder made a keyframe, and no
    /// packet of another frame is (inside an H.265 keyframe the IRAP slice after VPS/SPS/PPS
    /// may also say so).
    #[test]
    fn gstreamer_payloads_switch_exactly_at_their_keyframes() {
        let cases: [(Codec, &[u8]); 4] = [
            (Codec::Vp9, include_bytes!("testdata/vp9.rtp")),
            (Codec::H265, include_bytes!("testdata/h265-single.rtp")),
            (Codec::H265, include_bytes!("testdata/h265-aggregated.rtp")),
            (Codec::Av1, include_bytes!("testdata/av1.rtp")),
        ];
        for (codec, bytes) in cases {
            let packets = fixture::packets(bytes);
            let mut starts = 0;
            for (i, p) in packets.iter().enumerate() {
                let found = codec.starts_keyframe(p.payload);
                if p.first_of_frame || !p.keyframe {
                    assert_eq!(found, Ok(p.keyframe && p.first_of_frame), "{codec:?} {i}");
                } else {
                    assert!(found.is_ok(), "{codec:?} {i}");
                }
                starts += usize::from(p.keyframe && p.first_of_frame);
            }
            assert!(starts >= 2, "{codec:?}: several keyframes in the fixture");
            assert_eq!(codec.clock_rate(), 90_000);
        }
        assert!(Codec::Vp9.starts_keyframe(&[]).is_err());
    }
}
