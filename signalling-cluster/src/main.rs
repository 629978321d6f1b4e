use std::sync::Arc;

use clap::Parser;
use std::time::Duration;

use anyhow::Context;
use signalling_cluster::bus::{Bus, Endpoint, MemoryBus, RedisBus, RedisSettings};
use signalling_cluster::resume::ResumeRegistry;
use signalling_cluster::{config::LogFormat, Config};
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    match &config.command {
        Some(signalling_cluster::config::Command::Token(args)) => {
            println!("{}", signalling_cluster::token::mint(args)?);
            return Ok(());
        }
        Some(signalling_cluster::config::Command::Admin(args)) => {
            println!("{}", signalling_cluster::admin_cli::run(args)?);
            return Ok(());
        }
        None => {}
    }
    let filter = EnvFilter::try_new(&config.log)?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
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
        let bus: Arc<dyn Bus> = match endpoint {
            Some(endpoint) => RedisBus::connect(
                RedisSettings {
                    endpoint,
                    prefix: config.redis_prefix.clone(),
                    node_id: config.resolved_node_id(),
                    node_ttl: Duration::from_secs_f64(config.node_ttl_secs.max(0.5)),
                    redis_timeout: Duration::from_secs_f64(config.redis_timeout_secs.max(0.05)),
                    resume_grace: Duration::from_secs(config.resume_grace_secs),
                    hold_limit: config.peer_queue,
                },
                registry.clone(),
            )
            .await
            .context("cannot join the cluster")?,
            None => Arc::new(MemoryBus::new()),
        };
        signalling_cluster::server::run(config, bus, registry).await
    })
}
