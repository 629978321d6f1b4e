//! The VP8 payload descriptor (RFC 7741 section 4.2) and the first byte of the VP8 payload
//! header: what a forwarding core needs to find keyframes and keep picture ids continuous.
//!
//! ```text
//!  X R N S R PID        X: extended control bits follow; S: start of a partition
//!  I L T K RSV          (if X) I: picture id, L: TL0PICIDX, T: TID, K: KEYIDX present
//!  M PictureID          (if I) M: 15-bit picture id (a second byte follows)
//!  TL0PICIDX            (if L)
//!  TID Y KEYIDX         (if T or K)
//!  VP8 payload header   (first byte of a partition 0 start: P bit, 0 for a keyframe)
//! ```

/// Why a payload is not a VP8 payload we can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Vp8Error {
    #[error("VP8 payload descriptor truncated: {needed} bytes needed, {len} present")]
    Truncated { needed: usize, len: usize },
}

/// A picture id as it is on the wire: 7 or 15 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PictureId {
    Short(u8),
    Long(u16),
}

impl PictureId {
    /// The value, in 15-bit space.
    pub fn value(self) -> u16 {
        match self {
            PictureId::Short(v) => v.into(),
            PictureId::Long(v) => v,
        }
    }
}

/// What the descriptor says, with where its rewritable fields are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    pub start_of_partition: bool,
    pub partition_id: u8,
    pub picture_id: Option<PictureId>,
    pub tl0_pic_idx: Option<u8>,
    /// Temporal layer index (when T is set).
    pub temporal_id: Option<u8>,
    /// The first packet of a keyframe: S set, partition 0, P bit clear.
    pub keyframe_start: bool,
    /// The descriptor's length: the VP8 payload starts here.
    pub len: usize,
    picture_id_at: Option<usize>,
    tl0_at: Option<usize>,
}

fn byte(payload: &[u8], at: usize) -> Result<u8, Vp8Error> {
    payload.get(at).copied().ok_or(Vp8Error::Truncated {
        needed: at + 1,
        len: payload.len(),
    })
}

/// Reads the descriptor at the start of an RTP payload. A partition 0 start must carry the
/// payload header byte after it (the keyframe bit is there).
pub fn parse(payload: &[u8]) -> Result<Descriptor, Vp8Error> {
    let first = byte(payload, 0)?;
    let start_of_partition = first & 0x10 != 0;
    let partition_id = first & 0x07;
    let mut at = 1;
    let (mut picture_id, mut tl0_pic_idx, mut temporal_id) = (None, None, None);
    let (mut picture_id_at, mut tl0_at) = (None, None);
    if first & 0x80 != 0 {
        let ext = byte(payload, at)?;
        at += 1;
        if ext & 0x80 != 0 {
            let b = byte(payload, at)?;
            picture_id_at = Some(at);
            if b & 0x80 != 0 {
                let low = byte(payload, at + 1)?;
                picture_id = Some(PictureId::Long(u16::from(b & 0x7f) << 8 | u16::from(low)));
                at += 2;
            } else {
                picture_id = Some(PictureId::Short(b));
                at += 1;
            }
        }
        if ext & 0x40 != 0 {
            tl0_pic_idx = Some(byte(payload, at)?);
            tl0_at = Some(at);
            at += 1;
        }
        if ext & 0x30 != 0 {
            let b = byte(payload, at)?;
            if ext & 0x20 != 0 {
                temporal_id = Some(b >> 6);
            }
            at += 1;
        }
    }
    let keyframe_start = if start_of_partition && partition_id == 0 {
        byte(payload, at)? & 0x01 == 0
    } else {
        false
    };
    Ok(Descriptor {
        start_of_partition,
        partition_id,
        picture_id,
        tl0_pic_idx,
        temporal_id,
        keyframe_start,
        len: at,
        picture_id_at,
        tl0_at,
    })
}

impl Descriptor {
    /// Writes `value` as the picture id of `payload` (the payload this descriptor was read
    /// from), in the width the packet has: a 7-bit field gets the value modulo 128. A packet
    /// without a picture id is left alone.
    pub fn set_picture_id(&self, payload: &mut [u8], value: u16) {
        let (Some(at), Some(id)) = (self.picture_id_at, self.picture_id) else {
            return;
        };
        match id {
            PictureId::Short(_) => {
                if let Some(b) = payload.get_mut(at) {
                    *b = (value & 0x7f) as u8;
                }
            }
            PictureId::Long(_) => {
                if let Some(b) = payload.get_mut(at..at + 2) {
                    b[0] = 0x80 | ((value >> 8) & 0x7f) as u8;
                    b[1] = value as u8;
                }
            }
        }
    }

    /// Writes `value` as the TL0PICIDX of `payload`, when it has one.
    pub fn set_tl0_pic_idx(&self, payload: &mut [u8], value: u8) {
        if let Some(b) = self.tl0_at.and_then(|at| payload.get_mut(at)) {
            *b = value;
        }
    }
}

/// The modulus of a picture id of this width (for continuity arithmetic).
pub fn picture_id_modulus(id: PictureId) -> u16 {
    match id {
        PictureId::Short(_) => 0x80,
        PictureId::Long(_) => 0x8000,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A descriptor with a 15-bit picture id, TL0PICIDX and TID, then a payload header byte.
    pub(crate) fn payload(start: bool, keyframe: bool, picture_id: u16, tl0: u8) -> Vec<u8> {
        vec![
            0x80 | if start { 0x10 } else { 0 },
            0xe0,
            0x80 | (picture_id >> 8) as u8,
            picture_id as u8,
            tl0,
            0x40, // TID 1
            if keyframe { 0x10 } else { 0x11 },
            0xaa,
        ]
    }

    #[test]
    fn reads_a_long_picture_id_tl0_and_tid() {
        let d = parse(&payload(true, false, 0x1234, 9)).unwrap();
        assert_eq!(d.picture_id, Some(PictureId::Long(0x1234)));
        assert_eq!(d.tl0_pic_idx, Some(9));
        assert_eq!(d.temporal_id, Some(1));
        assert_eq!(d.len, 6);
        assert!(!d.keyframe_start);
    }

    #[test]
    fn reads_a_short_picture_id() {
        let d = parse(&[0x90, 0x80, 0x45, 0x00]).unwrap();
        assert_eq!(d.picture_id, Some(PictureId::Short(0x45)));
        assert_eq!(d.tl0_pic_idx, None);
        assert_eq!(d.len, 3);
        assert!(d.keyframe_start);
    }

    #[test]
    fn a_keyframe_starts_only_at_s_partition_0_and_p_clear() {
        assert!(parse(&payload(true, true, 1, 1)).unwrap().keyframe_start);
        // Not the start of a partition: a keyframe's later packet.
        assert!(!parse(&payload(false, true, 1, 1)).unwrap().keyframe_start);
        // Partition 1 start, P clear in the byte that follows: still not a keyframe start.
        let mut p1 = payload(true, true, 1, 1);
        p1[0] |= 0x01;
        assert!(!parse(&p1).unwrap().keyframe_start);
        // No extension at all.
        assert!(parse(&[0x10, 0x00]).unwrap().keyframe_start);
        assert!(!parse(&[0x10, 0x01]).unwrap().keyframe_start);
    }

    #[test]
    fn rewrites_picture_id_and_tl0_in_place() {
        let mut p = payload(true, false, 0x1234, 9);
        let d = parse(&p).unwrap();
        d.set_picture_id(&mut p, 0x7ffe);
        d.set_tl0_pic_idx(&mut p, 200);
        let after = parse(&p).unwrap();
        assert_eq!(after.picture_id, Some(PictureId::Long(0x7ffe)));
        assert_eq!(after.tl0_pic_idx, Some(200));
        assert_eq!(after.temporal_id, Some(1));
        assert_eq!(p[6..], [0x11, 0xaa], "the VP8 payload is untouched");

        let mut s = vec![0x90, 0x80, 0x45, 0x00];
        let d = parse(&s).unwrap();
        d.set_picture_id(&mut s, 0x1ff);
        assert_eq!(parse(&s).unwrap().picture_id, Some(PictureId::Short(0x7f)));
    }

    #[test]
    fn truncated_descriptors_are_errors() {
        let p = payload(true, true, 0x1234, 9);
        for cut in 0..7 {
            assert!(parse(&p[..cut]).is_err(), "cut at {cut}");
        }
        assert!(parse(&p[..7]).is_ok());
    }

    proptest! {
        #[test]
        fn random_input_never_panics(mut data in proptest::collection::vec(any::<u8>(), 0..12)) {
            if let Ok(d) = parse(&data) {
                prop_assert!(d.len <= data.len());
                d.set_picture_id(&mut data, 0x7fff);
                d.set_tl0_pic_idx(&mut data, 1);
                prop_assert_eq!(parse(&data).map(|a| a.len), Ok(d.len));
            }
        }
    }
}
