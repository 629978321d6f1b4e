//! The RTP header fields a forwarding core reads and rewrites (SSRC, sequence number,
//! timestamp, marker, payload type), on top of `rtp-types`. Extensions, CSRCs and padding are
//! left as they are: a rewrite touches only the fixed header.

use rtp_types::{RtpPacket, RtpPacketMut, RtpParseError};

/// Why a datagram is not an RTP packet we can forward.
#[derive(Debug, thiserror::Error)]
pub enum RtpError {
    #[error("invalid RTP packet: {0}")]
    Invalid(#[from] RtpParseError),
    #[error("payload type {0} does not fit in 7 bits")]
    PayloadType(u8),
}

/// The fixed header of a packet, read once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub ssrc: u32,
    pub sequence: u16,
    pub timestamp: u32,
    pub marker: bool,
    pub payload_type: u8,
    /// Where the payload starts (after CSRCs and the extension block).
    pub payload_offset: usize,
    /// The payload's length, padding excluded.
    pub payload_len: usize,
}

impl Header {
    /// The payload of `packet`, the datagram this header was read from.
    pub fn payload<'a>(&self, packet: &'a [u8]) -> &'a [u8] {
        packet
            .get(self.payload_offset..self.payload_offset + self.payload_len)
            .unwrap_or_default()
    }
}

/// Reads the header of `packet`; truncated or invalid packets (version, CSRC count, extension
/// length or padding past the end) are errors.
pub fn parse(packet: &[u8]) -> Result<Header, RtpError> {
    let p = RtpPacket::parse(packet)?;
    Ok(Header {
        ssrc: p.ssrc(),
        sequence: p.sequence_number(),
        timestamp: p.timestamp(),
        marker: p.marker_bit(),
        payload_type: p.payload_type(),
        payload_offset: p.payload_offset(),
        payload_len: p.payload_len(),
    })
}

/// The header fields a viewer's copy of a packet gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewrite {
    pub ssrc: u32,
    pub sequence: u16,
    pub timestamp: u32,
    /// The viewer's payload type, when its answer mapped the codec to another number.
    pub payload_type: Option<u8>,
}

/// Writes `rewrite` into `packet`'s header in place; nothing else in the packet changes.
pub fn rewrite(packet: &mut [u8], rewrite: &Rewrite) -> Result<(), RtpError> {
    let mut p = RtpPacketMut::parse(packet)?;
    if let Some(pt) = rewrite.payload_type {
        p.set_payload_type(pt)
            .map_err(|_| RtpError::PayloadType(pt))?;
    }
    p.set_ssrc(rewrite.ssrc);
    p.set_sequence_number(rewrite.sequence);
    p.set_timestamp(rewrite.timestamp);
    Ok(())
}

/// The payload of `packet`, to edit in place (a VP8 descriptor's picture id).
pub fn payload_mut(packet: &mut [u8]) -> Result<&mut [u8], RtpError> {
    let header = parse(packet)?;
    // In bounds: `parse` checked offset + length against the datagram.
    Ok(packet
        .get_mut(header.payload_offset..header.payload_offset + header.payload_len)
        .unwrap_or_default())
}

/// `a - b` for 16-bit sequence numbers, as the shorter way round the circle: positive when
/// `a` is newer than `b` (RFC 3550 wraparound).
pub fn seq_diff(a: u16, b: u16) -> i16 {
    a.wrapping_sub(b) as i16
}

/// `a - b` for 32-bit RTP timestamps, as the shorter way round.
pub fn ts_diff(a: u32, b: u32) -> i32 {
    a.wrapping_sub(b) as i32
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A packet with one header extension (RFC 8285 one-byte, 4 bytes of data) and `payload`.
    pub(crate) fn packet(ssrc: u32, seq: u16, ts: u32, marker: bool, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x90, 96 | if marker { 0x80 } else { 0 }];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&ts.to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x10, 0xaa, 0, 0]);
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn reads_the_fields_and_finds_the_payload_after_the_extension() {
        let p = packet(0x1234_5678, 65535, 0xdead_beef, true, &[1, 2, 3]);
        let h = parse(&p).unwrap();
        assert_eq!(h.ssrc, 0x1234_5678);
        assert_eq!(h.sequence, 65535);
        assert_eq!(h.timestamp, 0xdead_beef);
        assert!(h.marker);
        assert_eq!(h.payload_type, 96);
        assert_eq!(h.payload(&p), &[1, 2, 3]);
    }

    #[test]
    fn rewrite_changes_the_header_fields_and_nothing_else() {
        let mut p = packet(1, 2, 3, true, &[9, 8, 7]);
        let before = p.clone();
        let r = Rewrite {
            ssrc: 0xaabb_ccdd,
            sequence: 40000,
            timestamp: 77,
            payload_type: Some(100),
        };
        rewrite(&mut p, &r).unwrap();
        let h = parse(&p).unwrap();
        assert_eq!(
            (h.ssrc, h.sequence, h.timestamp, h.payload_type),
            (0xaabb_ccdd, 40000, 77, 100)
        );
        assert!(h.marker, "the marker bit survives a payload type change");
        assert_eq!(p[12..], before[12..], "extension and payload untouched");
        assert_eq!(p[0], before[0]);
    }

    #[test]
    fn truncated_and_invalid_packets_are_errors() {
        let p = packet(1, 2, 3, false, &[]);
        // Cut inside the fixed header, and inside the extension block.
        assert!(parse(&p[..11]).is_err());
        assert!(parse(&p[..17]).is_err());
        let mut v1 = p.clone();
        v1[0] = 0x50; // version 1
        assert!(parse(&v1).is_err());
        let r = Rewrite {
            ssrc: 1,
            sequence: 1,
            timestamp: 1,
            payload_type: Some(200),
        };
        assert!(matches!(
            rewrite(&mut p.clone(), &r),
            Err(RtpError::PayloadType(200))
        ));
    }

    #[test]
    fn payload_mut_edits_only_the_payload() {
        let mut p = packet(1, 2, 3, false, &[5, 6]);
        payload_mut(&mut p).unwrap()[0] = 50;
        assert_eq!(parse(&p).unwrap().payload(&p), &[50, 6]);
    }

    #[test]
    fn sequence_differences_wrap() {
        assert_eq!(seq_diff(2, 65534), 4);
        assert_eq!(seq_diff(65534, 2), -4);
        assert_eq!(ts_diff(10, u32::MAX - 9), 20);
    }

    proptest! {
        #[test]
        fn random_input_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(h) = parse(&data) {
                prop_assert!(h.payload_offset + h.payload_len <= data.len());
            }
            let mut d = data.clone();
            let _ = rewrite(&mut d, &Rewrite { ssrc: 1, sequence: 2, timestamp: 3, payload_type: Some(97) });
            let _ = payload_mut(&mut d);
        }

        #[test]
        fn every_truncation_of_a_valid_packet_is_handled(cut in 0usize..24) {
            let p = packet(1, 2, 3, false, &[1, 2, 3, 4]);
            let cut = cut.min(p.len());
            let _ = parse(&p[..cut]);
        }
    }
}
