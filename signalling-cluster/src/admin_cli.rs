//! `signalling-cluster admin`: an operator's client of the operations API, on any node of the
//! cluster. Human-readable tables by default, the API's JSON with `--json`.
//!
//! ```sh
//! signalling-cluster admin --url http://node:8443 --token "$ADMIN" sessions
//! signalling-cluster admin --url http://node:8443 kick 7b3e… --reason "abuse"
//! ```

use anyhow::{bail, Context};
use serde_json::Value;

#[derive(clap::Args, Debug, Clone)]
pub struct AdminArgs {
    /// A node's HTTP(S) URL (any node: every action reaches the node concerned).
    #[arg(long, env = "GWC_ADMIN_URL", default_value = "http://127.0.0.1:8443")]
    pub url: String,
    /// A token with the `admin` grant (nodes with auth on).
    #[arg(long, env = "GWC_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
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

fn request(args: &AdminArgs, method: &str, path: &str) -> anyhow::Result<Value> {
    let url = format!("{}{path}", args.url.trim_end_matches('/'));
    let mut req = ureq::request(method, &url);
    if let Some(t) = &args.token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    match req.call() {
        Ok(resp) => Ok(serde_json::from_str(&resp.into_string()?)?),
        Err(ureq::Error::Status(code, resp)) => {
            let body = resp.into_string().unwrap_or_default();
            bail!("{method} {url}: {code} {body}")
        }
        Err(e) => Err(e).with_context(|| format!("{method} {url}")),
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
    let mut out = vec![line(columns.iter().map(|c| c.to_uppercase()).collect())];
    out.extend(rows.into_iter().map(line));
    out.join("\n")
}

fn cell_str(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), String::from)
}

/// Runs the command; what it prints.
pub fn run(args: &AdminArgs) -> anyhow::Result<String> {
    let (method, path, list, columns): (&str, String, Option<&str>, &[&str]) = match &args.what {
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
        return Ok(serde_json::to_string_pretty(&answer)?);
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
    }
}
