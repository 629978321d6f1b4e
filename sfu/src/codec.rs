//! What the core knows per codec: its clock rate and which packet starts a keyframe (the only
//! place a viewer may start or switch source).

use crate::vp8::{self, Vp8Error};

/// The codecs the core can switch on so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Vp8,
    /// Audio: every packet decodes on its own, so every packet is a switch point.
    Opus,
}

impl Codec {
    /// RTP clock rate (RFC 7741 and RFC 7587).
    pub fn clock_rate(self) -> u32 {
        match self {
            Codec::Vp8 => 90_000,
            Codec::Opus => 48_000,
        }
    }

    /// Whether this RTP payload is the first packet of a keyframe.
    pub fn starts_keyframe(self, payload: &[u8]) -> Result<bool, Vp8Error> {
        match self {
            Codec::Vp8 => Ok(vp8::parse(payload)?.keyframe_start),
            Codec::Opus => Ok(true),
        }
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
}
