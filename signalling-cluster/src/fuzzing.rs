//! Test support for the property tests of the parsers that face the network (`websocket.rs`,
//! `bus/resp.rs`; the protocol's are in `proto/tests/fuzz.rs`).

/// `seed` mutated by `edits` (position, byte, operation): byte flips, insertions, deletions,
/// a truncation, as a fuzzer's mutator would.
pub fn mutate(seed: &[u8], edits: &[(u16, u8, u8)]) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for &(at, byte, op) in edits {
        if bytes.is_empty() {
            break;
        }
        let at = at as usize % bytes.len();
        match op % 4 {
            0 => bytes[at] = byte,
            1 => bytes.insert(at, byte),
            2 => {
                bytes.remove(at);
            }
            _ => bytes.truncate(at),
        }
    }
    bytes
}
