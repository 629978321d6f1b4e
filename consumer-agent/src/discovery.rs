//! Finding a producer by name: a short listener session on the signalling server.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use proto::{ClientMessage, PeerRole, PeerStatus, ServerMessage};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

/// The producer did not show up in time (exit code 3).
#[derive(Debug, thiserror::Error)]
#[error("no producer named '{name}' appeared on {server} within {secs} s")]
pub struct NotFound {
    pub name: String,
    pub server: String,
    pub secs: u64,
}

/// Returns the peer id of a producer whose `meta.name` is `name`, waiting up to `timeout` for
/// one to register.
pub fn find_by_name(server: &str, name: &str, timeout: Duration) -> anyhow::Result<String> {
    let deadline = Instant::now() + timeout;
    let (mut ws, _) =
        tungstenite::connect(server).with_context(|| format!("cannot connect to {server}"))?;
    set_read_timeout(&ws, Duration::from_millis(200))?;

    // Listen first, then list: a producer registering in between is seen either way.
    send(
        &mut ws,
        ClientMessage::SetPeerStatus(PeerStatus {
            roles: vec![PeerRole::Listener],
            meta: None,
            peer_id: None,
        }),
    )?;
    send(&mut ws, ClientMessage::List)?;

    let matches = |meta: &Option<serde_json::Value>| {
        meta.as_ref()
            .and_then(|m| m.get("name"))
            .and_then(|n| n.as_str())
            == Some(name)
    };
    while Instant::now() < deadline {
        let text = match ws.read() {
            Ok(Message::Text(t)) => t,
            Ok(_) => continue,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => bail!("signalling connection to {server} failed: {e}"),
        };
        let found = match ServerMessage::parse(&text) {
            Ok(ServerMessage::List { producers }) => producers
                .into_iter()
                .find(|p| matches(&p.meta))
                .map(|p| p.id),
            Ok(ServerMessage::PeerStatusChanged(st)) if st.producing() && matches(&st.meta) => {
                st.peer_id
            }
            Ok(ServerMessage::Error { details, .. }) => bail!("server error: {details}"),
            _ => None,
        };
        if let Some(id) = found {
            let _ = ws.close(None);
            return Ok(id);
        }
    }
    let _ = ws.close(None);
    Err(NotFound {
        name: name.to_string(),
        server: server.to_string(),
        secs: timeout.as_secs(),
    }
    .into())
}

fn send(ws: &mut WebSocket<MaybeTlsStream<TcpStream>>, msg: ClientMessage) -> anyhow::Result<()> {
    ws.send(Message::text(msg.to_json()))
        .context("cannot send to the signalling server")
}

fn set_read_timeout(ws: &WebSocket<MaybeTlsStream<TcpStream>>, d: Duration) -> anyhow::Result<()> {
    match ws.get_ref() {
        MaybeTlsStream::Plain(s) => s.set_read_timeout(Some(d))?,
        _ => bail!("only ws:// is supported for discovery yet"),
    }
    Ok(())
}
