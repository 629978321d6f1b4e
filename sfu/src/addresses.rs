//! Which local addresses the engine listens on and announces as host candidates.
//!
//! Empty `--ice-address`: the host's non-loopback interface addresses. Loopback is left out
//! on purpose: libnice (GStreamer's ICE) leaves it out of its own host candidates, so a
//! loopback-only candidate would never pair with a webrtcbin peer on the same machine.

use std::ffi::c_int;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use mio::net::UdpSocket;
use str0m::Candidate;

use crate::forward_api::ForwardError;

/// The addresses to bind and announce: `configured`, or else the interfaces' own.
pub fn local_addresses(configured: &[IpAddr]) -> Vec<IpAddr> {
    if !configured.is_empty() {
        return configured.to_vec();
    }
    let mut found: Vec<IpAddr> = interface_addresses()
        .into_iter()
        .filter(|ip| usable(*ip))
        .collect();
    found.sort();
    found.dedup();
    found
}

/// A unicast address a peer can reach: not loopback, unspecified, multicast, nor IPv6
/// link-local (which would need a scope id in the candidate).
fn usable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v) => !v.is_loopback() && !v.is_unspecified() && !v.is_multicast(),
        IpAddr::V6(v) => {
            !v.is_loopback()
                && !v.is_unspecified()
                && !v.is_multicast()
                && (v.segments()[0] & 0xffc0) != 0xfe80
        }
    }
}

/// Every address of every interface that is up (getifaddrs(3)); empty if the call fails.
fn interface_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list that we only read, and free once
    // with freeifaddrs below; every pointer is checked for null before use, and a sockaddr
    // is read as sockaddr_in/sockaddr_in6 only when its family says it is one.
    unsafe {
        if libc::getifaddrs(&mut list) != 0 {
            return out;
        }
        let mut cursor = list;
        while let Some(ifa) = cursor.as_ref() {
            cursor = ifa.ifa_next;
            let up = ifa.ifa_flags & (libc::IFF_UP as u32) != 0;
            let Some(addr) = ifa.ifa_addr.as_ref() else {
                continue;
            };
            if !up {
                continue;
            }
            match c_int::from(addr.sa_family) {
                libc::AF_INET => {
                    let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                    out.push(IpAddr::V4(ip));
                }
                libc::AF_INET6 => {
                    let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    out.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
                }
                _ => {}
            }
        }
        libc::freeifaddrs(list);
    }
    out
}

/// A worker's sockets: one per address, all on `port` when it is fixed (else the first's
/// port for the others when free, or any).
pub fn bind(addresses: &[std::net::IpAddr], port: u16) -> Result<Vec<UdpSocket>, ForwardError> {
    let mut out: Vec<UdpSocket> = Vec::new();
    let mut port = port;
    for ip in addresses {
        let addr = SocketAddr::new(*ip, port);
        let socket = match UdpSocket::bind(addr) {
            Ok(s) => s,
            Err(_) if port != 0 && !out.is_empty() => UdpSocket::bind(SocketAddr::new(*ip, 0))
                .map_err(|source| ForwardError::Bind { addr, source })?,
            Err(source) => return Err(ForwardError::Bind { addr, source }),
        };
        if port == 0 {
            port = socket.local_addr().map(|a| a.port()).unwrap_or(0);
        }
        out.push(socket);
    }
    Ok(out)
}

/// The candidates a worker announces: a host candidate per bound address, and `public_ip`
/// (NAT 1:1) as a server-reflexive one on the same port, its base the bound address of its
/// family (a peer's checks to it arrive there).
pub fn candidates(bound: &[SocketAddr], public_ip: Option<IpAddr>) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = bound
        .iter()
        .filter_map(|a| Candidate::host(*a, "udp").ok())
        .collect();
    let base = public_ip.and_then(|p| bound.iter().find(|a| a.is_ipv4() == p.is_ipv4()));
    if let (Some(public), Some(base)) = (public_ip, base) {
        let addr = SocketAddr::new(public, base.port());
        if let Ok(c) = Candidate::server_reflexive(addr, *base, "udp") {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_addresses_win_and_the_default_leaves_loopback_out() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(local_addresses(&[lo]), vec![lo]);
        let found = local_addresses(&[]);
        assert!(found.iter().all(|ip| !ip.is_loopback()), "{found:?}");
        assert!(!usable("fe80::1".parse().unwrap()));
        assert!(usable("10.1.2.3".parse().unwrap()));
    }

    #[test]
    fn the_public_address_is_announced_on_the_same_port() {
        let bound: Vec<SocketAddr> = vec!["10.0.0.5:40000".parse().unwrap()];
        let c = candidates(&bound, Some("203.0.113.9".parse().unwrap()));
        let lines: Vec<String> = c.iter().map(|c| c.to_sdp_string()).collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].contains("10.0.0.5 40000 typ host"), "{lines:?}");
        assert!(
            lines[1].contains("203.0.113.9 40000 typ srflx"),
            "{lines:?}"
        );
        assert_eq!(candidates(&bound, None).len(), 1);
    }
}
