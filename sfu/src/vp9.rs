//! VP9 over RTP (RFC 9628, draft-ietf-payload-vp9): which packet starts a keyframe, the only
//! place a viewer may start or switch source.
//!
//! ```text
//!  I P L F B E V Z      I: picture id present, P: inter-picture predicted, L: layer indices,
//!                       F: flexible mode, B: start of a frame, E: end, V: scalability structure
//!  M PID [PID]          (if I) 7 or 15 bits
//!  TID U SID D          (if L) SID: spatial layer
//!  TL0PICIDX            (if L and not F)
//!  P_DIFF N ...         (if F and P) up to 3 reference differences, N: another follows
//!  SS                   (if V) N_S Y G, sizes (if Y), picture group (if G)
//!  VP9 frame            uncompressed header: frame_marker, profile, show_existing_frame,
//!                       frame_type (0: KEY_FRAME)
//! ```
//!
//! A keyframe starts where the descriptor says the start of a frame (B) that is not
//! inter-predicted (P clear) in spatial layer 0, and the frame's own header says KEY_FRAME: an
//! intra-only frame also has P clear but needs earlier state, so a decoder cannot start there.

/// Why a payload is not a VP9 payload we can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Vp9Error {
    #[error("VP9 payload truncated: {needed} bytes needed, {len} present")]
    Truncated { needed: usize, len: usize },
    #[error("VP9 frame header without its frame marker (0b10)")]
    FrameMarker,
}

struct Reader<'a> {
    payload: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, Vp9Error> {
        let b = self
            .payload
            .get(self.at)
            .copied()
            .ok_or(Vp9Error::Truncated {
                needed: self.at + 1,
                len: self.payload.len(),
            })?;
        self.at += 1;
        Ok(b)
    }

    fn skip(&mut self, n: usize) -> Result<(), Vp9Error> {
        let end = self.at + n;
        if end > self.payload.len() {
            return Err(Vp9Error::Truncated {
                needed: end,
                len: self.payload.len(),
            });
        }
        self.at = end;
        Ok(())
    }
}

/// Whether this RTP payload is the first packet of a VP9 keyframe (spatial layer 0).
pub fn starts_keyframe(payload: &[u8]) -> Result<bool, Vp9Error> {
    let mut r = Reader { payload, at: 0 };
    let first = r.byte()?;
    let (i, p, l, f, b, v) = (
        first & 0x80 != 0,
        first & 0x40 != 0,
        first & 0x20 != 0,
        first & 0x10 != 0,
        first & 0x08 != 0,
        first & 0x02 != 0,
    );
    if i && r.byte()? & 0x80 != 0 {
        r.skip(1)?; // the second byte of a 15-bit picture id
    }
    let mut spatial_id = 0;
    if l {
        spatial_id = (r.byte()? >> 1) & 0x07;
        if !f {
            r.skip(1)?; // TL0PICIDX
        }
    }
    if f && p {
        // Up to three P_DIFF, each saying (N) whether another follows.
        for _ in 0..3 {
            if r.byte()? & 0x01 == 0 {
                break;
            }
        }
    }
    if v {
        skip_scalability_structure(&mut r)?;
    }
    if !b || p || spatial_id != 0 {
        return Ok(false);
    }
    frame_is_key(r.byte()?)
}

/// The scalability structure (RFC 9628 section 4.2.1): what follows it is the frame.
fn skip_scalability_structure(r: &mut Reader<'_>) -> Result<(), Vp9Error> {
    let head = r.byte()?;
    let spatial_layers = usize::from(head >> 5) + 1;
    if head & 0x10 != 0 {
        r.skip(4 * spatial_layers)?; // WIDTH and HEIGHT per spatial layer
    }
    if head & 0x08 != 0 {
        let pictures = r.byte()?;
        for _ in 0..pictures {
            let references = usize::from((r.byte()? >> 2) & 0x03);
            r.skip(references)?;
        }
    }
    Ok(())
}

/// The first byte of the uncompressed header (VP9 bitstream spec 6.2): frame_marker (2 bits),
/// profile (2 bits, then a reserved zero bit for profile 3), show_existing_frame, frame_type.
fn frame_is_key(header: u8) -> Result<bool, Vp9Error> {
    if header >> 6 != 0b10 {
        return Err(Vp9Error::FrameMarker);
    }
    let profile = ((header >> 5) & 1) | (((header >> 4) & 1) << 1);
    let at = if profile == 3 { 2 } else { 3 }; // bit index (from the low end) of show_existing
    let show_existing = (header >> at) & 1 != 0;
    let frame_type = (header >> (at - 1)) & 1;
    Ok(!show_existing && frame_type == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    mod fixture {
        include!("testdata/fixture.rs");
    }

    /// A profile 0 frame header byte: frame marker, profile 0, show_existing 0, frame_type.
    const KEY: u8 = 0b1000_0000;
    const INTER: u8 = 0b1000_0100;

    #[test]
    fn non_flexible_keyframe_start_with_picture_id_layers_and_scalability_structure() {
        // I L B V, 15-bit picture id, TID 0 SID 0, TL0PICIDX, SS: one layer with its size and
        // a one-picture group with one reference.
        let payload = [
            0xaa,
            0x80 | 0x12,
            0x34,
            0x00,
            0x07,
            0x18,
            0x01,
            0x40,
            0x00,
            0xf0,
            0x01,
            0x04,
            0x01,
            KEY,
        ];
        assert_eq!(starts_keyframe(&payload), Ok(true));
    }

    #[test]
    fn the_frame_header_decides_between_a_keyframe_and_an_intra_only_frame() {
        // B only: no optional fields.
        assert_eq!(starts_keyframe(&[0x08, KEY]), Ok(true));
        assert_eq!(starts_keyframe(&[0x08, INTER]), Ok(false));
        // Profile 3 has a reserved bit before show_existing_frame.
        assert_eq!(starts_keyframe(&[0x08, 0b1011_0000]), Ok(true));
        assert_eq!(starts_keyframe(&[0x08, 0b1011_0010]), Ok(false));
        // show_existing_frame: a repeat, not a keyframe.
        assert_eq!(starts_keyframe(&[0x08, 0b1000_1000]), Ok(false));
        assert_eq!(starts_keyframe(&[0x08, 0x00]), Err(Vp9Error::FrameMarker));
    }

    #[test]
    fn predicted_continuation_and_upper_spatial_layer_packets_are_not_keyframe_starts() {
        assert_eq!(starts_keyframe(&[0x48, KEY]), Ok(false)); // P
        assert_eq!(starts_keyframe(&[0x04, KEY]), Ok(false)); // E only, no B

        // L, SID 1, TL0PICIDX.
        assert_eq!(starts_keyframe(&[0x28, 0x02, 0x00, KEY]), Ok(false));
        assert_eq!(starts_keyframe(&[0x28, 0x00, 0x00, KEY]), Ok(true));
    }

    #[test]
    fn flexible_mode_has_no_tl0picidx_and_reference_differences_when_predicted() {
        // I F B, 7-bit picture id, L: SID 0 without TL0PICIDX.
        assert_eq!(starts_keyframe(&[0xb8, 0x05, 0x00, KEY]), Ok(true));
        // P F B with two P_DIFF (N set on the first): not a keyframe, but read to the end.
        assert_eq!(starts_keyframe(&[0x58, 0x03, 0x02, INTER]), Ok(false));
        assert_eq!(
            starts_keyframe(&[0x58, 0x03]),
            Err(Vp9Error::Truncated { needed: 3, len: 2 })
        );
    }

    #[test]
    fn truncated_descriptors_are_errors() {
        assert!(starts_keyframe(&[]).is_err());
        assert!(starts_keyframe(&[0x88, 0x80]).is_err()); // 15-bit picture id cut
        assert!(starts_keyframe(&[0x28, 0x00]).is_err()); // TL0PICIDX missing
        assert!(starts_keyframe(&[0x0a, 0x10, 0x01]).is_err()); // SS sizes cut
        assert!(starts_keyframe(&[0x08]).is_err()); // B without the frame header
    }

    #[test]
    fn rtpvp9pay_packets_start_keyframes_exactly_where_vp9enc_made_them() {
        let packets = fixture::packets(include_bytes!("testdata/vp9.rtp"));
        let mut starts = 0;
        for (i, p) in packets.iter().enumerate() {
            let want = p.keyframe && p.first_of_frame;
            assert_eq!(starts_keyframe(p.payload), Ok(want), "packet {i}");
            starts += usize::from(want);
        }
        assert_eq!(starts, 3, "25 frames, a keyframe every 10");
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = starts_keyframe(&payload);
        }
    }
}
