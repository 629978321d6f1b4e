//! The encoding ladder (`producer-agent --encoding shared --layers N` / `--ladder`, issue 26):
//! the meta's `layers`, one video m-section per layer marked by its msid, keyframes aligned
//! across layers, keyframe requests per layer, a direct consumer-agent playing the top layer,
//! and the flags' bad combinations. Real agents, a real node, webrtcsrc in this process.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use cluster_tests::agent::{quick, Agent};
use cluster_tests::clients;
use cluster_tests::peer::Peer;
use cluster_tests::{free_port, media, Node};
use gst::prelude::*;
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(90);

/// The ladder `--layers 3` makes of a 640x360 picture at the default 2 Mbit/s.
const THREE: &str = "640x360@2000,320x180@500,160x90@100";

/// A producer of a 640x360 test picture with a 3-layer ladder, stats every 0.2 s.
fn layered_producer(node: &Node, name: &str, extra: &[&str]) -> Result<Agent> {
    let url = node.url();
    let mut args = vec![
        "--server",
        &url,
        "--name",
        name,
        "--width",
        "640",
        "--height",
        "360",
        "--encoding",
        "shared",
        "--layers",
        "3",
        "--stats-interval",
        "0.2",
    ];
    args.extend_from_slice(extra);
    Agent::spawn("producer-agent", &args)
}

fn ladder(p: &Agent) -> Option<Value> {
    p.json_lines("producer-stats")
        .pop()
        .map(|l| l["ladder"].clone())
        .filter(|l| !l.is_null())
}

/// Layer `k`'s figure `key` in a `ladder` stats object.
fn figure(ladder: &Value, k: usize, key: &str) -> u64 {
    ladder["layers"][k][key].as_u64().unwrap_or(0)
}

/// The producer named `name` as a v1 `list` shows it (its meta), once registered.
async fn listed(peer: &mut Peer, name: &str) -> Result<Value> {
    let deadline = std::time::Instant::now() + LONG;
    loop {
        peer.send(json!({"type": "list"})).await?;
        let list = peer.wait_for("list").await?;
        let found = list["producers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["meta"]["name"] == name)
            .cloned();
        if let Some(found) = found {
            return Ok(found);
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "{name} never listed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The msid stream id of each m-section of `sdp` (its `a=msid:` line, RFC 8830), with its
/// kind (`video`/`audio`); every source of the section (`a=ssrc:N msid:…`, webrtcbin's own
/// form) must name the same stream.
fn msids(sdp: &str) -> Vec<(String, Option<String>)> {
    let mut out: Vec<(String, Option<String>)> = Vec::new();
    let mut sources: Vec<Vec<String>> = Vec::new();
    for line in sdp.lines() {
        if let Some(rest) = line.strip_prefix("m=") {
            out.push((rest.split(' ').next().unwrap_or("").to_string(), None));
            sources.push(Vec::new());
        } else if let Some(rest) = line.strip_prefix("a=msid:") {
            if let Some(last) = out.last_mut() {
                last.1 = rest.split(' ').next().map(String::from);
            }
        } else if let Some((_, msid)) = line
            .strip_prefix("a=ssrc:")
            .and_then(|r| r.split_once(" msid:"))
        {
            if let Some(last) = sources.last_mut() {
                last.push(msid.split(' ').next().unwrap_or("").to_string());
            }
        }
    }
    for ((kind, msid), sources) in out.iter().zip(&sources) {
        for s in sources {
            assert_eq!(
                Some(s),
                msid.as_ref(),
                "a {kind} source msid differs:\n{sdp}"
            );
        }
    }
    out
}

/// A `--layers 3` producer announces its ladder in its meta, its offer has one video
/// m-section per layer marked `gwc-layer-0..2` and the audio marked as the top layer's, and the
/// layers' first keyframes, and the periodic ones (`--keyframe-interval`), are on the same
/// frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_layer_producer_announces_and_marks_its_layers_with_keyframes_aligned() -> Result<()>
{
    let node = Node::start(&[]).await?;
    let producer = layered_producer(&node, "ladder", &["--audio", "--keyframe-interval", "1"])?;
    let mut viewer = Peer::connect(&node.url()).await?;
    let entry = listed(&mut viewer, "ladder").await?;
    assert_eq!(entry["meta"]["layers"], THREE, "{entry}");

    let id = entry["id"].as_str().context("producer id")?;
    viewer
        .send(json!({"type": "startSession", "peerId": id}))
        .await?;
    viewer.expect("sessionStarted").await?;
    let offer = viewer.wait_for("peer").await?;
    let sdp = offer["sdp"]["sdp"].as_str().context("no offer sdp")?;
    let sections = msids(sdp);
    let video: Vec<Option<String>> = sections
        .iter()
        .filter(|(kind, _)| kind == "video")
        .map(|(_, msid)| msid.clone())
        .collect();
    let mut sorted = video.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        (0..3)
            .map(|k| Some(format!("gwc-layer-{k}")))
            .collect::<Vec<_>>(),
        "three video m-sections, one per layer:\n{sdp}"
    );
    let audio: Vec<&Option<String>> = sections
        .iter()
        .filter(|(kind, _)| kind == "audio")
        .map(|(_, m)| m)
        .collect();
    assert_eq!(
        audio,
        vec![&Some("gwc-layer-0".to_string())],
        "the audio goes with the top layer:\n{sdp}"
    );

    // Aligned: at least the start and two periodic keyframes at the same presentation times on
    // all three layers.
    producer
        .wait(LONG, "three aligned keyframes on every layer", |p| {
            let Some(l) = ladder(p) else { return false };
            let times = |k: usize| -> Vec<u64> {
                l["layers"][k]["recent_keyframes_ms"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_u64)
                    .collect()
            };
            let common = times(0)
                .into_iter()
                .filter(|t| times(1).contains(t) && times(2).contains(t))
                .count();
            common >= 3
        })
        .await?;
    let l = ladder(&producer).context("no ladder stats")?;
    assert!(l["aligned_keyframes"].as_u64() >= Some(3), "{l}");
    for (k, bps) in [2_000_000, 500_000, 100_000].into_iter().enumerate() {
        assert_eq!(figure(&l, k, "bitrate_bps"), bps, "{l}");
    }
    viewer.close().await;
    Ok(())
}

/// A consumer-agent connected to a layered origin directly plays the top layer: its sink only
/// takes 640x360 pictures (a lower layer would not negotiate), and it gets its frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_consumer_agent_plays_the_top_layer() -> Result<()> {
    let node = Node::start(&[]).await?;
    let _producer = layered_producer(&node, "ladder-direct", &["--audio"])?;
    let mut consumer = Agent::consumer(&[
        "--server",
        &node.url(),
        "--producer-name",
        "ladder-direct",
        "--sink",
        "pipeline:video/x-raw,width=640,height=360 ! fakesink sync=false",
        "--frames",
        "60",
    ])?;
    assert_eq!(
        consumer.exit_within(LONG).await?,
        Some(0),
        "{}",
        consumer.stderr()
    );
    let report = consumer.report()?;
    assert!(report["frames"].as_u64() >= Some(60), "{report}");
    let stderr = consumer.stderr();
    for k in [1, 2] {
        assert!(
            stderr.contains(&format!("layer {k} of the origin")),
            "layer {k} not set aside:\n{stderr}"
        );
    }
    Ok(())
}

/// The web app (headless Chromium) watching a layered origin directly shows the top layer,
/// 640x360, with the audio in the same MediaStream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_app_plays_the_top_layer_with_the_audio() -> Result<()> {
    let node = Node::start(&[]).await?;
    let _producer = layered_producer(&node, "ladder-web", &["--audio"])?;
    let url = format!("http://127.0.0.1:{}/", node.port);
    let page = clients::browser(&["play", &url, "ladder-web"])?;
    let played = clients::event(&page, "played").await?;
    let after = &played["after"];
    assert_eq!(
        (after["width"].as_u64(), after["height"].as_u64()),
        (Some(640), Some(360)),
        "{played}"
    );
    assert!(
        after["frames"].as_u64() > played["before"]["frames"].as_u64(),
        "{played}"
    );
    let mut kinds: Vec<&str> = after["tracks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["kind"].as_str())
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        ["audio", "video"],
        "the top layer's stream: {played}"
    );
    Ok(())
}

/// The RTP packets each video pad of a webrtcsrc received, by the pad's msid.
type Received = Arc<Mutex<Vec<(String, gst::Pad, Arc<AtomicU64>)>>>;

/// A stock webrtcsrc receiving `producer_id` without decoding: every pad into a fakesink.
fn undecoded_viewer(url: &str, producer_id: &str) -> Result<(media::Running, Received)> {
    media::init();
    let pipeline = gst::Pipeline::new();
    let src = gst::ElementFactory::make("webrtcsrc")
        .property("stun-server", None::<String>)
        .build()?;
    let signaller = src.property::<gst::glib::Object>("signaller");
    signaller.set_property("uri", url);
    signaller.set_property("producer-peer-id", producer_id);
    pipeline.add(&src)?;
    let received: Received = Arc::default();
    let (weak, pads) = (pipeline.downgrade(), received.clone());
    src.connect_pad_added(move |_, pad| {
        let Some(pipeline) = weak.upgrade() else {
            return;
        };
        let sink = gst::ElementFactory::make("fakesink")
            .property("sync", false)
            .build()
            .expect("fakesink");
        pipeline.add(&sink).expect("add fakesink");
        sink.sync_state_with_parent().expect("fakesink state");
        if pad.name().starts_with("video") {
            let count = Arc::new(AtomicU64::new(0));
            let c = count.clone();
            pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
                c.fetch_add(1, Ordering::Relaxed);
                gst::PadProbeReturn::Ok
            });
            let msid = pad.property::<Option<String>>("msid").unwrap_or_default();
            pads.lock().unwrap().push((msid, pad.clone(), count));
        }
        let _ = pad.link(&sink.static_pad("sink").expect("fakesink pad"));
    });
    Ok((media::Running::start(pipeline)?, received))
}

/// A keyframe request (PLI, from the receiver's RTP session) on layer 1's stream only: layer
/// 1's encoder makes keyframes for it, layers 0 and 2 make none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyframe_request_on_one_layer_forces_that_layer_only() -> Result<()> {
    let _one = media::exclusive().await;
    let node = Node::start(&[]).await?;
    let producer = layered_producer(&node, "ladder-pli", &["--min-keyframe-interval", "100"])?;
    let id = producer
        .wait_word_after("registered 'ladder-pli' as", LONG)
        .await?;
    let (_viewer, received) = undecoded_viewer(&node.url(), &id)?;
    cluster_tests::eventually(LONG, "RTP on three layers", || async {
        let pads = received.lock().unwrap();
        pads.len() == 3 && pads.iter().all(|(_, _, n)| n.load(Ordering::Relaxed) > 30)
    })
    .await?;
    let layer1 = {
        let pads = received.lock().unwrap();
        let mut names: Vec<String> = pads.iter().map(|(m, _, _)| m.clone()).collect();
        names.sort();
        assert_eq!(names, ["gwc-layer-0", "gwc-layer-1", "gwc-layer-2"]);
        pads.iter()
            .find(|(m, _, _)| m == "gwc-layer-1")
            .map(|(_, p, _)| p.clone())
            .context("no layer 1")?
    };
    // The keyframes for the join are done once a second passes without any.
    let sent = |p: &Agent| ladder(p).map(|l| (0..3).map(|k| figure(&l, k, "keyframes")).collect());
    let last = std::cell::RefCell::new((None, std::time::Instant::now()));
    producer
        .wait(LONG, "no more keyframes for the join", |p| {
            let now: Option<Vec<u64>> = sent(p);
            let mut last = last.borrow_mut();
            if now != last.0 {
                *last = (now, std::time::Instant::now());
            }
            last.1.elapsed() > Duration::from_secs(1)
        })
        .await?;
    let before: Vec<u64> = sent(&producer).context("no ladder stats")?;
    let asked = std::cell::Cell::new(0);
    producer
        .wait(LONG, "two keyframes on layer 1", |p| {
            let request = gst::event::CustomUpstream::new(
                gst::Structure::builder("GstForceKeyUnit")
                    .field("all-headers", true)
                    .build(),
            );
            layer1.send_event(request);
            asked.set(asked.get() + 1);
            sent(p).is_some_and(|now| now[1] >= before[1] + 2)
        })
        .await?;
    let l = ladder(&producer).context("no ladder stats")?;
    assert!(asked.get() > 0);
    assert!(figure(&l, 1, "keyframe_requests") >= 2, "{l}");
    assert_eq!(
        (figure(&l, 0, "keyframes"), figure(&l, 2, "keyframes")),
        (before[0], before[2]),
        "layers 0 and 2 made keyframes for a request on layer 1: {l}"
    );
    Ok(())
}

/// Bad ladder flags exit 2 with a message saying what is wrong.
#[tokio::test]
async fn bad_ladder_flags_exit_2_with_a_clear_message() -> Result<()> {
    let dead = format!("ws://127.0.0.1:{}", free_port());
    let base = ["--server", dead.as_str(), "--name", "x"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--encoding", "shared", "--layers", "0"], "--layers"),
        (vec!["--encoding", "shared", "--layers", "5"], "--layers"),
        (vec!["--layers", "3"], "need --encoding shared"),
        (
            vec!["--ladder", "640x360@600,320x180@150"],
            "need --encoding shared",
        ),
        (
            vec!["--encoding", "shared", "--ladder", "640x360"],
            "is not WIDTHxHEIGHT@KBPS",
        ),
        (
            vec![
                "--encoding",
                "shared",
                "--ladder",
                "320x180@150,640x360@600",
            ],
            "from the highest down",
        ),
        (
            vec![
                "--encoding",
                "shared",
                "--layers",
                "2",
                "--ladder",
                "640x360@600,320x180@150",
            ],
            "exclude each other",
        ),
        (
            vec![
                "--encoding",
                "shared",
                "--bitrate",
                "900000",
                "--ladder",
                "640x360@600,320x180@150",
            ],
            "exclude each other",
        ),
        (
            vec![
                "--encoding",
                "shared",
                "--layers",
                "3",
                "--source",
                "pipeline:videotestsrc",
            ],
            "give the layers with --ladder",
        ),
        (
            vec![
                "--encoding",
                "shared",
                "--layers",
                "3",
                "--max-bitrate",
                "900000",
            ],
            "a ladder's bitrates are fixed",
        ),
        (
            vec![
                "--encoding",
                "shared",
                "--layers",
                "4",
                "--width",
                "64",
                "--height",
                "64",
            ],
            "too small",
        ),
        (
            vec!["--encoding", "shared", "--keyframe-interval", "2"],
            "needs --layers 2 or more",
        ),
    ];
    for (args, message) in cases {
        let all: Vec<&str> = base.iter().copied().chain(args.iter().copied()).collect();
        let (code, stderr) = quick("producer-agent", &all).await?;
        assert_eq!(code, Some(2), "{args:?}:\n{stderr}");
        assert!(
            stderr.contains(message),
            "{args:?}: no '{message}' in:\n{stderr}"
        );
    }
    Ok(())
}
