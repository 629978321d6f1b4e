//! Tokens for the security tests, made by PyJWT (`tests/tools/pyjwt.py`, in the venv
//! `./dev setup` installs): an implementation nobody here wrote signs what our nodes verify.

use std::path::PathBuf;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use serde_json::Value;

/// A directory with an HS256 secret and RSA, EC (P-256) and Ed25519 key pairs.
pub struct Keys {
    pub dir: PathBuf,
}

/// UNIX seconds now.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn pyjwt(args: &[&str]) -> anyhow::Result<String> {
    let script = crate::manifest_dir().join("tools/pyjwt.py");
    let out = Command::new(crate::k8s::tool("venv/bin/python"))
        .arg(script)
        .args(args)
        .output()
        .context("cannot run pyjwt.py")?;
    if !out.status.success() {
        bail!(
            "pyjwt.py {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

impl Keys {
    pub fn new(name: &str) -> anyhow::Result<Keys> {
        let dir = std::env::temp_dir().join(format!("gwc-keys-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("secret"), format!("secret-of-{name}-{}\n", now()))?;
        std::fs::write(dir.join("other-secret"), "not the node's\n")?;
        pyjwt(&["keys", dir.to_str().context("path")?])?;
        Ok(Keys { dir })
    }

    /// A file of this directory (`secret`, `rsa.pub`, …), as a string for flags.
    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().to_string()
    }

    /// `claims` signed with `alg` by the key in file `key` (`secret` for HS256, `rsa.key`…).
    pub fn sign_with(&self, alg: &str, key: &str, claims: &Value) -> anyhow::Result<String> {
        pyjwt(&["sign", alg, &self.path(key), &claims.to_string()])
    }

    /// An HS256 token for `sub` granting `gwc`, valid for an hour.
    pub fn token(&self, sub: &str, gwc: Value) -> anyhow::Result<String> {
        let claims = serde_json::json!({"sub": sub, "exp": now() + 3600, "gwc": gwc});
        self.sign_with("HS256", "secret", &claims)
    }

    /// The claims of an HS256 token signed with this directory's secret, verified by PyJWT.
    pub fn decode(&self, token: &str) -> anyhow::Result<Value> {
        Ok(serde_json::from_str(&pyjwt(&[
            "decode",
            &self.path("secret"),
            token,
        ])?)?)
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
