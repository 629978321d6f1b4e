//! Where the cluster's Redis is: one URL, or the master that a set of Redis Sentinels names.
//! A Sentinel master is looked up again at every (re)connection, so a failover is followed
//! without restarting a node: the old master's connections end (or stop answering), and the
//! next connection goes to whichever server the Sentinels promoted.

use std::time::Duration;

use redis::sentinel::{Sentinel, SentinelNodeConnectionInfo};
use redis::{ConnectionAddr, IntoConnectionInfo, RedisResult, TlsMode};

use super::within;

/// The cluster's Redis, as configured.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// `redis://` or `rediss://` URL.
    Url(String),
    /// The master `master` of these Sentinels (`HOST:PORT`); `template`, a Redis URL whose
    /// credentials, database and TLS the master connection uses (its host is not).
    Sentinel {
        sentinels: Vec<String>,
        master: String,
        template: Option<String>,
    },
}

impl Endpoint {
    /// The Redis to connect to now, within `timeout`.
    pub async fn locate(&self, timeout: Duration) -> RedisResult<redis::Client> {
        match self {
            Endpoint::Url(url) => redis::Client::open(url.as_str()),
            Endpoint::Sentinel {
                sentinels,
                master,
                template,
            } => {
                let (scheme, node) = node_settings(template.as_deref())?;
                let urls: Vec<String> = sentinels
                    .iter()
                    .map(|s| format!("{scheme}://{s}"))
                    .collect();
                let mut sentinel = Sentinel::build(urls)?;
                // (asks the Sentinels in turn, then checks with the server that it is master)
                within(timeout, sentinel.async_master_for(master, Some(&node))).await
            }
        }
    }
}

/// The scheme to reach the Sentinels with, and how to connect to the master, from the
/// template URL (none: plain TCP, no credentials, database 0).
fn node_settings(
    template: Option<&str>,
) -> RedisResult<(&'static str, SentinelNodeConnectionInfo)> {
    let node = SentinelNodeConnectionInfo::default();
    let Some(template) = template else {
        return Ok(("redis", node));
    };
    let info = template.into_connection_info()?;
    let node = node.set_redis_connection_info(info.redis_settings().clone());
    Ok(match info.addr() {
        ConnectionAddr::TcpTls { insecure, .. } => (
            "rediss",
            node.set_tls_mode(match insecure {
                true => TlsMode::Insecure,
                false => TlsMode::Secure,
            }),
        ),
        _ => ("redis", node),
    })
}
