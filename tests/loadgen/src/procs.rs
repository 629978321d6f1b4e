//! Server processes under test (upstream, one node, a cluster on one redis-server) and what
//! /proc says about them.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Raises the open-file limit (soft and, as root, hard) for this process and its children.
pub fn raise_fd_limit(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        let raised = libc::rlimit {
            rlim_cur: want.max(lim.rlim_cur),
            rlim_max: want.max(lim.rlim_max),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
            lim.rlim_cur = lim.rlim_max; // not root: up to the hard limit
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

pub fn fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscall on a local struct.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    lim.rlim_cur
}

/// CPU time (user + system, all threads, dead ones included) of a process, in µs.
pub fn cpu_us(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    // fields after the command: state is [0], utime is field 14 overall => [11], stime [12]
    let ticks: u64 = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    ticks * 1_000_000 / hz
}

/// Resident set size of a process, in KiB.
pub fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A child killed (and reaped) when dropped; dies with us if we die first.
pub struct Proc(pub Child);

impl Proc {
    pub fn spawn(mut cmd: Command, log: Option<&PathBuf>) -> Result<Proc> {
        // SAFETY: prctl in the child before exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        match log {
            Some(path) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?;
                cmd.stderr(f);
            }
            None => {
                cmd.stderr(Stdio::null());
            }
        }
        Ok(Proc(
            cmd.spawn()
                .with_context(|| format!("cannot start {cmd:?}"))?,
        ))
    }

    /// Like [`Proc::spawn`], but stdout stays as `cmd` has it (a pipe); stderr discarded.
    pub fn spawn_piped(mut cmd: Command) -> Result<Proc> {
        // SAFETY: prctl in the child before exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        cmd.stdin(Stdio::null()).stderr(Stdio::null());
        Ok(Proc(
            cmd.spawn()
                .with_context(|| format!("cannot start {cmd:?}"))?,
        ))
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on loopback")
}

#[derive(Clone, Debug)]
pub struct Binaries {
    /// Our node.
    pub node: PathBuf,
    /// Upstream command line, `{port}` replaced by the port.
    pub upstream: String,
    pub redis_server: String,
    /// Extra flags for our nodes (rate limit, queue).
    pub node_args: Vec<String>,
    pub log: Option<PathBuf>,
}

/// What a scenario runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Upstream,
    Single,
    Cluster(usize),
}

impl Target {
    pub fn name(self) -> String {
        match self {
            Target::Upstream => "upstream".into(),
            Target::Single => "single".into(),
            Target::Cluster(n) => format!("cluster{n}"),
        }
    }

    pub fn parse(s: &str) -> Result<Target> {
        Ok(match s {
            "upstream" => Target::Upstream,
            "single" => Target::Single,
            _ => match s.strip_prefix("cluster").and_then(|n| n.parse().ok()) {
                Some(n) if n >= 2 => Target::Cluster(n),
                _ => bail!("unknown target {s} (upstream, single, cluster2, cluster3, ...)"),
            },
        })
    }
}

/// Running servers: peer `i` of a scenario connects to `port(i)`.
pub struct Topo {
    pub ports: Vec<u16>,
    servers: Vec<Proc>,
    redis: Option<Proc>,
    /// The stock server (which has no metrics to read).
    upstream: bool,
}

impl Topo {
    pub async fn start(target: Target, bins: &Binaries) -> Result<Topo> {
        let mut topo = Topo {
            ports: Vec::new(),
            servers: Vec::new(),
            redis: None,
            upstream: target == Target::Upstream,
        };
        match target {
            Target::Upstream => {
                let port = free_port();
                let line = bins.upstream.replace("{port}", &port.to_string());
                let mut words = line.split_whitespace();
                let mut cmd = Command::new(words.next().context("empty upstream command")?);
                cmd.args(words)
                    .env("WEBRTCSINK_SIGNALLING_SERVER_LOG", "warn");
                topo.servers.push(Proc::spawn(cmd, bins.log.as_ref())?);
                topo.ports.push(port);
            }
            Target::Single => {
                let port = free_port();
                topo.servers.push(node(bins, port, &[])?);
                topo.ports.push(port);
            }
            Target::Cluster(n) => {
                let rport = free_port();
                let mut cmd = Command::new(&bins.redis_server);
                cmd.args([
                    "--port",
                    &rport.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                ])
                .args(["--appendonly", "no", "--loglevel", "warning"]);
                topo.redis = Some(Proc::spawn(cmd, bins.log.as_ref())?);
                wait_tcp(rport).await?;
                let url = format!("redis://127.0.0.1:{rport}");
                for i in 0..n {
                    let port = free_port();
                    let id = format!("bench-{i}");
                    topo.servers
                        .push(node(bins, port, &["--redis-url", &url, "--node-id", &id])?);
                    topo.ports.push(port);
                }
            }
        }
        for &p in &topo.ports {
            wait_tcp(p).await?;
        }
        // cluster nodes subscribe right after they listen; give them a moment
        if matches!(target, Target::Cluster(_)) {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Ok(topo)
    }

    pub fn port(&self, i: usize) -> u16 {
        self.ports[i % self.ports.len()]
    }

    /// The process id of server `i` (a node to kill).
    pub fn server_pid(&self, i: usize) -> u32 {
        self.servers[i % self.servers.len()].pid()
    }

    pub fn nodes(&self) -> usize {
        self.ports.len()
    }

    /// Server CPU µs summed over the nodes (or the upstream process).
    pub fn server_cpu_us(&self) -> u64 {
        self.servers.iter().map(|p| cpu_us(p.pid())).sum()
    }

    pub fn redis_cpu_us(&self) -> Option<u64> {
        self.redis.as_ref().map(|p| cpu_us(p.pid()))
    }

    pub fn server_rss_kb(&self) -> u64 {
        self.servers.iter().map(|p| rss_kb(p.pid())).sum()
    }

    pub fn redis_rss_kb(&self) -> Option<u64> {
        self.redis.as_ref().map(|p| rss_kb(p.pid()))
    }

    /// `peer` messages our nodes relayed so far, as they count them
    /// (`gwc_relayed_messages_total`, both paths, summed over the nodes; each message counted
    /// once, by the node of its sender). `None` for upstream.
    pub async fn relayed(&self) -> Result<Option<u64>> {
        if self.upstream {
            return Ok(None);
        }
        let mut total = 0;
        for &port in &self.ports {
            let text = metrics(port).await?;
            total += text
                .lines()
                .filter(|l| l.starts_with("gwc_relayed_messages_total{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum::<u64>();
        }
        Ok(Some(total))
    }

    /// Fails if a server died (a crash under load is a result too).
    pub fn check_alive(&mut self) -> Result<()> {
        for p in &mut self.servers {
            if let Some(status) = p.0.try_wait()? {
                bail!("server process exited: {status}");
            }
        }
        Ok(())
    }
}

fn node(bins: &Binaries, port: u16, extra: &[&str]) -> Result<Proc> {
    let mut cmd = Command::new(&bins.node);
    cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(&bins.node_args)
        .args(extra)
        .env("SIGNALLING_LOG", "warn");
    Proc::spawn(cmd, bins.log.as_ref())
}

/// `GET /metrics` of our node on `port`.
async fn metrics(port: u16) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut text = String::new();
    s.read_to_string(&mut text).await?;
    anyhow::ensure!(
        text.split_whitespace().nth(1) == Some("200"),
        "GET /metrics on {port}: {text}"
    );
    Ok(text)
}

async fn wait_tcp(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("nothing listens on port {port} after 10 s");
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

/// Runs the agents' time-to-first-frame measurement: a producer-agent on the first node, a
/// consumer-agent on the last one (another node in a cluster), `runs` times.
pub async fn first_frame_ms(
    topo: &Topo,
    agents: &std::path::Path,
    runs: usize,
    log: Option<&PathBuf>,
) -> Result<Vec<u64>> {
    let first = topo.ports[0];
    let last = *topo.ports.last().expect("a port");
    let mut cmd = Command::new(agents.join("producer-agent"));
    cmd.args(["--server", &format!("ws://127.0.0.1:{first}")])
        .args(["--name", "bench-ttff", "--source", "test"])
        .env("PRODUCER_LOG", "warn");
    let _producer = Proc::spawn(cmd, log)?;
    let mut out = Vec::new();
    for _ in 0..runs {
        let consumer = agents.join("consumer-agent");
        let res = tokio::task::spawn_blocking(move || {
            Command::new(consumer)
                .args(["--server", &format!("ws://127.0.0.1:{last}")])
                .args([
                    "--producer-name",
                    "bench-ttff",
                    "--frames",
                    "1",
                    "--timeout",
                    "60",
                ])
                .env("CONSUMER_LOG", "warn")
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output()
        })
        .await??;
        let stdout = String::from_utf8_lossy(&res.stdout);
        let report: serde_json::Value = stdout
            .lines()
            .last()
            .and_then(|l| serde_json::from_str(l).ok())
            .with_context(|| format!("consumer-agent printed no report ({})", res.status))?;
        out.push(
            report["first_frame_ms"]
                .as_u64()
                .with_context(|| format!("no first_frame_ms in {report}"))?,
        );
    }
    Ok(out)
}

/// Busy and total jiffies of the whole machine (`/proc/stat`).
pub fn machine_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = cpu.iter().sum();
    // idle and iowait
    let idle = cpu.get(3).copied().unwrap_or(0) + cpu.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// The value at fraction `p` of `sorted` (nearest rank), to 0.1.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    Some((sorted[i] * 10.0).round() / 10.0)
}
