/// WebSocket subprotocol a client offers to get protocol version 2.
pub const SUBPROTOCOL_V2: &str = "gstwebrtc-cluster.v2";
/// WebSocket subprotocol naming version 1 explicitly (same as offering nothing).
pub const SUBPROTOCOL_V1: &str = "gstwebrtc-cluster.v1";

/// The protocol version of one connection, fixed at the WebSocket upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProtocolVersion {
    /// The gst-plugins-rs protocol, byte for byte.
    V1,
    /// V1 plus node identity, resume tokens, error codes and `goAway`.
    V2,
}

impl ProtocolVersion {
    /// The newest version this crate speaks.
    pub const LATEST: ProtocolVersion = ProtocolVersion::V2;

    /// Picks the version from the client's `Sec-WebSocket-Protocol` offers (comma separated,
    /// possibly over several headers). Returns the version and the subprotocol to echo back,
    /// if any. A client offering nothing we know gets V1 and no subprotocol header, which is
    /// what stock clients expect.
    pub fn negotiate<'a>(
        offers: impl IntoIterator<Item = &'a str>,
    ) -> (ProtocolVersion, Option<&'static str>) {
        let mut best = (ProtocolVersion::V1, None);
        for offer in offers.into_iter().flat_map(|h| h.split(',')).map(str::trim) {
            if offer == SUBPROTOCOL_V2 {
                return (ProtocolVersion::V2, Some(SUBPROTOCOL_V2));
            }
            if offer == SUBPROTOCOL_V1 {
                best = (ProtocolVersion::V1, Some(SUBPROTOCOL_V1));
            }
        }
        best
    }

    pub fn number(self) -> u16 {
        match self {
            ProtocolVersion::V1 => 1,
            ProtocolVersion::V2 => 2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_offered_is_v1_without_header() {
        assert_eq!(ProtocolVersion::negotiate([]), (ProtocolVersion::V1, None));
        assert_eq!(
            ProtocolVersion::negotiate(["chat, superchat"]),
            (ProtocolVersion::V1, None)
        );
    }

    #[test]
    fn v2_wins_wherever_offered() {
        assert_eq!(
            ProtocolVersion::negotiate(["gstwebrtc-cluster.v1, gstwebrtc-cluster.v2"]),
            (ProtocolVersion::V2, Some(SUBPROTOCOL_V2))
        );
        assert_eq!(
            ProtocolVersion::negotiate(["x", " gstwebrtc-cluster.v2 "]),
            (ProtocolVersion::V2, Some(SUBPROTOCOL_V2))
        );
        assert_eq!(
            ProtocolVersion::negotiate(["gstwebrtc-cluster.v1"]),
            (ProtocolVersion::V1, Some(SUBPROTOCOL_V1))
        );
    }
}
