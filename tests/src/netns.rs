//! A network namespace of the test's own for one node, joined to the host by two veth pairs:
//! one carries the node's peers, the other its Redis traffic. Taking the Redis pair's host end
//! down partitions the node from Redis while its peers stay connected: the veth drops what is
//! sent to it, silently, as a network partition or a firewall's DROP does (this machine's
//! kernel has neither netem nor iptables). A token bucket (`tc tbf`) on the host ends gives
//! what runs inside (an agent, whose media cannot use loopback) a narrow downlink. Needs root, as CI has; a machine that cannot make
//! namespaces fails the test with a message saying so, rather than skipping it.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::Context;

use crate::shaping::run;

/// A namespace with its two links; removed with everything in it when dropped.
pub struct Namespace {
    name: String,
    /// Third octet of both links' /30 subnets, unique per namespace of this machine's tests.
    index: u32,
}

impl Namespace {
    pub fn create() -> anyhow::Result<Namespace> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let index = (std::process::id() + NEXT.fetch_add(1, Ordering::Relaxed)) % 250 + 1;
        let ns = Namespace {
            name: format!("gwc-test-{index}"),
            index,
        };
        ns.remove(); // (a leftover of a killed run)
        ip(&["netns", "add", &ns.name]).context(
            "this test needs network namespaces (`ip netns add`, as root): run it where it can \
             make them, as CI does",
        )?;
        for (link, subnet) in [("p", 201), ("r", 202)] {
            let (host, inner) = ns.link(link);
            ip(&["link", "add", &host, "type", "veth", "peer", "name", &inner])?;
            ip(&["link", "set", &inner, "netns", &ns.name])?;
            ip(&[
                "addr",
                "add",
                &format!("10.{subnet}.{index}.1/30"),
                "dev",
                &host,
            ])?;
            ip(&["link", "set", &host, "up"])?;
            ns.exec(&[
                "ip",
                "addr",
                "add",
                &format!("10.{subnet}.{index}.2/30"),
                "dev",
                &inner,
            ])?;
            ns.exec(&["ip", "link", "set", &inner, "up"])?;
        }
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Where a node in the namespace listens for its peers (reached from the host).
    pub fn peers_address(&self) -> String {
        format!("10.201.{}.2", self.index)
    }

    /// The host's end of the peers' link: where a node on the host listens to be reached from
    /// the namespace too.
    pub fn host_address(&self) -> String {
        format!("10.201.{}.1", self.index)
    }

    /// Limits what the host sends into the namespace to `kbit` kbit/s on both links (a token
    /// bucket, `tc tbf`, on each host end: a narrow downlink for whatever runs inside).
    pub fn limit_inbound(&self, kbit: u32) -> anyhow::Result<()> {
        for kind in ["p", "r"] {
            let dev = self.link(kind).0;
            let rate = format!("{kbit}kbit");
            let args = [
                "qdisc", "replace", "dev", &dev, "root", "tbf", "rate", &rate,
            ];
            run(
                "tc",
                &[&args[..], &["burst", "16kb", "latency", "100ms"]].concat(),
            )?;
        }
        Ok(())
    }

    /// The host's end of the Redis link: where a Redis on the host must listen too, and what
    /// the node in the namespace connects to.
    pub fn redis_address(&self) -> String {
        format!("10.202.{}.1", self.index)
    }

    /// `program` run inside the namespace.
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Routes what leaves the namespace for other addresses through the host (a TURN server
    /// inside relays to peers on the host's other addresses).
    pub fn route_to_host(&self) -> anyhow::Result<()> {
        let via = self.host_address();
        self.exec(&["ip", "route", "replace", "default", "via", &via])
    }

    /// Partitions the namespace from Redis: every packet on the Redis link is dropped.
    pub fn cut_redis(&self) -> anyhow::Result<()> {
        ip(&["link", "set", &self.link("r").0, "down"])
    }

    /// Ends the partition.
    pub fn heal_redis(&self) -> anyhow::Result<()> {
        ip(&["link", "set", &self.link("r").0, "up"])
    }

    /// (host end, namespace end) of link `kind`.
    fn link(&self, kind: &str) -> (String, String) {
        (
            format!("gwc{}{kind}h", self.index),
            format!("gwc{}{kind}n", self.index),
        )
    }

    fn exec(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut all = vec!["netns", "exec", &self.name];
        all.extend_from_slice(args);
        ip(&all)
    }

    fn remove(&self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        for kind in ["p", "r"] {
            let _ = Command::new("ip")
                .args(["link", "del", &self.link(kind).0])
                .output();
        }
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        self.remove();
    }
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    run("ip", args)
}
