//! The anchor of the `sfu` scenario: Janus (Debian's `janus`, 1.1.2) with its streaming plugin,
//! one RTP mountpoint fed a VP8 stream encoded as the origin encodes it, and the HTTP API a
//! light viewer watches through (`create`, `attach`, `watch` → Janus' offer → our answer with
//! `start`, our candidate trickled).
//!
//! Janus gathers its ICE candidates with libnice, which leaves loopback out: it is told to use
//! only the address the viewers announce (`ice_enforce_list`), so both ends stay on this
//! machine. Only the streaming plugin and the HTTP transport are loaded (a folder of links to
//! them), and sessions never time out (the viewers do not long-poll).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::procs::{free_port, Proc};

const LIB: &str = "/usr/lib/x86_64-linux-gnu/janus";
pub const MOUNTPOINT: u64 = 1;

/// A running Janus and the GStreamer pipeline feeding its mountpoint.
pub struct Janus {
    pub http_port: u16,
    pub janus: Proc,
    /// (kept for its drop, which stops the feed)
    _feed: Proc,
    dir: PathBuf,
}

impl Drop for Janus {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether `janus` and `gst-launch-1.0` are installed (`./dev setup` installs both).
pub fn available() -> Result<()> {
    for bin in ["janus", "gst-launch-1.0"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {bin}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !found {
            bail!("{bin} is not installed (./dev setup installs it)");
        }
    }
    if !Path::new(LIB)
        .join("plugins/libjanus_streaming.so")
        .exists()
    {
        bail!("no Janus streaming plugin under {LIB}");
    }
    Ok(())
}

/// The origin's VP8 settings (producer-agent's `encoding.rs`, shared encoding) at 2 Mbit/s,
/// except a keyframe every 2 s: an RTP mountpoint cannot ask its feed for one, so a viewer
/// joining Janus waits for the next.
fn feed(port: u16) -> Command {
    let pipeline = format!(
        "videotestsrc is-live=true pattern=smpte ! video/x-raw,width=1280,height=720,framerate=30/1 \
         ! videoconvert ! vp8enc deadline=1 target-bitrate=2000000 cpu-used=-16 keyframe-max-dist=60 \
         end-usage=cbr buffer-initial-size=100 buffer-optimal-size=120 buffer-size=150 \
         max-intra-bitrate=250 error-resilient=default lag-in-frames=0 threads=2 \
         ! rtpvp8pay pt=96 picture-id-mode=15-bit mtu=1200 ! udpsink host=127.0.0.1 port={port} sync=false"
    );
    let mut cmd = Command::new("gst-launch-1.0");
    cmd.arg("-q").args(pipeline.split_whitespace());
    cmd
}

impl Janus {
    /// Starts Janus announcing `host` and its feed; waits until the HTTP API answers.
    pub async fn start(host: std::net::IpAddr, log: Option<&PathBuf>) -> Result<Janus> {
        available()?;
        let dir = std::env::temp_dir().join(format!("loadgen-janus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["conf", "plugins", "transports", "none"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        std::os::unix::fs::symlink(
            Path::new(LIB).join("plugins/libjanus_streaming.so"),
            dir.join("plugins/libjanus_streaming.so"),
        )?;
        std::os::unix::fs::symlink(
            Path::new(LIB).join("transports/libjanus_http.so"),
            dir.join("transports/libjanus_http.so"),
        )?;
        let (http_port, rtp_port) = (free_port(), free_udp_port()?);
        let conf = dir.join("conf");
        std::fs::write(
            conf.join("janus.jcfg"),
            format!(
                "general: {{\n configs_folder = \"{c}\"\n plugins_folder = \"{p}\"\n \
                 transports_folder = \"{t}\"\n events_folder = \"{n}\"\n loggers_folder = \"{n}\"\n \
                 debug_level = 3\n session_timeout = 0\n server_name = \"loadgen\"\n}}\n\
                 media: {{\n rtp_port_range = \"30000-60000\"\n}}\n\
                 nat: {{\n ice_enforce_list = \"{host}\"\n ignore_mdns = true\n}}\n",
                c = conf.display(),
                p = dir.join("plugins").display(),
                t = dir.join("transports").display(),
                n = dir.join("none").display(),
            ),
        )?;
        std::fs::write(
            conf.join("janus.transport.http.jcfg"),
            format!(
                "general: {{\n json = \"compact\"\n base_path = \"/janus\"\n http = true\n \
                 port = {http_port}\n ip = \"127.0.0.1\"\n https = false\n}}\n\
                 admin: {{\n admin_http = false\n}}\n"
            ),
        )?;
        std::fs::write(
            conf.join("janus.plugin.streaming.jcfg"),
            format!(
                "general: {{\n}}\nbench: {{\n type = \"rtp\"\n id = {MOUNTPOINT}\n \
                 description = \"loadgen\"\n media = ({{\n  type = \"video\"\n  mid = \"v\"\n  \
                 port = {rtp_port}\n  pt = 96\n  codec = \"vp8\"\n }})\n}}\n"
            ),
        )?;
        let mut cmd = Command::new("janus");
        cmd.arg("-C")
            .arg(conf.join("janus.jcfg"))
            .arg("-F")
            .arg(&conf)
            .args(["-o", "-N"]);
        let janus = Proc::spawn(cmd, log)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(v) = request(http_port, "GET", "/janus/info", None).await {
                if v["janus"] == "server_info" {
                    break;
                }
            }
            if Instant::now() > deadline {
                bail!("Janus' HTTP API did not answer on port {http_port} within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let feed = Proc::spawn(feed(rtp_port), log)?;
        Ok(Janus {
            http_port,
            janus,
            _feed: feed,
            dir,
        })
    }
}

fn free_udp_port() -> Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// One HTTP/1.1 request to `127.0.0.1:port` (connection closed after it); the JSON body of
/// the answer.
async fn request(port: u16, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body.as_bytes()).await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw);
    let (status, rest) = text.split_once("\r\n\r\n").context("no HTTP header end")?;
    if status.split_whitespace().nth(1) != Some("200") {
        bail!("{method} {path}: {status}");
    }
    let chunked = status
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(rest).with_context(|| format!("{method} {path}: bad chunks: {rest}"))?
    } else {
        rest.to_string()
    };
    serde_json::from_str(&body).with_context(|| format!("{method} {path}: {body}"))
}

/// The body of a `Transfer-Encoding: chunked` answer (Janus' answers are).
fn dechunk(mut rest: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let n = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if n == 0 {
            return Some(out);
        }
        out += after.get(..n)?;
        rest = after.get(n..)?.strip_prefix("\r\n")?;
    }
}

fn tx() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("t{}", N.fetch_add(1, Ordering::Relaxed))
}

/// A viewer's Janus session and handle, and the offer Janus made it.
pub struct Watch {
    port: u16,
    path: String,
    pub offer: String,
}

impl Watch {
    /// `create`, `attach` the streaming plugin, `watch` the mountpoint: Janus' offer.
    pub async fn start(port: u16, mountpoint: u64) -> Result<Watch> {
        let call = |path: String, body: Value| async move {
            let v = request(port, "POST", &path, Some(&body)).await?;
            if v["janus"] == "error" {
                bail!("Janus refused {body}: {v}");
            }
            anyhow::Ok(v)
        };
        let v = call(
            "/janus".into(),
            json!({"janus": "create", "transaction": tx()}),
        )
        .await?;
        let session = v["data"]["id"].as_u64().context("create: no id")?;
        let v = call(
            format!("/janus/{session}"),
            json!({"janus": "attach", "plugin": "janus.plugin.streaming", "transaction": tx()}),
        )
        .await?;
        let handle = v["data"]["id"].as_u64().context("attach: no id")?;
        let path = format!("/janus/{session}/{handle}");
        call(
            path.clone(),
            json!({"janus": "message", "transaction": tx(), "body": {"request": "watch", "id": mountpoint}}),
        )
        .await?;
        // the offer comes as an event: long-poll the session for it
        let deadline = Instant::now() + Duration::from_secs(30);
        let offer = loop {
            let v = request(port, "GET", &format!("/janus/{session}?maxev=10"), None).await?;
            let events = match v {
                Value::Array(a) => a,
                v => vec![v],
            };
            if let Some(sdp) = events.iter().find_map(|e| {
                e["jsep"]["sdp"]
                    .as_str()
                    .filter(|_| e["jsep"]["type"] == "offer")
            }) {
                break sdp.to_string();
            }
            if let Some(e) = events
                .iter()
                .find(|e| e["janus"] == "hangup" || e["plugindata"]["data"]["error"].is_string())
            {
                bail!("Janus: {e}");
            }
            if Instant::now() > deadline {
                bail!("no offer from Janus within 30 s");
            }
        };
        Ok(Watch { port, path, offer })
    }

    /// `start` with our answer, then our candidate and the end of them.
    pub async fn answer(&self, sdp: &str, candidate: &str) -> Result<()> {
        let msg = json!({"janus": "message", "transaction": tx(), "body": {"request": "start"},
            "jsep": {"type": "answer", "sdp": sdp}});
        request(self.port, "POST", &self.path, Some(&msg)).await?;
        for c in [
            json!({"candidate": candidate, "sdpMid": "v", "sdpMLineIndex": 0}),
            json!({"completed": true}),
        ] {
            let msg = json!({"janus": "trickle", "transaction": tx(), "candidate": c});
            request(self.port, "POST", &self.path, Some(&msg)).await?;
        }
        Ok(())
    }
}
