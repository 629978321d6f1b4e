//! A worker's outgoing datagrams, gathered during one turn of its loop and sent with
//! `sendmmsg(2)`: one system call for up to [`BATCH`] datagrams instead of one `sendto` each
//! (a source packet fans out to every viewer of the worker in the same turn).
//!
//! The buffers are kept from turn to turn, so gathering allocates nothing once warm.

use std::net::SocketAddr;
use std::os::fd::RawFd;

/// Datagrams per `sendmmsg` call.
pub const BATCH: usize = 64;

struct Datagram {
    socket: usize,
    to: SocketAddr,
    len: usize,
    bytes: Vec<u8>,
}

/// Datagrams waiting for the end of the turn (or a full batch).
pub struct SendBatch {
    /// The sockets' descriptors; a datagram names its socket by index here.
    fds: Vec<RawFd>,
    queued: Vec<Datagram>,
    /// How many of `queued` hold a datagram (the rest are spare buffers).
    len: usize,
}

impl SendBatch {
    pub fn new(fds: Vec<RawFd>) -> Self {
        SendBatch {
            fds,
            queued: Vec::new(),
            len: 0,
        }
    }

    /// Copies `data` for `to` through socket `socket` (an index into `fds`); a full batch is
    /// sent first.
    pub fn push(&mut self, socket: usize, to: SocketAddr, data: &[u8]) {
        if self.len >= BATCH {
            self.flush();
        }
        if self.len == self.queued.len() {
            self.queued.push(Datagram {
                socket,
                to,
                len: 0,
                bytes: Vec::with_capacity(1500),
            });
        }
        let d = &mut self.queued[self.len];
        d.socket = socket;
        d.to = to;
        d.bytes.clear();
        d.bytes.extend_from_slice(data);
        d.len = data.len();
        self.len += 1;
    }

    /// Sends what waits, in order (runs of one socket per call). A datagram the kernel
    /// refuses (a full buffer, an unreachable peer) is dropped, as a loss on the way (NACK,
    /// PLI repair it).
    pub fn flush(&mut self) {
        let mut at = 0;
        while at < self.len {
            let socket = self.queued[at].socket;
            let end = self.queued[at..self.len]
                .iter()
                .position(|d| d.socket != socket)
                .map_or(self.len, |n| at + n);
            if let Some(fd) = self.fds.get(socket) {
                send_run(*fd, &mut self.queued[at..end]);
            }
            at = end;
        }
        self.len = 0;
    }
}

/// One socket's datagrams, `BATCH` per call; a datagram that fails is skipped.
fn send_run(fd: i32, run: &mut [Datagram]) {
    let mut addrs: Vec<(libc::sockaddr_storage, libc::socklen_t)> = Vec::with_capacity(run.len());
    for d in run.iter() {
        addrs.push(sockaddr(d.to));
    }
    let mut iovs: Vec<libc::iovec> = run
        .iter_mut()
        .map(|d| libc::iovec {
            iov_base: d.bytes.as_mut_ptr().cast(),
            iov_len: d.len,
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .zip(addrs.iter_mut())
        .map(|(iov, (addr, len))| {
            // SAFETY: an all-zero msghdr is valid (no control data, no flags).
            let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
            hdr.msg_name = (addr as *mut libc::sockaddr_storage).cast();
            hdr.msg_namelen = *len;
            hdr.msg_iov = iov;
            hdr.msg_iovlen = 1;
            libc::mmsghdr {
                msg_hdr: hdr,
                msg_len: 0,
            }
        })
        .collect();
    let mut at = 0;
    while at < msgs.len() {
        let n = (msgs.len() - at).min(BATCH);
        // SAFETY: `msgs[at..at + n]` point into `iovs`, `addrs` and the datagrams' buffers,
        // all alive and unmoved until this function returns.
        let sent = unsafe { libc::sendmmsg(fd, msgs[at..].as_mut_ptr(), n as libc::c_uint, 0) };
        if sent > 0 {
            at += sent as usize;
        } else if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        } else {
            // The first datagram failed (full buffer, ICMP error pending): drop it, go on.
            at += 1;
        }
    }
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is valid; we fill the family's part.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    /// Datagrams to two receivers (IPv4 loopback) through two sockets arrive whole, in order,
    /// from the socket each was queued on, across more than one batch.
    #[test]
    fn queued_datagrams_arrive_whole_in_order_from_their_socket() {
        let senders = [
            UdpSocket::bind("127.0.0.1:0").unwrap(),
            UdpSocket::bind("127.0.0.1:0").unwrap(),
        ];
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let to = receiver.local_addr().unwrap();
        let fds: Vec<RawFd> = senders.iter().map(|s| s.as_raw_fd()).collect();
        let mut batch = SendBatch::new(fds);
        let total = BATCH + 10;
        for i in 0..total {
            let payload = vec![i as u8; 100 + i];
            batch.push(i / 40, to, &payload);
        }
        batch.flush();
        let mut buf = [0u8; 2048];
        for i in 0..total {
            let (n, from) = receiver.recv_from(&mut buf).unwrap();
            assert_eq!(n, 100 + i, "datagram {i} whole");
            assert!(buf[..n].iter().all(|b| *b == i as u8), "datagram {i}");
            assert_eq!(from, senders[i / 40].local_addr().unwrap(), "datagram {i}");
        }
    }
}
