//! A real coturn (Debian's `turnserver`, installed by `./dev setup`) for the TURN tests:
//! coturn's REST-API auth (`use-auth-secret`) with the test's secret, listening and relaying
//! on 127.0.0.1 only, or on the address of a network namespace of the test's own; its log
//! kept (`-v`: every allocation with its username), and coturn's own client
//! (`turnutils_uclient`) to allocate with a credential.
//!
//! GStreamer's agents need the namespace: libnice pins each socket to its interface
//! (`IP_UNICAST_IF`) and leaves loopback out, so no agent socket can reach 127.0.0.1. Through
//! the namespace's link, the host end's candidate reaches coturn.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::netns::Namespace;
use crate::{free_port, Log, Proc};

pub struct Coturn {
    /// Where it listens and relays.
    pub host: String,
    pub port: u16,
    log: Log,
    dir: PathBuf,
    _proc: Proc,
}

impl Coturn {
    /// Starts coturn on 127.0.0.1 with `secret` as its `static-auth-secret`; waits until it
    /// listens.
    pub async fn start(secret: &str) -> anyhow::Result<Coturn> {
        Coturn::spawn(Command::new("turnserver"), "127.0.0.1", secret).await
    }

    /// The same inside `ns`, on its address (routed back to the host for relayed peers).
    pub async fn start_in(ns: &Namespace, secret: &str) -> anyhow::Result<Coturn> {
        ns.route_to_host()?;
        let cmd = ns.command(Path::new("turnserver"));
        Coturn::spawn(cmd, &ns.peers_address(), secret).await
    }

    async fn spawn(mut cmd: Command, host: &str, secret: &str) -> anyhow::Result<Coturn> {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("gwc-coturn-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        cmd.args(["-n", "-v", "--use-auth-secret", "--realm", "gwc.test"])
            .arg(format!("--static-auth-secret={secret}"))
            .args(["--listening-ip", host, "--relay-ip", host])
            .args(["--listening-port", &port.to_string()])
            .args([
                "--no-tls",
                "--no-dtls",
                "--no-cli",
                "--allow-loopback-peers",
            ])
            .args(["--log-file", "stdout", "--simple-log"])
            .arg("--pidfile")
            .arg(dir.join("turnserver.pid"))
            .arg("--userdb")
            .arg(dir.join("turndb"))
            .stdout(Stdio::piped());
        let mut proc = Proc::spawn(cmd, "turnserver")?;
        let log = Log::collect(proc.child.stdout.take().context("coturn's stdout")?);
        let coturn = Coturn {
            host: host.to_string(),
            port,
            log,
            dir,
            _proc: proc,
        };
        coturn
            .wait_log("Total General servers", Duration::from_secs(10))
            .await
            .context("coturn did not start")?;
        Ok(coturn)
    }

    /// coturn's log so far.
    pub fn lines(&self) -> Vec<String> {
        self.log.lines()
    }

    /// Whether coturn's log has a line containing `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.log.contains(needle)
    }

    pub async fn wait_log(&self, needle: &str, limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        while !self.logged(needle) {
            anyhow::ensure!(start.elapsed() < limit, "coturn logged no '{needle}'");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Allocates with `username`/`credential` through coturn's own client (two clients that
    /// relay to each other, a few messages): whether it succeeded, and its output.
    pub async fn allocate(
        &self,
        username: &str,
        credential: &str,
    ) -> anyhow::Result<(bool, String)> {
        let out = tokio::process::Command::new("turnutils_uclient")
            .args(["-y", "-n", "2", "-m", "1"])
            .args(["-u", username, "-w", credential])
            .args(["-p", &self.port.to_string(), &self.host])
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(30), out)
            .await
            .context("turnutils_uclient hung")??;
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        Ok((out.status.success(), text))
    }
}

/// A file holding `secret` (with the line end a `kubectl create secret --from-file` keeps),
/// for `--turn-secret-file`, in a directory named after `tag`.
pub fn secret_file(tag: &str, secret: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("gwc-turn-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("turn-secret");
    std::fs::write(&file, format!("{secret}\n"))?;
    Ok(file)
}

/// A coturn REST credential minted here (as a node does), for `id`, expiring at
/// `expiry_unix`: (username, credential).
pub fn mint(secret: &str, expiry_unix: u64, id: &str) -> (String, String) {
    use base64::Engine;
    let user = format!("{expiry_unix}:{id}");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
    let tag = ring::hmac::sign(&key, user.as_bytes());
    let credential = base64::engine::general_purpose::STANDARD.encode(tag.as_ref());
    (user, credential)
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
