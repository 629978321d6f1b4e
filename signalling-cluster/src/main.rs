use std::sync::Arc;

use clap::Parser;
use signalling_cluster::{bus::MemoryBus, config::LogFormat, Config};
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let filter = EnvFilter::try_new(&config.log)?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match config.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    actix_web::rt::System::new().block_on(signalling_cluster::server::run(
        config,
        Arc::new(MemoryBus::new()),
    ))
}
