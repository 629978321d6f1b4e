//! producer-agent: publishes a stream into a gst-webrtc-cluster (or any upstream-compatible
//! signalling server) through `webrtcsink`.

mod pipeline;

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use gst::glib;
use gst::prelude::*;
use tracing::{error, info};

/// Publish a live stream into the cluster with webrtcsink.
#[derive(Parser, Debug, Clone)]
#[command(version, about)]
pub struct Args {
    /// Signalling server WebSocket URL.
    #[arg(long, env = "PRODUCER_SERVER", default_value = "ws://127.0.0.1:8443")]
    pub server: String,
    /// Name announced in the producer's meta (`meta.name`); consumers find it by this.
    #[arg(long, env = "PRODUCER_NAME")]
    pub name: String,
    /// What to publish: `test` (a live test pattern).
    #[arg(long, env = "PRODUCER_SOURCE", default_value = "test")]
    pub source: pipeline::Source,
    /// Also publish a test tone.
    #[arg(long, env = "PRODUCER_AUDIO")]
    pub audio: bool,
    #[arg(long, env = "PRODUCER_WIDTH", default_value_t = 640)]
    pub width: u32,
    #[arg(long, env = "PRODUCER_HEIGHT", default_value_t = 480)]
    pub height: u32,
    #[arg(long, env = "PRODUCER_FPS", default_value_t = 30)]
    pub fps: u32,
    /// STUN server (`stun://host:port`); none by default, host candidates only.
    #[arg(long, env = "PRODUCER_STUN_SERVER")]
    pub stun_server: Option<String>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PRODUCER_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("producer-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    pipeline::init()?;
    let pipeline = pipeline::build(args)?;
    let main_loop = glib::MainLoop::new(None, false);

    let failure = std::rc::Rc::new(std::cell::RefCell::new(None::<String>));
    let bus = pipeline.bus().context("pipeline has no bus")?;
    let _watch = {
        let main_loop = main_loop.clone();
        let failure = failure.clone();
        bus.add_watch_local(move |_, msg| {
            match msg.view() {
                gst::MessageView::Error(e) => {
                    *failure.borrow_mut() = Some(format!(
                        "{}: {}",
                        e.src().map(|s| s.name().to_string()).unwrap_or_default(),
                        e.error()
                    ));
                    main_loop.quit();
                }
                gst::MessageView::Eos(_) => main_loop.quit(),
                _ => {}
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

    pipeline
        .set_state(gst::State::Playing)
        .context("cannot start the pipeline")?;
    eprintln!(
        "producer-agent: publishing '{}' to {} (Ctrl-C to stop)",
        args.name, args.server
    );
    main_loop.run();
    let _ = pipeline.set_state(gst::State::Null);
    let failure = failure.borrow_mut().take();
    match failure {
        Some(e) => Err(anyhow::anyhow!(e)),
        None => Ok(()),
    }
}
