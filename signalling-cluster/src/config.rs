//! The node's configuration: one typed struct, from flags or environment variables.

use std::path::PathBuf;

use clap::Parser;

/// A gst-webrtc-cluster signalling node. Alone it is a drop-in
/// `gst-webrtc-signalling-server`; the flags shared with upstream keep their meaning.
#[derive(Parser, Debug, Clone)]
#[command(version, about)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "SIGNALLING_HOST", default_value = "0.0.0.0")]
    pub host: String,

    /// Port to listen on.
    #[arg(short, long, env = "SIGNALLING_PORT", default_value_t = 8443)]
    pub port: u16,

    /// TLS certificate chain (PEM). With --key, the node serves wss:// and https://.
    #[arg(short, long, env = "SIGNALLING_CERT", requires = "key")]
    pub cert: Option<PathBuf>,

    /// TLS private key (PEM).
    #[arg(short, long, env = "SIGNALLING_KEY", requires = "cert")]
    pub key: Option<PathBuf>,

    /// This node's id in logs, `welcome` (v2) and the cluster. Default: $POD_NAME, else the
    /// hostname.
    #[arg(long, env = "SIGNALLING_NODE_ID")]
    pub node_id: Option<String>,

    /// Redis URL (`redis://` or `rediss://`): join the cluster of every node using the same
    /// Redis and prefix. Without it the node runs alone on its in-memory bus.
    #[arg(long, env = "SIGNALLING_REDIS_URL")]
    pub redis_url: Option<String>,

    /// Redis Sentinels (`HOST:PORT`, comma-separated): join the cluster on the master they
    /// know as `--redis-sentinel-master`, and follow it through failovers. `--redis-url`, if
    /// given too, only supplies the master's credentials, database and TLS.
    #[arg(
        long,
        env = "SIGNALLING_REDIS_SENTINEL",
        value_delimiter = ',',
        requires = "redis_sentinel_master"
    )]
    pub redis_sentinel: Vec<String>,

    /// The name the Sentinels know the cluster's Redis master by.
    #[arg(long, env = "SIGNALLING_REDIS_SENTINEL_MASTER")]
    pub redis_sentinel_master: Option<String>,

    /// Seconds a node whose Redis is unreachable at start keeps trying to join before it exits
    /// (1). Meanwhile (from its first failed attempt) it listens, answers `/readyz` with 503
    /// and refuses WebSocket upgrades (503). Default: no bound, it waits as long as it takes.
    #[arg(
        long = "redis-join-timeout",
        env = "SIGNALLING_REDIS_JOIN_TIMEOUT",
        value_parser = positive_secs
    )]
    pub redis_join_timeout_secs: Option<f64>,

    /// Prefix of every Redis key and channel of this cluster.
    #[arg(long, env = "SIGNALLING_REDIS_PREFIX", default_value = "gwc")]
    pub redis_prefix: String,

    /// Seconds after which a node that stopped refreshing its liveness in Redis is declared
    /// dead: its peers are removed and its sessions ended. A node that could not reach Redis
    /// (no answer, nothing refused) for this long counts itself dead and is fenced: it sends
    /// its peers away (v2 `goAway`), closes every connection and rejoins when Redis answers.
    #[arg(long = "node-ttl", env = "SIGNALLING_NODE_TTL", default_value_t = 3.0)]
    pub node_ttl_secs: f64,

    /// Seconds a Redis command may take before Redis counts as unreachable, as if it refused
    /// connections: the node turns unready, requests that would cross nodes fail with
    /// `cluster-unavailable`, its Redis connections are replaced, and a message between nodes
    /// older than twice this is dropped rather than delivered late. A healthy Redis answers in
    /// well under a millisecond, a busy one (a fork for BGSAVE, a large HGETALL) in tens.
    #[arg(
        long = "redis-timeout",
        env = "SIGNALLING_REDIS_TIMEOUT",
        default_value_t = 1.0
    )]
    pub redis_timeout_secs: f64,

    /// Response header naming this node on every WebSocket upgrade, for load balancers that
    /// hash on a header. Empty: none.
    #[arg(
        long,
        env = "SIGNALLING_AFFINITY_HEADER",
        default_value = "X-Signalling-Node"
    )]
    pub affinity_header: String,

    /// Cookie naming this node, set on every WebSocket upgrade, for cookie-sticky load
    /// balancers (so a reconnecting client lands on its node while it lives). Empty: none.
    #[arg(long, env = "SIGNALLING_AFFINITY_COOKIE", default_value = "gwc-node")]
    pub affinity_cookie: String,

    /// Largest accepted WebSocket message in bytes; a larger one closes the connection with
    /// 1009. SDP offers with many streams and candidates reach hundreds of kilobytes.
    #[arg(long, env = "SIGNALLING_MAX_MESSAGE_SIZE", default_value_t = 1024 * 1024)]
    pub max_message_size: usize,

    /// Messages queued for one peer before it is considered stuck and disconnected.
    #[arg(long, env = "SIGNALLING_PEER_QUEUE", default_value_t = 1024)]
    pub peer_queue: usize,

    /// Sustained messages per second one peer may send (burst: twice that). Above it the
    /// peer gets an error and is disconnected with 1008. Generous on purpose: a producer
    /// starting sessions with a hundred consumers at once sends thousands of candidates.
    #[arg(long, env = "SIGNALLING_MAX_MESSAGES_PER_SEC", default_value_t = 5000)]
    pub max_messages_per_sec: u32,

    /// Seconds between the node's pings to a peer; a peer silent for three times as long is
    /// disconnected.
    #[arg(
        long = "ping-interval",
        env = "SIGNALLING_PING_INTERVAL",
        default_value_t = 30
    )]
    pub ping_interval_secs: u64,

    /// Seconds a v2 peer whose connection dropped (without a close) is kept, with its
    /// sessions and a bounded queue of what is sent to it, for a reconnection with its resume
    /// token (`?resume=TOKEN`). In a cluster, also how long the v2 peers of a dead node stay
    /// suspended for a resume on another node. 0: no resume, every disconnect is final (v1
    /// behaviour).
    #[arg(
        long = "resume-grace",
        env = "SIGNALLING_RESUME_GRACE",
        default_value_t = 30
    )]
    pub resume_grace_secs: u64,

    /// On SIGTERM/SIGINT, a cluster node: seconds to wait for peers to leave after `goAway`
    /// (v2 peers move to other nodes) before the remaining connections are closed (1001). A
    /// standalone node (no Redis) has nowhere to move peers and does not wait: `goAway`, then
    /// every connection closed at once. A second signal stops at once.
    #[arg(
        long = "drain-timeout",
        env = "SIGNALLING_DRAIN_TIMEOUT",
        default_value_t = 30
    )]
    pub drain_timeout_secs: u64,

    /// Serve the web app from this directory (it must hold `index.html`) instead of the copy
    /// built into the binary.
    #[arg(long, env = "SIGNALLING_WEB_ROOT")]
    pub web_root: Option<std::path::PathBuf>,

    /// Threads serving connections. 0 (the default): the node's one event loop accepts and
    /// serves every connection, routes, and runs the cluster bus, so a message crosses no
    /// thread on its way (scale out with more nodes). N: N worker threads serve the
    /// connections; routing follows the sender's thread and the bus stays on the main one.
    #[arg(long, env = "SIGNALLING_WORKERS", default_value_t = 0)]
    pub workers: usize,

    /// Log filter (tracing EnvFilter syntax), e.g. `info,signalling_cluster=debug`.
    #[arg(long, env = "SIGNALLING_LOG", default_value = "info")]
    pub log: String,

    /// Log format.
    #[arg(
        long,
        env = "SIGNALLING_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
    /// HS256 secret (a file holding it): auth on, every connection needs a token signed with
    /// it (docs/security.md). Re-read when the file changes.
    #[arg(long, env = "SIGNALLING_AUTH_JWT_SECRET_FILE")]
    pub auth_jwt_secret_file: Option<PathBuf>,
    /// Public key (PEM: RSA for RS256, P-256 for ES256, Ed25519 for EdDSA): auth on, tokens
    /// signed with its private key are accepted. Re-read when the file changes.
    #[arg(long, env = "SIGNALLING_AUTH_JWT_PUBLIC_KEY_FILE")]
    pub auth_jwt_public_key_file: Option<PathBuf>,
    /// Tokens must have this `iss`.
    #[arg(long, env = "SIGNALLING_AUTH_JWT_ISSUER")]
    pub auth_jwt_issuer: Option<String>,
    /// Tokens must have this `aud`.
    #[arg(long, env = "SIGNALLING_AUTH_JWT_AUDIENCE")]
    pub auth_jwt_audience: Option<String>,
    /// A TURN server to hand every client (`turn:HOST:PORT?transport=udp|tcp`, `turns:…`;
    /// repeatable, or comma-separated in the env), with credentials minted per peer from
    /// `--turn-secret-file` (docs/networking.md).
    #[arg(long = "turn-url", env = "SIGNALLING_TURN_URLS", value_delimiter = ',')]
    pub turn_urls: Vec<String>,
    /// coturn's `static-auth-secret` (`use-auth-secret`), in a file. Re-read when it changes.
    #[arg(long, env = "SIGNALLING_TURN_SECRET_FILE")]
    pub turn_secret_file: Option<PathBuf>,
    /// Seconds a minted TURN credential is valid (renewed in the `welcome` of a resume).
    #[arg(long = "turn-ttl", env = "SIGNALLING_TURN_TTL", default_value_t = 3600)]
    pub turn_ttl_secs: u64,
    /// A STUN server to hand every client (`stun:HOST:PORT`; repeatable, or comma-separated).
    #[arg(long = "stun-url", env = "SIGNALLING_STUN_URLS", value_delimiter = ',')]
    pub stun_urls: Vec<String>,
    /// Seconds a connection has to complete its request (and upgrade) before it is closed.
    #[arg(
        long = "handshake-timeout",
        env = "SIGNALLING_HANDSHAKE_TIMEOUT",
        default_value_t = 5.0
    )]
    pub handshake_timeout_secs: f64,
    /// WebSocket connections this node holds at most (0: no limit); above, upgrades get 503.
    #[arg(long, env = "SIGNALLING_MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: usize,
    /// WebSocket connections one client address holds at most (0: no limit); above, its
    /// upgrades get 429.
    #[arg(long, env = "SIGNALLING_MAX_CONNECTIONS_PER_IP", default_value_t = 0)]
    pub max_connections_per_ip: usize,
    /// Without auth: also serve the operations API's actions (end a session, kick a peer,
    /// drain a node). With auth they need an `admin` grant instead.
    #[arg(long, env = "SIGNALLING_ADMIN_API")]
    pub admin_api: bool,
    /// Serve `GET /metrics` on this address (`HOST:PORT`) instead of the main port.
    #[arg(long, env = "SIGNALLING_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What the binary does instead of running a node.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum Command {
    /// Print a signed token (HS256) for operators, demos and agents.
    Token(crate::token::TokenArgs),
    /// Ask a node's operations API: list nodes, peers, sessions, producers; end a session,
    /// kick a peer, drain a node (any node of the cluster).
    Admin(crate::admin_cli::AdminArgs),
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Why the configuration cannot work (the node exits 2 before it starts).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--web-root {path}: {why}")]
    WebRoot { path: PathBuf, why: String },
}

/// A number of seconds above 0.
fn positive_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        Ok(_) => Err(format!("'{s}' is not a number of seconds above 0")),
        Err(_) => Err(format!("'{s}' is not a number of seconds")),
    }
}

impl Config {
    /// Checks what clap cannot: that the files named exist.
    pub fn check(&self) -> Result<(), ConfigError> {
        if let Some(root) = &self.web_root {
            let index = root.join("index.html");
            if !index.is_file() {
                let why = match root.is_dir() {
                    true => "no index.html in this directory".to_string(),
                    false => "not a directory".to_string(),
                };
                return Err(ConfigError::WebRoot {
                    path: root.clone(),
                    why,
                });
            }
        }
        Ok(())
    }

    /// Alone, on the in-memory bus (no `--redis-url`, no Sentinels).
    pub fn standalone(&self) -> bool {
        self.redis_url.is_none() && self.redis_sentinel.is_empty()
    }

    /// The auth flags.
    pub fn auth(&self) -> crate::auth::AuthSettings {
        crate::auth::AuthSettings {
            secret_file: self.auth_jwt_secret_file.clone(),
            public_key_file: self.auth_jwt_public_key_file.clone(),
            issuer: self.auth_jwt_issuer.clone(),
            audience: self.auth_jwt_audience.clone(),
        }
    }

    /// The TURN and STUN flags.
    pub fn turn(&self) -> crate::turn::TurnSettings {
        crate::turn::TurnSettings {
            urls: self.turn_urls.clone(),
            stun_urls: self.stun_urls.clone(),
            secret_file: self.turn_secret_file.clone(),
            ttl: std::time::Duration::from_secs(self.turn_ttl_secs),
        }
    }

    /// The node id to use: the flag, else the pod name, else the hostname.
    pub fn resolved_node_id(&self) -> String {
        self.node_id
            .clone()
            .or_else(|| std::env::var("POD_NAME").ok().filter(|s| !s.is_empty()))
            .or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .ok()
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
            })
            .unwrap_or_else(|| "node".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_flags_keep_their_meaning() {
        let c = Config::try_parse_from(["x"]).unwrap();
        assert_eq!((c.host.as_str(), c.port), ("0.0.0.0", 8443));
        let c = Config::try_parse_from(["x", "-p", "9000", "-c", "a.pem", "-k", "b.pem"]).unwrap();
        assert_eq!(c.port, 9000);
        assert_eq!(c.cert.unwrap().to_str(), Some("a.pem"));
        assert!(
            Config::try_parse_from(["x", "-c", "a.pem"]).is_err(),
            "cert without key"
        );
    }
}
