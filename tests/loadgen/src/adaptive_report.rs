//! The "Adaptive" section of the report (issue 26): per setup and link, what the viewer got
//! once settled; the step down after a cut and up after a lift; the ladder's cost; the
//! issue's targets.

use serde_json::{json, Value};

use crate::adaptive::{LINKS, SETUPS};

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "–".into(),
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

/// Milliseconds as seconds; "not within" when the step did not come within the watch, and
/// why there was no step to time when the viewer was not where a step starts (`from` its
/// height before the change).
fn secs(v: &Value, watched_ms: &Value, from: &Value, step_possible: bool) -> String {
    match v.as_f64() {
        Some(ms) => format!("{:.1} s", ms / 1000.0),
        None if !step_possible => format!("– (at {} before)", cell(from)),
        None => format!("not within {} s", watched_ms.as_u64().unwrap_or(0) / 1000),
    }
}

fn label(setup: &str) -> &'static str {
    match setup {
        "forward" => "forward relay, 3-layer ladder",
        "pipeline" => "pipeline relay, one 2 Mbit/s layer",
        _ => "per-consumer origin, viewers direct",
    }
}

pub fn markdown(report: &Value) -> String {
    let a = &report["adaptive"];
    let m = report.get("adaptive_machine").unwrap_or(&report["machine"]);
    let mut s = String::from("\n## Adaptive: viewers behind narrow links\n\n");
    s += &format!(
        "Issue 26's benchmark, run by `{}` on {} ({} cores), {}; the run took {} s. \
         One 1280x720 30 fps VP8 test pattern with audio, three viewers (consumer-agent, \
         decoding), each in a network namespace of its own behind a token bucket on its link \
         (`tc tbf`, burst {} bytes, {} ms queue; `tests/src/shaping.rs`): unlimited, \
         800 kbit/s, 250 kbit/s. Setups: the forward relay serving a 3-layer ladder \
         (`--encoding shared --layers 3`), choosing each viewer's layer; the pipeline relay \
         serving one shared 2 Mbit/s layer (the \"before\"); viewers direct on a per-consumer \
         origin (webrtcsink's congestion control, at most 2 Mbit/s). Settled: seconds 10-30 of \
         each session; frozen = the larger of consumer-agent's own frozen time (no new frame for \
         more than 3 frame intervals) and the time its frame counter stood still between \
         stats lines 0.2 s apart. Then, at once, the unlimited link is cut to \
         800 kbit/s and the 800 kbit/s limit lifted; step down = until the cut viewer decodes \
         fewer than 720 lines (the forward relay's own switch in brackets, timed from its layer), step up = until \
         the lifted one decodes 720 lines again, each watched for {} s and timed only from \
         where it can happen (the cut viewer at 720 lines, the lifted one below). Ladder cost: the \
         producer's CPU (`/proc`, % of a core, over 10 s, the median of 3 runs) encoding 3 \
         layers against 1, one \
         consumer receiving (`tests/loadgen/src/ladder.rs`).\n\n",
        report
            .get("adaptive_command")
            .and_then(Value::as_str)
            .unwrap_or("loadgen"),
        m["cpu"].as_str().unwrap_or("?"),
        m["cores"],
        report
            .get("adaptive_date")
            .and_then(Value::as_str)
            .unwrap_or(""),
        a["seconds"],
        crate::shaping::BURST_BYTES,
        crate::shaping::LATENCY_MS,
        first_watch(a).as_u64().unwrap_or(0) / 1000,
    );
    if let Some(note) = report.get("adaptive_note").and_then(Value::as_str) {
        s += &format!("**{note}**\n\n");
    }
    s += "| setup | link | fps | frozen % | longest freeze ms | video kbit/s | height | relay layer |\n\
          |---|---|---:|---:|---:|---:|---:|---:|\n";
    for setup in SETUPS {
        let v = &a["setups"][setup];
        if v.is_null() {
            continue;
        }
        if let Some(e) = v.get("error") {
            s += &format!("| {} | failed: {} | | | | | | |\n", label(setup), cell(e));
            continue;
        }
        for (i, (link, _)) in LINKS.iter().enumerate() {
            let r = &v["settled"][i];
            s += &format!(
                "| {} | {link} | {} | {} | {} | {} | {} | {} |\n",
                label(setup),
                cell(&r["fps"]),
                cell(&r["frozen_pct"]),
                cell(&r["longest_freeze_ms"]),
                cell(&r["video_kbps"]),
                cell(&r["height"]),
                cell(&r["layer"]),
            );
        }
    }
    s += "\n| setup | step down after a cut to 800k | its longest freeze ms | step up after a lift | machine busy % |\n|---|---|---:|---|---:|\n";
    for setup in SETUPS {
        let v = &a["setups"][setup];
        if v.is_null() || v.get("error").is_some() {
            continue;
        }
        let w = &v["watched_ms"];
        let (c, l) = (&v["cut"], &v["lift"]);
        let can_down = c["height_before"].as_u64() == Some(720);
        let can_up = l["height_before"].as_u64().is_some_and(|h| h < 720);
        let lines = |v: &Value| json!(format!("{} lines", cell(v)));
        let (c0, l0) = (&lines(&c["height_before"]), &lines(&l["height_before"]));
        let mut down = secs(&c["step_down_ms"], w, c0, can_down);
        let mut up = secs(&l["step_up_ms"], w, l0, can_up);
        // The relay's switch, timed from its own layer (which may lead the decoded height).
        let (cl, ll) = (&c["layer_before"], &l["layer_before"]);
        if setup == "forward" {
            let at = |v: &Value| format!("layer {}", cell(v));
            let d = secs(&c["relay_layer_down_ms"], w, &json!(at(cl)), cl == 0);
            let u = secs(
                &l["relay_layer_up_ms"],
                w,
                &json!(at(ll)),
                ll.as_u64() > Some(0),
            );
            down += &format!(" (relay: {d})");
            up += &format!(" (relay: {u})");
        }
        s += &format!(
            "| {} | {down} | {} | {up} | {} |\n",
            label(setup),
            cell(&v["cut"]["longest_freeze_ms"]),
            cell(&v["machine_busy_pct"]),
        );
    }
    let l = &a["ladder"];
    if let Some(e) = l.get("error") {
        s += &format!("\nLadder cost: failed: {}\n", cell(e));
    } else if l.is_object() {
        s += &format!(
            "\nLadder cost: producer CPU {} % with 3 layers, {} % with 1 (medians of {} runs \
             each, taking turns: {} and {}): **{}×** (machine busy {} % and {} %).\n",
            cell(&l["layers_3"]["producer_cpu_pct"]),
            cell(&l["layers_1"]["producer_cpu_pct"]),
            crate::ladder::ROUNDS,
            cell(&l["layers_3"]["cpu_pct_runs"]),
            cell(&l["layers_1"]["cpu_pct_runs"]),
            cell(&l["ratio"]),
            cell(&l["layers_3"]["machine_busy_pct"]),
            cell(&l["layers_1"]["machine_busy_pct"]),
        );
    }
    s += &targets(a);
    s
}

fn first_watch(a: &Value) -> Value {
    SETUPS
        .iter()
        .find_map(|s| a["setups"][s].get("watched_ms").cloned())
        .unwrap_or(Value::Null)
}

/// Issue 26's targets, from this run's figures ("–" where a figure is missing).
fn targets(a: &Value) -> String {
    let fwd = &a["setups"]["forward"];
    let pipe = &a["setups"]["pipeline"];
    let mut rows = Vec::new();
    let mut add = |what: &str, value: String, target: &str, met: Option<bool>| {
        let met = match met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "–",
        };
        rows.push(format!("| {what} | {value} | {target} | {met} |"));
    };
    let frozen: Option<f64> = fwd["settled"]
        .as_array()
        .and_then(|v| {
            v.iter()
                .map(|r| r["frozen_pct"].as_f64())
                .collect::<Option<Vec<_>>>()
        })
        .map(|v| v.into_iter().fold(0.0, f64::max));
    add(
        "forward: most frozen viewer once settled, %",
        frozen.map_or("–".into(), |f| format!("{f:.1}")),
        "≤ 2",
        frozen.map(|f| f <= 2.0),
    );
    let down = fwd["cut"]["step_down_ms"].as_f64();
    add(
        "forward: step down after a cut, s",
        down.map_or("–".into(), |d| format!("{:.1}", d / 1000.0)),
        "≤ 3",
        fwd["cut"]
            .is_object()
            .then(|| down.is_some_and(|d| d <= 3000.0)),
    );
    let up = fwd["lift"]["step_up_ms"].as_f64();
    add(
        "forward: step up after a lift, s",
        up.map_or("–".into(), |u| format!("{:.1}", u / 1000.0)),
        "≤ 15",
        fwd["lift"]
            .is_object()
            .then(|| up.is_some_and(|u| u <= 15000.0)),
    );
    let fps = |v: &Value| v["settled"][1]["fps"].as_f64();
    add(
        "800k viewer fps: forward / pipeline",
        format!(
            "{} / {}",
            cell(&fwd["settled"][1]["fps"]),
            cell(&pipe["settled"][1]["fps"])
        ),
        "≥ 25 where the pipeline's is not",
        fps(fwd).zip(fps(pipe)).map(|(f, p)| f >= 25.0 && p < 25.0),
    );
    let r = a["ladder"]["ratio"].as_f64();
    add(
        "ladder: producer CPU, 3 layers ÷ 1",
        r.map_or("–".into(), |r| format!("{r:.2}")),
        "≤ 1.6",
        r.map(|r| r <= 1.6),
    );
    format!(
        "\n### Adaptive targets (issue 26)\n\n| what | value | target | met |\n|---|---|---|---|\n{}\n",
        rows.join("\n")
    )
}
