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
fn a_joiner_before_any_estimate_starts_no_higher_than_the_start_budget() {
    let mut c = LayerChoice::new();
    let d = tick(&mut c, &ladder(), Instant::now());
    assert_eq!(
        d.target,
        Some(1),
        "640x360 + audio fits 1 Mbit/s, 720p does not"
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
        assert_eq!(d.target, Some(1));
        at += Duration::from_millis(250);
    }
}

#[test]
fn a_noisy_estimate_around_a_layer_does_not_flap() {
    // ±7 % around what the top layer + audio need (2.04 Mbit/s), alternating each tick, for a
    // minute, from the middle: the top fits on every other tick, never with headroom.
    let t0 = Instant::now();
    let mut c = LayerChoice::new();
    let (d, _) = run(&mut c, &ladder(), t0, 60.0, |i| {
        if i % 2 == 0 {
            2_180_000
        } else {
            1_900_000
        }
    });
    assert_eq!(d.target, Some(1));
    assert_eq!((c.ups, c.downs), (0, 0), "no switch either way");
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
    // 95 % of the middle layer's need (640k): a link it fills, not a cut.
    let (d, at) = run(&mut c, &ladder(), at, 5.0, |_| 608_000);
    assert_eq!(d.target, Some(1), "within DOWN_MARGIN");
    let (d, _) = run(&mut c, &ladder(), at, 2.0, |_| 540_000);
    assert_eq!(d.target, Some(2), "below DOWN_MARGIN");
}
