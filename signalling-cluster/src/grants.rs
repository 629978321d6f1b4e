//! Grants: what one connection may do, from the `gwc` claim of its token (`auth.rs`), or
//! everything when the node runs without auth (then a node is the drop-in upstream server).
//!
//! ```json
//! {"produce": true | ["cam-*", …], "consume": true | ["cam-*", …],
//!  "listen": true, "admin": false, "tenant": "acme"}
//! ```
//!
//! Name lists are globs (`*`, `?`, `[…]`) matched against a producer's `meta.name`; an absent
//! field grants nothing; a token without a tenant is in the default tenant. The routing core
//! (`routing/`) asks these questions of the peer that acts; other nodes' peers carry only their
//! tenant, since each node enforces the grants of its own peers.

use serde::{Deserialize, Serialize};

/// The tenant of a token that names none (and of every peer when auth is off).
pub const DEFAULT_TENANT: &str = "";

/// A producer's `meta.name`, which name grants are matched against.
pub fn producer_name(status: &proto::PeerStatus) -> Option<&str> {
    status.meta.as_ref()?.get("name")?.as_str()
}

/// `true` (every name), `false` (none) or a list of globs, as written in the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum NameGrant {
    Every(bool),
    Globs(Vec<String>),
}

/// The `gwc` claim as written in a token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantClaim {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub produce: Option<NameGrant>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consume: Option<NameGrant>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub listen: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admin: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// A name grant, compiled.
#[derive(Debug, Clone)]
enum Names {
    None,
    Every,
    Globs(Vec<glob::Pattern>),
}

impl Names {
    fn compile(grant: Option<&NameGrant>) -> Result<Names, glob::PatternError> {
        Ok(match grant {
            None | Some(NameGrant::Every(false)) => Names::None,
            Some(NameGrant::Every(true)) => Names::Every,
            Some(NameGrant::Globs(globs)) => Names::Globs(
                globs
                    .iter()
                    .map(|g| glob::Pattern::new(g))
                    .collect::<Result<_, _>>()?,
            ),
        })
    }

    /// Whether `name` is covered; a nameless producer only by `true`.
    fn covers(&self, name: Option<&str>) -> bool {
        match (self, name) {
            (Names::Every, _) => true,
            (Names::Globs(globs), Some(name)) => globs.iter().any(|g| g.matches(name)),
            _ => false,
        }
    }

    fn any(&self) -> bool {
        match self {
            Names::None => false,
            Names::Every => true,
            Names::Globs(globs) => !globs.is_empty(),
        }
    }
}

/// What one peer may do.
#[derive(Debug, Clone)]
pub struct Grants {
    /// The token's subject (logs, the operations API); `None` without auth.
    pub sub: Option<String>,
    pub tenant: String,
    /// When the token expires (UNIX seconds); `None` without auth.
    pub expires_at: Option<u64>,
    produce: Names,
    consume: Names,
    listen: bool,
    admin: bool,
}

impl Grants {
    /// Auth off: everything, in the default tenant.
    pub fn everything() -> Grants {
        Grants {
            sub: None,
            tenant: DEFAULT_TENANT.to_string(),
            expires_at: None,
            produce: Names::Every,
            consume: Names::Every,
            listen: true,
            admin: true,
        }
    }

    /// Another node's peer: only its tenant matters here (its node enforces the rest).
    pub fn of_tenant(tenant: Option<&str>) -> Grants {
        Grants {
            tenant: tenant.unwrap_or(DEFAULT_TENANT).to_string(),
            ..Grants::everything()
        }
    }

    /// From a verified token's claims.
    pub fn from_claim(
        sub: Option<String>,
        expires_at: u64,
        claim: &GrantClaim,
    ) -> Result<Grants, glob::PatternError> {
        Ok(Grants {
            sub,
            tenant: claim.tenant.clone().unwrap_or_default(),
            expires_at: Some(expires_at),
            produce: Names::compile(claim.produce.as_ref())?,
            consume: Names::compile(claim.consume.as_ref())?,
            listen: claim.listen,
            admin: claim.admin,
        })
    }

    /// May register as a producer named `name` (its `meta.name`).
    pub fn may_produce(&self, name: Option<&str>) -> bool {
        self.produce.covers(name)
    }

    /// May register as a consumer at all.
    pub fn may_consume_any(&self) -> bool {
        self.consume.any()
    }

    /// May watch the producer named `name`.
    pub fn may_consume(&self, name: Option<&str>) -> bool {
        self.consume.covers(name)
    }

    pub fn may_listen(&self) -> bool {
        self.listen
    }

    pub fn is_admin(&self) -> bool {
        self.admin
    }

    /// Every grant, in the default tenant: what a peer holds without auth.
    pub fn is_unrestricted(&self) -> bool {
        matches!((&self.produce, &self.consume), (Names::Every, Names::Every))
            && self.listen
            && self.admin
            && self.tenant == DEFAULT_TENANT
    }

    /// Whether this peer may see a peer of `tenant` whose status is `status`: same tenant,
    /// and a producer (or one that left: its roles are gone) only if it may watch it.
    pub fn sees(&self, tenant: &str, status: &proto::PeerStatus) -> bool {
        if tenant != self.tenant {
            return false;
        }
        match status.producing() || status.roles.is_empty() {
            true => self.may_consume(producer_name(status)),
            false => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{PeerRole, PeerStatus};

    fn claim(json: serde_json::Value) -> Grants {
        let claim: GrantClaim = serde_json::from_value(json).unwrap();
        Grants::from_claim(Some("t".into()), 0, &claim).unwrap()
    }

    fn producer(name: &str) -> PeerStatus {
        PeerStatus {
            roles: vec![PeerRole::Producer],
            meta: Some(serde_json::json!({ "name": name })),
            peer_id: None,
        }
    }

    #[test]
    fn globs_cover_names_and_absent_fields_grant_nothing() {
        let g = claim(serde_json::json!({"consume": ["cam-*"], "tenant": "acme"}));
        assert!(g.may_consume(Some("cam-1")));
        assert!(!g.may_consume(Some("lab-1")));
        assert!(!g.may_consume(None));
        assert!(!g.may_produce(Some("cam-1")), "no produce field");
        assert!(!g.may_listen() && !g.is_admin());
        assert!(g.sees("acme", &producer("cam-2")));
        assert!(!g.sees("acme", &producer("lab-1")));
        assert!(!g.sees("", &producer("cam-2")), "another tenant");
        assert_eq!(claim(serde_json::json!({})).tenant, DEFAULT_TENANT);
    }

    #[test]
    fn a_nameless_producer_needs_produce_true() {
        assert!(!claim(serde_json::json!({"produce": ["*"]})).may_produce(None));
        assert!(claim(serde_json::json!({"produce": true})).may_produce(None));
        assert!(!claim(serde_json::json!({"produce": false})).may_produce(Some("x")));
    }

    #[test]
    fn unknown_fields_and_bad_globs_are_refused() {
        assert!(
            serde_json::from_value::<GrantClaim>(serde_json::json!({"produse": true})).is_err()
        );
        let bad: GrantClaim =
            serde_json::from_value(serde_json::json!({"consume": ["[a-"]})).unwrap();
        assert!(Grants::from_claim(None, 0, &bad).is_err());
    }
}
