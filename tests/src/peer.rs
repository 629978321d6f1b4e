//! A WebSocket peer of a node speaking the protocol's JSON (v1, or v2 by subprotocol, over
//! TLS too), and upgrade attempts that may be refused.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::STEP;

/// A WebSocket peer speaking JSON to a node.
pub struct Peer {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub id: String,
    /// The `welcome` as received.
    pub welcome: Value,
    /// The subprotocol the server chose, if any.
    pub subprotocol: Option<String>,
    /// Headers of the upgrade response.
    pub headers: tokio_tungstenite::tungstenite::http::HeaderMap,
    /// Text frames received after the `welcome` (what a v2 client reports as `last`).
    pub frames: u64,
    /// Ping frames received from the node (answered by the WebSocket library).
    pub pings: u64,
}

impl Peer {
    /// Connects as a v1 client (no subprotocol) and reads the `welcome`.
    pub async fn connect(url: &str) -> anyhow::Result<Peer> {
        Self::connect_with(url, None).await
    }

    /// Connects offering `subprotocol` and reads the `welcome`.
    pub async fn connect_with(url: &str, subprotocol: Option<&str>) -> anyhow::Result<Peer> {
        Self::connect_full(url, subprotocol, None).await
    }

    /// Connects over `wss://` trusting `tls` and reads the `welcome`.
    pub async fn connect_tls(url: &str, tls: Arc<rustls::ClientConfig>) -> anyhow::Result<Peer> {
        Self::connect_full(url, None, Some(tls)).await
    }

    async fn connect_full(
        url: &str,
        subprotocol: Option<&str>,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> anyhow::Result<Peer> {
        let mut req = url.into_client_request()?;
        if let Some(p) = subprotocol {
            req.headers_mut()
                .insert("Sec-WebSocket-Protocol", p.parse()?);
        }
        let connector = tls.map(tokio_tungstenite::Connector::Rustls);
        let (ws, resp) =
            tokio_tungstenite::connect_async_tls_with_config(req, None, false, connector).await?;
        let subprotocol = resp
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let mut peer = Peer {
            ws,
            id: String::new(),
            welcome: Value::Null,
            subprotocol,
            headers: resp.headers().clone(),
            frames: 0,
            pings: 0,
        };
        let welcome = peer.expect("welcome").await?;
        peer.id = welcome["peerId"]
            .as_str()
            .context("welcome without peerId")?
            .to_string();
        peer.welcome = welcome;
        peer.frames = 0;
        Ok(peer)
    }

    pub async fn send(&mut self, v: Value) -> anyhow::Result<()> {
        self.send_text(v.to_string()).await
    }

    pub async fn send_text(&mut self, text: String) -> anyhow::Result<()> {
        self.ws.send(Message::text(text)).await?;
        Ok(())
    }

    pub async fn send_raw(&mut self, msg: Message) -> anyhow::Result<()> {
        self.ws.send(msg).await?;
        Ok(())
    }

    /// Next text message as JSON, or an error on timeout/close.
    pub async fn recv(&mut self) -> anyhow::Result<Value> {
        self.recv_within(STEP).await
    }

    pub async fn recv_within(&mut self, within: Duration) -> anyhow::Result<Value> {
        let text = self.recv_text_within(within).await?;
        Ok(serde_json::from_str(&text)?)
    }

    /// Next text message exactly as the node wrote it.
    pub async fn recv_text(&mut self) -> anyhow::Result<String> {
        self.recv_text_within(STEP).await
    }

    async fn recv_text_within(&mut self, within: Duration) -> anyhow::Result<String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .context("timed out waiting for a message")?;
            match msg {
                Some(Ok(Message::Text(t))) => {
                    self.frames += 1;
                    return Ok(t.as_str().to_string());
                }
                Some(Ok(Message::Close(c))) => bail!("connection closed: {c:?}"),
                Some(Ok(Message::Ping(_))) => self.pings += 1,
                Some(Ok(_)) => continue,
                Some(Err(e)) => bail!("connection error: {e}"),
                None => bail!("connection ended"),
            }
        }
    }

    /// Next message, which must be of `kind`.
    pub async fn expect(&mut self, kind: &str) -> anyhow::Result<Value> {
        let v = self.recv().await?;
        if v["type"] != kind {
            bail!("expected '{kind}', got {v}");
        }
        Ok(v)
    }

    /// Skips messages until one of `kind` arrives.
    pub async fn wait_for(&mut self, kind: &str) -> anyhow::Result<Value> {
        loop {
            let v = self.recv().await?;
            if v["type"] == kind {
                return Ok(v);
            }
        }
    }

    /// Skips messages until one matches `pred`.
    pub async fn wait_until(&mut self, pred: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
        loop {
            let v = self.recv().await?;
            if pred(&v) {
                return Ok(v);
            }
        }
    }

    /// Asserts nothing arrives for `d`.
    pub async fn assert_silent(&mut self, d: Duration) -> anyhow::Result<()> {
        match self.recv_within(d).await {
            Err(e) if e.to_string().contains("timed out") => Ok(()),
            Ok(v) => bail!("expected silence, got {v}"),
            Err(e) => Err(e),
        }
    }

    /// Waits for the server to close the connection; returns the close code.
    pub async fn closed(&mut self) -> anyhow::Result<Option<u16>> {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .context("connection not closed in time")?
            {
                Some(Ok(Message::Close(c))) => return Ok(c.map(|c| c.code.into())),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Ok(None),
            }
        }
    }

    /// Registers with roles and meta, as upstream clients do.
    pub async fn set_status(&mut self, roles: &[&str], meta: Value) -> anyhow::Result<()> {
        self.send(json!({"type": "setPeerStatus", "roles": roles, "meta": meta}))
            .await
    }

    /// Waits until the node has processed everything this peer sent so far: a peer's
    /// messages are handled in order, so the answer to a `list` sent now proves it. Messages
    /// arriving before that answer are discarded.
    pub async fn sync(&mut self) -> anyhow::Result<()> {
        self.send(json!({"type": "list"})).await?;
        self.wait_for("list").await.map(drop)
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    /// The raw socket, for tests that misbehave on purpose.
    pub fn socket(&mut self) -> &mut WebSocketStream<MaybeTlsStream<TcpStream>> {
        &mut self.ws
    }
}

/// An upgrade offering v2 with `bearer` in the Authorization header: `None` if accepted,
/// else the HTTP status and body of the refusal.
pub async fn upgrade(url: &str, bearer: Option<&str>) -> anyhow::Result<Option<(u16, String)>> {
    let mut req = url.into_client_request()?;
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", proto_v2().parse()?);
    if let Some(t) = bearer {
        req.headers_mut()
            .insert("Authorization", format!("Bearer {t}").parse()?);
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => Ok(None),
        Err(tungstenite::Error::Http(resp)) => {
            let body = resp.body().as_deref().unwrap_or_default();
            Ok(Some((
                resp.status().as_u16(),
                String::from_utf8_lossy(body).into(),
            )))
        }
        Err(e) => Err(e.into()),
    }
}

/// The v2 subprotocol.
fn proto_v2() -> &'static str {
    "gstwebrtc-cluster.v2"
}
