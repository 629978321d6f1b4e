//! Issue 28: the cluster's signaller as GStreamer elements (`gst-plugin/`, `libgstgwc.so`),
//! used as a GStreamer user would: `gst-inspect-1.0` and `gst-launch-1.0` from Debian's
//! gstreamer1.0-tools with `GST_PLUGIN_PATH` pointing at the build, against real nodes.

use std::time::Duration;

use anyhow::Result;
use cluster_tests::agent::Agent;
use cluster_tests::consumer::frames_now;
use cluster_tests::gst_tools::{buffers, launch, tool};
use cluster_tests::{media, Node, Redis};
use gst::prelude::*;

const LONG: Duration = Duration::from_secs(60);

/// A watching pipeline: `src` (a gwcwebrtcsrc with its properties) into a counting sink.
fn watcher(src: &[&str]) -> Result<Agent> {
    let mut words = vec!["-v"];
    words.extend_from_slice(src);
    words.extend_from_slice(&["!", "videoconvert", "!", "fakesink", "silent=false"]);
    launch(&words)
}

/// A consumer-agent on `server` decoding the producer named `name` (`extra`: a token, a CA),
/// with stats every 0.2 s; waits for its 30th frame.
async fn decodes(server: &str, name: &str, extra: &[&str]) -> Result<Agent> {
    let mut args = vec!["--server", server, "--producer-name", name];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--stats-interval", "0.2"]);
    let consumer = Agent::consumer(&args)?;
    consumer
        .wait(LONG, "30 decoded frames", |c| frames_now(c) >= 30)
        .await?;
    Ok(consumer)
}

#[test]
fn gst_inspect_lists_the_elements_and_documents_their_properties() -> Result<()> {
    let out = tool("gst-inspect-1.0").arg("gwc").output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    // (and the stock WHIP/WHEP elements of the same gst-plugin-webrtc: docs/whip-whep.md)
    let elements = [
        "gwcwebrtcsink",
        "gwcwebrtcsrc",
        "webrtcsink",
        "webrtcsrc",
        "whipclientsink",
        "whepclientsrc",
    ];
    for element in elements {
        // (a whole name: "webrtcsrc:" is also the end of "gwcwebrtcsrc:")
        let listed = text
            .lines()
            .any(|l| l.trim_start().starts_with(&format!("{element}:")));
        assert!(listed, "{element} missing:\n{text}");
    }
    let inspect = |element: &str| -> Result<String> {
        let out = tool("gst-inspect-1.0").arg(element).output()?;
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    };
    let (sink, src) = (inspect("gwcwebrtcsink")?, inspect("gwcwebrtcsrc")?);
    for needle in ["meta", "min-keyframe-interval", "video_%u", "audio_%u"] {
        assert!(sink.contains(needle), "{needle} missing:\n{sink}");
    }
    for needle in ["watch", "stall-timeout"] {
        assert!(src.contains(needle), "{needle} missing:\n{src}");
    }
    // Every property of the signaller child, with what it does and its default, in both
    // (gst-inspect lists an element's own properties: the `signaller` blurb carries them).
    let documented = [
        ("servers", "(default \"ws://127.0.0.1:8443\")"),
        ("token", "(default none)"),
        ("token-file", "(default none)"),
        ("stream", "(default none)"),
        ("producer-name", "(default none)"),
        ("producer-peer-id", "(default none)"),
        ("resume", "(default TRUE)"),
        ("retry-for", "(default 60)"),
        ("headers", "(default none)"),
        ("cafile", "(default none)"),
        ("insecure-tls", "(default FALSE)"),
        ("backoff-max", "(default 10)"),
        ("reconnect-after-kick", "(default FALSE)"),
        ("max-sessions", "(default 0)"),
        ("max-height", "(default 0)"),
        ("ice-transport-policy", "(default \"all\")"),
        ("node-id", "(read-only)"),
        ("peer-id", "(read-only)"),
    ];
    for text in [&sink, &src] {
        for (name, default) in documented {
            let line = text
                .lines()
                .find(|l| l.trim_start().starts_with(&format!("{name}: ")));
            let line = line.unwrap_or_else(|| panic!("signaller::{name} missing:\n{text}"));
            assert!(line.ends_with(default), "{name}: {line}");
            assert!(
                line.len() > name.len() + default.len() + 20,
                "no blurb: {line}"
            );
        }
    }
    Ok(())
}

/// Publish with gst-launch on a 2-node cluster, watch by stream name from the other node;
/// SIGKILL the publisher's node: both pipelines keep running and frames flow again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gst_launch_publishes_and_watches_through_a_cluster_and_survives_a_node_kill() -> Result<()>
{
    let _one = media::exclusive().await;
    let redis = Redis::start().await?;
    let opts = ["--node-ttl", "1", "--resume-grace", "20"];
    let a = Node::join(&redis, "node-a", &opts).await?;
    let b = Node::join(&redis, "node-b", &opts).await?;
    let to_a = format!("signaller::servers={},{}", a.url(), b.url());
    let to_b = format!("signaller::servers={},{}", b.url(), a.url());
    let mut publisher = launch(&[
        "videotestsrc",
        "is-live=true",
        "!",
        "video/x-raw,width=320,height=240,framerate=30/1",
        "!",
        "gwcwebrtcsink",
        &to_a,
        "meta=meta,name=cam",
    ])?;
    let mut viewer = watcher(&["gwcwebrtcsrc", "signaller::stream=cam", &to_b])?;
    viewer
        .wait(LONG, "60 buffers", |v| buffers(v) >= 60)
        .await?;
    a.proc.signal(libc::SIGKILL);
    let after = buffers(&viewer);
    viewer
        .wait(LONG, "60 more buffers after the kill", |v| {
            buffers(v) >= after + 60
        })
        .await?;
    // Both still running (gst-launch exits on an error).
    for p in [&mut publisher, &mut viewer] {
        assert!(p.proc.child.try_wait()?.is_none(), "{}", p.stderr());
    }
    Ok(())
}

/// The seed README's pipeline, the stock webrtcsink of this plugin, against a node: a
/// consumer-agent decodes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_readme_pipeline_with_the_stock_webrtcsink_plays_against_a_node() -> Result<()> {
    let _one = media::exclusive().await;
    let node = Node::start(&[]).await?;
    let uri = format!("signaller::uri={}", node.url());
    // gst-launch-1.0 webrtcsink name=ws meta="meta,name=gst-stream" videotestsrc ! ws. audiotestsrc ! ws.
    // (stun-server: the stock default is a public server, unreachable here)
    let _producer = launch(&[
        "webrtcsink",
        "name=ws",
        "meta=meta,name=gst-stream",
        &uri,
        "stun-server=\"\"",
        "videotestsrc",
        "!",
        "ws.",
        "audiotestsrc",
        "!",
        "ws.",
    ])?;
    decodes(&node.url(), "gst-stream", &[]).await?;
    Ok(())
}

/// Bad values fail the start with an element error naming the property (an unknown codec:
/// the stock webrtcsink's error once the stream is there).
#[test]
fn bad_property_values_are_clear_errors_at_start() -> Result<()> {
    let cases: [(&[&str], &str); 5] = [
        (
            &["gwcwebrtcsink", "signaller::servers=not a url"],
            "signaller::servers",
        ),
        (
            &["gwcwebrtcsink", "signaller::token-file=/nonexistent/token"],
            "signaller::token-file",
        ),
        (
            &[
                "gwcwebrtcsrc",
                "signaller::stream=cam",
                "signaller::producer-name=cam",
                "!",
                "fakesink",
            ],
            "give one of signaller::stream",
        ),
        (
            &["gwcwebrtcsink", "signaller::ice-transport-policy=sometimes"],
            "signaller::ice-transport-policy",
        ),
        // an unknown codec: the stock webrtcsink's own error, once the stream is there
        (
            &["gwcwebrtcsink", "webrtcsink::video-caps=video/x-bogus"],
            "no codec present",
        ),
    ];
    for (words, needle) in cases {
        let mut args = vec![];
        if words[0] == "gwcwebrtcsink" {
            args.extend_from_slice(&["videotestsrc", "!"]);
        }
        args.extend_from_slice(words);
        let out = tool("gst-launch-1.0").args(&args).output()?;
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} ran:\n{text}");
        assert!(text.contains(needle), "{args:?}: no '{needle}' in:\n{text}");
    }
    Ok(())
}

/// With auth on: a token file is accepted (frames flow); no token is an element error that
/// ends gst-launch, not a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_a_token_file_works_and_no_token_is_a_clear_element_error() -> Result<()> {
    let _one = media::exclusive().await;
    let keys = cluster_tests::jwt::Keys::new("plugin")?;
    let secret = keys.path("secret");
    let node = Node::start(&["--auth-jwt-secret-file", &secret]).await?;
    let token = keys.token("cam", serde_json::json!({"produce": ["cam", "cam2"]}))?;
    let file = std::env::temp_dir().join(format!("gwc-plugin-token-{}", std::process::id()));
    std::fs::write(&file, &token)?;
    let servers = format!("signaller::servers={}", node.url());
    let token_file = format!("signaller::token-file={}", file.display());
    let publisher = launch(&[
        "videotestsrc",
        "is-live=true",
        "!",
        "gwcwebrtcsink",
        &servers,
        &token_file,
        "meta=meta,name=cam",
    ])?;
    // accepted: a viewer with a consume grant decodes it
    let viewer_token = keys.token(
        "viewer",
        serde_json::json!({"consume": ["cam", "cam2"], "listen": true}),
    )?;
    decodes(&node.url(), "cam", &["--token", &viewer_token]).await?;
    // the same token in upstream's way: signaller::headers (what a stock webrtcsink sends)
    let headers = format!(r#"signaller::headers="headers,authorization=\"Bearer {token}\"""#);
    let _by_header = launch(&[
        "videotestsrc",
        "is-live=true",
        "!",
        "gwcwebrtcsink",
        &servers,
        &headers,
        "meta=meta,name=cam2",
    ])?;
    decodes(&node.url(), "cam2", &["--token", &viewer_token]).await?;
    let mut refused = launch(&[
        "videotestsrc",
        "is-live=true",
        "!",
        "gwcwebrtcsink",
        &servers,
    ])?;
    let code = refused.exit_within(LONG).await?;
    assert_ne!(code, Some(0));
    let err = refused.stderr() + &refused.stdout().join("\n");
    assert!(err.contains("refused by the signalling cluster"), "{err}");
    assert!(publisher.proc.child.id() > 0);
    Ok(())
}

/// Pre-encoded video (one encoder for every consumer): three consumers joining at once ask
/// for keyframes on every frame until they get one; `gwcwebrtcsink` passes at most one per
/// `min-keyframe-interval` to the encoder, and all three decode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_encoded_video_gets_its_consumers_keyframe_requests_coalesced() -> Result<()> {
    let _one = media::exclusive().await;
    media::init();
    gstgwc::register(None)?;
    let node = Node::start(&[]).await?;
    let pipeline = gst::parse::launch(&format!(
        "videotestsrc is-live=true ! video/x-raw,width=320,height=240,framerate=30/1 \
         ! vp8enc deadline=1 keyframe-max-dist=600 \
         ! gwcwebrtcsink name=s meta=meta,name=kf signaller::servers={} min-keyframe-interval=1000",
        node.url()
    ))?
    .downcast::<gst::Pipeline>()
    .map_err(|_| anyhow::anyhow!("not a pipeline"))?;
    let sink = pipeline
        .by_name("s")
        .and_then(|s| s.downcast::<gstgwc::sink::GwcWebRTCSink>().ok())
        .ok_or_else(|| anyhow::anyhow!("no gwcwebrtcsink"))?;
    let running = media::Running::start(pipeline)?;
    let started = std::time::Instant::now();
    let consumers = (0..3)
        .map(|_| {
            Agent::consumer(&[
                "--server",
                &node.url(),
                "--producer-name",
                "kf",
                "--stats-interval",
                "0.2",
            ])
        })
        .collect::<Result<Vec<_>>>()?;
    for c in &consumers {
        c.wait(LONG, "30 decoded frames", |c| frames_now(c) >= 30)
            .await?;
    }
    let (asked, passed) = sink.keyframe_requests();
    let elapsed = started.elapsed().as_secs_f64();
    assert!(running.error().is_none(), "{:?}", running.error());
    assert!(asked > passed, "asked {asked}, passed on {passed}");
    assert!(
        (passed as f64) <= elapsed + 2.0,
        "{passed} keyframes forced in {elapsed:.1} s (one a second at most)"
    );
    println!(
        "{}",
        serde_json::json!({"keyframes": {"asked": asked, "passed_on": passed, "s": elapsed}})
    );
    Ok(())
}

/// wss: a node with a self-signed certificate is trusted through `signaller::cafile` (a
/// consumer decodes what the pipeline publishes); without it the certificate is refused, an
/// element error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_nodes_are_trusted_through_signaller_cafile() -> Result<()> {
    let _one = media::exclusive().await;
    let dir = std::env::temp_dir().join(format!("gwc-plugin-tls-{}", std::process::id()));
    let (cert, key, _) = cluster_tests::self_signed(&dir)?;
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let node = Node::start_tls(&["-c", &cert, "-k", &key]).await?;
    let url = format!("wss://localhost:{}", node.port);
    let servers = format!("signaller::servers={url}");
    let cafile = format!("signaller::cafile={cert}");
    let pipeline = [
        "videotestsrc",
        "is-live=true",
        "!",
        "gwcwebrtcsink",
        &servers,
    ];
    let mut trusted = pipeline.to_vec();
    trusted.extend_from_slice(&[&cafile, "meta=meta,name=tls"]);
    let _publisher = launch(&trusted)?;
    decodes(&url, "tls", &["--cafile", &cert]).await?;
    let mut untrusted = launch(&pipeline)?;
    let code = untrusted.exit_within(LONG).await?;
    assert_ne!(code, Some(0));
    let err = untrusted.stderr() + &untrusted.stdout().join("\n");
    assert!(err.contains("refused by the signalling cluster"), "{err}");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

/// A watching `gwcwebrtcsrc` placed on a relay: the relay is SIGKILLed (its session is parked
/// for a resume, so only the media stops), the source notices the stall (`stall-timeout`, 3 s),
/// is placed again (on the origin) and buffers flow on through the same, retargeted, ghost pad.
/// Seen failing before the stall watch existed (no buffer after the kill).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watching_source_is_placed_again_when_its_relay_dies() -> Result<()> {
    let _one = media::exclusive().await;
    let redis = Redis::start().await?;
    let a = Node::join(&redis, "node-a", &[]).await?;
    let b = Node::join(&redis, "node-b", &[]).await?;
    let (origin, relay) = cluster_tests::relaying::hall(&a, &b).await?;
    let servers = format!("signaller::servers={}", b.url());
    let mut viewer = watcher(&["gwcwebrtcsrc", "signaller::stream=hall", &servers])?;
    viewer
        .wait(LONG, "60 buffers", |v| buffers(v) >= 60)
        .await?;
    let consumers = |p: &Agent, kind: &str| {
        p.json_lines(kind).last().map(|s| match &s["consumers"] {
            serde_json::Value::Array(list) => list.len() as u64,
            n => n.as_u64().unwrap_or(0),
        })
    };
    relay
        .wait(LONG, "the source as the relay's consumer", |r| {
            consumers(r, "relay-stats") == Some(1)
        })
        .await?;
    relay.signal(libc::SIGKILL);
    let after = buffers(&viewer);
    viewer
        .wait(LONG, "60 more buffers after the relay's death", |v| {
            buffers(v) >= after + 60
        })
        .await?;
    origin
        .wait(LONG, "the source as the origin's consumer", |p| {
            consumers(p, "producer-stats") == Some(1)
        })
        .await?;
    assert!(
        viewer.proc.child.try_wait()?.is_none(),
        "{}",
        viewer.stderr()
    );
    Ok(())
}
