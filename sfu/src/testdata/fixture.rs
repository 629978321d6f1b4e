// Reads the GStreamer-made RTP payloads of this directory (written by
// `cargo run -p cluster-tests --bin rtp-fixtures -- sfu/src/testdata`; the format is in
// `tests/src/bin/rtp-fixtures.rs`). Pasted into each codec's tests with `include!` (one
// module loaded from three places would be a duplicate module).

/// One packet: whether the encoder marked its frame a keyframe, whether it is the frame's
/// first packet, and its payload.
pub struct Packet<'a> {
    pub keyframe: bool,
    pub first_of_frame: bool,
    pub payload: &'a [u8],
}

pub fn packets(mut bytes: &[u8]) -> Vec<Packet<'_>> {
    let mut out = Vec::new();
    while let [flags, hi, lo, rest @ ..] = bytes {
        let len = usize::from(u16::from_be_bytes([*hi, *lo]));
        let (payload, next) = rest.split_at(len);
        out.push(Packet {
            keyframe: flags & 1 != 0,
            first_of_frame: flags & 2 != 0,
            payload,
        });
        bytes = next;
    }
    assert!(bytes.is_empty(), "a fixture record is cut");
    out
}
