//! Viewers behind shaped links (issue 26): a network namespace per viewer, joined to the host
//! by one veth pair, with a default route through the host end (so a viewer reaches a node, a
//! relay or a producer on any of the host's addresses), and a token bucket (`tc tbf`) on the
//! host end: what the host sends toward the viewer, its downlink, limited, changed and lifted
//! while media flows. Loopback cannot be shaped, and libnice leaves it out of its candidates
//! anyway, hence namespaces; a forward relay announces the links' host ends
//! (`relay-agent --ice-address`). This kernel has no netem: tbf (and htb) are what there is.
//!
//! Shared by the tests (`cluster_tests::shaping`) and the load generator's `adaptive`
//! scenario (`tests/loadgen`, which includes this file by path): std and anyhow only. Needs
//! root, as CI has; a machine that cannot make namespaces fails with a message saying so.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use anyhow::{bail, Context};

/// The bucket: how many bytes may leave back to back at line rate after a quiet moment. One
/// full-size packet (tbf needs at least one MTU): the link serialises at its rate, as a
/// bottleneck link does. (A shaper's larger bucket passes a bandwidth estimator's probe
/// bursts at line rate: with 6 kB, str0m's 15 ms probe clusters measured a 250 kbit/s link at
/// 1.1-1.7 Mbit/s. docs/relays.md "Layers: known limits" says what the engine does then.)
pub const BURST_BYTES: u32 = 1_600;

/// The queue: how long a packet may wait for tokens before tbf drops it. 200 ms is a modest
/// access-link buffer: deep enough that a delay-based estimator (GCC, TWCC) sees the queue grow
/// before the losses start, shallow enough that an overloaded link loses packets instead of
/// hiding the overload in seconds of delay (which would make the tests' 1 s freeze bounds
/// meaningless).
pub const LATENCY_MS: u32 = 200;

/// One viewer's namespace and link; removed with everything in it when dropped.
pub struct ShapedLink {
    name: String,
    /// Third octet of the link's /30 (10.203.I.0/30), unique on this machine while it lives.
    index: u32,
    /// Drops counted by the qdiscs this link had before its current one (a lifted limit takes
    /// its counters with it).
    dropped_before: AtomicU64,
}

impl ShapedLink {
    /// An unlimited link (see [`ShapedLink::limit`]).
    pub fn create() -> anyhow::Result<ShapedLink> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let start = std::process::id() + NEXT.fetch_add(1, Ordering::Relaxed) * 7;
        // The first free index from a per-process start: another process's live namespace
        // is skipped, never removed.
        for step in 0..250 {
            let index = (start + step) % 250 + 1;
            let name = format!("gwc-shape-{index}");
            let taken = Command::new("ip")
                .args(["netns", "add", &name])
                .output()
                .context("cannot run `ip` (iproute2)")?;
            if !taken.status.success() {
                let why = String::from_utf8_lossy(&taken.stderr);
                if why.contains("exists") {
                    continue;
                }
                bail!(
                    "this test needs network namespaces (`ip netns add`, as root): run it where \
                     it can make them, as CI does: {}",
                    why.trim()
                );
            }
            let link = ShapedLink {
                name,
                index,
                dropped_before: AtomicU64::new(0),
            };
            link.wire()?;
            return Ok(link);
        }
        bail!("no free namespace index (250 gwc-shape-* namespaces exist)")
    }

    /// A link limited to `kbit` kbit/s from the start.
    pub fn limited(kbit: u32) -> anyhow::Result<ShapedLink> {
        let link = Self::create()?;
        link.limit(kbit)?;
        Ok(link)
    }

    fn wire(&self) -> anyhow::Result<()> {
        let (host, inner) = self.devices();
        run(
            "ip",
            &["link", "add", &host, "type", "veth", "peer", "name", &inner],
        )?;
        run("ip", &["link", "set", &inner, "netns", &self.name])?;
        let host_cidr = format!("{}/30", self.host_address());
        run("ip", &["addr", "add", &host_cidr, "dev", &host])?;
        run("ip", &["link", "set", &host, "up"])?;
        let inner_cidr = format!("{}/30", self.viewer_address());
        self.exec(&["ip", "addr", "add", &inner_cidr, "dev", &inner])?;
        self.exec(&["ip", "link", "set", &inner, "up"])?;
        self.exec(&["ip", "link", "set", "lo", "up"])?;
        let gateway = self.host_address();
        self.exec(&["ip", "route", "add", "default", "via", &gateway])
    }

    /// The host's end of the link: what a relay announces to this viewer (`--ice-address`),
    /// and where a node may listen to be reached from every link (each has a default route
    /// to the host).
    pub fn host_address(&self) -> String {
        format!("10.203.{}.1", self.index)
    }

    /// The viewer's end.
    pub fn viewer_address(&self) -> String {
        format!("10.203.{}.2", self.index)
    }

    /// Limits the viewer's downlink to `kbit` kbit/s, now (set or changed while media flows).
    pub fn limit(&self, kbit: u32) -> anyhow::Result<()> {
        let dev = self.devices().0;
        let rate = format!("{kbit}kbit");
        let burst = BURST_BYTES.to_string();
        let latency = format!("{LATENCY_MS}ms");
        let args = [
            "qdisc", "replace", "dev", &dev, "root", "tbf", "rate", &rate, "burst", &burst,
            "latency", &latency,
        ];
        run("tc", &args)
    }

    /// Lifts the limit (the token bucket removed): the link is unlimited again.
    pub fn lift(&self) -> anyhow::Result<()> {
        let dropped = self.current_drops()?;
        if let Some(n) = dropped {
            let dev = self.devices().0;
            run("tc", &["qdisc", "del", "dev", &dev, "root"])?;
            self.dropped_before.fetch_add(n, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Packets the link's token buckets dropped so far (its real loss: the link drops nothing
    /// else).
    pub fn dropped(&self) -> anyhow::Result<u64> {
        Ok(self.dropped_before.load(Ordering::Relaxed) + self.current_drops()?.unwrap_or(0))
    }

    /// UDP datagrams the namespace's own sockets dropped so far (`/proc/net/snmp` `Udp:
    /// InErrors`, receive buffers full): on a loaded machine the viewer may not read in time,
    /// a loss neither the link nor the sender made.
    pub fn socket_drops(&self) -> anyhow::Result<u64> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "cat", "/proc/net/snmp"])
            .output()
            .context("cannot read the namespace's /proc/net/snmp")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut udp = text.lines().filter(|l| l.starts_with("Udp: "));
        let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
            anyhow::bail!("no Udp: lines in /proc/net/snmp:\n{text}");
        };
        let at = names.split_whitespace().position(|n| n == "InErrors");
        let value = at.and_then(|i| values.split_whitespace().nth(i));
        value
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no Udp InErrors in /proc/net/snmp:\n{text}"))
    }

    /// The current token bucket's drops; None when the link has none.
    fn current_drops(&self) -> anyhow::Result<Option<u64>> {
        let dev = self.devices().0;
        let out = Command::new("tc")
            .args(["-s", "qdisc", "show", "dev", &dev])
            .output()
            .context("cannot run `tc` (iproute2)")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let Some(tbf) = text.split("qdisc ").find(|q| q.starts_with("tbf")) else {
            return Ok(None);
        };
        // " Sent 123 bytes 4 pkt (dropped 5, overlimits 6 requeues 0)"
        let n = tbf
            .split("dropped ")
            .nth(1)
            .and_then(|r| r.split(',').next())
            .and_then(|n| n.trim().parse().ok())
            .with_context(|| format!("no drop count in `tc -s qdisc`: {tbf}"))?;
        Ok(Some(n))
    }

    /// `program` run inside the viewer's namespace.
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// (host end, viewer end).
    fn devices(&self) -> (String, String) {
        (format!("gws{}h", self.index), format!("gws{}v", self.index))
    }

    fn exec(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut all = vec!["netns", "exec", &self.name];
        all.extend_from_slice(args);
        run("ip", &all)
    }
}

impl Drop for ShapedLink {
    fn drop(&mut self) {
        // Deleting the namespace destroys its veth end, and with it the host's.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.devices().0])
            .output();
    }
}

/// Runs an iproute2 `tool` (`ip`, `tc`) with `args`; its failure is an error that says why.
/// Runs an iproute2 `tool`, its stderr in the error (`netns.rs` uses it too).
pub fn run(tool: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(tool)
        .args(args)
        .output()
        .with_context(|| format!("cannot run `{tool}` (iproute2)"))?;
    if !out.status.success() {
        bail!(
            "`{tool} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
