//! `signalling-cluster token`: prints an HS256 token with grants (`grants.rs`), signed with the
//! secret a node verifies with, for operators, demos and agents' Secrets.
//!
//! ```sh
//! signalling-cluster token --secret-file jwt.secret --sub cam-1 --produce 'cam-*' --ttl 1h
//! ```

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header};
use serde::Serialize;

use crate::grants::{GrantClaim, NameGrant};

#[derive(clap::Args, Debug, Clone)]
pub struct TokenArgs {
    /// The HS256 secret (the node's --auth-jwt-secret-file).
    #[arg(long)]
    pub secret_file: PathBuf,
    /// Who the token is for (logs, the operations API).
    #[arg(long)]
    pub sub: String,
    /// May publish producers with these names (globs, comma-separated or repeated; `*` for
    /// any, including nameless).
    #[arg(long, value_delimiter = ',')]
    pub produce: Vec<String>,
    /// May watch producers with these names (globs, comma-separated or repeated; `*` for any).
    #[arg(long, value_delimiter = ',')]
    pub consume: Vec<String>,
    /// May register as a listener (presence).
    #[arg(long)]
    pub listen: bool,
    /// May use the operations API.
    #[arg(long)]
    pub admin: bool,
    /// The tenant (default: the default tenant).
    #[arg(long)]
    pub tenant: Option<String>,
    /// Lifetime: `90s`, `15m`, `1h`, `7d` (above 0).
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    pub ttl: Duration,
    /// The token's `iss`: needed when the nodes run with --auth-jwt-issuer (the same value).
    #[arg(long)]
    pub issuer: Option<String>,
    /// The token's `aud`: needed when the nodes run with --auth-jwt-audience (the same value).
    #[arg(long)]
    pub audience: Option<String>,
}

/// Why no token was made.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    // (the cause is in the message, not a `source`: printed once, on one line)
    #[error("cannot read the secret file {path}: {why}")]
    Secret { path: PathBuf, why: std::io::Error },
    #[error("the secret file {0} is empty")]
    EmptySecret(PathBuf),
    #[error("cannot sign the token: {0}")]
    Sign(jsonwebtoken::errors::Error),
}

/// `90s`, `15m`, `1h`, `7d`, or plain seconds; not 0 (a token already expired).
fn parse_ttl(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse().map_err(|_| format!("bad duration '{s}'"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(format!("bad duration unit in '{s}' (s, m, h, d)")),
    };
    if secs == 0 {
        return Err("a token living 0 s is expired when printed: give a lifetime above 0".into());
    }
    Ok(Duration::from_secs(secs))
}

/// `*` alone is every name (nameless producers too); otherwise the globs.
fn names(globs: &[String]) -> Option<NameGrant> {
    match globs {
        [] => None,
        [all] if all == "*" => Some(NameGrant::Every(true)),
        _ => Some(NameGrant::Globs(globs.to_vec())),
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
    gwc: GrantClaim,
}

/// What is legal but probably not meant: a token that grants nothing, one for nobody.
pub fn warnings(args: &TokenArgs) -> Vec<String> {
    let mut warnings = Vec::new();
    if args.sub.trim().is_empty() {
        warnings.push(
            "--sub is empty: logs and the operations API will not say whose token this is".into(),
        );
    }
    if args.produce.is_empty() && args.consume.is_empty() && !args.listen && !args.admin {
        warnings
            .push("the token grants nothing: no --produce, --consume, --listen or --admin".into());
    }
    warnings
}

/// The token `args` describe.
pub fn mint(args: &TokenArgs) -> Result<String, TokenError> {
    let secret = std::fs::read(&args.secret_file).map_err(|why| TokenError::Secret {
        path: args.secret_file.clone(),
        why,
    })?;
    let secret = secret.strip_suffix(b"\n").unwrap_or(&secret);
    if secret.is_empty() {
        return Err(TokenError::EmptySecret(args.secret_file.clone()));
    }
    // (a clock before 1970 is taken as 1970)
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let claims = Claims {
        sub: &args.sub,
        iat: now,
        exp: now + args.ttl.as_secs(),
        iss: args.issuer.as_deref(),
        aud: args.audience.as_deref(),
        gwc: GrantClaim {
            produce: names(&args.produce),
            consume: names(&args.consume),
            listen: args.listen,
            admin: args.admin,
            tenant: args.tenant.clone(),
        },
    };
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(TokenError::Sign)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_name_lists() {
        assert_eq!(parse_ttl("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_ttl("30"), Ok(Duration::from_secs(30)));
        assert!(parse_ttl("1y").is_err());
        assert!(parse_ttl("0").is_err() && parse_ttl("0h").is_err());
        assert_eq!(names(&["*".into()]), Some(NameGrant::Every(true)));
        assert_eq!(names(&[]), None);
    }
}
