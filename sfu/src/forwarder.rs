//! The forward engine as relay-agent holds it: one handle, callable from any thread (the
//! signaller's callbacks), behind which the I/O threads ([`crate::worker`]) run. A call that
//! needs a session's answer is sent to the worker that holds (or will hold) the session and
//! waits for its reply; sessions are placed on the least loaded worker.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use proto::layers::Ladder;

use crate::addresses::{bind, local_addresses};
pub use crate::forward_api::{
    ForwardConfig, ForwardError, ForwardEvent, ForwardStats, Timeouts, ViewerStats,
};
use crate::layout::Layout;
use crate::mailbox::{self, Link, Msg, SourceMsg};
use crate::worker::Worker;

/// How long a call waits for its worker's reply before calling the engine stopped.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// The handle. Cheap to clone; every method may be called from any thread.
#[derive(Debug, Clone)]
pub struct Forwarder {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    links: Arc<Vec<Link>>,
    addresses: Vec<SocketAddr>,
    state: Mutex<State>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// The last handle gone: the workers stop too (their channels stay open otherwise: each
/// worker holds the others' senders).
impl Drop for Inner {
    fn drop(&mut self) {
        for link in self.links.iter() {
            let _ = link.send(Msg::Stop);
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// Session → the worker holding it.
    sessions: HashMap<String, usize>,
    /// Sessions per worker.
    loads: Vec<usize>,
    /// The origin's session and how its tracks map onto a viewer's.
    origin: Option<(String, Layout)>,
    stopped: bool,
}

impl Forwarder {
    /// Binds the UDP socket(s) and starts the worker threads.
    pub fn start(
        config: ForwardConfig,
    ) -> Result<(Forwarder, mpsc::Receiver<ForwardEvent>), ForwardError> {
        Forwarder::start_with(config, Timeouts::default())
    }

    /// [`Forwarder::start`] with other [`Timeouts`] than the defaults.
    pub fn start_with(
        config: ForwardConfig,
        timeouts: Timeouts,
    ) -> Result<(Forwarder, mpsc::Receiver<ForwardEvent>), ForwardError> {
        crate::hmac::install();
        let addresses = local_addresses(&config.ice_addresses);
        if addresses.is_empty() {
            return Err(ForwardError::NoAddress);
        }
        let threads = match config.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let (events_tx, events) = mpsc::channel();
        let mut polls = Vec::new();
        let mut links = Vec::new();
        let mut receivers = Vec::new();
        let mut sockets = Vec::new();
        let mut bound = Vec::new();
        for i in 0..threads {
            let port = match config.udp_port {
                0 => 0,
                p => p.saturating_add(i as u16),
            };
            let s = bind(&addresses, port)?;
            bound.extend(s.iter().filter_map(|s| s.local_addr().ok()));
            sockets.push(s);
            let poll = mio::Poll::new().map_err(ForwardError::Thread)?;
            let (link, rx) = mailbox::channel(&poll).map_err(ForwardError::Thread)?;
            polls.push(poll);
            links.push(link);
            receivers.push(rx);
        }
        let links = Arc::new(links);
        let mut handles = Vec::new();
        for (i, ((poll, s), rx)) in polls.into_iter().zip(sockets).zip(receivers).enumerate() {
            let w = Worker::new(
                i,
                poll,
                s,
                config.public_ip,
                timeouts,
                rx,
                Arc::clone(&links),
                events_tx.clone(),
            )?;
            let h = std::thread::Builder::new()
                .name(format!("sfu-{i}"))
                .spawn(move || w.run())
                .map_err(ForwardError::Thread)?;
            handles.push(h);
        }
        let inner = Inner {
            links,
            addresses: bound,
            state: Mutex::new(State {
                loads: vec![0; threads],
                ..State::default()
            }),
            threads: Mutex::new(handles),
        };
        Ok((
            Forwarder {
                inner: Arc::new(inner),
            },
            events,
        ))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves plain bookkeeping: keep using it.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `msg` (built around a reply channel) to `worker` and waits for the reply.
    fn ask<T>(
        &self,
        worker: usize,
        msg: impl FnOnce(mpsc::SyncSender<Result<T, ForwardError>>) -> Msg,
    ) -> Result<T, ForwardError> {
        let (tx, rx) = mpsc::sync_channel(1);
        let link = self.inner.links.get(worker).ok_or(ForwardError::Stopped)?;
        link.send(msg(tx))?;
        rx.recv_timeout(REPLY_TIMEOUT)
            .map_err(|_| ForwardError::Stopped)?
    }

    /// The worker for a new session: the least loaded (the same one if the session exists).
    fn place(&self, session: &str) -> Result<usize, ForwardError> {
        let mut st = self.state();
        if st.stopped {
            return Err(ForwardError::Stopped);
        }
        if let Some(w) = st.sessions.get(session) {
            return Ok(*w);
        }
        let w = (0..st.loads.len())
            .min_by_key(|i| st.loads[*i])
            .unwrap_or(0);
        st.loads[w] += 1;
        st.sessions.insert(session.to_owned(), w);
        Ok(w)
    }

    fn unplace(&self, session: &str) -> Option<usize> {
        let mut st = self.state();
        let w = st.sessions.remove(session)?;
        st.loads[w] = st.loads[w].saturating_sub(1);
        if st.origin.as_ref().is_some_and(|(s, _)| s == session) {
            st.origin = None;
        }
        Some(w)
    }

    fn worker_of(&self, session: &str) -> Result<usize, ForwardError> {
        self.state()
            .sessions
            .get(session)
            .copied()
            .ok_or_else(|| ForwardError::UnknownSession(session.to_owned()))
    }

    /// The origin's offer (webrtcsink offers): the engine's answer, with its candidates in it.
    /// A second origin session replaces the first (reattach): viewers' sessions continue and
    /// switch to it at its first keyframe. `ladder`: the origin's layers (its meta's
    /// `layers`), matched to its video m-sections by msid (`proto::layers`); `None`: one layer.
    pub fn origin_offer(
        &self,
        session: &str,
        offer_sdp: &str,
        ladder: Option<&Ladder>,
    ) -> Result<String, ForwardError> {
        let w = self.place(session)?;
        let sdp = offer_sdp.to_owned();
        let owned = session.to_owned();
        let result = self.ask(w, |reply| Msg::OriginOffer {
            session: owned,
            sdp,
            reply,
        });
        let (answer, tracks, origin) = match result {
            Ok(r) => r,
            Err(e) => {
                self.unplace(session);
                return Err(e);
            }
        };
        let (layout, warnings) = Layout::new(&tracks, ladder);
        for w in warnings {
            tracing::warn!(session, "layered origin: {w}");
        }
        let previous = {
            let mut st = self.state();
            st.origin.replace((session.to_owned(), layout.clone()))
        };
        if let Some((old, _)) = previous.filter(|(s, _)| s != session) {
            self.end(&old);
        }
        let msg = Arc::new(SourceMsg::Tracks {
            tracks,
            layout,
            worker: w,
            origin,
        });
        for link in self.inner.links.iter() {
            link.send(Msg::Source(Arc::clone(&msg)))?;
        }
        Ok(answer)
    }

    /// A new viewer: the engine's offer mirroring the origin's media (one video track, whatever
    /// the origin's layers), candidates in it. `max_height`: the viewer's cap (v2
    /// `startSession.maxHeight`): it never receives a taller layer.
    pub fn viewer_offer(
        &self,
        session: &str,
        max_height: Option<u32>,
    ) -> Result<String, ForwardError> {
        self.viewer(session, max_height, None)
    }

    /// A new viewer that offered (a WHEP player): the engine's answer, candidates in it
    /// (`viewer_offered.rs`).
    pub fn viewer_offered(
        &self,
        session: &str,
        offer_sdp: &str,
        max_height: Option<u32>,
    ) -> Result<String, ForwardError> {
        self.viewer(session, max_height, Some(offer_sdp.to_owned()))
    }

    fn viewer(
        &self,
        session: &str,
        max_height: Option<u32>,
        offered: Option<String>,
    ) -> Result<String, ForwardError> {
        let tracks = self
            .state()
            .origin
            .as_ref()
            .map(|(_, l)| l.viewer.clone())
            .ok_or(ForwardError::NoOrigin)?;
        let w = self.place(session)?;
        let owned = session.to_owned();
        let r = self.ask(w, |reply| Msg::ViewerOffer {
            session: owned,
            tracks,
            max_height,
            offered,
            reply,
        });
        if r.is_err() {
            self.unplace(session);
        }
        r
    }

    /// A viewer's answer to [`Forwarder::viewer_offer`].
    pub fn viewer_answer(&self, session: &str, answer_sdp: &str) -> Result<(), ForwardError> {
        let w = self.worker_of(session)?;
        let (session, sdp) = (session.to_owned(), answer_sdp.to_owned());
        self.ask(w, |reply| Msg::ViewerAnswer {
            session,
            sdp,
            reply,
        })
    }

    /// A trickled remote candidate (`candidate:…` line, with or without `a=`) of any session.
    pub fn candidate(&self, session: &str, candidate: &str) -> Result<(), ForwardError> {
        let w = self.worker_of(session)?;
        let (session, line) = (session.to_owned(), candidate.to_owned());
        self.ask(w, |reply| Msg::Candidate {
            session,
            line,
            reply,
        })
    }

    /// A session (origin or viewer) ended in signalling.
    pub fn end(&self, session: &str) {
        if let Some(w) = self.unplace(session) {
            if let Some(link) = self.inner.links.get(w) {
                let _ = link.send(Msg::End {
                    session: session.to_owned(),
                });
            }
        }
    }

    pub fn stats(&self) -> ForwardStats {
        let mut out = ForwardStats::default();
        for link in self.inner.links.iter() {
            let (tx, rx) = mpsc::channel();
            if link.send(Msg::Stats { reply: tx }).is_err() {
                continue;
            }
            if let Ok(s) = rx.recv_timeout(REPLY_TIMEOUT) {
                out.origin_packets += s.origin_packets;
                out.keyframe_requests_upstream += s.keyframe_requests_upstream;
                out.nacks_upstream += s.nacks_upstream;
                out.viewers.extend(s.viewers);
            }
        }
        out.viewers.sort_by(|a, b| a.session.cmp(&b.session));
        out
    }

    /// The addresses the worker threads listen on.
    pub fn local_addresses(&self) -> Vec<SocketAddr> {
        self.inner.addresses.clone()
    }

    /// Stops the worker threads and closes every session's transport.
    pub fn stop(&self) {
        self.state().stopped = true;
        for link in self.inner.links.iter() {
            let _ = link.send(Msg::Stop);
        }
        let handles =
            std::mem::take(&mut *self.inner.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for h in handles {
            let _ = h.join();
        }
    }
}
