//! The demultiplexer of the SFU's one UDP port: which protocol a datagram is (RFC 7983 by its
//! first byte; RTCP told from RTP by its packet type, RFC 5761) and which peer it belongs to.
//!
//! A peer is first known by its local ICE ufrag ([`Demux::register`]): a STUN binding request
//! naming it in USERNAME ("localufrag:remoteufrag", RFC 8445 §7.2.2) is routed to it from any
//! address. Once the caller has checked that request (MESSAGE-INTEGRITY is the ICE agent's job,
//! not ours) it binds the address ([`Demux::bind`]); from then on everything from that address
//! is that peer's. DTLS, RTP and RTCP from an address not bound are dropped: that is what keeps
//! an unauthenticated sender from reaching a peer's DTLS or SRTP state.
//!
//! Generic over the peer id `P` (rather than a crate-defined key): the caller already has ids
//! for viewers and sources (and may want one enum of both); a copy of it costs nothing and
//! saves a second id-to-peer table on every packet.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::SocketAddr;

const STUN_HEADER: usize = 20;
const STUN_MAGIC_COOKIE: u32 = 0x2112_A442;
const STUN_BINDING_REQUEST: u16 = 0x0001;
const STUN_ATTR_USERNAME: u16 = 0x0006;
/// DTLS record header: type, version, epoch, sequence number, length.
const DTLS_HEADER: usize = 13;
/// Fixed RTP header, no CSRC.
const RTP_HEADER: usize = 12;
/// The shortest RTCP packet: header and sender SSRC (an empty receiver report).
const RTCP_HEADER: usize = 8;

/// Where a datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<P> {
    /// To the peer's ICE agent. `request`: a binding request, routed by its ufrag (the address
    /// may be new: bind it once the request checks out); otherwise another STUN message
    /// (response, indication) from the peer's bound address.
    Stun { peer: P, request: bool },
    /// To the peer's DTLS association.
    Dtls(P),
    /// To the peer's SRTP session, as RTP.
    Rtp(P),
    /// To the peer's SRTCP session, as RTCP.
    Rtcp(P),
    /// Nowhere (counted per reason, [`Demux::dropped`]).
    Drop(DropReason),
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Empty, or a first byte no protocol of this port uses (RFC 7983: 4–19, 64–127, 192–255).
    Unknown,
    /// Shorter than its protocol's fixed header.
    Truncated,
    /// STUN: bad magic cookie, length not matching the datagram, or an attribute running past
    /// the message.
    StunMalformed,
    /// STUN binding request without a USERNAME (or one without ':').
    StunNoUsername,
    /// STUN binding request whose local ufrag is no registered peer's.
    StunUnknownUfrag,
    /// Not a binding request, and from an address no peer is bound to.
    UnknownAddress,
}

/// The protocol of a datagram, from its first bytes only (RFC 7983 §7, RFC 5761 §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Stun,
    Dtls,
    Rtp,
    Rtcp,
    Unknown,
}

/// Classifies without looking past the first two bytes (lengths are checked by [`Demux`]).
pub fn classify(datagram: &[u8]) -> Kind {
    match datagram.first() {
        Some(0..=3) => Kind::Stun,
        Some(20..=63) => Kind::Dtls,
        // RTCP packet types 192–223 in the second byte; RTP payload types avoid 64–95 so that
        // marker bit + payload type never falls there.
        Some(128..=191) => match datagram.get(1) {
            Some(192..=223) => Kind::Rtcp,
            _ => Kind::Rtp,
        },
        _ => Kind::Unknown,
    }
}

/// What a STUN message says that routing needs.
#[derive(Debug, PartialEq, Eq)]
struct Stun<'a> {
    binding_request: bool,
    /// USERNAME's value, if present.
    username: Option<&'a [u8]>,
}

/// Parses the STUN header and walks the attributes (RFC 8489 §5, §14), checking every length
/// against the datagram. `None` for anything malformed.
fn parse_stun(d: &[u8]) -> Option<Stun<'_>> {
    let header = d.get(..STUN_HEADER)?;
    let msg_type = u16::from_be_bytes([header[0], header[1]]);
    let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let cookie = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    // The top two bits of the type are zero: the first byte was 0-3 to get here.
    if cookie != STUN_MAGIC_COOKIE || length % 4 != 0 || STUN_HEADER + length != d.len() {
        return None;
    }
    let mut attrs = &d[STUN_HEADER..];
    let mut username = None;
    while !attrs.is_empty() {
        let head = attrs.get(..4)?;
        let attr_type = u16::from_be_bytes([head[0], head[1]]);
        let attr_len = usize::from(u16::from_be_bytes([head[2], head[3]]));
        let value = attrs.get(4..4 + attr_len)?;
        if attr_type == STUN_ATTR_USERNAME && username.is_none() {
            username = Some(value);
        }
        // Values are padded to a multiple of 4; the last one's padding is in the length too.
        let padded = 4 + attr_len.next_multiple_of(4);
        attrs = attrs.get(padded..)?;
    }
    Some(Stun {
        binding_request: msg_type == STUN_BINDING_REQUEST,
        username,
    })
}

/// The demultiplexer: ufrags and bound addresses of the peers, and the drop counts.
#[derive(Debug)]
pub struct Demux<P> {
    ufrags: HashMap<Vec<u8>, P>,
    addrs: HashMap<SocketAddr, P>,
    dropped: HashMap<DropReason, u64>,
}

impl<P> Default for Demux<P> {
    fn default() -> Self {
        Demux {
            ufrags: HashMap::new(),
            addrs: HashMap::new(),
            dropped: HashMap::new(),
        }
    }
}

impl<P: Copy + Eq + Hash> Demux<P> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Binding requests naming `local_ufrag` go to `peer` (an ICE restart registers the new
    /// ufrag; the old one stays until [`Demux::forget`]).
    pub fn register(&mut self, local_ufrag: &str, peer: P) {
        self.ufrags.insert(local_ufrag.as_bytes().to_vec(), peer);
    }

    /// Everything from `addr` goes to `peer` (after a binding request from it checked out).
    /// Rebinding an address moves it: a NAT may hand the port to another client.
    pub fn bind(&mut self, addr: SocketAddr, peer: P) {
        self.addrs.insert(addr, peer);
    }

    /// The peer is gone: its ufrags and addresses route nowhere any more.
    pub fn forget(&mut self, peer: P) {
        self.ufrags.retain(|_, p| *p != peer);
        self.addrs.retain(|_, p| *p != peer);
    }

    /// How many datagrams were dropped for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped.get(&reason).copied().unwrap_or(0)
    }

    /// Where the datagram received from `from` goes. Never panics, whatever the bytes.
    pub fn route(&mut self, from: SocketAddr, datagram: &[u8]) -> Route<P> {
        let route = self.decide(from, datagram);
        if let Route::Drop(reason) = route {
            *self.dropped.entry(reason).or_insert(0) += 1;
        }
        route
    }

    fn decide(&self, from: SocketAddr, d: &[u8]) -> Route<P> {
        let bound = self.addrs.get(&from).copied();
        let by_addr = |f: fn(P) -> Route<P>, min: usize| match bound {
            _ if d.len() < min => Route::Drop(DropReason::Truncated),
            Some(peer) => f(peer),
            None => Route::Drop(DropReason::UnknownAddress),
        };
        match classify(d) {
            Kind::Stun => self.stun(bound, d),
            Kind::Dtls => by_addr(Route::Dtls, DTLS_HEADER),
            Kind::Rtp => by_addr(Route::Rtp, RTP_HEADER),
            Kind::Rtcp => by_addr(Route::Rtcp, RTCP_HEADER),
            Kind::Unknown => Route::Drop(DropReason::Unknown),
        }
    }

    fn stun(&self, bound: Option<P>, d: &[u8]) -> Route<P> {
        if d.len() < STUN_HEADER {
            return Route::Drop(DropReason::Truncated);
        }
        let Some(stun) = parse_stun(d) else {
            return Route::Drop(DropReason::StunMalformed);
        };
        if !stun.binding_request {
            return match bound {
                Some(peer) => Route::Stun {
                    peer,
                    request: false,
                },
                None => Route::Drop(DropReason::UnknownAddress),
            };
        }
        // A binding request goes by its ufrag even from a bound address: the ufrag is what
        // the request's integrity is checked against, so it names the peer that must check it.
        let Some(local) = stun
            .username
            .and_then(|u| u.iter().position(|&b| b == b':').map(|i| &u[..i]))
        else {
            return Route::Drop(DropReason::StunNoUsername);
        };
        match self.ufrags.get(local) {
            Some(&peer) => Route::Stun {
                peer,
                request: true,
            },
            None => Route::Drop(DropReason::StunUnknownUfrag),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    /// A STUN message with the given attributes (type, value), padded as on the wire.
    fn stun(msg_type: u16, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (t, v) in attrs {
            body.extend_from_slice(&t.to_be_bytes());
            body.extend_from_slice(&(v.len() as u16).to_be_bytes());
            body.extend_from_slice(v);
            body.resize(body.len().next_multiple_of(4), 0);
        }
        let mut m = Vec::new();
        m.extend_from_slice(&msg_type.to_be_bytes());
        m.extend_from_slice(&(body.len() as u16).to_be_bytes());
        m.extend_from_slice(&STUN_MAGIC_COOKIE.to_be_bytes());
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&body);
        m
    }

    fn binding(username: &[u8]) -> Vec<u8> {
        // PRIORITY before USERNAME, as browsers send it: the walk must step over it.
        stun(
            STUN_BINDING_REQUEST,
            &[(0x0024, &[0, 0, 0, 1]), (STUN_ATTR_USERNAME, username)],
        )
    }

    fn rtp() -> Vec<u8> {
        let mut p = vec![0x80, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 9];
        p.extend_from_slice(&[1, 2, 3]);
        p
    }

    fn rtcp() -> Vec<u8> {
        // Empty receiver report (packet type 201).
        vec![0x80, 201, 0, 1, 0, 0, 0, 9]
    }

    fn dtls() -> Vec<u8> {
        // ClientHello record header (handshake 22, DTLS 1.2) and a byte of body.
        let mut r = vec![22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        r.push(1);
        r
    }

    fn demux() -> Demux<u32> {
        let mut d = Demux::new();
        d.register("alice", 1);
        d.register("bob", 2);
        d
    }

    #[test]
    fn classifies_by_first_byte_and_rtcp_by_packet_type() {
        assert_eq!(classify(&binding(b"a:b")), Kind::Stun);
        assert_eq!(classify(&dtls()), Kind::Dtls);
        assert_eq!(classify(&[63]), Kind::Dtls);
        assert_eq!(classify(&rtp()), Kind::Rtp);
        assert_eq!(classify(&rtcp()), Kind::Rtcp);
        // Marker bit set on payload type 96: 0xE0 = 224, above the RTCP range.
        assert_eq!(classify(&[0x80, 0xE0]), Kind::Rtp);
        assert_eq!(classify(&[0x80, 191]), Kind::Rtp);
        assert_eq!(classify(&[0x80, 192]), Kind::Rtcp);
        assert_eq!(classify(&[0x80, 223]), Kind::Rtcp);
        for b in [4u8, 19, 64, 127, 192, 255] {
            assert_eq!(classify(&[b, 0, 0, 0]), Kind::Unknown, "first byte {b}");
        }
        assert_eq!(classify(&[]), Kind::Unknown);
    }

    #[test]
    fn a_binding_request_goes_to_the_peer_its_local_ufrag_names_from_any_address() {
        let mut d = demux();
        let r = |peer| Route::Stun {
            peer,
            request: true,
        };
        assert_eq!(d.route(addr(1), &binding(b"alice:remote")), r(1));
        assert_eq!(d.route(addr(2), &binding(b"bob:alice")), r(2));
        // The remote part is not the local ufrag.
        assert_eq!(
            d.route(addr(3), &binding(b"carol:alice")),
            Route::Drop(DropReason::StunUnknownUfrag)
        );
        // A prefix of a ufrag is not that ufrag.
        assert_eq!(
            d.route(addr(3), &binding(b"ali:x")),
            Route::Drop(DropReason::StunUnknownUfrag)
        );
        assert_eq!(d.dropped(DropReason::StunUnknownUfrag), 2);
    }

    #[test]
    fn a_binding_request_without_username_is_dropped() {
        let mut d = demux();
        let no_attr = stun(STUN_BINDING_REQUEST, &[(0x0024, &[0, 0, 0, 1])]);
        assert_eq!(
            d.route(addr(1), &no_attr),
            Route::Drop(DropReason::StunNoUsername)
        );
        assert_eq!(
            d.route(addr(1), &binding(b"alice")),
            Route::Drop(DropReason::StunNoUsername),
            "no ':'"
        );
        assert_eq!(d.dropped(DropReason::StunNoUsername), 2);
    }

    #[test]
    fn malformed_stun_is_dropped() {
        let mut d = demux();
        let good = binding(b"alice:r");
        let mut cookie = good.clone();
        cookie[4] ^= 1;
        let mut long = good.clone();
        long.extend_from_slice(&[0; 4]); // header length no longer matches
        let mut attr_past_end = good.clone();
        let n = attr_past_end.len();
        attr_past_end[n - 12 + 3] = 0xff; // USERNAME's length runs past the message
        for (what, m) in [
            ("cookie", cookie),
            ("length", long),
            ("attribute", attr_past_end),
        ] {
            assert_eq!(
                d.route(addr(1), &m),
                Route::Drop(DropReason::StunMalformed),
                "{what}"
            );
        }
        assert_eq!(
            d.route(addr(1), &good[..19]),
            Route::Drop(DropReason::Truncated)
        );
        assert_eq!(d.dropped(DropReason::StunMalformed), 3);
    }

    #[test]
    fn dtls_rtp_rtcp_go_by_bound_address_only() {
        let mut d = demux();
        for p in [dtls(), rtp(), rtcp()] {
            assert_eq!(
                d.route(addr(1), &p),
                Route::Drop(DropReason::UnknownAddress)
            );
        }
        d.bind(addr(1), 1);
        d.bind(addr(2), 2);
        assert_eq!(d.route(addr(1), &dtls()), Route::Dtls(1));
        assert_eq!(d.route(addr(2), &rtp()), Route::Rtp(2));
        assert_eq!(d.route(addr(2), &rtcp()), Route::Rtcp(2));
        // Same IP, other port: another address.
        assert_eq!(
            d.route(addr(3), &rtp()),
            Route::Drop(DropReason::UnknownAddress)
        );
        assert_eq!(d.dropped(DropReason::UnknownAddress), 4);
    }

    #[test]
    fn other_stun_goes_by_bound_address() {
        let mut d = demux();
        let response = stun(0x0101, &[]);
        assert_eq!(
            d.route(addr(1), &response),
            Route::Drop(DropReason::UnknownAddress)
        );
        d.bind(addr(1), 1);
        assert_eq!(
            d.route(addr(1), &response),
            Route::Stun {
                peer: 1,
                request: false
            }
        );
    }

    #[test]
    fn truncated_packets_are_dropped_even_from_a_bound_address() {
        let mut d = demux();
        d.bind(addr(1), 1);
        for p in [&dtls()[..12], &rtp()[..11], &rtcp()[..7]] {
            assert_eq!(d.route(addr(1), p), Route::Drop(DropReason::Truncated));
        }
        assert_eq!(d.dropped(DropReason::Truncated), 3);
    }

    #[test]
    fn garbage_is_dropped_as_unknown() {
        let mut d = demux();
        d.bind(addr(1), 1);
        assert_eq!(d.route(addr(1), &[]), Route::Drop(DropReason::Unknown));
        assert_eq!(
            d.route(addr(1), &[0x47, 1, 2, 3]),
            Route::Drop(DropReason::Unknown)
        );
        assert_eq!(d.dropped(DropReason::Unknown), 2);
    }

    #[test]
    fn forget_unroutes_the_peers_ufrag_and_addresses_only() {
        let mut d = demux();
        d.bind(addr(1), 1);
        d.bind(addr(2), 1);
        d.bind(addr(3), 2);
        d.forget(1);
        for a in [addr(1), addr(2)] {
            assert_eq!(d.route(a, &rtp()), Route::Drop(DropReason::UnknownAddress));
        }
        assert_eq!(
            d.route(addr(9), &binding(b"alice:r")),
            Route::Drop(DropReason::StunUnknownUfrag)
        );
        assert_eq!(d.route(addr(3), &rtp()), Route::Rtp(2));
        assert_eq!(
            d.route(addr(9), &binding(b"bob:r")),
            Route::Stun {
                peer: 2,
                request: true
            }
        );
    }

    #[test]
    fn rebinding_an_address_moves_it() {
        let mut d = demux();
        d.bind(addr(1), 1);
        d.bind(addr(1), 2);
        assert_eq!(d.route(addr(1), &rtp()), Route::Rtp(2));
    }

    /// A datagram: random bytes with an interesting first byte, or a binding request with a
    /// username from a pool (registered or not), possibly cut or with a byte flipped.
    fn datagram() -> impl Strategy<Value = Vec<u8>> {
        let raw = (
            prop_oneof![0u8..=3, 20u8..=63, 128u8..=191, any::<u8>()],
            proptest::collection::vec(any::<u8>(), 0..64),
        )
            .prop_map(|(first, mut rest)| {
                rest.insert(0, first);
                rest
            });
        let user = prop_oneof![
            Just(&b"alice:r"[..]),
            Just(&b"bob:alice"[..]),
            Just(&b"carol:bob"[..]),
            Just(&b"alice"[..]),
        ];
        let built = (
            user,
            any::<usize>(),
            any::<usize>(),
            any::<u8>(),
            any::<bool>(),
        )
            .prop_map(|(u, cut, at, flip, mangle)| {
                let mut m = binding(u);
                if mangle {
                    let at = at % m.len();
                    m[at] ^= flip;
                    m.truncate(m.len() - cut % 8);
                }
                m
            });
        prop_oneof![raw, built]
    }

    proptest! {
        #[test]
        fn never_routes_to_a_peer_not_bound_nor_named(
            binds in proptest::collection::vec((0u16..4, 1u32..3), 0..3),
            packets in proptest::collection::vec((0u16..4, datagram()), 1..30),
        ) {
            let mut d = demux();
            for (port, peer) in &binds {
                d.bind(addr(*port), *peer);
            }
            let ufrag = |peer: u32| if peer == 1 { &b"alice:"[..] } else { &b"bob:"[..] };
            for (port, p) in packets {
                let peer = match d.route(addr(port), &p) {
                    Route::Stun { peer, .. } | Route::Dtls(peer) | Route::Rtp(peer) | Route::Rtcp(peer) => peer,
                    Route::Drop(_) => continue,
                };
                let bound = d.addrs.get(&addr(port)) == Some(&peer);
                let named = p.windows(ufrag(peer).len()).any(|w| w == ufrag(peer));
                prop_assert!(bound || named, "{p:?} from port {port} routed to {peer}");
            }
        }

        #[test]
        fn a_well_formed_request_reaches_the_peer_it_names(port in 0u16..4, bob in any::<bool>()) {
            let mut d = demux();
            let (user, peer) = if bob { (&b"bob:x"[..], 2) } else { (&b"alice:x"[..], 1) };
            prop_assert_eq!(d.route(addr(port), &binding(user)), Route::Stun { peer, request: true });
        }
    }
}
