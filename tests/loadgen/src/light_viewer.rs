//! The light viewer: a real WebRTC peer on str0m (rtp mode, openssl DTLS), hundreds of them as
//! tasks of one process. Each asks for a session through a signalling node (v1: `list` to find
//! the producer by `meta.name`, `startSession`, the producer's offer answered, ICE trickled)
//! or through Janus' HTTP API (`janus.rs`), has its own UDP socket on the machine's
//! non-loopback address (libnice, which GStreamer and Janus use, leaves loopback out of its
//! host candidates), and lets str0m do ICE, DTLS-SRTP and RTCP (receiver reports, NACK,
//! TWCC feedback). Nothing is decoded: `frames.rs` counts frames, losses and arrival times.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use serde_json::{json, Value};
use str0m::change::SdpOffer;
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio_tungstenite::tungstenite::Message;

use crate::client::Peer;
use crate::frames::Tally;
use crate::janus;

/// Where a viewer asks for its session.
#[derive(Clone, Debug)]
pub enum Via {
    /// A signalling node on `127.0.0.1:port`; the producer whose `meta.name` is `producer`.
    Node { port: u16, producer: String },
    /// Janus' HTTP API on `127.0.0.1:port`, streaming mountpoint `mountpoint`.
    Janus { port: u16, mountpoint: u64 },
}

/// What a viewer measured so far, read by the scenario while it runs.
pub struct Shared {
    pub tally: Tally,
    /// When the viewer asked for its session (`startSession`, Janus' `watch`).
    pub asked_at: Option<Instant>,
    pub connected: bool,
    /// Why it stopped, if it did.
    pub ended: Option<String>,
}

impl Shared {
    /// Session asked → first decodable frame, ms.
    pub fn first_frame_ms(&self) -> Option<u64> {
        let (a, f) = (self.asked_at?, self.tally.first_frame_at?);
        Some(f.saturating_duration_since(a).as_millis() as u64)
    }
}

pub type Stats = Arc<Mutex<Shared>>;

/// A running viewer; dropping it ends its task (and so its session and socket).
pub struct Viewer {
    pub stats: Stats,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Viewer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Viewer {
    /// Starts a viewer announcing `host` (a non-loopback address of this machine).
    pub fn spawn(via: Via, host: IpAddr, hashing: bool) -> Viewer {
        let stats = Arc::new(Mutex::new(Shared {
            tally: Tally::hashing(hashing),
            asked_at: None,
            connected: false,
            ended: None,
        }));
        let keep = stats.clone();
        let task = tokio::spawn(async move {
            let res = run(via, host, &keep).await;
            let why = match res {
                Ok(()) => "session ended".to_string(),
                Err(e) => format!("{e:#}"),
            };
            keep.lock().unwrap().ended = Some(why);
        });
        Viewer { stats, task }
    }

    pub fn frames(&self) -> u64 {
        self.stats.lock().unwrap().tally.frames
    }
}

/// The first IPv4 address of an interface that is up and not loopback.
pub fn host_address() -> Result<IpAddr> {
    let mut ifs: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we free below; we only read it in between.
    if unsafe { libc::getifaddrs(&mut ifs) } != 0 {
        bail!("getifaddrs: {}", std::io::Error::last_os_error());
    }
    let mut found = None;
    let mut cur = ifs;
    while !cur.is_null() {
        // SAFETY: a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        let up = ifa.ifa_flags & libc::IFF_UP as u32 != 0;
        let lo = ifa.ifa_flags & libc::IFF_LOOPBACK as u32 != 0;
        if up && !lo && !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points at a sockaddr whose family we check first.
            let family = unsafe { (*ifa.ifa_addr).sa_family } as i32;
            if family == libc::AF_INET {
                // SAFETY: an AF_INET address is a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                if !ip.is_link_local() {
                    found = Some(IpAddr::V4(ip));
                    break;
                }
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: the list getifaddrs allocated.
    unsafe { libc::freeifaddrs(ifs) };
    found.context("no non-loopback IPv4 address: WebRTC peers here announce one")
}

async fn run(via: Via, host: IpAddr, stats: &Stats) -> Result<()> {
    let socket = UdpSocket::bind(SocketAddr::new(host, 0))
        .await
        .with_context(|| format!("bind UDP on {host}"))?;
    let local = socket.local_addr()?;
    let mut rtc = Rtc::builder()
        .set_rtp_mode(true)
        .clear_codecs()
        .enable_vp8(true)
        .build(Instant::now());
    let cand = Candidate::host(local, "udp").context("host candidate")?;
    let cand_line = cand.to_sdp_string();
    rtc.add_local_candidate(cand);

    // after the answer, a node may still trickle candidates (Janus put its own in the offer)
    let mut signal: Option<NodeSignal> = match via {
        Via::Node { port, producer } => {
            let mut peer = Peer::connect(port).await?;
            let id = producer_id(&mut peer, &producer).await?;
            stats.lock().unwrap().asked_at = Some(Instant::now());
            peer.send(json!({"type": "startSession", "peerId": id}))
                .await?;
            let session = peer.wait_for("sessionStarted").await?["sessionId"]
                .as_str()
                .context("sessionStarted without sessionId")?
                .to_string();
            // the offer, with any candidates trickled before it kept for after
            let mut early = Vec::new();
            let offer = loop {
                let v = peer.recv().await?;
                match v["type"].as_str() {
                    Some("peer") if v["sdp"]["type"] == "offer" => {
                        break v["sdp"]["sdp"]
                            .as_str()
                            .context("offer without sdp")?
                            .to_string()
                    }
                    Some("peer") => early.push(v),
                    Some("endSession") => bail!("session ended before the offer"),
                    _ => {}
                }
            };
            let offer = SdpOffer::from_sdp_string(&offer).context("the producer's offer")?;
            let answer = rtc.sdp_api().accept_offer(offer)?;
            peer.send(json!({"type": "peer", "sessionId": session,
                "sdp": {"type": "answer", "sdp": answer.to_sdp_string()}}))
                .await?;
            peer.send(json!({"type": "peer", "sessionId": session,
                "ice": {"candidate": cand_line, "sdpMLineIndex": 0}}))
                .await?;
            for v in early {
                remote_candidate(&mut rtc, &v);
            }
            Some(NodeSignal::start(peer, session))
        }
        Via::Janus { port, mountpoint } => {
            stats.lock().unwrap().asked_at = Some(Instant::now());
            let watch = janus::Watch::start(port, mountpoint).await?;
            let offer = SdpOffer::from_sdp_string(&watch.offer).context("Janus' offer")?;
            let answer = rtc.sdp_api().accept_offer(offer)?;
            watch.answer(&answer.to_sdp_string(), &cand_line).await?;
            None
        }
    };
    let mut buf = vec![0u8; 2000];
    loop {
        let deadline = drain(&mut rtc, &socket, stats)?;
        if !rtc.is_alive() {
            bail!("the peer connection closed");
        }
        let wait = tokio::time::Instant::from_std(deadline.max(Instant::now()));
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                receive(&mut rtc, r, &buf, local)?;
                // what else is queued, without going round the select (one wake-up for a burst)
                while let Ok(more) = socket.try_recv_from(&mut buf) {
                    drain(&mut rtc, &socket, stats)?;
                    receive(&mut rtc, Ok(more), &buf, local)?;
                }
            }
            _ = tokio::time::sleep_until(wait) => rtc.handle_input(Input::Timeout(Instant::now()))?,
            m = next_signal(&mut signal) => match m {
                Some(FromNode::Candidate(v)) => remote_candidate(&mut rtc, &v),
                Some(FromNode::Ended(why)) => bail!("{why}"),
                None => return Ok(()),
            },
        }
    }
}

/// What the node says once the answer is sent.
enum FromNode {
    Candidate(Value),
    Ended(String),
}

/// The session's signalling after the answer, read by its own task: polled only when the
/// connection has data (polling a WebSocket stream in the media loop's `select!` on every
/// packet cost a fifth of the generator's CPU, tungstenite readying its read buffer each time).
struct NodeSignal {
    rx: tokio::sync::mpsc::UnboundedReceiver<FromNode>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for NodeSignal {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl NodeSignal {
    fn start(mut peer: Peer, session: String) -> NodeSignal {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            loop {
                let why = match peer.ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                        if v["sessionId"] != session.as_str() {
                            continue;
                        }
                        match v["type"].as_str() {
                            Some("peer") => {
                                let _ = tx.send(FromNode::Candidate(v));
                                continue;
                            }
                            // (the channel closing tells the viewer its session ended)
                            Some("endSession") => return,
                            _ => continue,
                        }
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => format!("signalling: {e}"),
                    None => "signalling connection closed".to_string(),
                };
                let _ = tx.send(FromNode::Ended(why));
                return;
            }
        });
        NodeSignal { rx, reader }
    }
}

/// The next message from the node; never, for Janus (its candidates came in the offer).
async fn next_signal(signal: &mut Option<NodeSignal>) -> Option<FromNode> {
    match signal {
        Some(s) => s.rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The peer id of the producer whose `meta.name` is `name`, polled for up to 30 s.
async fn producer_id(peer: &mut Peer, name: &str) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        peer.send(json!({"type": "list"})).await?;
        let list = peer.wait_for("list").await?;
        let found = list["producers"].as_array().and_then(|ps| {
            ps.iter()
                .find(|p| p["meta"]["name"] == name)
                .and_then(|p| p["id"].as_str())
        });
        if let Some(id) = found {
            return Ok(id.to_string());
        }
        if Instant::now() > deadline {
            bail!("no producer named {name}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A trickled candidate (`{"ice": {"candidate": …}}`); the end-of-candidates (empty) and
/// what str0m cannot parse (mDNS names, TCP) are left out.
fn remote_candidate(rtc: &mut Rtc, v: &Value) {
    let Some(line) = v["ice"]["candidate"].as_str() else {
        return;
    };
    let line = line.trim_start_matches("a=");
    if line.is_empty() {
        return;
    }
    if let Ok(c) = Candidate::from_sdp_string(line) {
        rtc.add_remote_candidate(c);
    }
}

fn receive(
    rtc: &mut Rtc,
    r: std::io::Result<(usize, SocketAddr)>,
    buf: &[u8],
    local: SocketAddr,
) -> Result<()> {
    let (n, from) = r.context("UDP receive")?;
    // (a datagram str0m cannot classify is dropped, as a browser would)
    if let Ok(rx) = Receive::new(Protocol::Udp, from, local, &buf[..n]) {
        rtc.handle_input(Input::Receive(Instant::now(), rx))?;
    }
    Ok(())
}

/// Everything str0m has to send or tell, until it asks to be woken at the returned time.
fn drain(rtc: &mut Rtc, socket: &UdpSocket, stats: &Stats) -> Result<Instant> {
    loop {
        match rtc.poll_output()? {
            Output::Timeout(t) => return Ok(t),
            Output::Transmit(t) => {
                // a full socket buffer drops the datagram, as UDP would anyway
                let _ = socket.try_send_to(&t.contents, t.destination);
            }
            Output::Event(e) => match e {
                Event::RtpPacket(p) => {
                    let now = Instant::now();
                    stats.lock().unwrap().tally.packet(
                        *p.seq_no,
                        p.header.timestamp,
                        p.header.marker,
                        p.payload,
                        now,
                    );
                }
                Event::Connected => stats.lock().unwrap().connected = true,
                Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                    bail!("ICE disconnected")
                }
                _ => {}
            },
        }
    }
}
