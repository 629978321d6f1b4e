//! Options every agent has. Environment variables use the `GWC_` prefix so one ConfigMap can
//! serve both agents.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use crate::client::{ClientConfig, ProtocolChoice, Token};

/// How to reach the signalling servers.
#[derive(clap::Args, Debug, Clone)]
pub struct SignallingArgs {
    /// Signalling server URL (ws:// or wss://). Repeat it or separate with commas: the agent
    /// moves through the list when a connection fails or is lost.
    #[arg(
        long = "server",
        env = "GWC_SERVER",
        value_delimiter = ',',
        default_value = "ws://127.0.0.1:8443",
        value_parser = parse_server
    )]
    pub servers: Vec<Url>,
    /// Extra HTTP header of the WebSocket upgrade, `Name=value` (repeatable): sticky-session
    /// cookies (`Cookie=gwc-node=…`) or headers a load balancer hashes on.
    #[arg(long = "header", value_parser = parse_key_value)]
    pub headers: Vec<(String, String)>,
    /// Bearer token, sent as `Authorization: Bearer TOKEN`. Refused by the server (401): exit 4.
    #[arg(
        long,
        env = "GWC_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    pub token: Option<String>,
    /// File holding the bearer token, read again at every (re)connection: a rotated
    /// Kubernetes Secret is picked up without a restart. It must be readable at start (exit
    /// 2); a token of it refused (401) is tried again, the file read again each time.
    #[arg(long, env = "GWC_TOKEN_FILE", value_parser = parse_token_file)]
    pub token_file: Option<PathBuf>,
    /// PEM file of the CA that signed the server's certificate (wss://). A certificate it
    /// does not vouch for is final: exit 4.
    #[arg(long, env = "GWC_CAFILE", value_parser = parse_cafile)]
    pub cafile: Option<PathBuf>,
    /// Accept any server certificate (self-signed test setups only).
    #[arg(long, env = "GWC_INSECURE_TLS")]
    pub insecure_tls: bool,
    /// Protocol: `auto` speaks v2 (resume, node ids) when the server offers it, `v1` never.
    #[arg(long, value_enum, env = "GWC_PROTOCOL", default_value = "auto")]
    pub protocol: ProtocolChoice,
    /// Give up (exit 1) when no server could be reached for this many seconds (0: after the
    /// first round of failed attempts).
    #[arg(
        long,
        env = "GWC_RETRY_FOR",
        default_value_t = 60,
        allow_negative_numbers = true,
        value_parser = whole::<u64>(0, u64::MAX)
    )]
    pub retry_for: u64,
    /// Longest wait between two connection attempts, in seconds (the wait doubles from 250 ms,
    /// with jitter).
    #[arg(
        long,
        env = "GWC_BACKOFF_MAX",
        default_value_t = 10,
        allow_negative_numbers = true,
        value_parser = whole::<u64>(1, 3600)
    )]
    pub backoff_max: u64,
    /// Kicked by an operator, register again as a new peer instead of exiting 5.
    #[arg(long, env = "GWC_RECONNECT_AFTER_KICK")]
    pub reconnect_after_kick: bool,
}

impl SignallingArgs {
    pub fn client_config(&self) -> ClientConfig {
        ClientConfig {
            servers: self.servers.clone(),
            headers: self.headers.clone(),
            token: match (&self.token, &self.token_file) {
                (Some(t), _) => Some(Token::Value(t.clone())),
                (_, Some(f)) => Some(Token::File(f.clone())),
                _ => None,
            },
            cafile: self.cafile.clone(),
            insecure_tls: self.insecure_tls,
            protocol: self.protocol,
            retry_for: Duration::from_secs(self.retry_for),
            backoff_max: Duration::from_secs(self.backoff_max),
            reconnect_after_kick: self.reconnect_after_kick,
        }
    }

    /// Whether a token is given (`--token` or `--token-file`).
    pub fn has_token(&self) -> bool {
        self.token.is_some() || self.token_file.is_some()
    }

    /// The servers, for messages.
    pub fn describe(&self) -> String {
        let urls: Vec<&str> = self.servers.iter().map(Url::as_str).collect();
        urls.join(", ")
    }
}

/// ICE servers for the media (none by default: host candidates only).
#[derive(clap::Args, Debug, Clone)]
pub struct IceArgs {
    /// STUN server (`stun://host:port`).
    #[arg(long, env = "GWC_STUN_SERVER")]
    pub stun_server: Option<String>,
    /// TURN server (`turn(s)://user:password@host:port`), repeatable. Used besides those the
    /// node hands out (credentials minted per peer, v2).
    #[arg(long = "turn-server", env = "GWC_TURN_SERVERS", value_delimiter = ',')]
    pub turn_servers: Vec<String>,
    /// `relay`: media only through TURN (relayed candidates), to check a TURN path or to hide
    /// the host's addresses.
    #[arg(
        long,
        value_enum,
        env = "GWC_ICE_TRANSPORT_POLICY",
        default_value = "all"
    )]
    pub ice_transport_policy: crate::ice_servers::Policy,
}

impl IceArgs {
    /// Sets `stun-server` and `turn-servers` on webrtcsink or webrtcsrc (the policy is the
    /// element's `signaller::ice-transport-policy`: gst-plugin's `agent.rs`).
    pub fn apply(&self, element: &gst::Element) {
        use gst::prelude::*;
        element.set_property("stun-server", self.stun_server.as_deref());
        if !self.turn_servers.is_empty() {
            let turn = gst::Array::new(self.turn_servers.iter().map(String::as_str));
            element.set_property("turn-servers", turn);
        }
    }
}

/// Logs, stats and metrics.
#[derive(clap::Args, Debug, Clone)]
pub struct OutputArgs {
    /// Log format on stderr: `text` (readable progress) or `json` (one object per line).
    #[arg(long, value_enum, env = "GWC_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
    /// Print one JSON stats line on stdout every this many seconds.
    #[arg(long, env = "GWC_STATS_INTERVAL", allow_negative_numbers = true, value_parser = parse_interval)]
    pub stats_interval: Option<Duration>,
    /// Serve Prometheus text metrics on this address (`HOST:PORT`).
    #[arg(long, env = "GWC_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl OutputArgs {
    /// The exit code of a run's `result` ([`crate::exit::code_of`]); a failure is logged and,
    /// with text logs, printed once more on stderr after the agent's name (with JSON logs the
    /// logged error is that line: stderr stays one object per line).
    pub fn exit_code(&self, agent: &str, result: anyhow::Result<()>) -> std::process::ExitCode {
        let code = match result {
            Ok(()) => crate::exit::OK,
            Err(e) => {
                tracing::error!("{e:#}");
                if self.log_format == LogFormat::Text {
                    eprintln!("{agent}: {e:#}");
                }
                crate::exit::code_of(&e)
            }
        };
        std::process::ExitCode::from(code)
    }

    /// Installs the tracing subscriber. `crate_name` logs at info, everything else at warn,
    /// unless `log_env` (e.g. `PRODUCER_LOG`) says otherwise.
    pub fn init_logging(&self, crate_name: &str, log_env: &str) {
        let filter = tracing_subscriber::EnvFilter::try_from_env(log_env)
            .unwrap_or_else(|_| format!("warn,{crate_name}=info,agent_core=info").into());
        use std::io::IsTerminal;
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr);
        match self.log_format {
            LogFormat::Text => builder.with_target(false).compact().init(),
            LogFormat::Json => builder.json().with_current_span(true).init(),
        }
    }
}

pub fn parse_server(s: &str) -> Result<Url, String> {
    let url = Url::parse(s.trim()).map_err(|e| format!("'{s}' is not a URL: {e}"))?;
    match url.scheme() {
        "ws" | "wss" => Ok(url),
        other => Err(format!("'{s}': scheme must be ws or wss, not {other}")),
    }
}

/// `K=V` (the value may contain `=`).
pub fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("'{s}' is not KEY=VALUE")),
    }
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    seconds(s).map(Duration::from_secs_f64)
}

/// A positive, finite number of seconds (clap value parser; the argument needs
/// `allow_negative_numbers` for "-1" to get this message rather than clap's "unexpected
/// argument").
pub fn seconds(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(secs) if secs > 0.0 && secs.is_finite() && secs < 1e9 => Ok(secs),
        _ => Err("must be a positive number of seconds".into()),
    }
}

/// A clap value parser for a whole number from `min` to `max` (`u64::MAX`: no upper bound).
/// The argument needs `allow_negative_numbers` for "-1" to get this message rather than
/// clap's "unexpected argument '-1'".
pub fn whole<T>(min: u64, max: u64) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync
where
    T: TryFrom<u64>,
{
    move |s: &str| {
        s.trim()
            .parse::<u64>()
            .ok()
            .filter(|n| (min..=max).contains(n))
            .and_then(|n| T::try_from(n).ok())
            .ok_or_else(|| match max {
                u64::MAX => format!("must be a whole number, at least {min}"),
                _ => format!("must be a whole number from {min} to {max}"),
            })
    }
}

/// `--token-file`: readable and not empty at start, or exit 2 naming it.
pub fn parse_token_file(s: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(s);
    crate::client::read_token_file(&path)?;
    Ok(path)
}

/// `--cafile`: a readable PEM file with at least one certificate, or exit 2 naming it.
pub fn parse_cafile(s: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(s);
    crate::tls::read_ca(&path).map_err(|e| e.to_string())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_must_be_websocket_urls() {
        assert!(parse_server("ws://a:1").is_ok());
        assert!(parse_server("wss://a/x").is_ok());
        assert!(parse_server("http://a").unwrap_err().contains("scheme"));
        assert!(parse_server("nope").is_err());
    }

    #[test]
    fn numbers_out_of_range_name_the_range() {
        let width = whole::<u32>(1, 8192);
        assert_eq!(width("640"), Ok(640));
        assert_eq!(
            width("0").unwrap_err(),
            "must be a whole number from 1 to 8192"
        );
        assert!(width("-1").is_err() && width("8193").is_err() && width("x").is_err());
        assert!(
            whole::<u32>(0, u64::MAX)("99999999999").is_err(),
            "beyond u32"
        );
        assert_eq!(
            whole::<u64>(1, u64::MAX)("0").unwrap_err(),
            "must be a whole number, at least 1"
        );
        assert_eq!(seconds("0.5"), Ok(0.5));
        for bad in ["0", "-1", "NaN", "inf", "x"] {
            assert!(seconds(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn key_values_split_at_the_first_equals() {
        assert_eq!(
            parse_key_value("Cookie=gwc-node=n1").unwrap(),
            ("Cookie".to_string(), "gwc-node=n1".to_string())
        );
        assert!(parse_key_value("=x").is_err());
        assert!(parse_key_value("x").is_err());
    }
}
