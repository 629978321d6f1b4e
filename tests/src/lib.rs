//! Helpers for the integration tests: start the real binaries on free loopback ports, talk to
//! them over real WebSockets, stop them when done.
//!
//! The binaries are the workspace's own build products (`cargo build --workspace` runs before
//! the tests; see `dev`), found next to the test executable.
//!
//! Here: processes, nodes, Redis, topologies. `peer.rs`: WebSocket peers and upgrade attempts;
//! `cluster.rs`: three named nodes and sessions across them;
//! `agent.rs`: agent processes and their output; `clients.rs`: viewers not ours (the web app
//! in Chromium, aiortc) and certificate keys; `consumer.rs`: what a consumer-agent's stats say (`watched.rs`: over a window, also the
//! load generator's); `relaying.rs`: the origin, relay and viewer
//! agents of the relay tests; `media.rs`: stock webrtcsink/webrtcsrc
//! pipelines; `netns.rs`: network namespaces (partitions, narrow links); `shaping.rs`: viewers
//! in namespaces of their own behind token-bucket links, limited and lifted mid-stream (also
//! the load generator's); `delay.rs`: a slow
//! link to Redis; `jwt.rs`: tokens made by PyJWT; `k8s.rs`: the Kubernetes tools and what the
//! `k8s_*.rs` tests share.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use tokio::net::TcpStream;

/// Runs each `case(&Topo) -> anyhow::Result<()>` of the calling file twice: on one node
/// (`mod single`) and on a cluster of `n` nodes over Redis (`mod $cluster`), so one test body
/// proves a behaviour holds whatever node each peer is on.
#[macro_export]
macro_rules! on_one_node_and_a_cluster {
    ($cluster:ident = $n:literal; $($case:ident),* $(,)?) => {
        mod single {
            $(#[tokio::test]
            async fn $case() -> anyhow::Result<()> {
                super::$case(&$crate::Topo::single(&[]).await?).await
            })*
        }
        mod $cluster {
            $(#[tokio::test]
            async fn $case() -> anyhow::Result<()> {
                super::$case(&$crate::Topo::cluster($n, &[]).await?).await
            })*
        }
    };
}

pub mod agent;
pub mod clients;
pub mod cluster;
pub mod consumer;
pub mod coturn;
pub mod delay;
pub mod gst_tools;
pub mod http;
pub mod jwt;
pub mod k8s;
pub mod media;
pub mod netns;
pub mod peer;
pub mod relaying;
pub mod shaping;
pub mod watched;

pub use peer::{upgrade, Peer};

/// The tests crate's directory, as cargo says when it runs the test (read at run time: a test
/// binary built in another checkout sharing the target directory must not read that one's
/// files).
pub fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// How long a test waits for a message that should come.
pub const STEP: Duration = Duration::from_secs(10);

/// Raises this process's open-file limit to the hard limit (children inherit it): load
/// tests hold thousands of sockets.
pub fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// A free TCP port on loopback (bound and released; good enough for tests run in parallel
/// because the kernel does not hand out the same ephemeral port again at once).
/// How [`Node`]'s start reports a node that exited before it was healthy.
const EXITED_AT_START: &str = "node exited at start";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on loopback")
}

/// Path of one of the workspace binaries, built into the same target dir as the tests.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("test binary lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built: run `cargo build --workspace` first",
        path.display()
    );
    path
}

/// A child process killed when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn spawn(mut cmd: Command, name: &str) -> anyhow::Result<Proc> {
        // If the test process dies without running destructors, its children die with it.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        Ok(Proc {
            child,
            name: name.to_string(),
        })
    }

    /// Sends a signal (e.g. libc SIGTERM = 15) to the process. A signal that cannot be sent
    /// fails the test here: what follows would judge a process that was never told.
    pub fn signal(&self, sig: i32) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid fits pid_t");
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        if unsafe { libc::kill(pid, sig) } != 0 {
            let e = std::io::Error::last_os_error();
            panic!("cannot send signal {sig} to {} (pid {pid}): {e}", self.name);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A signalling node started on a free port.
pub struct Node {
    /// The address it listens on (loopback, or its network namespace's).
    pub host: String,
    pub port: u16,
    pub proc: Proc,
    /// What it logs, for a node started with [`Node::start_logged`].
    pub log: Option<Log>,
}

/// The lines a node logged so far (on its stdout, as upstream's server; echoed to the test's
/// stderr as they come).
#[derive(Clone, Default)]
pub struct Log(Arc<std::sync::Mutex<Vec<String>>>);

impl Log {
    /// Collects `pipe` line by line on a thread of its own.
    pub fn collect(pipe: impl std::io::Read + Send + 'static) -> Log {
        let log = Log::default();
        let lines = log.0.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(pipe).lines() {
                let Ok(line) = line else { return };
                eprintln!("{line}");
                lines.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        log
    }

    pub fn contains(&self, needle: &str) -> bool {
        let lines = self.0.lock().unwrap_or_else(|e| e.into_inner());
        lines.iter().any(|l| l.contains(needle))
    }

    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Node {
    pub async fn start(extra: &[&str]) -> anyhow::Result<Node> {
        Self::start_on_a_free_port(extra, &[], false).await
    }

    /// Starts a node joining the cluster on `redis` as `id`.
    pub async fn join(redis: &Redis, id: &str, extra: &[&str]) -> anyhow::Result<Node> {
        let url = redis.url();
        let mut args = vec!["--redis-url", &url, "--node-id", id];
        args.extend_from_slice(extra);
        Self::start(&args).await
    }

    /// Starts a node joining the cluster on the Redis at `url` as `id`.
    pub async fn join_url(url: &str, id: &str, extra: &[&str]) -> anyhow::Result<Node> {
        let mut args = vec!["--redis-url", url, "--node-id", id];
        args.extend_from_slice(extra);
        Self::start(&args).await
    }

    /// Starts a node joining the cluster on `redis` as `id`, on `port` (a restart in place).
    pub async fn join_on(
        redis: &Redis,
        id: &str,
        port: u16,
        extra: &[&str],
    ) -> anyhow::Result<Node> {
        let url = redis.url();
        let mut args = vec!["--redis-url", &url, "--node-id", id];
        args.extend_from_slice(extra);
        Self::start_cmd(port, &args, &[], false).await
    }

    /// Starts a node serving TLS (`extra` must carry `-c`/`-k`); ready once it accepts TCP.
    pub async fn start_tls(extra: &[&str]) -> anyhow::Result<Node> {
        Self::start_on_a_free_port(extra, &[], true).await
    }

    /// Starts a node whose log the test reads ([`Node::log`]).
    pub async fn start_logged(extra: &[&str]) -> anyhow::Result<Node> {
        let mut cmd = Command::new(bin("signalling-cluster"));
        cmd.stdout(Stdio::piped());
        Self::spawn(cmd, "127.0.0.1", free_port(), extra, &[], false).await
    }

    /// Starts a node with extra environment variables.
    pub async fn start_env(extra: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Node> {
        Self::start_on_a_free_port(extra, env, false).await
    }

    /// [`free_port`] only finds a port free at that moment: another process of a parallel
    /// test can take it before the node binds (CI saw "Address already in use" once). A node
    /// that exits at start is started again on another port, twice at most.
    async fn start_on_a_free_port(
        extra: &[&str],
        env: &[(&str, &str)],
        tls: bool,
    ) -> anyhow::Result<Node> {
        let mut tries = 0;
        loop {
            match Self::start_cmd(free_port(), extra, env, tls).await {
                Err(e) if tries < 2 && e.to_string().starts_with(EXITED_AT_START) => tries += 1,
                result => return result,
            }
        }
    }

    async fn start_cmd(
        port: u16,
        extra: &[&str],
        env: &[(&str, &str)],
        tls: bool,
    ) -> anyhow::Result<Node> {
        let cmd = Command::new(bin("signalling-cluster"));
        Self::spawn(cmd, "127.0.0.1", port, extra, env, tls).await
    }

    /// Starts the node with `cmd` (the binary, or a wrapper such as `ip netns exec NS` that
    /// runs it) listening on `host`:`port`; a `cmd` whose stdout is piped has its log
    /// collected ([`Node::log`]).
    pub async fn spawn(
        mut cmd: Command,
        host: &str,
        port: u16,
        extra: &[&str],
        env: &[(&str, &str)],
        tls: bool,
    ) -> anyhow::Result<Node> {
        cmd.envs(env.iter().copied());
        cmd.args(["--host", host, "--port", &port.to_string()])
            .args(extra)
            .env(
                "SIGNALLING_LOG",
                std::env::var("TEST_NODE_LOG").unwrap_or("warn".into()),
            );
        let mut proc = Proc::spawn(cmd, "signalling-cluster")?;
        let log = proc.child.stdout.take().map(Log::collect);
        let mut node = Node {
            host: host.to_string(),
            port,
            proc,
            log,
        };
        node.wait_healthy(tls).await?;
        Ok(node)
    }

    pub fn url(&self) -> String {
        format!("ws://{}:{}", self.host, self.port)
    }

    /// `GET path` on the node; returns (status, body).
    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        http_get_from(&self.host, self.port, path).await
    }

    /// The WebSocket connections the node holds (`/healthz`).
    pub async fn connections(&self) -> anyhow::Result<u64> {
        let (status, body) = self.get("/healthz").await?;
        anyhow::ensure!(status == 200, "/healthz answered {status}");
        let health: Value = serde_json::from_str(&body)?;
        health["connections"]
            .as_u64()
            .with_context(|| format!("/healthz without connections: {health}"))
    }

    /// Waits until the node counts `n` live nodes in its cluster (`gwc_cluster_nodes`, read
    /// at each liveness tick): a node that joined a moment ago is not yet known to the others,
    /// which would take a resume claim for it as one for a dead node.
    pub async fn wait_cluster(&self, n: usize) -> anyhow::Result<()> {
        let line = format!("gwc_cluster_nodes {n}");
        let what = format!("node on port {} to count {n} nodes", self.port);
        eventually(STEP, &what, || async {
            self.get("/metrics")
                .await
                .is_ok_and(|(_, text)| text.lines().any(|l| l == line))
        })
        .await
    }

    /// Drops `peer`'s connection without a WebSocket close (as a network failure does) and
    /// waits until the node noticed: the connection is gone from its count.
    pub async fn cut(&self, peer: Peer) -> anyhow::Result<()> {
        let before = self.connections().await?;
        drop(peer);
        eventually(
            STEP,
            "the node to notice the dropped connection",
            || async { self.connections().await.is_ok_and(|n| n < before) },
        )
        .await
    }

    async fn wait_healthy(&mut self, tls: bool) -> anyhow::Result<()> {
        let deadline = Instant::now() + STEP;
        loop {
            if let Some(status) = self.proc.child.try_wait()? {
                bail!("{EXITED_AT_START}: {status}");
            }
            let up = if tls {
                TcpStream::connect((self.host.as_str(), self.port))
                    .await
                    .is_ok()
            } else {
                matches!(self.get("/healthz").await, Ok((200, _)))
            };
            if up {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("node on port {} never became healthy", self.port);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A throwaway `redis-server` on a free loopback port, without persistence.
pub struct Redis {
    pub port: u16,
    pub proc: Proc,
    /// A directory of its own (a Sentinel's configuration), removed with it.
    scratch: Option<PathBuf>,
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(dir) = &self.scratch {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Redis {
    pub async fn start() -> anyhow::Result<Redis> {
        Self::start_on(free_port()).await
    }

    /// Starts (or restarts, empty) a server on `port`.
    pub async fn start_on(port: u16) -> anyhow::Result<Redis> {
        Self::start_with(port, &[]).await
    }

    /// A server on `port` with more arguments (`--replicaof HOST PORT`, …).
    pub async fn start_with(port: u16, extra: &[&str]) -> anyhow::Result<Redis> {
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "no", "--loglevel", "warning"])
        .args(extra)
        .stdout(Stdio::null());
        Self::ready(port, Proc::spawn(cmd, "redis-server")?).await
    }

    /// A Sentinel on a free port watching the master on `master` as `name` (quorum 2; a
    /// master silent for 1 s is down).
    pub async fn sentinel(master: u16, name: &str) -> anyhow::Result<Redis> {
        let port = free_port();
        // Sentinel rewrites its configuration file: one of its own.
        let dir = std::env::temp_dir().join(format!("gwc-sentinel-{port}"));
        std::fs::create_dir_all(&dir)?;
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor {name} 127.0.0.1 {master} 2\n\
                 sentinel down-after-milliseconds {name} 1000\n\
                 sentinel failover-timeout {name} 3000\n\
                 sentinel parallel-syncs {name} 1\n",
                dir.display()
            ),
        )?;
        let mut cmd = Command::new("redis-server");
        cmd.arg(&conf)
            .args(["--sentinel", "--loglevel", "warning"])
            .stdout(Stdio::null());
        let mut sentinel = Self::ready(port, Proc::spawn(cmd, "redis-sentinel")?).await?;
        sentinel.scratch = Some(dir);
        Ok(sentinel)
    }

    /// Waits until the server on `port` answers PING.
    async fn ready(port: u16, proc: Proc) -> anyhow::Result<Redis> {
        let deadline = Instant::now() + STEP;
        loop {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await {
                let mut buf = [0u8; 7];
                if s.write_all(b"PING\r\n").await.is_ok()
                    && s.read_exact(&mut buf).await.is_ok()
                    && &buf == b"+PONG\r\n"
                {
                    return Ok(Redis {
                        port,
                        proc,
                        scratch: None,
                    });
                }
            }
            if Instant::now() > deadline {
                bail!("redis-server on port {port} did not start");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

/// Where a test's peers connect: one node, or several nodes on one Redis. Peer `i` of a test
/// connects to `url(i)`, so in a cluster the peers of a test sit on different nodes.
pub struct Topo {
    pub nodes: Vec<Node>,
    pub redis: Option<Redis>,
}

impl Topo {
    pub async fn single(extra: &[&str]) -> anyhow::Result<Topo> {
        Ok(Topo {
            nodes: vec![Node::start(extra).await?],
            redis: None,
        })
    }

    pub async fn cluster(n: usize, extra: &[&str]) -> anyhow::Result<Topo> {
        let redis = Redis::start().await?;
        let mut nodes = Vec::new();
        for i in 0..n {
            nodes.push(Node::join(&redis, &format!("node-{i}"), extra).await?);
        }
        for node in &nodes {
            node.wait_cluster(n).await?;
        }
        Ok(Topo {
            nodes,
            redis: Some(redis),
        })
    }

    pub fn url(&self, i: usize) -> String {
        self.nodes[i % self.nodes.len()].url()
    }

    /// Waits until `peer` sees `id` among the producers (or the consumers): what one node
    /// registered reaches the others through the cluster, so tests that act from another
    /// node wait for it first.
    pub async fn visible(peer: &mut Peer, id: &str, consumers: bool) -> anyhow::Result<Value> {
        let (ask, field) = if consumers {
            ("listConsumers", "consumers")
        } else {
            ("list", "producers")
        };
        Self::list_until(peer, consumers, |list| {
            list[field]
                .as_array()
                .is_some_and(|a| a.iter().any(|p| p["id"] == id))
        })
        .await
        .with_context(|| format!("{id} never appeared in {ask}"))
    }

    /// Polls `list` (or `listConsumers`) on `peer` until `pred` holds for the answer.
    pub async fn list_until(
        peer: &mut Peer,
        consumers: bool,
        pred: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let ask = if consumers { "listConsumers" } else { "list" };
        let deadline = Instant::now() + STEP;
        loop {
            peer.send(json!({ "type": ask })).await?;
            let list = peer.wait_for(ask).await?;
            if pred(&list) {
                return Ok(list);
            }
            if Instant::now() > deadline {
                bail!("{ask} never satisfied the condition; last: {list}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Minimal HTTP/1.0 GET, enough for health endpoints.
pub async fn http_get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    http_get_from("127.0.0.1", port, path).await
}

/// [`http_get`] on `host`.
pub async fn http_get_from(host: &str, port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect((host, port)).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await?;
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status")?;
    let body = buf.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Ok((status, body))
}

/// Consumer `c` starts a session with producer `p` once its node lists `p` (as
/// `startSession` from a consumer does): both sides told; returns the session id.
pub async fn start_session(p: &mut Peer, c: &mut Peer) -> anyhow::Result<String> {
    Topo::visible(c, &p.id, false).await?;
    c.send(json!({"type": "startSession", "peerId": p.id}))
        .await?;
    let sid = c.expect("sessionStarted").await?["sessionId"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    p.expect("startSession").await?;
    Ok(sid)
}

/// Waits until `f` returns true, polling; fails after `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut f: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("timed out waiting for {what}")
}

/// A self-signed certificate for `localhost` written to `dir` as `cert.pem` and `key.pem`;
/// returns their paths and the certificate (DER) to trust.
pub fn self_signed(
    dir: &std::path::Path,
) -> anyhow::Result<(PathBuf, PathBuf, rustls::pki_types::CertificateDer<'static>)> {
    std::fs::create_dir_all(dir)?;
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, generated.cert.pem())?;
    std::fs::write(&key, generated.signing_key.serialize_pem())?;
    Ok((cert, key, generated.cert.der().clone()))
}
