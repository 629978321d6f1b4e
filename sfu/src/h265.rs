//! H.265 over RTP (RFC 7798): which packet starts a keyframe, the only place a viewer may
//! start or switch source.
//!
//! ```text
//!  F Type(6) LayerId(6) TID(3)     the 2-byte NAL unit header, also the payload header
//!  Type 0..=47                      a single NAL unit packet
//!  Type 48  AP                      [size(16) NAL unit]...: several NAL units
//!  Type 49  FU                      S E FuType(6), then a fragment of one NAL unit
//!  Type 50  PACI                    not read (never sent by webrtcsink's rtph265pay)
//! ```
//!
//! A packet starts a keyframe when it carries, in layer 0, an IRAP picture's slice (types
//! 16..=21: BLA, IDR, CRA; whole, in an AP, or the first fragment of an FU) or the parameter
//! sets that precede one in the stream (VPS 32, SPS 33). Payloaders send the parameter sets
//! first, so the first packet of a keyframe access unit is a VPS or an AP holding it; the core
//! switches at the first such packet of a frame. DONL fields (only with
//! `sprop-max-don-diff` > 0, which webrtcsink never signals) are not expected.

/// Why a payload is not an H.265 payload we can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum H265Error {
    #[error("H.265 payload truncated: {needed} bytes needed, {len} present")]
    Truncated { needed: usize, len: usize },
    #[error("H.265 NAL unit header with the forbidden bit set")]
    ForbiddenBit,
    #[error("H.265 aggregation packet with an empty NAL unit")]
    EmptyUnit,
}

const AP: u8 = 48;
const FU: u8 = 49;
const VPS: u8 = 32;
const SPS: u8 = 33;

fn truncated(needed: usize, payload: &[u8]) -> H265Error {
    H265Error::Truncated {
        needed,
        len: payload.len(),
    }
}

/// The NAL unit type and layer id of the 2-byte header at the start of `bytes`.
fn header(bytes: &[u8]) -> Result<(u8, u8), H265Error> {
    let [first, second, ..] = *bytes else {
        return Err(truncated(2, bytes));
    };
    if first & 0x80 != 0 {
        return Err(H265Error::ForbiddenBit);
    }
    let layer_id = ((first & 0x01) << 5) | (second >> 3);
    Ok(((first >> 1) & 0x3f, layer_id))
}

/// An IRAP slice or the parameter sets announcing one, in the base layer.
fn is_key_nal(nal_type: u8, layer_id: u8) -> bool {
    layer_id == 0 && (matches!(nal_type, 16..=21) || nal_type == VPS || nal_type == SPS)
}

/// Whether this RTP payload starts (or is, or holds the parameter sets of) an H.265 keyframe.
pub fn starts_keyframe(payload: &[u8]) -> Result<bool, H265Error> {
    let (nal_type, layer_id) = header(payload)?;
    match nal_type {
        AP => {
            let mut at = 2;
            let mut key = false;
            while at < payload.len() {
                let size_bytes = payload
                    .get(at..at + 2)
                    .ok_or_else(|| truncated(at + 2, payload))?;
                let size = usize::from(u16::from_be_bytes([size_bytes[0], size_bytes[1]]));
                let unit = payload
                    .get(at + 2..at + 2 + size)
                    .ok_or_else(|| truncated(at + 2 + size, payload))?;
                if size == 0 {
                    return Err(H265Error::EmptyUnit);
                }
                let (t, l) = header(unit)?;
                key |= is_key_nal(t, l);
                at += 2 + size;
            }
            Ok(key)
        }
        FU => {
            let fu = *payload.get(2).ok_or_else(|| truncated(3, payload))?;
            let start = fu & 0x80 != 0;
            Ok(start && is_key_nal(fu & 0x3f, layer_id))
        }
        0..=47 => Ok(is_key_nal(nal_type, layer_id)),
        _ => Ok(false), // PACI and the unassigned types 51..=63
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    mod fixture {
        include!("testdata/fixture.rs");
    }

    /// A NAL unit header of `nal_type` in layer 0, TID 1.
    fn hdr(nal_type: u8) -> [u8; 2] {
        [nal_type << 1, 0x01]
    }

    #[test]
    fn single_nal_units_irap_and_parameter_sets_start_keyframes() {
        for t in [16, 17, 18, 19, 20, 21, VPS, SPS] {
            let p = [hdr(t).as_slice(), &[0xaf, 0x00]].concat();
            assert_eq!(starts_keyframe(&p), Ok(true), "type {t}");
        }
        for t in [0, 1, 9, 34, 35, 39] {
            let p = [hdr(t).as_slice(), &[0xaf]].concat();
            assert_eq!(starts_keyframe(&p), Ok(false), "type {t}");
        }
    }

    #[test]
    fn only_the_base_layer_counts() {
        // IDR_W_RADL with nuh_layer_id 1.
        assert_eq!(starts_keyframe(&[19 << 1, 0x09, 0xaf]), Ok(false));
        assert_eq!(starts_keyframe(&[(19 << 1) | 1, 0x01, 0xaf]), Ok(false)); // layer 32
    }

    #[test]
    fn an_aggregation_packet_is_a_keyframe_start_when_it_holds_a_parameter_set_or_irap() {
        let ap = |units: &[&[u8]]| {
            let mut p = hdr(AP).to_vec();
            for u in units {
                p.extend_from_slice(&(u.len() as u16).to_be_bytes());
                p.extend_from_slice(u);
            }
            p
        };
        let vps = [hdr(VPS).as_slice(), &[0x0c, 0x01]].concat();
        let pps = [hdr(34).as_slice(), &[0xc1]].concat();
        let trail = [hdr(1).as_slice(), &[0xd0]].concat();
        assert_eq!(starts_keyframe(&ap(&[&vps, &pps])), Ok(true));
        assert_eq!(starts_keyframe(&ap(&[&pps, &trail])), Ok(false));
        let mut cut = ap(&[&pps, &vps]);
        cut.truncate(cut.len() - 1);
        assert!(matches!(
            starts_keyframe(&cut),
            Err(H265Error::Truncated { .. })
        ));
        assert_eq!(
            starts_keyframe(&ap(&[&pps, &[]])),
            Err(H265Error::EmptyUnit)
        );
    }

    #[test]
    fn a_fragmentation_unit_starts_a_keyframe_only_in_its_first_fragment_of_an_irap() {
        let fu = |header: u8| [hdr(FU).as_slice(), &[header, 0xaf]].concat();
        assert_eq!(starts_keyframe(&fu(0x80 | 19)), Ok(true)); // S, IDR_W_RADL
        assert_eq!(starts_keyframe(&fu(0x80 | 21)), Ok(true)); // S, CRA
        assert_eq!(starts_keyframe(&fu(19)), Ok(false)); // middle
        assert_eq!(starts_keyframe(&fu(0x40 | 19)), Ok(false)); // E
        assert_eq!(starts_keyframe(&fu(0x80 | 1)), Ok(false)); // S, TRAIL_R
        assert!(starts_keyframe(&hdr(FU)).is_err());
    }

    #[test]
    fn bad_headers_are_errors_and_paci_is_not_read() {
        assert!(starts_keyframe(&[]).is_err());
        assert!(starts_keyframe(&[0x26]).is_err());
        assert_eq!(
            starts_keyframe(&[0x80 | (19 << 1), 0x01]),
            Err(H265Error::ForbiddenBit)
        );
        assert_eq!(starts_keyframe(&[50 << 1, 0x01, 0, 0]), Ok(false));
    }

    /// The first packet of each x265enc keyframe starts it, no packet of another frame does;
    /// inside a keyframe, the IRAP slice's own first packet also says so.
    fn check_x265enc_keyframes(packets: &[fixture::Packet<'_>]) {
        let mut starts = 0;
        for (i, p) in packets.iter().enumerate() {
            let found = starts_keyframe(p.payload);
            if p.first_of_frame {
                assert_eq!(found, Ok(p.keyframe), "packet {i}");
                starts += usize::from(p.keyframe);
            } else if !p.keyframe {
                assert_eq!(found, Ok(false), "packet {i}");
            } else {
                assert!(found.is_ok(), "packet {i}");
            }
        }
        assert_eq!(starts, 3, "25 frames, a keyframe every 10");
    }

    #[test]
    fn rtph265pay_packets_aggregated_start_keyframes_where_x265enc_made_them() {
        check_x265enc_keyframes(&fixture::packets(include_bytes!(
            "testdata/h265-aggregated.rtp"
        )));
    }

    #[test]
    fn rtph265pay_packets_one_nal_each_start_keyframes_where_x265enc_made_them() {
        check_x265enc_keyframes(&fixture::packets(include_bytes!(
            "testdata/h265-single.rtp"
        )));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = starts_keyframe(&payload);
        }

        #[test]
        fn random_aggregation_packets_never_panic(
            body in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let _ = starts_keyframe(&[hdr(AP).as_slice(), &body].concat());
        }
    }
}
