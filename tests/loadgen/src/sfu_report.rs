//! The "SFU" section of the report: the relay engines and Janus side by side (per added
//! viewer: CPU, viewers per core, RSS; the largest K held; hop latency; a joiner's first
//! frame), the runs per K, and issue 25's targets.

use serde_json::Value;

use crate::fanout::HELD_FPS;
use crate::sfu::HELD_LOSS_PCT;

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "–".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) if n.as_f64().is_some_and(|f| f.fract() == 0.0) => {
            format!("{}", n.as_f64().unwrap_or(0.0) as i64)
        }
        v => v.to_string(),
    }
}

/// The columns: each engine asked for, then Janus.
fn columns(sfu: &Value) -> Vec<(String, Value)> {
    // in the order they were asked for (the JSON object sorts its keys)
    let mut names: Vec<String> = sfu["engine_order"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e.as_str().map(String::from))
        .collect();
    for e in sfu["engines"]
        .as_object()
        .into_iter()
        .flat_map(|o| o.keys())
    {
        if !names.contains(e) {
            names.push(e.clone());
        }
    }
    let mut cols: Vec<(String, Value)> = names
        .iter()
        .map(|e| (format!("relay `--engine {e}`"), sfu["engines"][e].clone()))
        .collect();
    if !sfu["janus"].is_null() {
        cols.push(("Janus 1.1.2 streaming".into(), sfu["janus"].clone()));
    }
    cols
}

pub fn markdown(report: &Value) -> String {
    let sfu = &report["sfu"];
    let mut s = String::from("\n## SFU: relay engines and Janus, light viewers\n\n");
    let m = report.get("sfu_machine").unwrap_or(&report["machine"]);
    s += &format!(
        "Issue 25's benchmark, run by `{}` on {} ({} cores), {}; the run took {} s. \
         One origin (producer-agent, test pattern 1280x720, 30 fps, 2 Mbit/s VP8, shared \
         encoding, no congestion control, no FEC) and one relay-agent per engine on one node; \
         K light viewers on the relay (`tests/loadgen/src/light_viewer.rs`: each a str0m 0.24 \
         WebRTC peer with its own UDP socket on {}, ICE, DTLS-SRTP, receiver reports, NACK, \
         TWCC feedback, no decoding; all in the load generator's process, on the same cores). \
         K grows (viewers added to those running, 25 at a time) while the machine holds it: \
         every viewer ≥ {HELD_FPS} fps of complete frames and < {HELD_LOSS_PCT} % of its \
         packets lost over an 8 s window (3 s after every viewer had a frame; a K not held \
         gets a second window 3 s later, and a third if the second points outside the server: \
         the origin's own viewer slowed too, or the machine ≥ 95 % busy; the last counts). CPU and RSS: \
         the relay (or Janus) process from `/proc`; per added viewer = least-squares slope over \
         the Ks held, K = 0 included (the relay receiving the origin, nobody watching). Hop: a \
         light viewer of the origin and one of the relay hash every frame (consumer-agent's \
         `--frame-log` hash), matched frames' arrival difference. Joiner: 5 viewers joining \
         one after another at the first K, session asked → first complete keyframe. Janus: \
         the streaming plugin, an RTP mountpoint fed by `gst-launch-1.0` with the origin's \
         vp8enc settings (but a keyframe every 2 s: an RTP mountpoint cannot ask its feed for \
         one), viewers through its HTTP API (`watch`, `start`, trickle), ICE on the same \
         address (`ice_enforce_list`).\n\n",
        report
            .get("sfu_command")
            .and_then(Value::as_str)
            .unwrap_or("loadgen"),
        m["cpu"].as_str().unwrap_or("?"),
        m["cores"],
        report.get("sfu_date").and_then(Value::as_str).unwrap_or(""),
        sfu["seconds"],
        sfu["host_address"].as_str().unwrap_or("?"),
    );
    if let Some(note) = report.get("sfu_note").and_then(Value::as_str) {
        s += &format!("**{note}**\n\n");
    }
    let cols = columns(sfu);
    s += &format!(
        "| | {} |\n|---|{}\n",
        cols.iter()
            .map(|c| c.0.as_str())
            .collect::<Vec<_>>()
            .join(" | "),
        "---:|".repeat(cols.len())
    );
    let row = |label: &str, f: &dyn Fn(&Value) -> String| {
        format!(
            "| {label} | {} |\n",
            cols.iter().map(|c| f(&c.1)).collect::<Vec<_>>().join(" | ")
        )
    };
    let unavailable = |v: &Value| -> Option<String> {
        if v["available"] == false {
            return Some("not available".into());
        }
        v.get("error").map(|_| "failed".into())
    };
    let fig = |key: &'static str| move |v: &Value| unavailable(v).unwrap_or_else(|| cell(&v[key]));
    s += &row(
        "CPU per added viewer, % of a core",
        &fig("cpu_pct_per_viewer"),
    );
    s += &row("viewers per core", &fig("viewers_per_core"));
    s += &row("RSS per added viewer, KB", &fig("rss_kb_per_viewer"));
    s += &row("largest K held", &fig("largest_k_held"));
    s += &row("first K not held", &fig("first_k_not_held"));
    s += &row("hop added, p50 / p95 ms", &|v: &Value| {
        unavailable(v).unwrap_or_else(|| {
            if v["hop"].is_null() {
                "–".into()
            } else {
                format!(
                    "{} / {}",
                    cell(&v["hop"]["hop_added_ms_p50"]),
                    cell(&v["hop"]["hop_added_ms_p95"])
                )
            }
        })
    });
    s += &row(
        "joiner: first frame, median ms",
        &fig("joiner_first_frame_ms_median"),
    );
    let notes: Vec<String> = cols
        .iter()
        .filter_map(|(name, v)| {
            let why = v["why"].as_str().or(v["error"].as_str())?;
            Some(format!("* {name}: {why}"))
        })
        .collect();
    if !notes.is_empty() {
        s += "\n";
        s += &notes.join("\n");
        s += "\n";
    }
    // per K: server CPU, worst viewer's fps and loss, the load generator's CPU
    s += "\n### Per K\n\nServer: the relay (or Janus). Origin fps: a light viewer of the origin, in the same window (relays only). Generator: the load generator (all the light viewers).\n\n| column | K | server CPU % | RSS MB | min fps | origin fps | max loss % | generator CPU % | machine busy % | held |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n";
    for (name, v) in &cols {
        for r in v["runs"].as_array().into_iter().flatten() {
            if r.get("error").is_some() {
                s += &format!(
                    "| {name} | {} | failed: {} | | | | | | | no |\n",
                    r["k"],
                    r["error"].as_str().unwrap_or("")
                );
                continue;
            }
            s += &format!(
                "| {name} | {} | {} | {:.1} | {} | {} | {} | {} | {} | {} |\n",
                r["k"],
                cell(&r["server_cpu_pct"]),
                r["server_rss_kb"].as_f64().unwrap_or(0.0) / 1024.0,
                cell(&r["min_fps"]),
                cell(&r["origin_viewer_fps"]),
                cell(&r["max_loss_pct"]),
                cell(&r["generator_cpu_pct"]),
                cell(&r["machine_busy_pct"]),
                match r["limited_by"].as_str() {
                    _ if r["held"] == true => "yes".to_string(),
                    Some(why) => format!("**no**: {why}"),
                    None => "**no**".to_string(),
                },
            );
        }
    }
    s += &targets(sfu);
    s
}

/// Issue 25's targets, from this run's figures ("–" where a figure is missing).
fn targets(sfu: &Value) -> String {
    let fwd = &sfu["engines"]["forward"];
    let pipe = &sfu["engines"]["pipeline"];
    let janus = &sfu["janus"];
    let per = |v: &Value| v["cpu_pct_per_viewer"].as_f64();
    let mut rows = Vec::new();
    let mut add = |what: &str, value: Option<f64>, target: &str, met: Option<bool>| {
        rows.push(format!(
            "| {what} | {} | {target} | {} |",
            value.map_or("–".into(), |v| format!("{v:.3}")),
            match met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "–",
            }
        ));
    };
    let vpc = fwd["viewers_per_core"].as_f64();
    add(
        "forward: viewers per core",
        vpc,
        "≥ 500",
        vpc.map(|v| v >= 500.0),
    );
    let r = per(fwd).zip(per(pipe)).map(|(f, p)| f / p);
    add(
        "forward ÷ pipeline, CPU per viewer",
        r,
        "≤ 0.1",
        r.map(|r| r <= 0.1),
    );
    let r = per(fwd).zip(per(janus)).map(|(f, j)| f / j);
    add(
        "forward ÷ Janus, CPU per viewer",
        r,
        "≤ 0.5",
        r.map(|r| r <= 0.5),
    );
    let p95 = fwd["hop"]["hop_added_ms_p95"].as_f64();
    add(
        "forward: hop added, p95 ms",
        p95,
        "≤ 5",
        p95.map(|v| v <= 5.0),
    );
    let j = fwd["joiner_first_frame_ms_median"].as_f64();
    add(
        "forward: joiner's first frame, median ms",
        j,
        "≤ 250",
        j.map(|v| v <= 250.0),
    );
    let rss = fwd["rss_kb_per_viewer"].as_f64();
    add(
        "forward: RSS per viewer, KB",
        rss,
        "≤ 200",
        rss.map(|v| v <= 200.0),
    );
    format!(
        "\n### SFU targets (issue 25)\n\n| what | value | target | met |\n|---|---:|---|---|\n{}\n",
        rows.join("\n")
    )
}
