use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;

use signalling_cluster::bus::{Bus, Endpoint, JoiningBus, MemoryBus, RedisSettings};
use signalling_cluster::config::{Command, LogFormat};
use signalling_cluster::resume::ResumeRegistry;
use signalling_cluster::Config;
use tracing_subscriber::EnvFilter;

/// Why the process ends with an error: one line on stderr (no backtrace, whatever
/// `RUST_BACKTRACE` says), and the exit code.
enum Exit {
    /// Bad arguments or configuration: 2, as clap's own refusals.
    Usage(anyhow::Error),
    /// A failure while running: 1.
    Failed(anyhow::Error),
}

fn main() -> ExitCode {
    let config = Config::parse();
    let result = match &config.command {
        Some(Command::Token(args)) => token(args),
        Some(Command::Admin(args)) => match signalling_cluster::admin_cli::run(args) {
            Ok(text) => {
                println!("{text}");
                Ok(())
            }
            Err(e) if e.is_usage() => Err(Exit::Usage(e.into())),
            Err(e) => Err(Exit::Failed(e.into())),
        },
        None => node(config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Exit::Usage(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
        Err(Exit::Failed(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `signalling-cluster token`: the token on stdout, warnings on stderr.
fn token(args: &signalling_cluster::token::TokenArgs) -> Result<(), Exit> {
    for warning in signalling_cluster::token::warnings(args) {
        eprintln!("warning: {warning}");
    }
    let token = signalling_cluster::token::mint(args).map_err(|e| Exit::Usage(e.into()))?;
    println!("{token}");
    Ok(())
}

/// Runs the node until it is stopped.
fn node(config: Config) -> Result<(), Exit> {
    config.check().map_err(|e| Exit::Usage(e.into()))?;
    let filter = EnvFilter::try_new(&config.log)
        .map_err(|e| Exit::Usage(anyhow::anyhow!("--log '{}': {e}", config.log)))?;
    // Colours only for a person at a terminal: `kubectl logs` and log shippers read files.
    let colours = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colours);
    match config.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    // rustls has two crypto providers compiled in (ring here, aws-lc-rs via dependencies):
    // name the process default so every TLS client (rediss://) agrees.
    let _ = rustls::crypto::ring::default_provider().install_default();
    actix_web::rt::System::new().block_on(async move {
        let registry = ResumeRegistry::new(Duration::from_secs(config.resume_grace_secs));
        let endpoint = match (&config.redis_sentinel_master, &config.redis_url) {
            (Some(master), template) if !config.redis_sentinel.is_empty() => {
                Some(Endpoint::Sentinel {
                    sentinels: config.redis_sentinel.clone(),
                    master: master.clone(),
                    template: template.clone(),
                })
            }
            (_, Some(url)) => Some(Endpoint::Url(url.clone())),
            _ => None,
        };
        let Some(endpoint) = endpoint else {
            let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new());
            return signalling_cluster::server::run(config, bus, registry)
                .await
                .map_err(Exit::Failed);
        };
        // A first attempt, then the node serves (unready) while it joins: Redis may come up
        // after it.
        let settings = RedisSettings {
            endpoint,
            prefix: config.redis_prefix.clone(),
            node_id: config.resolved_node_id(),
            node_ttl: Duration::from_secs_f64(config.node_ttl_secs.max(0.5)),
            redis_timeout: Duration::from_secs_f64(config.redis_timeout_secs.max(0.05)),
            resume_grace: Duration::from_secs(config.resume_grace_secs),
            hold_limit: config.peer_queue,
        };
        let bound = config.redis_join_timeout_secs.map(Duration::from_secs_f64);
        let (bus, joined, first_failed) = JoiningBus::start(settings, registry.clone(), bound);
        tokio::pin!(joined);
        let mut joining = true;
        tokio::select! {
            result = &mut joined => match result {
                Ok(()) => joining = false,
                Err(e) if e.is_usage() => return Err(Exit::Usage(e.into())),
                Err(e) => return Err(Exit::Failed(e.into())),
            },
            _ = first_failed => {}
        }
        let serving = signalling_cluster::server::run(config, bus, registry);
        tokio::pin!(serving);
        loop {
            tokio::select! {
                served = &mut serving => return served.map_err(Exit::Failed),
                result = &mut joined, if joining => match result {
                    Ok(()) => joining = false,
                    Err(e) if e.is_usage() => return Err(Exit::Usage(e.into())),
                    Err(e) => return Err(Exit::Failed(e.into())),
                },
            }
        }
    })
}
