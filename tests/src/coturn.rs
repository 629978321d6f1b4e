//! A real coturn (Debian's `turnserver`, installed by `./dev setup`) for the TURN tests:
//! coturn's REST-API auth (`use-auth-secret`) with the test's secret, listening and relaying
//! on 127.0.0.1 only, its log kept (`-v`: every allocation with its username), and coturn's
//! own client (`turnutils_uclient`) to allocate with a credential.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::{free_port, Log, Proc};

pub struct Coturn {
    pub port: u16,
    log: Log,
    dir: PathBuf,
    _proc: Proc,
}

impl Coturn {
    /// Starts coturn with `secret` as its `static-auth-secret`; waits until it listens.
    pub async fn start(secret: &str) -> anyhow::Result<Coturn> {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("gwc-coturn-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut cmd = Command::new("turnserver");
        cmd.args(["-n", "-v", "--use-auth-secret", "--realm", "gwc.test"])
            .arg(format!("--static-auth-secret={secret}"))
            .args(["--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1"])
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
            .args(["-p", &self.port.to_string(), "127.0.0.1"])
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

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
