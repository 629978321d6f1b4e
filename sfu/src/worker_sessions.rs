//! A worker's sessions as the handle and the other workers reach them ([`crate::mailbox`]):
//! the messages handled, origin and viewer sessions made, the origin's tracks taken, stats.
//! Part of [`crate::worker`] (its `impl Worker`), apart so that each file has one concern.

use std::sync::mpsc::TryRecvError;
use std::time::Instant;

use super::{OriginState, Worker, KEYFRAME_BUDGET};
use crate::fanout::SourceTrack;
use crate::forward_api::{ForwardError, ViewerStats};
use crate::keyframe_requests::OriginRequests;
use crate::layer_switching::BitrateMeter;
use crate::layout::Layout;
use crate::mailbox::{Msg, SourceMsg, WorkerStats};
use crate::peer::{Peer, Role, TrackInfo};

impl Worker {
    /// Handles every message waiting; false when told to stop (or the handle is gone).
    pub(super) fn messages(&mut self) -> bool {
        loop {
            let msg = match self.rx.try_recv() {
                Ok(m) => m,
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            };
            let now = Instant::now();
            match msg {
                Msg::Stop => return false,
                Msg::OriginOffer {
                    session,
                    sdp,
                    reply,
                } => {
                    let r = self.origin_offer(&session, &sdp, now);
                    let _ = reply.send(r);
                }
                Msg::ViewerOffer {
                    session,
                    tracks,
                    max_height,
                    offered,
                    reply,
                } => {
                    let offered = offered.as_deref();
                    let r = self.viewer_offer(&session, &tracks, max_height, offered, now);
                    let _ = reply.send(r);
                }
                Msg::ViewerAnswer {
                    session,
                    sdp,
                    reply,
                } => {
                    let r = self.with_peer(&session, |p| p.accept_answer(&sdp));
                    let _ = reply.send(r);
                }
                Msg::Candidate {
                    session,
                    line,
                    reply,
                } => {
                    let r = self.with_peer(&session, |p| p.add_candidate(&line));
                    let _ = reply.send(r);
                }
                Msg::End { session } => {
                    if let Some(id) = self.sessions.get(&session).copied() {
                        self.remove(id);
                    }
                }
                Msg::Source(s) => match &*s {
                    SourceMsg::Tracks {
                        tracks,
                        layout,
                        worker,
                        origin,
                    } => self.tracks(tracks, layout, *worker, *origin),
                    SourceMsg::Packet {
                        worker,
                        origin,
                        track,
                        packet,
                    } => {
                        if self.origin_worker == Some(*worker) && self.origin_id == *origin {
                            self.source_packet(*track, packet, now);
                        }
                    }
                },
                Msg::KeyframeNeeded { track } => {
                    if let Some(r) = self.origin.as_mut().and_then(|o| o.requests.get_mut(track)) {
                        r.request(now);
                    }
                }
                Msg::Stats { reply } => {
                    let _ = reply.send(self.stats());
                }
            }
        }
    }

    fn with_peer(
        &mut self,
        session: &str,
        f: impl FnOnce(&mut Peer) -> Result<(), ForwardError>,
    ) -> Result<(), ForwardError> {
        let id = *self
            .sessions
            .get(session)
            .ok_or_else(|| ForwardError::UnknownSession(session.to_owned()))?;
        let peer = self
            .peers
            .get_mut(&id)
            .ok_or_else(|| ForwardError::UnknownSession(session.to_owned()))?;
        let r = f(peer);
        self.drain(id);
        self.process();
        r
    }

    pub(super) fn add(&mut self, peer: Peer) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        self.demux.register(&peer.ufrag, id);
        self.sessions.insert(peer.session.clone(), id);
        self.peers.insert(id, peer);
        self.drain(id);
        id
    }

    fn origin_offer(
        &mut self,
        session: &str,
        sdp: &str,
        now: Instant,
    ) -> Result<(String, Vec<TrackInfo>, u64), ForwardError> {
        if let Some(id) = self.sessions.get(session).copied() {
            self.remove(id);
        }
        let (peer, answer, tracks) = Peer::origin(session, sdp, &self.candidates, now)?;
        let id = self.add(peer);
        self.origin = Some(OriginState {
            id,
            requests: OriginRequests::new(tracks.len()),
            ready: false,
            last_media: None,
            packets: 0,
            requests_upstream: 0,
            nacks_upstream: 0,
        });
        self.process();
        Ok((answer, tracks, id))
    }

    fn viewer_offer(
        &mut self,
        session: &str,
        tracks: &[TrackInfo],
        max_height: Option<u32>,
        offered: Option<&str>,
        now: Instant,
    ) -> Result<String, ForwardError> {
        if let Some(id) = self.sessions.get(session).copied() {
            self.remove(id);
        }
        let layered = self.layout.layered.is_some();
        let candidates = &self.candidates;
        let (mut peer, sdp) = match offered {
            Some(offer) => Peer::viewer_offered(session, tracks, layered, candidates, offer, now)?,
            None => Peer::viewer(session, tracks, layered, candidates, now)?,
        };
        if let Role::Viewer(v) = &mut peer.role {
            v.max_height = max_height;
        }
        let id = self.add(peer);
        self.viewer_stats.insert(
            id,
            ViewerStats {
                session: session.to_owned(),
                ..ViewerStats::default()
            },
        );
        self.process();
        Ok(sdp)
    }

    /// A (new) origin's tracks: a track in another codec starts a new cache; the same codec
    /// keeps its cache until the new origin's first keyframe replaces it.
    fn tracks(&mut self, tracks: &[TrackInfo], layout: &Layout, worker: usize, origin: u64) {
        self.layout = layout.clone();
        self.meters = vec![BitrateMeter::default(); tracks.len()];
        self.origin_worker = Some(worker);
        self.origin_id = origin;
        if worker != self.index {
            // The origin moved to another worker: ours (if any) was ended by the handle.
            self.origin = None;
        }
        for (i, t) in tracks.iter().enumerate() {
            match self.sources.get(i) {
                Some(s) if s.codec == t.codec => {}
                _ if i < self.sources.len() => {
                    self.sources[i] = SourceTrack::new(t.codec, KEYFRAME_BUDGET)
                }
                _ => self
                    .sources
                    .push(SourceTrack::new(t.codec, KEYFRAME_BUDGET)),
            }
        }
        self.sources.truncate(tracks.len());
        self.asked = vec![false; tracks.len()];
    }

    fn stats(&self) -> WorkerStats {
        let o = self.origin.as_ref();
        WorkerStats {
            origin_packets: o.map_or(0, |o| o.packets),
            keyframe_requests_upstream: o.map_or(0, |o| o.requests_upstream),
            nacks_upstream: o.map_or(0, |o| o.nacks_upstream),
            viewers: self.viewer_stats.values().cloned().collect(),
        }
    }
}
