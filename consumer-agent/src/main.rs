//! consumer-agent: finds a producer in a gst-webrtc-cluster (or any upstream-compatible
//! signalling server), receives it with `webrtcsrc`, decodes and counts frames.

mod discovery;
mod pipeline;

use std::cell::RefCell;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use gst::glib;
use gst::prelude::*;
use tracing::{error, info};

/// Receive a producer's stream with webrtcsrc and count decoded frames.
#[derive(Parser, Debug, Clone)]
#[command(version, about)]
pub struct Args {
    /// Signalling server WebSocket URL.
    #[arg(long, env = "CONSUMER_SERVER", default_value = "ws://127.0.0.1:8443")]
    pub server: String,
    /// Producer to receive, by the `name` in its meta.
    #[arg(
        long,
        env = "CONSUMER_PRODUCER_NAME",
        conflicts_with = "producer_id",
        required_unless_present = "producer_id"
    )]
    pub producer_name: Option<String>,
    /// Producer to receive, by peer id.
    #[arg(long, env = "CONSUMER_PRODUCER_ID")]
    pub producer_id: Option<String>,
    /// Exit 0 after this many decoded video frames (default: run until interrupted).
    #[arg(long, env = "CONSUMER_FRAMES")]
    pub frames: Option<u64>,
    /// Seconds to wait for the producer to appear, and then for the first frame.
    #[arg(long, env = "CONSUMER_TIMEOUT", default_value_t = 30)]
    pub timeout: u64,
    /// STUN server (`stun://host:port`); none by default, host candidates only.
    #[arg(long, env = "CONSUMER_STUN_SERVER")]
    pub stun_server: Option<String>,
}

/// The last line on stdout.
#[derive(serde::Serialize)]
struct Report {
    producer_id: String,
    frames: u64,
    /// From start to the first decoded video frame.
    first_frame_ms: Option<u64>,
    elapsed_ms: u64,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CONSUMER_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("consumer-agent: {e:#}");
            let not_found = e.downcast_ref::<discovery::NotFound>().is_some();
            ExitCode::from(if not_found { 3 } else { 1 })
        }
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let timeout = Duration::from_secs(args.timeout);
    let producer_id = match (&args.producer_id, &args.producer_name) {
        (Some(id), _) => id.clone(),
        (None, Some(name)) => {
            eprintln!(
                "consumer-agent: looking for producer '{name}' on {}",
                args.server
            );
            discovery::find_by_name(&args.server, name, timeout)?
        }
        (None, None) => unreachable!("clap requires one of them"),
    };
    eprintln!("consumer-agent: receiving producer {producer_id}");

    pipeline::init()?;
    let (pipeline, frames) = pipeline::build(args, &producer_id)?;
    let main_loop = glib::MainLoop::new(None, false);
    let failure = Rc::new(RefCell::new(None::<String>));
    let bus = pipeline.bus().context("pipeline has no bus")?;
    let _watch = {
        let (main_loop, failure) = (main_loop.clone(), failure.clone());
        bus.add_watch_local(move |_, msg| {
            if let gst::MessageView::Error(e) = msg.view() {
                *failure.borrow_mut() = Some(format!(
                    "{}: {}",
                    e.src().map(|s| s.name().to_string()).unwrap_or_default(),
                    e.error()
                ));
                main_loop.quit();
            }
            glib::ControlFlow::Continue
        })?
    };
    // SIGINT/SIGTERM set a flag the main loop polls: stop cleanly, exit 0.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())
            .context("cannot install signal handler")?;
    }
    {
        let main_loop = main_loop.clone();
        glib::timeout_add_local(std::time::Duration::from_millis(100), move || {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                info!("signal received, stopping");
                main_loop.quit();
                return glib::ControlFlow::Break;
            }
            glib::ControlFlow::Continue
        });
    }

    let first_frame_ms = Rc::new(RefCell::new(None::<u64>));
    {
        let (main_loop, failure, first, frames) = (
            main_loop.clone(),
            failure.clone(),
            first_frame_ms.clone(),
            frames.clone(),
        );
        let target = args.frames;
        let mut last_print = Instant::now();
        glib::timeout_add_local(Duration::from_millis(20), move || {
            let n = frames.load(Ordering::Relaxed);
            if n > 0 && first.borrow().is_none() {
                let ms = started.elapsed().as_millis() as u64;
                *first.borrow_mut() = Some(ms);
                eprintln!("consumer-agent: first frame after {ms} ms");
            } else if n == 0 && started.elapsed() > timeout * 2 {
                *failure.borrow_mut() = Some(format!(
                    "no video frame within {} s",
                    (timeout * 2).as_secs()
                ));
                main_loop.quit();
            }
            if last_print.elapsed() >= Duration::from_secs(1) {
                last_print = Instant::now();
                eprintln!("consumer-agent: {n} frames");
            }
            if target.is_some_and(|t| n >= t) {
                main_loop.quit();
                return glib::ControlFlow::Break;
            }
            glib::ControlFlow::Continue
        });
    }

    pipeline
        .set_state(gst::State::Playing)
        .context("cannot start the pipeline")?;
    main_loop.run();
    let _ = pipeline.set_state(gst::State::Null);
    if let Some(e) = failure.borrow_mut().take() {
        return Err(anyhow::anyhow!(e));
    }
    let report = Report {
        producer_id,
        frames: frames.load(Ordering::Relaxed),
        first_frame_ms: *first_frame_ms.borrow(),
        elapsed_ms: started.elapsed().as_millis() as u64,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
