//! Connection guards: how many WebSocket connections the node (`--max-connections`) and one
//! client address (`--max-connections-per-ip`) may hold, and the log and counts of what is
//! refused at the door (bad tokens, full node). A connection holds a [`Slot`] for its life;
//! refusing costs an upgrade answer, and everyone already connected is untouched.
//! (Half-open and slow requests are bounded by `--handshake-timeout`, in `server.rs`.)

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tracing::warn;

/// Why an upgrade was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Full {
    #[error("this node holds its --max-connections; connect to another node")]
    Node,
    #[error("too many connections from this address")]
    Address,
}

/// A client address for the logs (`unknown` when the transport has none).
pub fn remote(addr: Option<impl std::fmt::Display>) -> String {
    addr.map_or_else(|| "unknown".to_string(), |a| a.to_string())
}

/// Refusals logged per second at most (the rest are counted only).
const LOGS_PER_SEC: u64 = 5;

#[derive(Default)]
pub struct Guards {
    max_total: usize,
    max_per_ip: usize,
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Upgrades refused for their token, and for a limit.
    pub refused_auth: AtomicU64,
    pub refused_full: AtomicU64,
    /// (second, refusals logged in it)
    logged: Mutex<(u64, u64)>,
}

/// One admitted connection; dropping it gives the place back.
pub struct Slot {
    guards: Arc<Guards>,
    ip: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.guards.total.fetch_sub(1, Ordering::Relaxed);
        if let Some(ip) = self.ip {
            let mut per_ip = self.guards.per_ip.lock();
            if let Some(n) = per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
    }
}

impl Guards {
    /// Limits of 0 mean none.
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Guards> {
        Arc::new(Guards {
            max_total,
            max_per_ip,
            ..Guards::default()
        })
    }

    /// A place for a connection from `ip`, or why there is none.
    pub fn admit(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<Slot, Full> {
        let total = self.total.fetch_add(1, Ordering::Relaxed) + 1;
        if self.max_total > 0 && total > self.max_total {
            self.total.fetch_sub(1, Ordering::Relaxed);
            return Err(Full::Node);
        }
        let tracked = match ip {
            Some(ip) if self.max_per_ip > 0 => {
                let mut per_ip = self.per_ip.lock();
                let n = per_ip.entry(ip).or_insert(0);
                if *n >= self.max_per_ip {
                    drop(per_ip);
                    self.total.fetch_sub(1, Ordering::Relaxed);
                    return Err(Full::Address);
                }
                *n += 1;
                Some(ip)
            }
            _ => None,
        };
        Ok(Slot {
            guards: self.clone(),
            ip: tracked,
        })
    }

    /// WebSocket connections held now.
    pub fn connections(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Counts a refused upgrade (`auth`: for its token) and logs it, a few per second at most.
    pub fn refused(&self, ip: Option<IpAddr>, auth: bool, reason: &dyn std::fmt::Display) {
        let counter = match auth {
            true => &self.refused_auth,
            false => &self.refused_full,
        };
        let label = match auth {
            true => "auth",
            false => "limit",
        };
        let families = &crate::metrics::metrics().refused;
        families
            .get_or_create(&crate::metrics::ReasonLabel { reason: label })
            .inc();
        let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut logged = self.logged.lock();
        if logged.0 != now {
            *logged = (now, 0);
        }
        if logged.1 < LOGS_PER_SEC {
            logged.1 += 1;
            let what = if auth {
                "authentication"
            } else {
                "connection limit"
            };
            warn!(remote = %remote(ip), total = n, "upgrade refused ({what}): {reason}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_hold_and_places_come_back() {
        let g = Guards::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = g.admit(Some(a)).unwrap();
        let _s2 = g.admit(Some(a)).unwrap();
        assert_eq!(g.admit(Some(a)).err(), Some(Full::Address));
        let _s3 = g.admit(Some(b)).unwrap();
        assert_eq!(g.admit(Some(b)).err(), Some(Full::Node));
        drop(s1);
        assert_eq!(g.connections(), 2);
        assert!(g.admit(Some(a)).is_ok(), "a's place came back");
        let none = Guards::new(0, 0);
        let slots: Vec<_> = (0..100).map(|_| none.admit(Some(a)).unwrap()).collect();
        assert_eq!(none.connections(), slots.len());
    }
}
