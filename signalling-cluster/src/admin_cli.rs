//! `signalling-cluster admin`: an operator's client of the operations API, on any node of the
//! cluster. Human-readable tables by default, the API's JSON with `--json`.
//!
//! ```sh
//! signalling-cluster admin --url http://node:8443 --token "$ADMIN" sessions
//! signalling-cluster admin --url http://node:8443 kick 7b3e… --reason "abuse"
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

/// The options go before or after the subcommand (`admin peers --json`).
#[derive(clap::Args, Debug, Clone)]
pub struct AdminArgs {
    /// A node's HTTP(S) URL (any node: every action reaches the node concerned): the host and
    /// port of its ws:// (wss://) URL, with http:// (https://).
    #[arg(
        long,
        global = true,
        env = "GWC_ADMIN_URL",
        default_value = "http://127.0.0.1:8443"
    )]
    pub url: String,
    /// A token with the `admin` grant (nodes with auth on). A token on the command line shows
    /// in `ps`: prefer --token-file or the environment.
    #[arg(long, global = true, env = "GWC_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the token with the `admin` grant (instead of --token).
    #[arg(
        long,
        global = true,
        env = "GWC_ADMIN_TOKEN_FILE",
        conflicts_with = "token"
    )]
    pub token_file: Option<PathBuf>,
    /// A CA certificate (PEM) to trust for an https:// URL (a private CA), beside the system's
    /// roots (which `SSL_CERT_FILE` and `SSL_CERT_DIR` replace when set).
    #[arg(long, global = true, env = "GWC_ADMIN_CAFILE")]
    pub cafile: Option<PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub what: What,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum What {
    /// The live nodes and their peers.
    Nodes,
    /// Every peer of the cluster.
    Peers,
    /// Every session of the cluster.
    Sessions,
    /// The producers.
    Producers,
    /// End a session, whichever node holds it.
    EndSession { session_id: String },
    /// Disconnect a peer (a v2 peer is told why), whichever node it is on.
    Kick {
        peer_id: String,
        #[arg(long, default_value = "disconnected by an operator")]
        reason: String,
    },
    /// Drain a node, as SIGTERM does (its v2 peers move to the others).
    Drain { node: String },
}

/// Why the command failed. (Causes are in the messages, not `source`s: printed once, on one
/// line.)
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("--url {url}: {why}")]
    BadUrl { url: String, why: &'static str },
    #[error("cannot read --token-file {path}: {why}")]
    TokenFile { path: PathBuf, why: std::io::Error },
    #[error("--token-file {0} is empty")]
    EmptyTokenFile(PathBuf),
    #[error("--cafile {path}: {why}")]
    CaFile { path: PathBuf, why: String },
    /// The node answered with an error status (the API's `error` text in `message`).
    #[error("{method} {url}: {status} {message}")]
    Refused {
        method: &'static str,
        url: String,
        status: u16,
        message: String,
    },
    #[error("{method} {url}: {why}")]
    Unreachable {
        method: &'static str,
        url: String,
        why: String,
    },
    #[error("{method} {url}: the answer is not the API's JSON: {why}")]
    BadAnswer {
        method: &'static str,
        url: String,
        why: String,
    },
}

impl AdminError {
    /// Bad arguments (exit 2) rather than a refusal or a node that cannot be reached (exit 1).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            AdminError::BadUrl { .. }
                | AdminError::TokenFile { .. }
                | AdminError::EmptyTokenFile(_)
                | AdminError::CaFile { .. }
        )
    }
}

/// The base URL, checked: the operations API is HTTP(S), not the WebSocket's scheme.
fn base_url(url: &str) -> Result<&str, AdminError> {
    let bad = |why| AdminError::BadUrl {
        url: url.to_string(),
        why,
    };
    if url.starts_with("ws://") || url.starts_with("wss://") {
        return Err(bad(
            "the operations API is HTTP: give the node's http:// URL (https:// for wss://), \
             same host and port",
        ));
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(bad("must start with http:// or https://"));
    }
    Ok(url.trim_end_matches('/'))
}

/// The token: --token, or the file --token-file names.
fn token(args: &AdminArgs) -> Result<Option<String>, AdminError> {
    let Some(path) = &args.token_file else {
        return Ok(args.token.clone());
    };
    let text = std::fs::read_to_string(path).map_err(|why| AdminError::TokenFile {
        path: path.clone(),
        why,
    })?;
    match text.trim() {
        "" => Err(AdminError::EmptyTokenFile(path.clone())),
        t => Ok(Some(t.to_string())),
    }
}

/// TLS for https://: the system's roots (`SSL_CERT_FILE`, `SSL_CERT_DIR` when set, read by
/// rustls-native-certs) and --cafile's certificates.
fn tls(cafile: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, AdminError> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    // (none found is not an error yet: --cafile may be all there is)
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(path) = cafile {
        let bad = |why: String| AdminError::CaFile {
            path: path.to_path_buf(),
            why,
        };
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| bad(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("not a PEM certificate: {e}")))?;
        if certs.is_empty() {
            return Err(bad("no certificate in it".into()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| bad(e.to_string()))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(
        rustls::crypto::ring::default_provider().into(),
    )
    .with_safe_default_protocol_versions()
    .map_err(|e| AdminError::CaFile {
        path: cafile.map(Path::to_path_buf).unwrap_or_default(),
        why: e.to_string(),
    })?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

fn request(args: &AdminArgs, method: &'static str, path: &str) -> Result<Value, AdminError> {
    let base = base_url(&args.url)?;
    let token = token(args)?;
    let mut agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(10))
        .timeout(Duration::from_secs(30));
    if base.starts_with("https://") {
        agent = agent.tls_config(tls(args.cafile.as_deref())?);
    }
    let url = format!("{base}{path}");
    let mut req = agent.build().request(method, &url);
    if let Some(t) = &token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    let bad_answer = |why: String| AdminError::BadAnswer {
        method,
        url: url.clone(),
        why,
    };
    match req.call() {
        Ok(resp) => {
            let body = resp.into_string().map_err(|e| bad_answer(e.to_string()))?;
            serde_json::from_str(&body).map_err(|e| bad_answer(e.to_string()))
        }
        Err(ureq::Error::Status(status, resp)) => {
            let reason = resp.status_text().to_string();
            let body = resp.into_string().unwrap_or_default();
            // (the API's JSON `error`, else the body as it is)
            let said = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v["error"].as_str().map(String::from))
                .unwrap_or_else(|| body.trim().to_string());
            Err(AdminError::Refused {
                method,
                url,
                status,
                message: format!("{reason}: {said}"),
            })
        }
        Err(e) => {
            // (ureq names the URL itself: once is enough)
            let text = e.to_string();
            let why = text.strip_prefix(&format!("{url}: ")).unwrap_or(&text);
            Err(AdminError::Unreachable {
                method,
                why: why.to_string(),
                url,
            })
        }
    }
}

/// Rows of `items` as an aligned table of `columns` (JSON keys).
fn table(items: &[Value], columns: &[&str]) -> String {
    let cell = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        Value::Array(a) => a.iter().map(cell_str).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    };
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|i| columns.iter().map(|c| cell(&i[*c])).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(n, c)| {
            rows.iter()
                .map(|r| r[n].len())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_string()
    };
    let mut out = vec![line(columns.iter().map(|c| header(c)).collect())];
    out.extend(rows.into_iter().map(line));
    out.join("\n")
}

/// A JSON key as a column header: `ageSecs` → `AGE SECS`.
fn header(key: &str) -> String {
    let mut out = String::new();
    for c in key.chars() {
        if c.is_uppercase() && !out.is_empty() {
            out.push(' ');
        }
        out.extend(c.to_uppercase());
    }
    out
}

fn cell_str(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), String::from)
}

/// Runs the command; what it prints.
pub fn run(args: &AdminArgs) -> Result<String, AdminError> {
    let (method, path, list, columns): (&'static str, String, Option<&str>, &[&str]) =
        match &args.what {
            What::Nodes => (
                "GET",
                "/api/v1/nodes".into(),
                Some("nodes"),
                &["id", "peers", "self"],
            ),
            What::Peers => (
                "GET",
                "/api/v1/peers".into(),
                Some("peers"),
                &["id", "node", "roles", "name", "protocol", "sub", "ageSecs"],
            ),
            What::Sessions => (
                "GET",
                "/api/v1/sessions".into(),
                Some("sessions"),
                &[
                    "sessionId",
                    "producer",
                    "producerNode",
                    "consumer",
                    "consumerNode",
                ],
            ),
            What::Producers => (
                "GET",
                "/api/v1/producers".into(),
                Some("producers"),
                &["id", "meta"],
            ),
            What::EndSession { session_id } => (
                "POST",
                format!("/api/v1/sessions/{session_id}/end"),
                None,
                &[],
            ),
            What::Kick { peer_id, reason } => {
                let reason: String = url_escape(reason);
                (
                    "POST",
                    format!("/api/v1/peers/{peer_id}/kick?reason={reason}"),
                    None,
                    &[],
                )
            }
            What::Drain { node } => ("POST", format!("/api/v1/nodes/{node}/drain"), None, &[]),
        };
    let answer = request(args, method, &path)?;
    if args.json {
        return Ok(serde_json::to_string_pretty(&answer).unwrap_or_else(|_| answer.to_string()));
    }
    Ok(match list {
        Some(key) => table(
            answer[key].as_array().map_or(&[][..], Vec::as_slice),
            columns,
        ),
        None => "accepted".into(),
    })
}

/// Percent-encodes what is not unreserved (RFC 3986).
fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_reasons_are_escaped() {
        let rows = vec![
            serde_json::json!({"id": "a", "peers": 3}),
            serde_json::json!({"id": "node-b", "peers": 10}),
        ];
        assert_eq!(
            table(&rows, &["id", "peers"]),
            "ID      PEERS\na       3\nnode-b  10"
        );
        assert_eq!(url_escape("too many & odd"), "too%20many%20%26%20odd");
        assert_eq!(header("sessionId"), "SESSION ID");
        assert_eq!(header("ageSecs"), "AGE SECS");
        assert!(base_url("ws://node:8443").is_err_and(|e| e.is_usage()));
        assert_eq!(base_url("http://node:8443/").ok(), Some("http://node:8443"));
    }
}
