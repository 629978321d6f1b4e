//! One I/O thread of the forward engine: its UDP socket(s) (one per announced address, same
//! port), its sessions (str0m peers), the [`Demux`] that routes datagrams to them, their
//! timeouts, and its own copy of the source's tracks (keyframe caches) so that its viewers are
//! fed without a lock. The thread that holds the origin's session hands each source packet to
//! the others as an `Arc` over their channel (the payload is never copied per thread or per
//! viewer) and wakes them; it also coalesces their keyframe requests upstream.
//!
//! Sessions lost (the events [`ForwardEvent::OriginLost`] / [`ForwardEvent::ViewerLost`]): the
//! session closed, or one of the [`Timeouts`] (by default: not connected in 20 s, 15 s without
//! a datagram, ICE disconnected for 5 s, an origin without media for 5 s).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};
use str0m::Candidate;

use crate::addresses::candidates;

use crate::demux::{Demux, Route};
use crate::fanout::{Outcome, Packet, SourceTrack};
use crate::forward_api::{ForwardError, ForwardEvent, Timeouts, ViewerStats};
use crate::keyframe_requests::OriginRequests;
use crate::layer_switching::{BitrateMeter, EstimateKind};
use crate::layout::Layout;
use crate::mailbox::{Link, Msg, SourceMsg, WAKER};
use crate::peer::{Happening, Peer, Role};
use crate::send_batch::SendBatch;

#[path = "worker_layers.rs"]
mod layers;
#[path = "worker_sessions.rs"]
mod sessions;

/// Bytes of the last group of pictures kept per source track for joiners.
const KEYFRAME_BUDGET: usize = 1 << 20;
const HOUSEKEEPING: Duration = Duration::from_millis(250);

/// The origin's session state kept by the worker that holds it.
#[derive(Debug)]
struct OriginState {
    id: u64,
    requests: OriginRequests,
    ready: bool,
    last_media: Option<Instant>,
    packets: u64,
    requests_upstream: u64,
    nacks_upstream: u64,
}

pub struct Worker {
    index: usize,
    timeouts: Timeouts,
    poll: Poll,
    sockets: Vec<(UdpSocket, SocketAddr)>,
    candidates: Vec<Candidate>,
    demux: Demux<u64>,
    peers: HashMap<u64, Peer>,
    sessions: HashMap<String, u64>,
    viewer_stats: HashMap<u64, ViewerStats>,
    next_id: u64,
    rx: Receiver<Msg>,
    links: Arc<Vec<Link>>,
    events: Sender<ForwardEvent>,
    sources: Vec<SourceTrack>,
    /// How the source's tracks map onto a viewer's (a layered video collapsed into one).
    layout: Layout,
    /// Per source track: its bitrate, and whether it sends (the layer choice's input).
    meters: Vec<BitrateMeter>,
    /// Per source track: a keyframe was asked for since the last one passed (one ask per
    /// worker, however many of its viewers wait).
    asked: Vec<bool>,
    /// The current origin: its worker and peer id there.
    origin_worker: Option<usize>,
    origin_id: u64,
    origin: Option<OriginState>,
    queue: VecDeque<(u64, Happening)>,
    viewers_scratch: Vec<u64>,
    /// What this turn sends (on `sockets`, same order).
    batch: SendBatch,
}

impl Worker {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        index: usize,
        poll: Poll,
        sockets: Vec<UdpSocket>,
        public_ip: Option<std::net::IpAddr>,
        timeouts: Timeouts,
        rx: Receiver<Msg>,
        links: Arc<Vec<Link>>,
        events: Sender<ForwardEvent>,
    ) -> Result<Worker, ForwardError> {
        let mut registered = Vec::new();
        for (i, mut s) in sockets.into_iter().enumerate() {
            let addr = s.local_addr().map_err(|source| ForwardError::Bind {
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                source,
            })?;
            poll.registry()
                .register(&mut s, Token(i), Interest::READABLE)
                .map_err(|source| ForwardError::Bind { addr, source })?;
            registered.push((s, addr));
        }
        let bound: Vec<SocketAddr> = registered.iter().map(|(_, a)| *a).collect();
        let fds = registered.iter().map(|(s, _)| s.as_raw_fd()).collect();
        let candidates = candidates(&bound, public_ip);
        Ok(Worker {
            index,
            timeouts,
            poll,
            sockets: registered,
            candidates,
            demux: Demux::new(),
            peers: HashMap::new(),
            sessions: HashMap::new(),
            viewer_stats: HashMap::new(),
            next_id: 0,
            rx,
            links,
            events,
            sources: Vec::new(),
            layout: Layout::default(),
            meters: Vec::new(),
            asked: Vec::new(),
            origin_worker: None,
            origin_id: 0,
            origin: None,
            queue: VecDeque::new(),
            viewers_scratch: Vec::new(),
            batch: SendBatch::new(fds),
        })
    }

    /// The thread's loop, until [`Msg::Stop`] or the handle is gone.
    pub fn run(mut self) {
        let mut events = Events::with_capacity(256);
        let mut buf = vec![0u8; 2048];
        let mut housekeeping = Instant::now();
        loop {
            let now = Instant::now();
            let deadline = self.next_deadline(housekeeping + HOUSEKEEPING);
            let wait = deadline.saturating_duration_since(now);
            if self.poll.poll(&mut events, Some(wait)).is_err() {
                // EINTR and the like: go round again (the deadline is recomputed).
                events.clear();
            }
            let mut woken = false;
            for ev in events.iter() {
                if ev.token() == WAKER {
                    woken = true;
                } else {
                    self.read_socket(ev.token().0, &mut buf);
                }
            }
            if woken && !self.messages() {
                break;
            }
            let now = Instant::now();
            self.timeouts(now);
            if now >= housekeeping + HOUSEKEEPING {
                housekeeping = now;
                self.housekeeping(now);
                self.choose_layers(now);
            }
            self.batch.flush();
        }
        for (_, peer) in self.peers.iter_mut() {
            peer.rtc.disconnect();
        }
    }

    fn next_deadline(&self, housekeeping: Instant) -> Instant {
        let mut t = housekeeping;
        for p in self.peers.values() {
            t = t.min(p.next);
        }
        if let Some(o) = &self.origin {
            if let Some(d) = o.requests.next_deadline() {
                t = t.min(d);
            }
        }
        t
    }

    /// Reads the socket until it would block; each datagram routed and handed to its peer.
    fn read_socket(&mut self, index: usize, buf: &mut [u8]) {
        loop {
            let Some((socket, local)) = self.sockets.get(index) else {
                return;
            };
            let local = *local;
            let (n, from) = match socket.recv_from(buf) {
                Ok(r) => r,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                // ICMP errors surface here (port unreachable of a peer gone): keep reading.
                Err(_) => continue,
            };
            let data = &buf[..n];
            let peer = match self.demux.route(from, data) {
                Route::Stun { peer, request } => {
                    if request {
                        // The stack checks MESSAGE-INTEGRITY; a request failing it changes
                        // nothing there, and the address bound routes only to this peer.
                        self.demux.bind(from, peer);
                    }
                    peer
                }
                Route::Dtls(p) | Route::Rtp(p) | Route::Rtcp(p) => p,
                Route::Drop(_) => continue,
            };
            let now = Instant::now();
            if let Some(p) = self.peers.get_mut(&peer) {
                p.receive(from, local, data, now);
                self.drain(peer);
                self.process();
            }
        }
    }

    /// Drains a peer: its datagrams sent, its happenings queued.
    fn drain(&mut self, id: u64) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let sockets = &self.sockets;
        let demux = &mut self.demux;
        let batch = &mut self.batch;
        let mut send = |from: SocketAddr, to: SocketAddr, data: &[u8]| {
            if data.first().is_some_and(|b| *b < 4) {
                // Our own ICE check to `to`: its response comes from there.
                demux.bind(to, id);
            }
            let socket = sockets.iter().position(|(_, a)| *a == from).or_else(|| {
                sockets
                    .iter()
                    .position(|(_, a)| a.is_ipv4() == to.is_ipv4())
            });
            if let Some(i) = socket {
                batch.push(i, to, data); // sent at the end of the loop's turn
            }
        };
        let mut out = Vec::new();
        peer.drain(&mut send, &mut out);
        self.queue.extend(out.into_iter().map(|h| (id, h)));
    }

    /// Acts on queued happenings (acting may queue more).
    fn process(&mut self) {
        while let Some((id, h)) = self.queue.pop_front() {
            let now = Instant::now();
            match h {
                Happening::Connected => self.connected(id, now),
                Happening::Media(track, packet) => self.origin_media(id, track, packet, now),
                Happening::KeyframeRequest(track) => {
                    if let Some(s) = self.viewer_stats.get_mut(&id) {
                        s.keyframe_requests += 1;
                    }
                    if let Some(source) = self.keyframe_asked(id, track) {
                        self.need_keyframe(source, now);
                    }
                }
                Happening::Estimate(bps) => {
                    if let Some(s) = self.viewer_stats.get_mut(&id) {
                        s.estimate_bps = Some(bps);
                    }
                    self.estimate(id, EstimateKind::Twcc, bps);
                }
                Happening::Remb(bps) => self.estimate(id, EstimateKind::Remb, bps),
                Happening::Loss(fraction) => self.loss(id, fraction),
                Happening::VideoEgress { packets, nacks } => self.egress(id, packets, nacks),
                Happening::Nacks(n) => {
                    if let Some(s) = self.viewer_stats.get_mut(&id) {
                        s.nacks_served = n;
                    }
                }
                Happening::NacksUpstream(n) => {
                    if let Some(o) = self.origin.as_mut().filter(|o| o.id == id) {
                        o.nacks_upstream = n;
                    }
                }
                Happening::Lost(reason) => self.lost(id, reason),
            }
        }
    }

    fn connected(&mut self, id: u64, now: Instant) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let session = peer.session.clone();
        let Role::Viewer(viewer) = &mut peer.role else {
            return;
        };
        let _ = self.events.send(ForwardEvent::ViewerConnected { session });
        viewer.joined = true;
        // A layered source: the joiner's first layer, chosen before it joins.
        self.choose_layer(id, now);
        let Some(Role::Viewer(viewer)) = self.peers.get_mut(&id).map(|p| &mut p.role) else {
            return;
        };
        // A joiner starts at once from each track's cached keyframe (a layered video: its
        // target layer's).
        let mut writes = Vec::new();
        let mut need = Vec::new();
        for (i, (_, _, track)) in viewer.tracks.iter_mut().enumerate() {
            let Some(track) = track.as_mut() else {
                continue;
            };
            let layered = self.layout.layered.as_ref().filter(|l| l.viewer_track == i);
            let (source, layer) = match layered {
                Some(l) => (
                    l.sources.get(track.target()).copied().flatten(),
                    Some(track.target()),
                ),
                None => (
                    self.layout.route.iter().position(|r| *r == Some((i, None))),
                    None,
                ),
            };
            let Some((s, source)) = source.and_then(|s| Some((s, self.sources.get(s)?))) else {
                continue;
            };
            if track.codec() != source.codec {
                continue;
            }
            for outcome in track.join_layer(source, layer, now) {
                match outcome {
                    Outcome::Send(w) => writes.push((i, w)),
                    Outcome::NeedKeyframe => need.push(s),
                    Outcome::Skip => {}
                }
            }
        }
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        for (i, w) in &writes {
            if peer.write(*i, w, now) {
                if let Some(s) = self.viewer_stats.get_mut(&id) {
                    s.packets += 1;
                    s.bytes += w.payload.len() as u64;
                }
            }
        }
        self.drain(id);
        for track in need {
            self.need_keyframe(track, now);
        }
    }

    /// A packet from the origin held here: counted, handed to every worker, fed to ours.
    fn origin_media(&mut self, id: u64, track: usize, packet: Packet, now: Instant) {
        let Some(origin) = self.origin.as_mut().filter(|o| o.id == id) else {
            return;
        };
        origin.packets += 1;
        origin.last_media = Some(now);
        if packet.keyframe {
            if let Some(r) = origin.requests.get_mut(track) {
                r.keyframe();
            }
        }
        if !origin.ready {
            origin.ready = true;
            if let Some(p) = self.peers.get(&id) {
                let session = p.session.clone();
                let _ = self.events.send(ForwardEvent::OriginReady { session });
            }
        }
        let msg = Arc::new(SourceMsg::Packet {
            worker: self.index,
            origin: id,
            track,
            packet,
        });
        for (i, link) in self.links.iter().enumerate() {
            if i != self.index {
                let _ = link.send(Msg::Source(Arc::clone(&msg)));
            }
        }
        if let SourceMsg::Packet { track, packet, .. } = &*msg {
            self.source_packet(*track, packet, now);
        }
    }

    /// A source packet reaches this worker: into its keyframe cache, out to its viewers.
    fn source_packet(&mut self, track: usize, packet: &Packet, now: Instant) {
        let Some(source) = self.sources.get_mut(track) else {
            return;
        };
        source.push(packet);
        let codec = source.codec;
        if let Some(m) = self.meters.get_mut(track) {
            m.packet(packet.payload.len(), now);
        }
        // The viewer track it feeds, and its layer (None: the track itself).
        let Some((vt, layer)) = self.layout.route.get(track).copied().flatten() else {
            return;
        };
        if packet.keyframe {
            self.asked[track] = false;
        }
        let mut ids = std::mem::take(&mut self.viewers_scratch);
        ids.clear();
        ids.extend(
            self.peers
                .iter()
                .filter(|(_, p)| matches!(&p.role, Role::Viewer(v) if v.joined))
                .map(|(id, _)| *id),
        );
        let mut need = false;
        for id in &ids {
            let Some(peer) = self.peers.get_mut(id) else {
                continue;
            };
            let Role::Viewer(viewer) = &mut peer.role else {
                continue;
            };
            let Some((_, info, Some(fan))) = viewer.tracks.get_mut(vt) else {
                continue;
            };
            if info.codec != codec {
                continue;
            }
            let outcome = fan.forward_layer(packet, layer, now);
            match outcome {
                Outcome::Send(w) => {
                    if peer.write(vt, &w, now) {
                        if let Some(s) = self.viewer_stats.get_mut(id) {
                            s.packets += 1;
                            s.bytes += w.payload.len() as u64;
                        }
                        // str0m paces (BWE): the packet leaves at a timeout. Marked due, it
                        // goes in this turn's `timeouts` pass, one drain (not two) per packet.
                        peer.next = now;
                    }
                }
                Outcome::NeedKeyframe => need = true,
                Outcome::Skip => {}
            }
        }
        self.viewers_scratch = ids;
        if need {
            self.need_keyframe(track, now);
        }
        self.process();
    }

    /// Someone here waits for a keyframe of `track`: ask the origin's worker (once per
    /// worker until one passes), where the asks are coalesced upstream.
    fn need_keyframe(&mut self, track: usize, now: Instant) {
        if let Some(o) = self.origin.as_mut() {
            if let Some(r) = o.requests.get_mut(track) {
                r.request(now);
            }
            return;
        }
        if self.asked.get(track).copied().unwrap_or(true) {
            return;
        }
        self.asked[track] = true;
        if let Some(link) = self.origin_worker.and_then(|w| self.links.get(w)) {
            let _ = link.send(Msg::KeyframeNeeded { track });
        }
    }

    fn lost(&mut self, id: u64, reason: String) {
        let Some(peer) = self.remove(id) else { return };
        let session = peer.session;
        let event = if matches!(peer.role, Role::Origin(_)) {
            ForwardEvent::OriginLost { session, reason }
        } else {
            ForwardEvent::ViewerLost { session, reason }
        };
        let _ = self.events.send(event);
    }

    fn remove(&mut self, id: u64) -> Option<Peer> {
        let mut peer = self.peers.remove(&id)?;
        peer.rtc.disconnect();
        self.demux.forget(id);
        self.sessions.remove(&peer.session);
        self.viewer_stats.remove(&id);
        if self.origin.as_ref().is_some_and(|o| o.id == id) {
            self.origin = None;
        }
        Some(peer)
    }

    /// Due str0m timeouts and keyframe requests.
    fn timeouts(&mut self, now: Instant) {
        let due: Vec<u64> = self
            .peers
            .iter()
            .filter(|(_, p)| p.next <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            if let Some(p) = self.peers.get_mut(&id) {
                p.timeout(now);
                self.drain(id);
            }
        }
        if let Some(o) = self.origin.as_mut() {
            let id = o.id;
            if let Some(track) = o.requests.poll(now) {
                o.requests_upstream += 1;
                if let Some(p) = self.peers.get_mut(&id) {
                    p.request_keyframe(track);
                    self.drain(id);
                }
            }
        }
        self.process();
    }

    fn housekeeping(&mut self, now: Instant) {
        let Timeouts {
            connect,
            silence,
            origin_media,
            ice_disconnected,
        } = self.timeouts;
        let mut lost = Vec::new();
        for (id, p) in &self.peers {
            if !p.connected && now.saturating_duration_since(p.created) > connect {
                lost.push((*id, format!("not connected (ICE/DTLS) within {connect:?}")));
            } else if p.connected && now.saturating_duration_since(p.last_heard) > silence {
                lost.push((*id, format!("nothing received for {silence:?}")));
            } else if p
                .disconnected_since
                .is_some_and(|t| now.saturating_duration_since(t) > ice_disconnected)
            {
                lost.push((*id, format!("ICE disconnected for {ice_disconnected:?}")));
            }
        }
        if let Some(o) = &self.origin {
            let silent = o
                .last_media
                .is_some_and(|t| now.saturating_duration_since(t) > origin_media);
            if silent && !lost.iter().any(|(id, _)| *id == o.id) {
                lost.push((o.id, format!("no media for {origin_media:?}")));
            }
        }
        for (id, reason) in lost {
            self.lost(id, reason);
        }
    }
}
