//! AV1 over RTP (the AOM "RTP Payload Format For AV1", v1.0): which packet starts a keyframe,
//! the only place a viewer may start or switch source.
//!
//! ```text
//!  Z Y W(2) N - - -      aggregation header. Z: the first element continues an OBU of an
//!                        earlier packet; Y: the last one goes on in the next; W: elements in
//!                        the packet (0: each has a length); N: first packet of a coded video
//!                        sequence (a keyframe with its sequence header)
//!  [LEB128 length] OBU   each element but the last (all when W is 0) prefixed by its length
//!  OBU header            forbidden, type(4), extension, has_size_field, reserved;
//!                        (extension) temporal_id(3) spatial_id(2)
//! ```
//!
//! A packet starts a keyframe when N is set, or when it does not continue an OBU (Z clear)
//! and carries a sequence header OBU that is not followed, in the packet, by a frame that says
//! it is not a keyframe (a stream may repeat its sequence header before other frames).

/// Why a payload is not an AV1 payload we can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Av1Error {
    #[error("AV1 payload truncated: {needed} bytes needed, {len} present")]
    Truncated { needed: usize, len: usize },
    #[error("AV1 OBU length is not a valid LEB128 value")]
    BadLength,
    #[error("AV1 OBU header with the forbidden bit set")]
    ForbiddenBit,
}

const OBU_SEQUENCE_HEADER: u8 = 1;
const OBU_FRAME_HEADER: u8 = 3;
const OBU_FRAME: u8 = 6;

/// A LEB128 value at `at` (AV1 spec 4.10.5: at most 8 bytes, below 2^32); its value and size.
fn leb128(payload: &[u8], at: usize) -> Result<(usize, usize), Av1Error> {
    let mut value: u64 = 0;
    for i in 0..8 {
        let b = *payload.get(at + i).ok_or(Av1Error::Truncated {
            needed: at + i + 1,
            len: payload.len(),
        })?;
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            let value = u32::try_from(value).map_err(|_| Av1Error::BadLength)?;
            return Ok((value as usize, i + 1));
        }
    }
    Err(Av1Error::BadLength)
}

/// What an OBU element says about keyframes.
enum Obu {
    SequenceHeader {
        reduced_still_picture: bool,
    },
    /// A frame or frame header: whether it is a keyframe, when its first bits are present.
    Frame(Option<bool>),
    Other,
}

/// Reads an OBU (element) of the packet: its header, then what matters of its payload.
fn read_obu(obu: &[u8], reduced_still_picture: bool) -> Result<Obu, Av1Error> {
    let header = *obu
        .first()
        .ok_or(Av1Error::Truncated { needed: 1, len: 0 })?;
    if header & 0x80 != 0 {
        return Err(Av1Error::ForbiddenBit);
    }
    let obu_type = (header >> 3) & 0x0f;
    let mut at = 1;
    if header & 0x04 != 0 {
        at += 1; // extension: temporal and spatial ids
    }
    if header & 0x02 != 0 {
        let (_, size) = leb128(obu, at)?;
        at += size;
    }
    // The OBU's payload may be cut (the element continues in the next packet): read what is here.
    let first = obu.get(at).copied();
    Ok(match obu_type {
        // seq_profile(3) still_picture(1) reduced_still_picture_header(1)
        OBU_SEQUENCE_HEADER => Obu::SequenceHeader {
            reduced_still_picture: first.is_some_and(|b| b & 0x08 != 0),
        },
        // uncompressed_header: show_existing_frame(1) frame_type(2), KEY_FRAME = 0; a reduced
        // still picture header has neither and is always a keyframe.
        OBU_FRAME | OBU_FRAME_HEADER if reduced_still_picture => Obu::Frame(Some(true)),
        OBU_FRAME | OBU_FRAME_HEADER => Obu::Frame(first.map(|b| b & 0x80 == 0 && b & 0x60 == 0)),
        _ => Obu::Other,
    })
}

/// Whether this RTP payload is the first packet of an AV1 keyframe.
pub fn starts_keyframe(payload: &[u8]) -> Result<bool, Av1Error> {
    let aggregation = *payload
        .first()
        .ok_or(Av1Error::Truncated { needed: 1, len: 0 })?;
    let continues = aggregation & 0x80 != 0;
    let count = usize::from((aggregation >> 4) & 0x03);
    let new_sequence = aggregation & 0x08 != 0;
    let mut at = 1;
    let mut element = 0;
    let mut sequence_header = None;
    while at < payload.len() {
        element += 1;
        // With W set, the W-th element has no length and takes the rest.
        let (len, size) = if count != 0 && element == count {
            (payload.len() - at, 0)
        } else {
            leb128(payload, at)?
        };
        at += size;
        let end = at + len;
        let obu = payload.get(at..end).ok_or(Av1Error::Truncated {
            needed: end,
            len: payload.len(),
        })?;
        at = end;
        if (element == 1 && continues) || obu.is_empty() {
            continue; // the tail of an OBU begun in an earlier packet
        }
        match read_obu(obu, sequence_header.unwrap_or(false))? {
            Obu::SequenceHeader {
                reduced_still_picture,
            } => sequence_header = Some(reduced_still_picture),
            Obu::Frame(Some(false)) if sequence_header.is_some() => return Ok(new_sequence),
            _ => {}
        }
        if count != 0 && element == count {
            break;
        }
    }
    Ok(new_sequence || (!continues && sequence_header.is_some()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    mod fixture {
        include!("testdata/fixture.rs");
    }

    /// An OBU header of `obu_type` without extension nor size field.
    fn obu(obu_type: u8, payload: &[u8]) -> Vec<u8> {
        [&[obu_type << 3], payload].concat()
    }

    /// A packet of W = 0 (every element with its length) and aggregation bits `head`.
    fn packet(head: u8, elements: &[Vec<u8>]) -> Vec<u8> {
        let mut p = vec![head];
        for e in elements {
            assert!(e.len() < 128);
            p.push(e.len() as u8);
            p.extend_from_slice(e);
        }
        p
    }

    const SEQ: u8 = OBU_SEQUENCE_HEADER;
    const KEY_FRAME: u8 = 0b0001_0000; // show_existing 0, frame_type 0 (KEY), show_frame 1
    const INTER_FRAME: u8 = 0b0011_0000; // frame_type 1

    #[test]
    fn the_n_bit_starts_a_keyframe() {
        let p = packet(
            0x08,
            &[obu(SEQ, &[0x00, 0x00]), obu(OBU_FRAME, &[KEY_FRAME])],
        );
        assert_eq!(starts_keyframe(&p), Ok(true));
        let p = packet(0x08, &[obu(OBU_FRAME, &[KEY_FRAME])]);
        assert_eq!(starts_keyframe(&p), Ok(true));
    }

    #[test]
    fn a_sequence_header_without_the_n_bit_starts_a_keyframe_unless_an_inter_frame_follows() {
        let p = packet(0x00, &[obu(SEQ, &[0x00]), obu(OBU_FRAME, &[KEY_FRAME])]);
        assert_eq!(starts_keyframe(&p), Ok(true));
        // The sequence header alone (its frame in the next packet).
        assert_eq!(
            starts_keyframe(&packet(0x00, &[obu(SEQ, &[0x00])])),
            Ok(true)
        );
        // A repeated sequence header before an inter frame.
        let p = packet(0x00, &[obu(SEQ, &[0x00]), obu(OBU_FRAME, &[INTER_FRAME])]);
        assert_eq!(starts_keyframe(&p), Ok(false));
        // A reduced still picture header: every frame is a keyframe.
        let p = packet(0x00, &[obu(SEQ, &[0x08]), obu(OBU_FRAME, &[INTER_FRAME])]);
        assert_eq!(starts_keyframe(&p), Ok(true));
    }

    #[test]
    fn frames_without_a_sequence_header_and_continuations_are_not_keyframe_starts() {
        let p = packet(0x00, &[obu(OBU_FRAME, &[KEY_FRAME])]);
        assert_eq!(starts_keyframe(&p), Ok(false));
        // Z: the first element is the tail of an earlier OBU (which looks like a sequence
        // header here, and must not be read as one).
        let p = packet(0x80, &[obu(SEQ, &[0x00])]);
        assert_eq!(starts_keyframe(&p), Ok(false));
    }

    #[test]
    fn w_counts_elements_and_the_last_one_has_no_length() {
        // W = 2: the first element with its length, the second to the end.
        let seq = obu(SEQ, &[0x00]);
        let mut p = vec![0x20, seq.len() as u8];
        p.extend_from_slice(&seq);
        p.extend_from_slice(&obu(OBU_FRAME, &[KEY_FRAME, 0xaa, 0xbb]));
        assert_eq!(starts_keyframe(&p), Ok(true));
        // W = 1: one element, no length.
        let mut p = vec![0x10];
        p.extend_from_slice(&obu(SEQ, &[0x00]));
        assert_eq!(starts_keyframe(&p), Ok(true));
    }

    #[test]
    fn obu_extension_and_size_fields_are_skipped() {
        // Extension (spatial/temporal ids) and a size field before the payload.
        let seq = vec![(SEQ << 3) | 0x06, 0x00, 0x01, 0x00];
        let frame = vec![(OBU_FRAME << 3) | 0x06, 0x00, 0x01, INTER_FRAME];
        assert_eq!(starts_keyframe(&packet(0x00, &[seq, frame])), Ok(false));
    }

    #[test]
    fn bad_lengths_and_headers_are_errors() {
        assert!(starts_keyframe(&[]).is_err());
        // An element longer than the packet.
        assert!(matches!(
            starts_keyframe(&[0x00, 0x05, SEQ << 3]),
            Err(Av1Error::Truncated { .. })
        ));
        // A LEB128 length that never ends.
        assert_eq!(
            starts_keyframe(&[0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            Err(Av1Error::BadLength)
        );
        assert_eq!(
            starts_keyframe(&packet(0x00, &[vec![0x80 | (SEQ << 3)]])),
            Err(Av1Error::ForbiddenBit)
        );
    }

    #[test]
    fn rtpav1pay_packets_start_keyframes_exactly_where_av1enc_made_them() {
        let packets = fixture::packets(include_bytes!("testdata/av1.rtp"));
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
