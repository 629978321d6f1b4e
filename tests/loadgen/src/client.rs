//! A minimal WebSocket signalling client for load: plain `ws://` on loopback, source addresses
//! spread over 127.0.0.2-127.0.0.33 so tens of thousands of connections do not run out of
//! ephemeral ports.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// How long any single expected message may take before the scenario fails.
pub const STEP: Duration = Duration::from_secs(60);

static NEXT_SRC: AtomicUsize = AtomicUsize::new(0);
const SOURCES: usize = 32;

pub struct Peer {
    pub ws: WebSocketStream<TcpStream>,
    pub id: String,
}

/// Opens a TCP connection to `127.0.0.1:port` from the next loopback source address.
async fn tcp(port: u16) -> Result<TcpStream> {
    let n = NEXT_SRC.fetch_add(1, Ordering::Relaxed) % SOURCES;
    let src = Ipv4Addr::new(127, 0, 0, 2 + n as u8);
    let sock = TcpSocket::new_v4()?;
    // Pick the source port at connect time (4-tuple known), not at bind: otherwise every
    // socket, TIME_WAIT ones included, holds a port of the source address for everyone.
    const IP_BIND_ADDRESS_NO_PORT: libc::c_int = 24;
    let one: libc::c_int = 1;
    // SAFETY: setsockopt on a socket we own, with a valid int option.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            IP_BIND_ADDRESS_NO_PORT,
            &one as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    sock.set_reuseaddr(true)?;
    sock.bind(SocketAddr::new(src.into(), 0))?;
    let stream = sock
        .connect(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port))
        .await
        .with_context(|| format!("connect to port {port} from {src}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

impl Peer {
    /// Connects (v1, no subprotocol) and reads the `welcome`.
    pub async fn connect(port: u16) -> Result<Peer> {
        let stream = tcp(port).await?;
        let (ws, _) =
            tokio_tungstenite::client_async(format!("ws://127.0.0.1:{port}/"), stream).await?;
        let mut peer = Peer {
            ws,
            id: String::new(),
        };
        let welcome = peer.expect("welcome").await?;
        peer.id = welcome["peerId"]
            .as_str()
            .context("welcome without peerId")?
            .to_string();
        Ok(peer)
    }

    pub async fn send(&mut self, v: Value) -> Result<()> {
        self.send_text(v.to_string()).await
    }

    pub async fn send_text(&mut self, text: String) -> Result<()> {
        self.ws.send(Message::text(text)).await?;
        Ok(())
    }

    /// Next text frame, unparsed.
    pub async fn recv_text(&mut self) -> Result<String> {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .context("timed out waiting for a message")?;
            match msg {
                Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
                Some(Ok(Message::Close(c))) => bail!("connection closed: {c:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => bail!("connection error: {e}"),
                None => bail!("connection ended"),
            }
        }
    }

    pub async fn recv(&mut self) -> Result<Value> {
        Ok(serde_json::from_str(&self.recv_text().await?)?)
    }

    /// Next message, which must be of `kind`.
    pub async fn expect(&mut self, kind: &str) -> Result<Value> {
        let v = self.recv().await?;
        if v["type"] != kind {
            bail!("expected '{kind}', got {v}");
        }
        Ok(v)
    }

    /// Skips messages until one of `kind` arrives.
    pub async fn wait_for(&mut self, kind: &str) -> Result<Value> {
        loop {
            let v = self.recv().await?;
            if v["type"] == kind {
                return Ok(v);
            }
        }
    }

    pub async fn set_status(&mut self, roles: &[&str]) -> Result<()> {
        self.send(json!({"type": "setPeerStatus", "roles": roles, "meta": null}))
            .await
    }

    /// Waits until the server processed everything sent so far (answers keep request order).
    pub async fn sync(&mut self) -> Result<()> {
        self.send(json!({"type": "list"})).await?;
        self.wait_for("list").await.map(drop)
    }

    /// Polls `list` (producers) or `listConsumers` until it holds at least `n` entries or
    /// `within` passes; returns the last count seen.
    pub async fn count_until(
        &mut self,
        consumers: bool,
        n: usize,
        within: Duration,
    ) -> Result<usize> {
        let (ask, field) = if consumers {
            ("listConsumers", "consumers")
        } else {
            ("list", "producers")
        };
        let deadline = tokio::time::Instant::now() + within;
        loop {
            self.send(json!({ "type": ask })).await?;
            let v = loop {
                let v = self.recv().await?;
                if v["type"] == ask {
                    break v;
                }
                if v["type"] == "error" {
                    bail!("{ask} refused: {v}");
                }
            };
            let seen = v[field].as_array().map_or(0, |a| a.len());
            if seen >= n || tokio::time::Instant::now() > deadline {
                return Ok(seen);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
