//! TURN credentials (issue 27): the ICE servers a node hands every client, in v2 `welcome`
//! and at `GET /api/v1/ice-servers`. TURN credentials follow coturn's REST-API scheme
//! (`use-auth-secret`): username `EXPIRY:ID` (Unix seconds, then who it is for), credential
//! base64(HMAC-SHA1(secret, username)). Any coturn configured with the same
//! `static-auth-secret` accepts them until EXPIRY, and nobody needs a user database. `ID` is
//! the peer id (with auth on, `SUB:PEER`), so coturn's logs name whom an allocation served.
//!
//! The secret file is read again when its content changes (checked at most once a second, as
//! credentials are minted), like the JWT keys (`auth.rs`), so a rotated Secret takes effect
//! without a restart; a file that can no longer be read keeps the previous secret (and says
//! so).
//!
//! A credential is checked when an allocation is made, so a session outlives it; a peer
//! connected longer than the ttl needs fresh ones for its next sessions: a v2 connection is
//! sent an `iceServers` message every half ttl ([`Renewal`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use parking_lot::Mutex;
use proto::IceServer;
use tracing::{info, warn};

/// The TURN flags (from `Config`).
#[derive(Debug, Clone, Default)]
pub struct TurnSettings {
    /// `turn:` / `turns:` URLs: one `iceServers` entry with the minted credential.
    pub urls: Vec<String>,
    /// `stun:` URLs: an entry without credentials.
    pub stun_urls: Vec<String>,
    /// coturn's `static-auth-secret`, in a file.
    pub secret_file: Option<PathBuf>,
    /// How long a minted credential is valid.
    pub ttl: Duration,
}

/// Why the TURN flags cannot be used (the node does not start).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TurnError {
    #[error("--turn-url {0}: a TURN URL starts with turn: or turns:")]
    NotTurn(String),
    #[error("--stun-url {0}: a STUN URL starts with stun: or stuns:")]
    NotStun(String),
    #[error("--turn-url needs --turn-secret-file (coturn's static-auth-secret)")]
    NoSecret,
    #[error("--turn-secret-file {0}: {1}")]
    Secret(String, String),
    #[error("--turn-ttl must be at least 1 s")]
    Ttl,
}

/// How often the secret file is looked at again, at most.
const RECHECK: Duration = Duration::from_secs(1);

/// The node's ICE servers and its TURN secret.
pub struct Turn {
    settings: TurnSettings,
    secret: Mutex<Secret>,
}

struct Secret {
    bytes: Vec<u8>,
    checked: Instant,
}

impl Turn {
    /// `None` when no URL is configured (nothing to hand out).
    pub fn new(settings: TurnSettings) -> Result<Option<Turn>, TurnError> {
        let is = |u: &str, schemes: &[&str]| schemes.iter().any(|s| u.starts_with(s));
        if let Some(u) = settings.urls.iter().find(|u| !is(u, &["turn:", "turns:"])) {
            return Err(TurnError::NotTurn(u.clone()));
        }
        if let Some(u) = settings
            .stun_urls
            .iter()
            .find(|u| !is(u, &["stun:", "stuns:"]))
        {
            return Err(TurnError::NotStun(u.clone()));
        }
        if settings.urls.is_empty() && settings.stun_urls.is_empty() {
            return Ok(None);
        }
        if settings.ttl < Duration::from_secs(1) {
            return Err(TurnError::Ttl);
        }
        let bytes = match (&settings.secret_file, settings.urls.is_empty()) {
            (Some(path), _) => {
                read_secret(path).map_err(|e| TurnError::Secret(path.display().to_string(), e))?
            }
            (None, false) => return Err(TurnError::NoSecret),
            (None, true) => Vec::new(),
        };
        info!(
            turn = settings.urls.len(),
            stun = settings.stun_urls.len(),
            ttl_s = settings.ttl.as_secs(),
            "handing out ICE servers"
        );
        Ok(Some(Turn {
            settings,
            secret: Mutex::new(Secret {
                bytes,
                checked: Instant::now(),
            }),
        }))
    }

    /// How long the credentials minted now are valid.
    pub fn ttl(&self) -> Duration {
        self.settings.ttl
    }

    /// What a client's TURN credential names: `client` (a peer id), as `SUB:client` with auth
    /// on. With auth on and no subject (no verified token), nothing: only authenticated
    /// clients get credentials.
    pub fn credential_id(auth: bool, sub: Option<&str>, client: &str) -> Option<String> {
        match (auth, sub) {
            (false, _) => Some(client.to_string()),
            (true, Some(sub)) => Some(format!("{sub}:{client}")),
            (true, None) => None,
        }
    }

    /// The ICE servers for `id` (a peer id, or `sub:peer`), TURN credentials valid from `now`
    /// for the ttl.
    pub fn ice_servers(&self, id: &str, now: SystemTime) -> Vec<IceServer> {
        let mut servers = Vec::new();
        if !self.settings.stun_urls.is_empty() {
            servers.push(IceServer {
                urls: self.settings.stun_urls.clone(),
                username: None,
                credential: None,
            });
        }
        if !self.settings.urls.is_empty() {
            let expiry = now
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .saturating_add(self.settings.ttl)
                .as_secs();
            let user = username(expiry, id);
            let credential = credential(&self.secret(), &user);
            crate::metrics::turn_credential_issued();
            servers.push(IceServer {
                urls: self.settings.urls.clone(),
                username: Some(user),
                credential: Some(credential),
            });
        }
        servers
    }

    /// The secret, read again if the file changed (at most once per [`RECHECK`]).
    fn secret(&self) -> Vec<u8> {
        let mut s = self.secret.lock();
        if s.checked.elapsed() >= RECHECK {
            s.checked = Instant::now();
            if let Some(path) = &self.settings.secret_file {
                match read_secret(path) {
                    Ok(bytes) if bytes != s.bytes => {
                        info!(file = %path.display(), "TURN secret changed: read again");
                        s.bytes = bytes;
                    }
                    Ok(_) => {}
                    Err(e) => warn!(file = %path.display(), "TURN secret kept: {e}"),
                }
            }
        }
        s.bytes.clone()
    }
}

/// What a v2 connection needs to keep its peer's credentials fresh.
#[derive(Clone)]
pub struct Renewal {
    pub turn: Arc<Turn>,
    /// What the credentials name ([`Turn::credential_id`]).
    pub id: String,
}

impl Renewal {
    /// Half the credentials' life (1 s at least): what a peer holds is always good for as
    /// long again.
    pub fn every(&self) -> Duration {
        (self.turn.ttl() / 2).max(Duration::from_secs(1))
    }

    pub fn servers(&self) -> Vec<IceServer> {
        self.turn.ice_servers(&self.id, SystemTime::now())
    }
}

/// The secret in `path`, without the line end an editor or `kubectl create secret` leaves.
fn read_secret(path: &PathBuf) -> Result<Vec<u8>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let secret = text.trim_end_matches(['\r', '\n']);
    if secret.is_empty() {
        return Err("empty".into());
    }
    Ok(secret.as_bytes().to_vec())
}

/// coturn's REST username: `EXPIRY:ID`, with the id's characters that TURN usernames should
/// not carry (anything but letters, digits and `-._@:`) replaced by `_`.
pub fn username(expiry_unix: u64, id: &str) -> String {
    let id: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-._@:".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{expiry_unix}:{id}")
}

/// coturn's REST credential: base64(HMAC-SHA1(secret, username)).
pub fn credential(secret: &[u8], username: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    let tag = ring::hmac::sign(&key, username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_credential_is_coturns_rest_scheme() {
        // Computed with Python: base64.b64encode(hmac.new(b"north", b"1700000000:peer-1",
        // hashlib.sha1).digest()).
        assert_eq!(
            credential(b"north", "1700000000:peer-1"),
            "izFBtBN0tC8mfzbn9GsbjcqtfUw="
        );
        assert_eq!(username(5, "sub one:p/1"), "5:sub_one:p_1");
    }

    #[test]
    fn servers_carry_stun_without_and_turn_with_a_credential_expiring_after_the_ttl() {
        let dir = std::env::temp_dir().join(format!("gwc-turn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("secret");
        std::fs::write(&file, "north\n").unwrap();
        let turn = Turn::new(TurnSettings {
            urls: vec!["turn:127.0.0.1:3478?transport=udp".into()],
            stun_urls: vec!["stun:127.0.0.1:3478".into()],
            secret_file: Some(file.clone()),
            ttl: Duration::from_secs(600),
        })
        .unwrap()
        .unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_699_999_400);
        let servers = turn.ice_servers("peer-1", now);
        assert_eq!(servers.len(), 2);
        assert_eq!(servers[0].username, None);
        assert_eq!(servers[1].username.as_deref(), Some("1700000000:peer-1"));
        assert_eq!(
            servers[1].credential.as_deref(),
            Some("izFBtBN0tC8mfzbn9GsbjcqtfUw="),
            "the line end is not part of the secret"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_flags_are_refused() {
        let base = TurnSettings {
            ttl: Duration::from_secs(60),
            ..Default::default()
        };
        let with = |f: fn(&mut TurnSettings)| {
            let mut s = base.clone();
            f(&mut s);
            Turn::new(s).err()
        };
        assert!(
            Turn::new(base.clone()).unwrap().is_none(),
            "nothing to hand out"
        );
        assert!(matches!(
            with(|s| s.urls = vec!["stun:x".into()]),
            Some(TurnError::NotTurn(_))
        ));
        assert!(matches!(
            with(|s| s.stun_urls = vec!["turn:x".into()]),
            Some(TurnError::NotStun(_))
        ));
        assert_eq!(
            with(|s| s.urls = vec!["turn:x".into()]),
            Some(TurnError::NoSecret)
        );
        assert!(matches!(
            with(|s| {
                s.urls = vec!["turn:x".into()];
                s.secret_file = Some("/nonexistent/secret".into());
            }),
            Some(TurnError::Secret(_, _))
        ));
    }
}
