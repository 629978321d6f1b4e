//! Per source: the keyframe requests of its viewers (PLI/FIR on loss) and of joiners and
//! switches waiting for a keyframe ([`crate::rewrite::DropReason::WaitingForKeyframe`], on
//! every packet dropped), coalesced into few requests upstream. The same policy as
//! `agent_core::keyframes` (the shared encoder, the relay today), without pads or threads:
//! the caller passes the time in, and sleeps until [`KeyframeRequests::next_deadline`].
//!
//! - Nothing sent in the last `min_interval`: a request goes upstream at once.
//! - Otherwise it waits for the end of the interval, and goes then unless a keyframe arrived
//!   meanwhile: a keyframe from the source satisfies everyone waiting then.
//! - A request while one sent is unanswered is covered by it (its keyframe reaches everyone
//!   waiting when it arrives: viewers are downstream of us). Unlike the encoder, the source is
//!   a round trip away, so without this every joiner's dropped packets would ask again each
//!   interval until the first answer arrived.
//! - A request unanswered for `resend_after` is sent again (a PLI lost upstream, or the
//!   keyframe lost on its way here), and again after each `resend_after` until a keyframe.
//!
//! So two requests upstream are never closer than `min_interval`, and no one waits for a
//! request to go upstream longer than `resend_after`.

use std::time::{Duration, Instant};

/// The relay's and the shared encoder's `--min-keyframe-interval` default (agent-core's
/// policy): at most 4 keyframes a second from a source however many join or lose packets, a
/// joiner's wait for its keyframe grows by at most this much.
pub const DEFAULT_MIN_INTERVAL: Duration = Duration::from_millis(250);

/// A request not answered within this is taken as lost: above an internet round trip
/// (~300 ms) plus an origin's own coalescing interval (250 ms) and a frame at 15 fps, so a
/// slow answer is not asked twice; short enough that a joiner whose PLI was lost sees a
/// picture within about a second.
pub const DEFAULT_RESEND_AFTER: Duration = Duration::from_secs(1);

/// Durations are capped to this so that `Instant + Duration` cannot overflow.
const MAX_DURATION: Duration = Duration::from_secs(3600);

/// What to send the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// A new request (a FIR's command sequence number is increased, RFC 5104 4.3.1.1).
    New,
    /// The last request again, unanswered (a FIR repetition keeps its sequence number).
    Repeat,
}

/// The keyframe requests for one source.
#[derive(Debug)]
pub struct KeyframeRequests {
    min_interval: Duration,
    resend_after: Duration,
    /// When the last request went upstream.
    last_sent: Option<Instant>,
    /// The last request sent has not been answered by a keyframe yet.
    unanswered: bool,
    /// Someone waits for a keyframe that no request sent covers, since then.
    waiting: Option<Instant>,
}

impl Default for KeyframeRequests {
    fn default() -> Self {
        KeyframeRequests::new(DEFAULT_MIN_INTERVAL, DEFAULT_RESEND_AFTER)
    }
}

impl KeyframeRequests {
    /// At most one request upstream per `min_interval`; an unanswered one sent again after
    /// `resend_after` (at least `min_interval`, so a repeat keeps the spacing too). Both are
    /// capped to an hour.
    pub fn new(min_interval: Duration, resend_after: Duration) -> Self {
        let min_interval = min_interval.min(MAX_DURATION);
        KeyframeRequests {
            min_interval,
            resend_after: resend_after.clamp(min_interval, MAX_DURATION),
            last_sent: None,
            unanswered: false,
            waiting: None,
        }
    }

    /// Someone needs a keyframe (a viewer's PLI/FIR, a joiner or a switch waiting for one).
    /// Then [`KeyframeRequests::poll`] says whether to send now.
    pub fn request(&mut self, now: Instant) {
        if !self.unanswered && self.waiting.is_none() {
            self.waiting = Some(now);
        }
    }

    /// A keyframe arrived from the source: everyone waiting has it, nothing is to be sent.
    pub fn keyframe(&mut self) {
        self.unanswered = false;
        self.waiting = None;
    }

    /// Forget all (the source went away, or no viewer is left).
    pub fn clear(&mut self) {
        self.keyframe();
    }

    /// When [`KeyframeRequests::poll`] will have something to send, if nothing else happens;
    /// None while no one waits. May be in the past: poll at once.
    pub fn next_deadline(&self) -> Option<Instant> {
        match (self.last_sent, self.waiting) {
            (Some(sent), _) if self.unanswered => Some(sent + self.resend_after),
            (Some(sent), Some(since)) => Some(since.max(sent + self.min_interval)),
            (None, Some(since)) => Some(since),
            (_, None) => None,
        }
    }

    /// The request to send upstream now, if one is due.
    pub fn poll(&mut self, now: Instant) -> Option<Request> {
        if self.next_deadline()? > now {
            return None;
        }
        let request = if self.unanswered {
            Request::Repeat
        } else {
            Request::New
        };
        self.last_sent = Some(now);
        self.unanswered = true;
        self.waiting = None;
        Some(request)
    }
}

/// Requests upstream from one origin (one peer) are at least this far apart, whatever track
/// they are for: GStreamer's `rtpsession` (webrtcbin, so every producer-agent) ignores a
/// PLI/FIR from a peer within two round trips of that peer's previous one, for any SSRC.
/// Measured: a relay asking for layer 0's and layer 1's keyframes in one RTCP packet got only
/// layer 0's, and its switch to layer 1 waited for the 1 s resend, twice. 50 ms covers round
/// trips up to 25 ms (a cluster's origins and relays share a region); beyond, `resend_after`
/// still gets every request answered.
pub const ORIGIN_SPACING: Duration = Duration::from_millis(50);

/// The keyframe requests for each track of one origin, spaced by [`ORIGIN_SPACING`].
#[derive(Debug)]
pub struct OriginRequests {
    tracks: Vec<KeyframeRequests>,
    last_sent: Option<Instant>,
}

impl OriginRequests {
    /// Default policies for `tracks` tracks.
    pub fn new(tracks: usize) -> Self {
        OriginRequests {
            tracks: (0..tracks).map(|_| KeyframeRequests::default()).collect(),
            last_sent: None,
        }
    }

    pub fn get_mut(&mut self, track: usize) -> Option<&mut KeyframeRequests> {
        self.tracks.get_mut(track)
    }

    /// The earliest a request may go upstream (see [`KeyframeRequests::next_deadline`]).
    pub fn next_deadline(&self) -> Option<Instant> {
        let due = self.tracks.iter().filter_map(|r| r.next_deadline()).min()?;
        Some(match self.last_sent {
            Some(last) => due.max(last + ORIGIN_SPACING),
            None => due,
        })
    }

    /// The track to ask a keyframe for now, if any: the one due longest.
    pub fn poll(&mut self, now: Instant) -> Option<usize> {
        if self.last_sent.is_some_and(|l| now < l + ORIGIN_SPACING) {
            return None;
        }
        let (_, track) = self
            .tracks
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.next_deadline().filter(|d| *d <= now).map(|d| (d, i)))
            .min()?;
        self.tracks[track].poll(now)?;
        self.last_sent = Some(now);
        Some(track)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const INTERVAL: Duration = Duration::from_millis(250);
    const RESEND: Duration = Duration::from_millis(1000);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn requests() -> KeyframeRequests {
        KeyframeRequests::new(INTERVAL, RESEND)
    }

    #[test]
    fn joiners_at_once_make_one_request() {
        let mut k = requests();
        let t = Instant::now();
        assert_eq!(k.next_deadline(), None, "no one waits");
        for _ in 0..5 {
            k.request(t);
        }
        assert_eq!(k.next_deadline(), Some(t), "due at once");
        assert_eq!(k.poll(t), Some(Request::New));
        assert_eq!(k.poll(t), None, "the other joiners are covered");
        k.request(t + ms(10));
        assert_eq!(k.poll(t + ms(10)), None);
        assert_eq!(
            k.next_deadline(),
            Some(t + RESEND),
            "a late joiner waits for the answer, not for a second request"
        );
    }

    #[test]
    fn a_request_within_the_interval_is_deferred_then_sent() {
        let mut k = requests();
        let t = Instant::now();
        k.request(t);
        assert_eq!(k.poll(t), Some(Request::New));
        k.keyframe();
        // A viewer loses a packet after that keyframe: a new need, within the interval.
        k.request(t + ms(100));
        assert_eq!(k.poll(t + ms(100)), None, "deferred");
        assert_eq!(
            k.next_deadline(),
            Some(t + INTERVAL),
            "to the interval's end"
        );
        assert_eq!(k.poll(t + ms(249)), None);
        assert_eq!(k.poll(t + INTERVAL), Some(Request::New), "not lost");
        assert_eq!(k.poll(t + INTERVAL), None);
    }

    #[test]
    fn a_keyframe_satisfies_every_pending_request() {
        let mut k = requests();
        let t = Instant::now();
        k.request(t);
        assert_eq!(k.poll(t), Some(Request::New));
        k.keyframe();
        k.request(t + ms(50));
        k.request(t + ms(60));
        k.keyframe();
        assert_eq!(k.next_deadline(), None, "no one waits any more");
        assert_eq!(k.poll(t + INTERVAL), None);
        assert_eq!(k.poll(t + RESEND * 2), None, "nor is the sent one repeated");
    }

    #[test]
    fn an_unanswered_request_is_sent_again() {
        let mut k = requests();
        let t = Instant::now();
        k.request(t);
        assert_eq!(k.poll(t), Some(Request::New));
        assert_eq!(k.next_deadline(), Some(t + RESEND));
        assert_eq!(k.poll(t + RESEND - ms(1)), None);
        assert_eq!(k.poll(t + RESEND), Some(Request::Repeat), "lost upstream");
        assert_eq!(k.poll(t + RESEND * 2), Some(Request::Repeat), "and again");
        k.keyframe();
        assert_eq!(k.poll(t + RESEND * 3), None, "answered at last");
    }

    #[test]
    fn many_viewers_asking_while_one_request_is_out_make_one_request() {
        let mut k = requests();
        let t = Instant::now();
        let mut sent = 0;
        // 100 viewers, and a joiner's every dropped packet, over 900 ms of a slow answer.
        for i in 0..900u64 {
            let now = t + ms(i);
            k.request(now);
            sent += usize::from(k.poll(now).is_some());
        }
        k.keyframe();
        assert_eq!(sent, 1, "one request upstream for them all");
        assert_eq!(k.next_deadline(), None);
    }

    #[derive(Debug, Clone)]
    enum Event {
        Request,
        Keyframe,
    }

    fn events() -> impl Strategy<Value = Vec<(u64, Event)>> {
        proptest::collection::vec(
            (
                0u64..400,
                prop_oneof![3 => Just(Event::Request), 1 => Just(Event::Keyframe)],
            ),
            0..100,
        )
    }

    proptest! {
        /// An I/O loop: events after random steps; between them it sleeps until the next
        /// deadline and polls, and it polls after each event.
        #[test]
        fn requests_are_spaced_and_none_is_left_waiting(events in events()) {
            let mut k = requests();
            let t0 = Instant::now();
            let mut now = t0;
            let mut sent: Vec<Instant> = Vec::new();
            let mut keyframes: Vec<Instant> = Vec::new();
            let mut asked: Vec<Instant> = Vec::new();
            let drive = |k: &mut KeyframeRequests, until: Instant, sent: &mut Vec<Instant>| -> Result<(), TestCaseError> {
                let mut polls = 0;
                while let Some(d) = k.next_deadline().filter(|d| *d <= until) {
                    polls += 1;
                    prop_assert!(polls < 10_000, "polling at the deadline sends nothing");
                    if k.poll(d).is_some() {
                        sent.push(d);
                    }
                }
                Ok(())
            };
            for (step, event) in events {
                let at = now + ms(step);
                drive(&mut k, at, &mut sent)?;
                now = at;
                match event {
                    Event::Request => {
                        k.request(now);
                        asked.push(now);
                    }
                    Event::Keyframe => {
                        k.keyframe();
                        keyframes.push(now);
                    }
                }
                if k.poll(now).is_some() {
                    sent.push(now);
                }
            }
            // Quiet after the last event: whoever still waits is asked for.
            drive(&mut k, now + RESEND * 3, &mut sent)?;
            for pair in sent.windows(2) {
                prop_assert!(pair[1] - pair[0] >= INTERVAL, "requests {:?} apart", pair[1] - pair[0]);
            }
            for a in asked {
                // Sent, at or after the request, within the bound, or satisfied by a keyframe
                // arriving first.
                let send = sent.iter().find(|s| **s >= a);
                let key = keyframes.iter().find(|k| **k >= a);
                let ok = match (send, key) {
                    (_, Some(k)) if send.is_none_or(|s| k <= s) => true,
                    (Some(s), _) => *s - a <= RESEND,
                    _ => false,
                };
                prop_assert!(ok, "request at {:?} left waiting (sent {:?}, keyframes {:?})",
                    a - t0, sent.iter().map(|s| *s - t0).collect::<Vec<_>>(),
                    keyframes.iter().map(|k| *k - t0).collect::<Vec<_>>());
            }
            k.keyframe();
            prop_assert_eq!(k.next_deadline(), None);
        }
    }

    #[test]
    fn an_origins_requests_for_two_tracks_go_one_spacing_apart_oldest_first() {
        let mut o = OriginRequests::new(3);
        let t = Instant::now();
        o.get_mut(2).unwrap().request(t);
        o.get_mut(0).unwrap().request(t + ms(1));
        assert_eq!(o.poll(t + ms(1)), Some(2), "the one waiting longest");
        assert_eq!(o.poll(t + ms(1)), None, "not in the same RTCP packet");
        assert_eq!(o.next_deadline(), Some(t + ms(1) + ORIGIN_SPACING));
        assert_eq!(o.poll(t + ms(50)), None);
        assert_eq!(
            o.poll(t + ms(1) + ORIGIN_SPACING),
            Some(0),
            "then the other"
        );
        assert_eq!(
            o.next_deadline(),
            Some(t + ms(1) + RESEND),
            "both sent: the resend"
        );
        assert!(o.get_mut(3).is_none());
    }
}
