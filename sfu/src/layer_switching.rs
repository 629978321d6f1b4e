//! Per viewer of a layered source (issue 26): which layer it should be sent. A pure state
//! machine: fed the viewer's bandwidth estimate, its loss reports and, at each tick, the
//! layers' bitrates, the audio's and the viewer's cap, it says the target layer and the
//! bitrate the stack's estimator should probe for. No I/O, no WebRTC stack: the worker
//! ([`crate::worker`]) feeds it from str0m's events, tests feed it numbers.
//!
//! ```text
//!   joins on the lowest layer
//!        │
//!        ▼      estimate < DOWN_MARGIN × need(k) for DOWN_HOLD,   estimate ≥ UP_HEADROOM × need(j)
//!   ┌──────────┐ or loss ≥ LOSS_DOWN in LOSS_REPORTS reports      and loss < LOSS_UP_MAX, for
//!   │          │ or NACKs ≥ LOSS_DOWN × packets over NACK_INTERVALS and a PLI, estimate
//!   │          │ < need(k); PLIs in each interval: one layer down
//!   │ layer k  │ (neither within UP_SETTLE of a step up)          STABLE_UP, not backing off
//!   └──────────┘ ── step down: to the highest that fits ──►  ┌──────────┐
//!                                                            │ layer j  │ (j > k: lower)
//!                ◄── step up: to the highest j that fits ─── └──────────┘
//!                    with headroom (probe first: desired
//!                    bitrate = UP_HEADROOM × need(next up))
//!
//!   a step down within UP_FAIL_WINDOW of a step up, with loss between: for UP_BACKOFF_FIRST (doubling up to
//!   UP_BACKOFF_MAX while step ups keep failing) a step up needs an estimate UP_FAIL_RAISE ×
//!   the one that misled it (a lifted limit shows one at the next probe)
//! ```
//!
//! `need(k)` = layer k's bitrate (measured, else the ladder's) + the audio's. Layers above the
//! viewer's cap, or not sending ([`LIVE_WINDOW`]), are never targets. The gap between
//! stepping down (the layer no longer fits at all) and up (the next fits with 15 % to spare,
//! for 3 s) is the hysteresis that keeps a noisy estimate from flapping. The back-off is for
//! estimates that say more than the link carries: a probe burst that fits in a token bucket's
//! burst is measured at line rate (on a 250 kbit/s `tbf` with a 6 kB bucket str0m's probes
//! gave 1.1 Mbit/s), and sending the lowest layer keeps the stack application-limited, so
//! nothing corrects it until a step up sends more than the link carries.

use std::time::{Duration, Instant};

/// Stepping up needs the estimate this far above the next layer's need: TWCC estimates
/// wander by ~10 %, and a 600 kbit/s layer + audio on an 800 kbit/s link must still count as
/// fitting (648 × 1.15 = 745).
pub const UP_HEADROOM: f64 = 1.15;
/// The estimate must hold above the next layer this long (and the last step down be this old)
/// before stepping up: several TWCC feedback rounds and one loss report, so a spike does not
/// count; with the probe's ramp it keeps a lifted limit's step up well within 15 s.
pub const STABLE_UP: Duration = Duration::from_secs(2);
/// The estimate must stay below [`DOWN_MARGIN`] × the target's need this long before stepping
/// down: a feedback blip is ignored, a real cut (str0m's estimate falls within ~1 s) is acted
/// on within 3 s. (0.5 s, tried first on shaped links, stepped an 800 kbit/s viewer down on
/// every dip of its estimate.)
pub const DOWN_HOLD: Duration = Duration::from_millis(1000);
/// Stepping down needs the estimate below this share of the current layer's need. On each
/// overuse (a probe, a keyframe queued) the delay-based estimator backs off to 0.85 × the
/// rate the viewer acknowledged, so on a link the layer fills the estimate dips to 85 % of
/// the layer's need and recovers; a link that cannot carry the layer shows less (0.85 × what
/// it delivers), and loss. (0.9, tried first, stepped an 800 kbit/s viewer off the 360p layer
/// at every such dip.)
pub const DOWN_MARGIN: f64 = 0.75;
/// After a step up, the switch's keyframe is a burst the link queues (and a narrow one
/// drops the tail of): estimate dips and loss reports from it are not a reason to step back
/// down for this long. Measured on an 800 kbit/s token bucket: the estimate fell to ~360k for
/// about a second after each switch to the 360p layer, then recovered.
pub const UP_SETTLE: Duration = Duration::from_secs(2);
/// A receiver report's fraction lost at or above this is lossy...
pub const LOSS_DOWN: f32 = 0.10;
/// ...and this many lossy reports in a row (about 1 s apart) step down one layer: loss that
/// NACKs cannot hide, where the estimate lags (a policer that drops without queueing).
pub const LOSS_REPORTS: u32 = 2;
/// NACKs received per video packet sent over the last this many stats intervals
/// (`peer::LAYERED_STATS_INTERVAL`, 250 ms: half a second) at or above [`LOSS_DOWN`], and the
/// viewer asking for a keyframe (its decoder lost what the NACKs did not bring back in time):
/// with the estimate below the layer's need (no margin, no hold), step down to what fits it;
/// asking in every interval, one layer down whatever the estimate says (it lags a cut: measured,
/// a cut from unlimited to 800 kbit/s left it at 3 Mbit/s for 2.5 s while the viewer asked
/// for keyframes every 200 ms). Not NACKs without requests: an 800 kbit/s link carrying the
/// 360p layer NACKed 13 % with the estimate just under the need, and a keyframe queued on it
/// half its packets, all repaired in time. (Over a
/// window, not interval by interval: NACK counts arrive in bursts, and a cut's second
/// interval showed none between two with 28 % and 20 %.) A viewer
/// NACKs at once, long before its next receiver report (about a second apart), so a cut is
/// acted on in ~1 s instead of waiting for an estimate that starts far above the layer to
/// decay below [`DOWN_MARGIN`] × its need for [`DOWN_HOLD`] (measured: 2.5 s after a cut from
/// unlimited to 800 kbit/s, 25-50 % of the packets NACKed meanwhile). Not NACKs alone: a
/// jitter buffer also NACKs packets that are only late, and a link the layer fills queues
/// (an 800 kbit/s viewer of the 360p layer NACKed ~15 % of its packets and lost none).
pub const NACK_INTERVALS: u32 = 2;
/// After a step down, NACKs and keyframe requests are not counted for this long: the switch
/// waits for the new layer's keyframe (measured: ~0.2 s) and the old layer's packets queued
/// on the link are NACKed and its frames asked for meanwhile (a second step down, 360p to
/// 180p on an 800 kbit/s link, came 0.4 s after the first from those).
pub const DOWN_SETTLE: Duration = Duration::from_secs(1);
/// Fewer packets than this in the window say nothing about loss (a paused layer, audio only).
pub const NACK_MIN_PACKETS: u64 = 10;
/// No step up while the last report's loss is at or above this.
pub const LOSS_UP_MAX: f32 = 0.02;
/// A probe (the engine restarts str0m's estimator at the current estimate, which makes it send
/// its initial probe clusters, at 3× and 6× of it) while the next layer up does not fit: the
/// first this long after the layer last changed, then at doubling intervals up to
/// [`PROBE_MAX`]. Needed: sending one layer below the estimate keeps str0m out of its
/// application-limited region, where it would probe by itself, so a lifted limit is otherwise
/// found only by its 15 s "stagnant" probe (measured: 15-20 s before the estimate moved).
pub const PROBE_FIRST: Duration = Duration::from_secs(3);
/// The longest wait between probes: a lift is found within this, and the step up follows
/// [`STABLE_UP`] later (≤ 12 s, the issue's target is 15 s).
pub const PROBE_MAX: Duration = Duration::from_secs(8);
/// Before any estimate, the bitrate the estimator is asked for. (A joiner starts on the lowest
/// layer whatever the estimate: its first estimate comes from probe bursts, which a token
/// bucket passes at line rate (1.1 Mbit/s measured on a 250 kbit/s link), and a 360p keyframe
/// into a 250 kbit/s link stalls it for seconds.)
pub const START_BPS: u64 = 1_000_000;
/// A step down this soon after a step up, with a lossy report ([`LOSS_DOWN`]) between them,
/// means the step up failed: the estimate it trusted was more than the link carries (the step
/// up's keyframe settles within [`UP_SETTLE`], a layer the link cannot carry is left within
/// [`DOWN_HOLD`] or [`LOSS_REPORTS`] later). Without loss the link carried the layer and the
/// estimate fell for another reason (measured: a machine so busy that the viewer read its
/// socket late made an unlimited viewer's estimate fall from 6.7 to 1 Mbit/s): no back-off.
/// (8 s: longer than a lossless fall takes to step down, [`UP_SETTLE`] + [`RESEED_HOLD`] +
/// [`DOWN_HOLD`], so that "no loss, no back-off" is what decides there, not the clock.)
pub const UP_FAIL_WINDOW: Duration = Duration::from_secs(8);
/// A step up's keyframe is a burst: the delay-based estimator may read it as overuse and back
/// off to 0.85 × the rate acknowledged just before, the lower layer's (measured: an unlimited
/// viewer's estimate fell from 22 Mbit/s to 745 kbit/s right after stepping up from 180p to
/// 720p, and took seconds to climb back). If it is still that low when [`UP_SETTLE`] ends and
/// no report since the step up was lossy, the link carried the layer: the estimator is
/// restarted at the estimate the step up trusted (at most this × the layer's need) rather
/// than stepping back down. A link that cannot carry the layer loses packets, and is left.
pub const RESEED_CAP: f64 = 2.0;
/// After such a restart, a low estimate alone does not step down for this long (loss the
/// viewer's keyframe requests confirm still does): str0m's estimate came back from the restart
/// low and climbing ~100 kbit/s a second (measured on an 800 kbit/s link carrying the 360p
/// layer without a keyframe request: 330 to 440 kbit/s over 1.6 s), and stepping down on it
/// made that viewer flap between 360p and 180p every ~7 s.
pub const RESEED_HOLD: Duration = Duration::from_secs(3);
/// After a failed step up, for this long a step up needs [`UP_FAIL_RAISE`] × the estimate
/// that misled it: each failure cost the viewer a stall, and the same link's probes will say
/// about the same again.
pub const UP_BACKOFF_FIRST: Duration = Duration::from_secs(30);
/// What a step up needs while backing off, relative to the estimate of the failed step up:
/// well above what the same bursts measure again, well below what a lifted limit shows (a
/// probe on an open link measures several Mbit/s).
pub const UP_FAIL_RAISE: f64 = 1.5;
/// The longest back-off (doubling from [`UP_BACKOFF_FIRST`] while step ups keep failing; a
/// step up that holds past [`UP_FAIL_WINDOW`] resets it).
pub const UP_BACKOFF_MAX: Duration = Duration::from_secs(120);
/// The audio's bitrate until measured (Opus as webrtcsink sends it, with headers).
pub const AUDIO_BPS: u64 = 48_000;
/// A layer without a packet for this long is not a target (it stopped, or never sent).
pub const LIVE_WINDOW: Duration = Duration::from_secs(2);
/// Bytes each packet costs on the wire besides its payload (RTP header + extensions + SRTP
/// tag + UDP/IP): the estimate is of the link, not of payloads.
pub const PACKET_OVERHEAD: u64 = 50;
/// The window a layer's bitrate is measured over: a keyframe is averaged with what follows.
/// (1 s windows made the top layer's need jump by a keyframe's worth whenever another viewer's
/// switch forced one, and an unlimited viewer flapped between the top two layers.)
pub const METER_WINDOW: Duration = Duration::from_secs(3);

/// A source track's bitrate (payload + [`PACKET_OVERHEAD`]) over [`METER_WINDOW`]s.
#[derive(Debug, Clone, Default)]
pub struct BitrateMeter {
    window_start: Option<Instant>,
    bytes: u64,
    last_packet: Option<Instant>,
    /// The last complete window's rate, bits per second.
    bps: Option<u64>,
}

impl BitrateMeter {
    pub fn packet(&mut self, payload: usize, now: Instant) {
        self.last_packet = Some(now);
        let start = *self.window_start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= METER_WINDOW {
            self.bps = Some((self.bytes * 8 * 1000) / elapsed.as_millis().max(1) as u64);
            self.window_start = Some(now);
            self.bytes = 0;
        }
        self.bytes += payload as u64 + PACKET_OVERHEAD;
    }

    /// The measured rate; None before a complete window, or when not live.
    pub fn bps(&self, now: Instant) -> Option<u64> {
        self.live(now).then_some(self.bps).flatten()
    }

    /// A packet within [`LIVE_WINDOW`].
    pub fn live(&self, now: Instant) -> bool {
        self.last_packet
            .is_some_and(|t| now.saturating_duration_since(t) < LIVE_WINDOW)
    }
}

/// One layer as the state machine sees it at a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerInput {
    /// The ladder's bitrate (what it costs before it is measured), bits per second.
    pub ladder_bps: u64,
    /// Measured over the last window (None: not yet).
    pub measured_bps: Option<u64>,
    /// A packet of it within [`LIVE_WINDOW`].
    pub live: bool,
}

/// What the state machine is told at each tick.
#[derive(Debug, Clone, Copy)]
pub struct Tick<'a> {
    /// Top first (index 0 = the highest layer).
    pub layers: &'a [LayerInput],
    /// The audio's measured bitrate (None: [`AUDIO_BPS`]; 0 when there is no audio).
    pub audio_bps: Option<u64>,
    /// The highest layer the viewer may receive (its `maxHeight`), 0 for no cap.
    pub cap: usize,
}

/// What it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The layer to switch to (at its next keyframe); None: no layer sends.
    pub target: Option<usize>,
    /// The bitrate the stack's estimator should reach (it probes with padding up to it).
    pub desired_bps: u64,
    /// Restart the stack's estimator at this bitrate (see [`RESEED_CAP`]).
    pub reseed_bps: Option<u64>,
    /// Probe now for the next layer up (see [`PROBE_FIRST`]).
    pub probe: bool,
}

/// Where an estimate came from: TWCC (computed here from the viewer's feedback) is preferred;
/// REMB (what the viewer computes and sends) only counts for a viewer that never sent TWCC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EstimateKind {
    Twcc,
    Remb,
}

/// One viewer's layer choice.
#[derive(Debug, Clone, Default)]
pub struct LayerChoice {
    target: Option<usize>,
    estimate: Option<u64>,
    twcc_seen: bool,
    last_loss: Option<f32>,
    lossy_reports: u32,
    /// The video's packets sent and NACKs received at the last stats; the viewer's keyframe
    /// requests (PLI/FIR) since; and per interval since (the last [`NACK_INTERVALS`]): packets
    /// sent, NACKs, keyframe requests.
    egress: Option<(u64, u64)>,
    asked: u32,
    intervals: std::collections::VecDeque<(u64, u64, u32)>,
    /// Since when the estimate has been below the target's need.
    below_since: Option<Instant>,
    /// Since when the next layer up has fitted with headroom.
    above_since: Option<Instant>,
    last_down: Option<Instant>,
    /// The last step up (its keyframe's transient: [`UP_SETTLE`]).
    last_up: Option<Instant>,
    /// When the target last changed, the last probe, and the wait before the next.
    changed: Option<Instant>,
    last_probe: Option<Instant>,
    probe_wait: Duration,
    /// Until when a step up needs more than [`UP_FAIL_RAISE`] × `misled_bps` (a step up
    /// trusting that estimate failed), and the wait after the next failure.
    blocked_until: Option<Instant>,
    misled_bps: u64,
    backoff: Duration,
    /// The estimate the last step up trusted, and whether a lossy report came since.
    up_bps: u64,
    lossy_since_up: bool,
    /// The last step up's settling has not been looked at yet; a restart to ask for.
    settle_pending: bool,
    reseed: Option<u64>,
    /// When the estimator was last restarted ([`RESEED_HOLD`]).
    reseeded: Option<Instant>,
    /// Target changes, up (to a higher layer) and down.
    pub ups: u64,
    pub downs: u64,
}

impl LayerChoice {
    pub fn new() -> Self {
        LayerChoice::default()
    }

    pub fn target(&self) -> Option<usize> {
        self.target
    }

    /// The estimate in use (TWCC, else REMB), bits per second.
    pub fn estimate_bps(&self) -> Option<u64> {
        self.estimate
    }

    /// A bandwidth estimate for the viewer, bits per second.
    pub fn estimate(&mut self, kind: EstimateKind, bps: u64) {
        match kind {
            EstimateKind::Twcc => self.twcc_seen = true,
            EstimateKind::Remb if self.twcc_seen => return,
            EstimateKind::Remb => {}
        }
        self.estimate = Some(bps);
    }

    /// A receiver report's fraction lost (0..1) for the viewer's video.
    pub fn loss(&mut self, fraction: f32) {
        self.last_loss = Some(fraction);
        if fraction >= LOSS_DOWN {
            self.lossy_reports += 1;
            self.lossy_since_up = true;
        } else {
            self.lossy_reports = 0;
        }
    }

    /// The video's cumulative packets sent and NACKs received, at each stats interval.
    pub fn egress(&mut self, packets: u64, nacks: u64) {
        if let Some((p0, n0)) = self.egress {
            if self.intervals.len() == NACK_INTERVALS as usize {
                self.intervals.pop_front();
            }
            self.intervals.push_back((
                packets.saturating_sub(p0),
                nacks.saturating_sub(n0),
                std::mem::take(&mut self.asked),
            ));
        }
        self.egress = Some((packets, nacks));
    }

    /// The viewer asked for a keyframe (PLI/FIR): its decoder lost something NACKs did not
    /// repair in time.
    pub fn keyframe_asked(&mut self) {
        self.asked += 1;
    }

    /// NACKs per video packet sent over the last [`NACK_INTERVALS`] (0 until that many
    /// intervals with [`NACK_MIN_PACKETS`] are in).
    fn nacked(&self) -> f32 {
        let (sent, nacked) = self
            .intervals
            .iter()
            .fold((0, 0), |(s, n), (ds, dn, _)| (s + ds, n + dn));
        if self.intervals.len() < NACK_INTERVALS as usize || sent < NACK_MIN_PACKETS {
            return 0.0;
        }
        nacked as f32 / sent as f32
    }

    /// The decision at `now`.
    pub fn tick(&mut self, t: Tick<'_>, now: Instant) -> Decision {
        let audio = t.audio_bps.unwrap_or(AUDIO_BPS);
        let need = |k: usize| {
            let l = t.layers[k];
            l.measured_bps.unwrap_or(l.ladder_bps) + audio
        };
        // Targets: within the cap and sending; top first.
        let usable: Vec<usize> = (t.cap..t.layers.len())
            .filter(|k| t.layers[*k].live)
            .collect();
        let Some(&lowest) = usable.last() else {
            return Decision {
                target: self.target,
                desired_bps: self.estimate.unwrap_or(START_BPS),
                reseed_bps: None,
                probe: false,
            };
        };
        let fits =
            |k: usize, budget: u64, headroom: f64| need(k) as f64 * headroom <= budget as f64;
        let best_within = |budget: u64, headroom: f64| {
            usable
                .iter()
                .copied()
                .find(|k| fits(*k, budget, headroom))
                .unwrap_or(lowest)
        };
        if self.blocked_until.is_some_and(|b| now >= b) {
            self.blocked_until = None;
            self.misled_bps = 0;
        }
        // What a step up needs besides the next layer fitting (0: nothing more).
        let raised = if self.blocked_until.is_some() {
            (self.misled_bps as f64 * UP_FAIL_RAISE) as u64
        } else {
            0
        };
        let target = match self.target.filter(|k| usable.contains(k)) {
            // A joiner: the lowest, until its estimate has held (see [`START_BPS`]).
            None if self.target.is_none() => lowest,
            // Its layer stopped or is above a new cap: the best that fits now.
            None => best_within(self.estimate.unwrap_or(START_BPS), UP_HEADROOM),
            Some(current) => self.step(current, &usable, &need, raised, now),
        };
        if self.target != Some(target) {
            self.changed = Some(now);
            self.last_probe = None;
            self.probe_wait = PROBE_FIRST;
        }
        if let Some(old) = self.target.filter(|o| *o != target) {
            if target < old {
                self.ups += 1;
                self.last_up = Some(now);
                self.up_bps = self.estimate.unwrap_or(0);
                self.lossy_since_up = false;
                self.settle_pending = true;
            } else {
                self.downs += 1;
                self.last_down = Some(now);
                self.back_off_if_failed(now);
            }
            self.above_since = None;
            self.below_since = None;
        }
        self.target = Some(target);
        // Probe for the next layer up while nothing says the link is full.
        let next = usable.iter().copied().rev().find(|k| *k < target);
        let calm = self.last_loss.is_none_or(|l| l < LOSS_UP_MAX) && self.below_since.is_none();
        let desired = match next {
            // While backing off, probe for what a step up needs (else the probes, capped at
            // 2× the desired bitrate, could never show a lifted limit).
            Some(n) if calm => ((need(n) as f64 * UP_HEADROOM) as u64).max(raised),
            _ => (need(target) as f64 * UP_HEADROOM) as u64,
        };
        // A probe while the next layer does not fit yet, at doubling intervals.
        let short = match (next, self.estimate) {
            (Some(n), Some(e)) => (e as f64) < need(n) as f64 * UP_HEADROOM || e < raised,
            _ => false,
        };
        let since = self.last_probe.or(self.changed).unwrap_or(now);
        let probe = calm && short && now.saturating_duration_since(since) >= self.probe_wait;
        if probe {
            self.last_probe = Some(now);
            self.probe_wait = (self.probe_wait * 2).min(PROBE_MAX);
        }
        Decision {
            target: Some(target),
            desired_bps: desired,
            reseed_bps: self.reseed.take(),
            probe,
        }
    }

    /// A step down at `now`: if it undoes a step up of less than [`UP_FAIL_WINDOW`] ago that
    /// lost packets, step ups wait (doubling while they keep failing).
    fn back_off_if_failed(&mut self, now: Instant) {
        let Some(up) = self.last_up else {
            return;
        };
        let held = now.saturating_duration_since(up);
        if held >= UP_FAIL_WINDOW || self.backoff.is_zero() {
            // The last step up held (or this is the first failure): start from the first wait.
            self.backoff = UP_BACKOFF_FIRST;
        }
        if held < UP_FAIL_WINDOW && self.lossy_since_up {
            self.blocked_until = Some(now + self.backoff);
            self.misled_bps = self.misled_bps.max(self.up_bps);
            self.backoff = (self.backoff * 2).min(UP_BACKOFF_MAX);
        }
    }

    /// From the current layer: down, up, or stay.
    fn step(
        &mut self,
        current: usize,
        usable: &[usize],
        need: &dyn Fn(usize) -> u64,
        raised: u64,
        now: Instant,
    ) -> usize {
        let lower = usable.iter().copied().find(|k| *k > current);
        let settling = self
            .last_up
            .is_some_and(|u| now.saturating_duration_since(u) < UP_SETTLE);
        if settling {
            self.lossy_reports = 0;
            self.intervals.clear();
            self.below_since = None;
        }
        if self.lossy_reports >= LOSS_REPORTS {
            if let Some(l) = lower {
                self.lossy_reports = 0;
                return l;
            }
        }
        // NACKs and requests just after a step down are the old layer's (queued, or its last
        // frames asked for again), not news about the new one.
        let switching_down = self
            .last_down
            .is_some_and(|d| now.saturating_duration_since(d) < DOWN_SETTLE);
        if switching_down {
            self.intervals.clear();
        }
        // Loss the NACKs did not repair (see [`NACK_INTERVALS`]): asked in every interval,
        // one layer down whatever the estimate says; asked at all, down to what the estimate
        // fits if it is below the layer's need.
        let nacked = self.nacked() >= LOSS_DOWN;
        let asked = self.intervals.iter().filter(|i| i.2 > 0).count();
        if nacked && asked == NACK_INTERVALS as usize {
            if let Some(l) = lower {
                self.intervals.clear();
                return l;
            }
        }
        let Some(estimate) = self.estimate else {
            return current;
        };
        // Straight to the highest that fits the estimate at all (a cut can skip layers).
        let fitting = || {
            usable
                .iter()
                .copied()
                .filter(|k| *k > current)
                .find(|k| need(*k) <= estimate)
                .or(usable.last().copied())
                .unwrap_or(current)
        };
        if nacked && asked > 0 && estimate < need(current) {
            self.intervals.clear();
            return fitting();
        }
        let low = (estimate as f64) < need(current) as f64 * DOWN_MARGIN;
        if !settling && std::mem::take(&mut self.settle_pending) && low && !self.lossy_since_up {
            let cap = (need(current) as f64 * RESEED_CAP) as u64;
            let restart = self.up_bps.min(cap);
            self.reseed = Some(restart);
            self.reseeded = Some(now);
            // The estimator restarts there: until it says otherwise, that is the estimate.
            self.estimate = Some(restart);
            return current;
        }
        let converging = self
            .reseeded
            .is_some_and(|r| now.saturating_duration_since(r) < RESEED_HOLD);
        if low {
            if settling || converging {
                self.below_since = None;
                return current;
            }
            let since = *self.below_since.get_or_insert(now);
            if now.saturating_duration_since(since) >= DOWN_HOLD {
                return fitting();
            }
            return current;
        }
        self.below_since = None;
        // The highest layer above that fits with headroom (one estimate is the evidence for
        // either: a joiner on an open link goes from the lowest to the top in one step).
        let up = usable
            .iter()
            .copied()
            .filter(|k| *k < current)
            .find(|k| estimate as f64 >= need(*k) as f64 * UP_HEADROOM);
        let calm = self.last_loss.is_none_or(|l| l < LOSS_UP_MAX);
        if let Some(up) = up.filter(|_| calm && estimate >= raised) {
            let since = *self.above_since.get_or_insert(now);
            let since = self.last_down.map_or(since, |d| since.max(d));
            if now.saturating_duration_since(since) >= STABLE_UP {
                return up;
            }
        } else {
            self.above_since = None;
        }
        current
    }
}

#[cfg(test)]
#[path = "layer_switching_tests.rs"]
mod tests;
