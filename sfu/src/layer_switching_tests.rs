use super::*;

/// The ladder: 1280x720@2000, 640x360@600, 320x180@150, all sending, not measured.
fn ladder() -> [LayerInput; 3] {
    [2_000_000, 600_000, 150_000].map(|b| LayerInput {
        ladder_bps: b,
        measured_bps: None,
        live: true,
    })
}

fn tick(c: &mut LayerChoice, layers: &[LayerInput], at: Instant) -> Decision {
    c.tick(
        Tick {
            layers,
            audio_bps: Some(40_000),
            cap: 0,
        },
        at,
    )
}

/// Ticks every 250 ms (the worker's housekeeping) from `from` for `secs`, with `estimate`
/// given before each; the last decision and the time after.
fn run(
    c: &mut LayerChoice,
    layers: &[LayerInput],
    from: Instant,
    secs: f64,
    estimate: impl Fn(usize) -> u64,
) -> (Decision, Instant) {
    let mut at = from;
    let mut last = None;
    for i in 0..(secs * 4.0) as usize {
        c.estimate(EstimateKind::Twcc, estimate(i));
        last = Some(tick(c, layers, at));
        at += Duration::from_millis(250);
    }
    (last.expect("ticks"), at)
}

#[test]
fn links_settle_on_the_layer_that_fits_them_with_headroom() {
    let t0 = Instant::now();
    for (link, layer) in [(250_000, 2), (800_000, 1), (50_000_000, 0)] {
        let mut c = LayerChoice::new();
        let (d, _) = run(&mut c, &ladder(), t0, 10.0, |_| link);
        assert_eq!(d.target, Some(layer), "a {link} bit/s link");
    }
}

#[test]
fn a_joiner_starts_on_the_lowest_layer_whatever_its_first_estimate() {
    let mut c = LayerChoice::new();
    assert_eq!(tick(&mut c, &ladder(), Instant::now()).target, Some(2));
    let mut c = LayerChoice::new();
    c.estimate(EstimateKind::Twcc, 50_000_000);
    assert_eq!(
        tick(&mut c, &ladder(), Instant::now()).target,
        Some(2),
        "a probe's first estimate is not trusted yet"
    );
}

#[test]
fn a_step_up_goes_to_the_highest_layer_that_fits_in_one_switch() {
    let mut c = LayerChoice::new();
    let (d, _) = run(&mut c, &ladder(), Instant::now(), 6.0, |_| 50_000_000);
    assert_eq!(
        (d.target, c.ups),
        (Some(0), 1),
        "lowest to top, skipping the middle"
    );
}

/// A link that cannot carry the layer: a lossy report, the estimate collapsing, until the
/// step down; then a clean report. The time of the step down.
fn fails(c: &mut LayerChoice, from: Instant) -> Instant {
    c.loss(0.3);
    let at = until_switch(c, from, 200_000);
    c.loss(0.0);
    at
}

/// Ticks as [`run`] does with a steady `estimate` until the target changes (at most 2 min);
/// the time it changed.
fn until_switch(c: &mut LayerChoice, from: Instant, estimate: u64) -> Instant {
    let before = (c.ups, c.downs);
    let mut at = from;
    while (c.ups, c.downs) == before {
        assert!(at < from + Duration::from_secs(120), "no switch");
        c.estimate(EstimateKind::Twcc, estimate);
        tick(c, &ladder(), at);
        at += Duration::from_millis(250);
    }
    at
}

#[test]
fn a_step_up_that_fails_backs_off_doubling_and_one_that_holds_resets_it() {
    // A token bucket's burst makes the estimate 1.1 Mbit/s on a link that carries 250k: the
    // step up to the middle fails (the estimate collapses, loss), and is not retried soon.
    let t0 = Instant::now();
    let mut c = LayerChoice::new();
    let up = until_switch(&mut c, t0, 1_100_000);
    assert_eq!((c.target(), c.ups), (Some(1), 1), "misled up to the middle");
    let failed = fails(&mut c, up);
    assert_eq!((c.target(), c.downs), (Some(2), 1), "back down");
    // The same estimate again: no step up for UP_BACKOFF_FIRST; the probes ask for what a
    // step up now needs.
    let mut at = failed;
    let mut asked = 0;
    while at < failed + UP_BACKOFF_FIRST {
        c.estimate(EstimateKind::Twcc, 1_100_000);
        let d = tick(&mut c, &ladder(), at);
        if d.probe {
            asked = asked.max(d.desired_bps);
        }
        at += Duration::from_millis(250);
    }
    assert_eq!(c.target(), Some(2), "stepped up while backing off");
    assert!(
        asked as f64 >= 1_100_000.0 * UP_FAIL_RAISE,
        "probes for {asked} bit/s"
    );
    let up = until_switch(&mut c, at, 1_100_000);
    assert!(up < at + STABLE_UP + Duration::from_secs(1));
    assert_eq!(
        (c.target(), c.ups),
        (Some(1), 2),
        "tried again after the back-off"
    );
    // A second failure waits twice as long.
    let failed = fails(&mut c, up);
    assert_eq!(c.target(), Some(2));
    let up = until_switch(&mut c, failed, 1_100_000);
    assert!(
        up >= failed + 2 * UP_BACKOFF_FIRST,
        "the second wait is doubled: {:?}",
        up - failed
    );
    // This time the step up holds past UP_FAIL_WINDOW: a later cut is no failure, and the
    // next step up waits no back-off.
    let (_, at) = run(
        &mut c,
        &ladder(),
        up,
        UP_FAIL_WINDOW.as_secs_f64() + 1.0,
        |_| 1_100_000,
    );
    assert_eq!((c.target(), c.ups), (Some(1), 3));
    let cut = fails(&mut c, at);
    assert_eq!(c.target(), Some(2), "a cut, long after the step up");
    let up = until_switch(&mut c, cut, 1_100_000);
    assert!(
        up < cut + STABLE_UP + Duration::from_secs(1),
        "no back-off: the step up had held"
    );
}

#[test]
fn a_step_down_without_loss_is_no_failed_step_up() {
    // The estimate falls soon after a step up, but nothing is lost: the link carried the
    // layer (a busy machine delays the viewer's reads), and the next step up waits no more
    // than STABLE_UP.
    let mut c = LayerChoice::new();
    let up = until_switch(&mut c, Instant::now(), 1_100_000);
    let down = until_switch(&mut c, up, 200_000);
    assert!(down < up + UP_FAIL_WINDOW);
    let again = until_switch(&mut c, down, 1_100_000);
    assert!(again <= down + STABLE_UP + Duration::from_millis(250));
}

#[test]
fn a_lifted_limit_is_taken_while_backing_off() {
    let mut c = LayerChoice::new();
    let up = until_switch(&mut c, Instant::now(), 1_100_000);
    let at = fails(&mut c, up);
    assert_eq!(
        (c.target(), c.ups, c.downs),
        (Some(2), 1, 1),
        "a failed step up"
    );
    assert!(c.blocked_until.is_some(), "backing off");
    // Lifted: a probe measures 5 Mbit/s, well above what misled it.
    let (d, _) = run(&mut c, &ladder(), at, 6.0, |_| 5_000_000);
    assert_eq!(
        (d.target, c.ups),
        (Some(0), 2),
        "up to the top, backing off or not"
    );
}

#[test]
fn a_falling_estimate_steps_down_after_the_hold_and_can_skip_layers() {
    let t0 = Instant::now();
    let mut c = LayerChoice::new();
    let (d, at) = run(&mut c, &ladder(), t0, 10.0, |_| 5_000_000);
    assert_eq!(d.target, Some(0));
    c.estimate(EstimateKind::Twcc, 300_000);
    assert_eq!(
        tick(&mut c, &ladder(), at).target,
        Some(0),
        "one blip is held"
    );
    let d = tick(&mut c, &ladder(), at + DOWN_HOLD);
    assert_eq!(d.target, Some(2), "straight to the bottom, past the middle");
    assert_eq!(c.downs, 1);
}

#[test]
fn sustained_loss_steps_down_one_layer_a_single_lossy_report_does_not() {
    let t0 = Instant::now();
    let mut c = LayerChoice::new();
    let (_, mut at) = run(&mut c, &ladder(), t0, 10.0, |_| 5_000_000);
    c.loss(0.3);
    assert_eq!(tick(&mut c, &ladder(), at).target, Some(0));
    c.loss(0.0);
    c.loss(0.3);
    at += Duration::from_millis(250);
    assert_eq!(tick(&mut c, &ladder(), at).target, Some(0), "not in a row");
    c.loss(0.25);
    at += Duration::from_millis(250);
    assert_eq!(
        tick(&mut c, &ladder(), at).target,
        Some(1),
        "one layer down"
    );
}

#[test]
fn no_step_up_before_the_stable_period_and_the_probe_asks_for_the_next_layer() {
    let t0 = Instant::now();
    let mut c = LayerChoice::new();
    let (d, at) = run(&mut c, &ladder(), t0, 10.0, |_| 250_000);
    assert_eq!(d.target, Some(2));
    // Calm at the bottom: the estimator is asked to probe for the middle layer.
    assert!(
        d.desired_bps >= ((600_000 + 40_000) as f64 * UP_HEADROOM) as u64,
        "probe for the middle: {}",
        d.desired_bps
    );
    // The probe found room: still the bottom until STABLE_UP has passed.
    let secs = STABLE_UP.as_secs_f64() - 0.5;
    let (d, at) = run(&mut c, &ladder(), at, secs, |_| 900_000);
    assert_eq!(d.target, Some(2), "up too early");
    let (d, _) = run(&mut c, &ladder(), at, 1.0, |_| 900_000);
    assert_eq!(d.target, Some(1), "up after the stable period");
    assert_eq!(c.ups, 1);
}

#[test]
fn loss_blocks_both_the_probe_and_the_step_up() {
    let t0 = Instant::now();
    let mut c = LayerChoice::new();
    let (_, at) = run(&mut c, &ladder(), t0, 10.0, |_| 250_000);
    c.loss(0.05);
    let (d, _) = run(&mut c, &ladder(), at, 10.0, |_| 900_000);
    assert_eq!(d.target, Some(2));
    assert_eq!(
        d.desired_bps,
        ((150_000 + 40_000) as f64 * UP_HEADROOM) as u64
    );
}

#[test]
fn the_cap_is_honoured_whatever_the_estimate() {
    let mut c = LayerChoice::new();
    let mut at = Instant::now();
    for _ in 0..80 {
        c.estimate(EstimateKind::Twcc, 50_000_000);
        let d = c.tick(
            Tick {
                layers: &ladder(),
                audio_bps: None,
                cap: 1,
            },
            at,
        );
        assert_ne!(d.target, Some(0), "above the cap");
        at += Duration::from_millis(250);
    }
    assert_eq!(c.target(), Some(1), "the cap, not below it");
}

#[test]
fn a_noisy_estimate_around_a_layer_does_not_flap() {
    // ±7 % around what the top layer + audio need (2.04 Mbit/s), alternating each tick, for a
    // minute, from the middle: the top fits on every other tick, never with headroom.
    let t0 = Instant::now();
    let mut c = LayerChoice::new();
    let (_, at) = run(&mut c, &ladder(), t0, 10.0, |_| 1_200_000);
    assert_eq!((c.target(), c.ups), (Some(1), 1), "settled on the middle");
    let (d, _) = run(&mut c, &ladder(), at, 60.0, |i| {
        if i % 2 == 0 {
            2_180_000
        } else {
            1_900_000
        }
    });
    assert_eq!(d.target, Some(1));
    assert_eq!((c.ups, c.downs), (1, 0), "no switch either way");
}

#[test]
fn a_layer_that_never_sends_is_no_target() {
    let mut layers = ladder();
    layers[0].live = false;
    let mut c = LayerChoice::new();
    let (d, _) = run(&mut c, &layers, Instant::now(), 20.0, |_| 50_000_000);
    assert_eq!(d.target, Some(1), "stays on what works");
    let none = [LayerInput {
        ladder_bps: 1,
        measured_bps: None,
        live: false,
    }];
    assert_eq!(
        tick(&mut LayerChoice::new(), &none, Instant::now()).target,
        None
    );
}

#[test]
fn measured_bitrates_replace_the_ladder_s() {
    // The middle layer really sends 900 kbit/s: it no longer fits an 800 kbit/s link.
    let mut layers = ladder();
    layers[1].measured_bps = Some(900_000);
    let mut c = LayerChoice::new();
    let (d, _) = run(&mut c, &layers, Instant::now(), 10.0, |_| 800_000);
    assert_eq!(d.target, Some(2));
}

#[test]
fn remb_counts_only_for_a_viewer_without_twcc() {
    let mut c = LayerChoice::new();
    c.estimate(EstimateKind::Remb, 250_000);
    assert_eq!(c.estimate, Some(250_000));
    c.estimate(EstimateKind::Twcc, 900_000);
    c.estimate(EstimateKind::Remb, 250_000);
    assert_eq!(c.estimate, Some(900_000));
}

#[test]
fn the_meter_measures_a_window_and_forgets_a_silent_layer() {
    let t0 = Instant::now();
    let mut m = BitrateMeter::default();
    assert!(!m.live(t0));
    // A packet of 950 bytes every 10 ms over a window: (950 + 50) × 8 × 100 = 800 kbit/s.
    let n = METER_WINDOW.as_millis() as u64 / 10;
    for i in 0..=n {
        m.packet(950, t0 + Duration::from_millis(10 * i));
    }
    let at = t0 + METER_WINDOW;
    assert_eq!(m.bps(at), Some(800_000));
    assert!(!m.live(at + LIVE_WINDOW));
    assert_eq!(m.bps(at + LIVE_WINDOW), None);
}

#[test]
fn the_next_layer_must_fit_with_headroom_not_just_fit() {
    // 2.1 Mbit/s steadily: the top layer + audio (2.04) fit, without 15 % to spare.
    let mut c = LayerChoice::new();
    let (d, _) = run(&mut c, &ladder(), Instant::now(), 30.0, |_| 2_100_000);
    assert_eq!(d.target, Some(1));
}

#[test]
fn probes_come_while_the_next_layer_does_not_fit_at_doubling_intervals() {
    let t0 = Instant::now();
    let mut c = LayerChoice::new();
    let mut probes = Vec::new();
    let mut at = t0;
    for i in 0..(40 * 4) {
        c.estimate(EstimateKind::Twcc, 250_000);
        if tick(&mut c, &ladder(), at).probe {
            probes.push(at.duration_since(t0).as_millis() as u64);
        }
        if i == 30 * 4 {
            c.loss(0.05); // loss: no more probes
        }
        at += Duration::from_millis(250);
    }
    // The bottom from the first tick on (250 kbit/s): probes at 3 s, then 6, 8, 8 s later.
    assert_eq!(probes, vec![3_000, 9_000, 17_000, 25_000]);
    // Where the next layer fits (or there is none), no probe.
    let mut c = LayerChoice::new();
    let (_, at) = run(&mut c, &ladder(), t0, 30.0, |_| 50_000_000);
    assert!(!tick(&mut c, &ladder(), at).probe);
}

#[test]
fn a_step_ups_keyframe_transient_does_not_step_back_down() {
    let t0 = Instant::now();
    let mut c = LayerChoice::new();
    let (_, at) = run(&mut c, &ladder(), t0, 10.0, |_| 250_000);
    // Room for the middle layer: a tick at a time until the step up.
    let mut at = at;
    for _ in 0..80 {
        run(&mut c, &ladder(), at, 0.25, |_| 900_000);
        at += Duration::from_millis(250);
        if c.ups == 1 {
            break;
        }
    }
    assert_eq!((c.target(), c.ups), (Some(1), 1), "up to the middle");
    // The switch's keyframe: the estimate dips and a loss report or two follow, for a second.
    let up_at = at;
    c.loss(0.2);
    c.loss(0.2);
    let (d, at) = run(&mut c, &ladder(), at, 1.5, |_| 360_000);
    assert_eq!(d.target, Some(1), "held within UP_SETTLE of the step up");
    // Past the settling time a lasting dip steps down.
    assert!(at.saturating_duration_since(up_at) < UP_SETTLE);
    let (d, _) = run(&mut c, &ladder(), at, 2.5, |_| 360_000);
    assert_eq!((d.target, c.downs), (Some(2), 1), "down once it lasts");
}

#[test]
fn an_estimate_just_under_the_layers_need_keeps_it() {
    let t0 = Instant::now();
    let mut c = LayerChoice::new();
    let (_, at) = run(&mut c, &ladder(), t0, 10.0, |_| 250_000);
    let (_, at) = run(&mut c, &ladder(), at, 20.0, |_| 900_000);
    assert_eq!(c.target(), Some(1));
    // 85 % of the middle layer's need (640k), where the estimator backs off to on a link the
    // layer fills: not a cut.
    let (d, at) = run(&mut c, &ladder(), at, 5.0, |_| 544_000);
    assert_eq!(d.target, Some(1), "within DOWN_MARGIN");
    let (d, _) = run(&mut c, &ladder(), at, 2.0, |_| 450_000);
    assert_eq!(d.target, Some(2), "below DOWN_MARGIN");
}

#[test]
fn a_step_ups_burst_misread_as_overuse_restarts_the_estimator_once_if_nothing_was_lost() {
    let mut c = LayerChoice::new();
    let up = until_switch(&mut c, Instant::now(), 22_000_000);
    assert_eq!(c.target(), Some(0));
    // The keyframe: the estimate falls to 0.85 × what the bottom layer was acknowledged at,
    // and stays there past UP_SETTLE; nothing is lost.
    let mut at = up;
    let mut restarts = Vec::new();
    let mut restarted_at = None;
    while at < up + UP_SETTLE + Duration::from_millis(500) {
        c.estimate(EstimateKind::Twcc, 745_000);
        if let Some(r) = tick(&mut c, &ladder(), at).reseed_bps {
            restarts.push(r);
            restarted_at = Some(at);
        }
        at += Duration::from_millis(250);
    }
    // Restarted at what the step up trusted, at most RESEED_CAP × the top layer's need.
    assert_eq!(
        restarts,
        vec![((2_000_000 + 40_000) as f64 * RESEED_CAP) as u64]
    );
    assert_eq!(c.target(), Some(0), "kept");
    // Low again: the restarted estimator converging, kept for RESEED_HOLD; still low after
    // that, a real fall: down, with no second restart.
    let restarted_at = restarted_at.expect("a restart");
    let down = until_switch(&mut c, at, 745_000);
    assert_eq!(c.target(), Some(1));
    assert!(
        down >= restarted_at + RESEED_HOLD,
        "{:?}",
        down - restarted_at
    );
    assert!(down <= restarted_at + RESEED_HOLD + DOWN_HOLD + Duration::from_millis(500));
    // With a lossy report after the step up, no restart: the link did not carry it.
    let mut c = LayerChoice::new();
    let up = until_switch(&mut c, Instant::now(), 22_000_000);
    c.loss(0.2);
    let mut at = up;
    while at < up + Duration::from_secs(3) {
        c.estimate(EstimateKind::Twcc, 745_000);
        assert_eq!(
            tick(&mut c, &ladder(), at).reseed_bps,
            None,
            "a restart after loss"
        );
        at += Duration::from_millis(250);
    }
    assert_eq!(c.target(), Some(1), "left, after the settling");
}

#[test]
fn nacks_for_a_tenth_of_the_packets_over_half_a_second_with_the_estimate_below_the_need_step_down()
{
    let mut c = LayerChoice::new();
    let up = until_switch(&mut c, Instant::now(), 50_000_000);
    assert_eq!(c.target(), Some(0));
    let mut at = up + UP_SETTLE + Duration::from_millis(250);
    // The estimate a cut leaves for the first second: below the top's need (2.04 Mbit/s),
    // above DOWN_MARGIN × it.
    let tick_at = |c: &mut LayerChoice, at: Instant, estimate: u64| {
        c.estimate(EstimateKind::Twcc, estimate);
        tick(c, &ladder(), at).target
    };
    // (packets, NACKs) so far at each 250 ms stats interval: a few NACKs, nothing.
    c.egress(1_000, 0);
    c.egress(1_060, 3);
    c.egress(1_120, 6);
    assert_eq!(tick_at(&mut c, at, 1_800_000), Some(0), "5 %");
    // Too few packets to say anything.
    c.egress(1_123, 9);
    c.egress(1_125, 12);
    at += Duration::from_millis(250);
    assert_eq!(
        tick_at(&mut c, at, 1_800_000),
        Some(0),
        "5 packets say nothing"
    );
    // NACKs while the estimate still fits the layer: a queue, not a cut.
    c.egress(1_185, 30);
    c.egress(1_245, 40);
    at += Duration::from_millis(250);
    assert_eq!(tick_at(&mut c, at, 2_200_000), Some(0), "the estimate fits");
    // NACKs, the estimate below the need, all repaired (no keyframe request).
    c.egress(1_425, 57);
    c.egress(1_485, 67);
    at += Duration::from_millis(250);
    assert_eq!(tick_at(&mut c, at, 1_800_000), Some(0), "repaired in time");
    // A cut: NACKs in bursts (28 %, then none), the estimate below the need, the viewer asks.
    c.egress(1_545, 84);
    c.keyframe_asked();
    c.egress(1_605, 84);
    at += Duration::from_millis(250);
    assert_eq!(tick_at(&mut c, at, 1_800_000), Some(1), "down to what fits");
    assert_eq!(c.downs, 1);
}

#[test]
fn nacks_right_after_a_step_up_are_its_keyframe_not_a_reason_to_step_down() {
    let mut c = LayerChoice::new();
    let up = until_switch(&mut c, Instant::now(), 50_000_000);
    c.egress(1_000, 0);
    c.egress(1_060, 30);
    c.egress(1_120, 60);
    c.estimate(EstimateKind::Twcc, 1_800_000);
    let d = tick(&mut c, &ladder(), up + Duration::from_millis(500));
    assert_eq!(d.target, Some(0), "within UP_SETTLE");
}

#[test]
fn nacks_and_keyframe_requests_in_every_interval_step_down_one_layer_whatever_the_estimate() {
    let mut c = LayerChoice::new();
    let up = until_switch(&mut c, Instant::now(), 50_000_000);
    assert_eq!(c.target(), Some(0));
    let at = up + UP_SETTLE + Duration::from_millis(250);
    // The estimate still far above the top's need (a cut it has not seen yet).
    c.estimate(EstimateKind::Twcc, 3_200_000);
    c.egress(1_000, 0);
    c.egress(1_060, 10);
    c.keyframe_asked();
    c.egress(1_120, 20);
    assert_eq!(
        tick(&mut c, &ladder(), at).target,
        Some(0),
        "asked in one interval"
    );
    c.keyframe_asked();
    c.egress(1_180, 30);
    let d = tick(&mut c, &ladder(), at + Duration::from_millis(250));
    assert_eq!(d.target, Some(1), "asked in both: one layer down");
    // Then the old layer's queued NACKs and requests are not news for a while.
    c.keyframe_asked();
    c.egress(1_240, 40);
    c.keyframe_asked();
    c.egress(1_300, 50);
    let d = tick(&mut c, &ladder(), at + Duration::from_millis(750));
    assert_eq!(d.target, Some(1), "within DOWN_SETTLE");
    assert_eq!(c.downs, 1);
}
