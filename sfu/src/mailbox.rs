//! How a worker thread is reached: the messages it handles (from the handle, and from the
//! other workers: source packets as `Arc`s, keyframe asks) and its channel with a waker that
//! interrupts its poll.

use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::Arc;

use mio::{Poll, Token, Waker};

use crate::fanout::Packet;
use crate::forward_api::{ForwardError, ViewerStats};
use crate::layout::Layout;
use crate::peer::TrackInfo;

/// The waker's token in a worker's poll (its sockets are 0, 1, ...).
pub const WAKER: Token = Token(usize::MAX);

type Reply<T> = SyncSender<Result<T, ForwardError>>;

/// What a worker is asked to do (by the handle, or by the other workers).
pub enum Msg {
    OriginOffer {
        session: String,
        sdp: String,
        /// The answer, the origin's tracks and its peer id on that worker.
        reply: Reply<(String, Vec<TrackInfo>, u64)>,
    },
    ViewerOffer {
        session: String,
        /// The viewer's tracks ([`Layout::viewer`]).
        tracks: Vec<TrackInfo>,
        max_height: Option<u32>,
        /// The viewer's own offer (a WHEP player): answered instead of offering.
        offered: Option<String>,
        /// Our offer, or our answer to `offered`.
        reply: Reply<String>,
    },
    ViewerAnswer {
        session: String,
        sdp: String,
        reply: Reply<()>,
    },
    Candidate {
        session: String,
        line: String,
        reply: Reply<()>,
    },
    End {
        session: String,
    },
    Source(Arc<SourceMsg>),
    KeyframeNeeded {
        track: usize,
    },
    Stats {
        reply: Sender<WorkerStats>,
    },
    Stop,
}

/// The source, as every worker hears of it.
pub enum SourceMsg {
    /// A (new) origin's tracks, the worker that holds its session and its peer id there.
    Tracks {
        tracks: Vec<TrackInfo>,
        /// How they map onto a viewer's tracks (layers collapsed).
        layout: Layout,
        worker: usize,
        origin: u64,
    },
    /// A packet of the origin `(worker, origin)`: one of an origin since replaced (still in
    /// a channel) is dropped, so no viewer switches back to it.
    Packet {
        worker: usize,
        origin: u64,
        track: usize,
        packet: Packet,
    },
}

#[derive(Debug, Default)]
pub struct WorkerStats {
    pub origin_packets: u64,
    pub keyframe_requests_upstream: u64,
    pub nacks_upstream: u64,
    pub viewers: Vec<ViewerStats>,
}

/// How to reach a worker from any thread.
#[derive(Debug, Clone)]
pub struct Link {
    pub tx: Sender<Msg>,
    pub waker: Arc<Waker>,
}

impl Link {
    pub fn send(&self, msg: Msg) -> Result<(), ForwardError> {
        self.tx.send(msg).map_err(|_| ForwardError::Stopped)?;
        self.waker.wake().map_err(|_| ForwardError::Stopped)
    }
}

/// The worker's channel, its waker (registered on its poll) and the poll itself.
pub fn channel(poll: &Poll) -> std::io::Result<(Link, Receiver<Msg>)> {
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let (tx, rx) = mpsc::channel();
    Ok((Link { tx, waker }, rx))
}
