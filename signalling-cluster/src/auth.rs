//! Authentication: a JWT in the upgrade request (`Authorization: Bearer TOKEN`, or
//! `?token=TOKEN` for browsers, which cannot set WebSocket headers), verified with
//! `jsonwebtoken` against `--auth-jwt-secret-file` (HS256) and/or `--auth-jwt-public-key-file`
//! (PEM: RS256, ES256 or EdDSA), with optional issuer and audience. `exp` is required, `nbf`
//! honoured. What the token grants is its `gwc` claim (`grants.rs`).
//!
//! Key files are read again when their content changes (checked at most once a second, as
//! tokens arrive), so a rotated Kubernetes Secret takes effect without a restart and without
//! dropping anyone; a file that no longer parses keeps the previous key (and says so).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::Mutex;
use serde::Deserialize;
use tracing::{info, warn};

use crate::grants::{GrantClaim, Grants};

/// Why a token was refused (the short reason in the 401).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("no token (Authorization: Bearer, or ?token=)")]
    Missing,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet")]
    NotYetValid,
    #[error("wrong issuer")]
    Issuer,
    #[error("wrong audience")]
    Audience,
    #[error("bad signature")]
    Signature,
    #[error("no key for algorithm {0:?}")]
    Algorithm(Algorithm),
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("bad grants: {0}")]
    Grants(String),
}

/// What a token says (the registered claims we use, and ours).
#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    exp: u64,
    #[serde(default)]
    gwc: Option<GrantClaim>,
}

/// The auth flags (from `Config`).
#[derive(Debug, Clone, Default)]
pub struct AuthSettings {
    pub secret_file: Option<PathBuf>,
    pub public_key_file: Option<PathBuf>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

/// A key file and the key it held when last read.
struct KeyFile {
    path: PathBuf,
    bytes: Vec<u8>,
    key: Option<(DecodingKey, Vec<Algorithm>)>,
}

impl KeyFile {
    fn load(path: PathBuf, secret: bool) -> Result<KeyFile, String> {
        let mut file = KeyFile {
            path,
            bytes: Vec::new(),
            key: None,
        };
        file.refresh(secret)?;
        Ok(file)
    }

    /// Reads the file again; a new content replaces the key if it parses.
    fn refresh(&mut self, secret: bool) -> Result<(), String> {
        let bytes = std::fs::read(&self.path)
            .map_err(|e| format!("cannot read {}: {e}", self.path.display()))?;
        if bytes == self.bytes && self.key.is_some() {
            return Ok(());
        }
        let key = match secret {
            // (a trailing newline, as `echo` or a Secret often leaves, is not part of it)
            true => {
                let trimmed = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
                secret_key(trimmed)?
            }
            false => public_key(&bytes)?,
        };
        if self.key.is_some() {
            info!(file = %self.path.display(), "verification key changed: using the new one");
        }
        self.bytes = bytes;
        self.key = Some(key);
        Ok(())
    }
}

fn secret_key(secret: &[u8]) -> Result<(DecodingKey, Vec<Algorithm>), String> {
    if secret.is_empty() {
        return Err("the secret file is empty".into());
    }
    Ok((DecodingKey::from_secret(secret), vec![Algorithm::HS256]))
}

/// A PEM public key: RSA (RS256), EC P-256 (ES256) or Ed25519 (EdDSA).
fn public_key(pem: &[u8]) -> Result<(DecodingKey, Vec<Algorithm>), String> {
    if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
        return Ok((k, vec![Algorithm::RS256]));
    }
    if let Ok(k) = DecodingKey::from_ec_pem(pem) {
        return Ok((k, vec![Algorithm::ES256]));
    }
    if let Ok(k) = DecodingKey::from_ed_pem(pem) {
        return Ok((k, vec![Algorithm::EdDSA]));
    }
    Err("not an RSA, EC (P-256) or Ed25519 public key in PEM".into())
}

/// Verifies tokens for a node with auth on.
pub struct Verifier {
    settings: AuthSettings,
    secret: Mutex<Option<KeyFile>>,
    public: Mutex<Option<KeyFile>>,
    checked: Mutex<Instant>,
}

/// How often key files are looked at again.
const RECHECK: Duration = Duration::from_secs(1);

impl Verifier {
    /// `None` when no key is configured: auth off.
    pub fn new(settings: AuthSettings) -> Result<Option<Verifier>, String> {
        if settings.secret_file.is_none() && settings.public_key_file.is_none() {
            return Ok(None);
        }
        let secret = settings
            .secret_file
            .clone()
            .map(|p| KeyFile::load(p, true))
            .transpose()?;
        let public = settings
            .public_key_file
            .clone()
            .map(|p| KeyFile::load(p, false))
            .transpose()?;
        Ok(Some(Verifier {
            settings,
            secret: Mutex::new(secret),
            public: Mutex::new(public),
            checked: Mutex::new(Instant::now()),
        }))
    }

    /// Re-reads the key files if a second has passed since the last look.
    fn refresh(&self) {
        {
            let mut checked = self.checked.lock();
            if checked.elapsed() < RECHECK {
                return;
            }
            *checked = Instant::now();
        }
        for (file, secret) in [(&self.secret, true), (&self.public, false)] {
            if let Some(f) = file.lock().as_mut() {
                if let Err(e) = f.refresh(secret) {
                    warn!("keeping the previous verification key: {e}");
                }
            }
        }
    }

    /// The grants of `token`, or why it is refused.
    pub fn verify(&self, token: &str) -> Result<Grants, AuthError> {
        self.refresh();
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Malformed(e.to_string()))?;
        let file = match header.alg {
            Algorithm::HS256 => &self.secret,
            _ => &self.public,
        };
        let guard = file.lock();
        let Some((key, algorithms)) = guard.as_ref().and_then(|f| f.key.as_ref()) else {
            return Err(AuthError::Algorithm(header.alg));
        };
        if !algorithms.contains(&header.alg) {
            return Err(AuthError::Algorithm(header.alg));
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = 5;
        validation.validate_nbf = true;
        validation.validate_aud = self.settings.audience.is_some();
        if let Some(iss) = &self.settings.issuer {
            validation.set_issuer(&[iss]);
        }
        if let Some(aud) = &self.settings.audience {
            validation.set_audience(&[aud]);
        }
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(refusal)?;
        let claims = data.claims;
        let grant = claims.gwc.unwrap_or_default();
        Grants::from_claim(claims.sub, claims.exp, &grant)
            .map_err(|e| AuthError::Grants(e.to_string()))
    }
}

fn refusal(e: jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => AuthError::Expired,
        K::ImmatureSignature => AuthError::NotYetValid,
        K::InvalidIssuer => AuthError::Issuer,
        K::InvalidAudience => AuthError::Audience,
        K::InvalidSignature => AuthError::Signature,
        K::MissingRequiredClaim(c) => AuthError::Malformed(format!("no {c} claim")),
        _ => AuthError::Malformed(e.to_string()),
    }
}

/// The token of an upgrade (or API) request: the `Authorization: Bearer` header, else the
/// `token` query parameter.
pub fn token_of<'a>(authorization: Option<&'a str>, query: Option<&'a str>) -> Option<&'a str> {
    if let Some(t) = authorization.and_then(|v| v.strip_prefix("Bearer ")) {
        return Some(t.trim());
    }
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix("token="))
        .filter(|t| !t.is_empty())
}

/// `url` with any `token=` query value replaced, for logs (tokens are never logged).
pub fn redact(url: &str) -> String {
    match url.split_once('?') {
        None => url.to_string(),
        Some((path, query)) => {
            let parts: Vec<String> = query
                .split('&')
                .map(|kv| match kv.starts_with("token=") {
                    true => "token=…".to_string(),
                    false => kv.to_string(),
                })
                .collect();
            format!("{path}?{}", parts.join("&"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_wins_over_the_query_and_tokens_are_redacted() {
        assert_eq!(token_of(Some("Bearer abc"), Some("token=def")), Some("abc"));
        assert_eq!(token_of(None, Some("resume=x&token=def")), Some("def"));
        assert_eq!(token_of(Some("Basic xyz"), None), None);
        assert_eq!(token_of(None, Some("token=")), None);
        assert_eq!(redact("/?resume=r&token=secret"), "/?resume=r&token=…");
    }
}
