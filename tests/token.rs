//! `signalling-cluster token`, the real binary: what it refuses (a zero lifetime, a secret file
//! it cannot read: one line, exit 2), what it warns about, how its grant lists read, and that
//! its tokens work against a real node.

use std::process::{Command, Output};

use anyhow::{Context, Result};
use cluster_tests::{bin, Node, Peer};
use serde_json::json;

fn token(args: &[&str]) -> Result<Output> {
    Ok(Command::new(bin("signalling-cluster"))
        .arg("token")
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .output()?)
}

/// A secret file of its own for a test.
fn secret(name: &str) -> Result<std::path::PathBuf> {
    let path = std::env::temp_dir().join(format!("gwc-token-{name}-{}", std::process::id()));
    std::fs::write(&path, "a secret for the token tests\n")?;
    Ok(path)
}

#[test]
fn a_zero_lifetime_and_a_missing_secret_file_are_refused_in_one_line() -> Result<()> {
    let s = secret("refused")?;
    let s_arg = s.to_str().context("path")?;
    let out = token(&[
        "--secret-file",
        s_arg,
        "--sub",
        "a",
        "--listen",
        "--ttl",
        "0",
    ])?;
    let err = String::from_utf8(out.stderr)?;
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--ttl") && err.contains("above 0"), "{err}");
    assert!(out.stdout.is_empty(), "no token printed");

    let out = token(&[
        "--secret-file",
        "/nonexistent/jwt.secret",
        "--sub",
        "a",
        "--listen",
    ])?;
    let err = String::from_utf8(out.stderr)?;
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(
        err.trim(),
        "error: cannot read the secret file /nonexistent/jwt.secret: No such file or directory (os error 2)",
        "one line, no backtrace even with RUST_BACKTRACE=1"
    );
    std::fs::remove_file(s)?;
    Ok(())
}

#[test]
fn a_token_for_nobody_or_granting_nothing_is_printed_with_warnings() -> Result<()> {
    let s = secret("warn")?;
    let s_arg = s.to_str().context("path")?;
    let out = token(&["--secret-file", s_arg, "--sub", ""])?;
    let err = String::from_utf8(out.stderr)?;
    assert!(out.status.success(), "{err}");
    assert!(!out.stdout.is_empty(), "the token is printed");
    assert!(err.contains("warning: --sub is empty"), "{err}");
    assert!(err.contains("warning: the token grants nothing"), "{err}");
    // A token with a grant and a subject: no warning.
    let out = token(&["--secret-file", s_arg, "--sub", "ops", "--admin"])?;
    assert!(out.status.success() && out.stderr.is_empty(), "{out:?}");
    // The help says what --issuer and --audience are for.
    let help = String::from_utf8(token(&["--help"])?.stdout)?;
    for (flag, node_flag) in [
        ("--issuer", "--auth-jwt-issuer"),
        ("--audience", "--auth-jwt-audience"),
    ] {
        let line = help
            .lines()
            .find(|l| l.trim_start().starts_with(flag))
            .context("flag in help")?;
        assert!(line.contains(node_flag), "{line}");
    }
    std::fs::remove_file(s)?;
    Ok(())
}

/// `--produce a,b` grants both names, as repeating the flag does: a producer named by the
/// second one registers on a node with auth on; one named by neither is refused.
#[tokio::test]
async fn comma_separated_grants_are_split_and_hold_on_a_node() -> Result<()> {
    let s = secret("split")?;
    let s_arg = s.to_str().context("path")?;
    let node = Node::start(&["--auth-jwt-secret-file", s_arg]).await?;
    let out = token(&[
        "--secret-file",
        s_arg,
        "--sub",
        "cams",
        "--produce",
        "cam-1,cam-2",
    ])?;
    assert!(out.status.success(), "{out:?}");
    let t = String::from_utf8(out.stdout)?.trim().to_string();
    for (name, allowed) in [("cam-2", true), ("cam-1", true), ("cam-1,cam-2", false)] {
        let url = format!("{}/?token={t}", node.url());
        let mut p = Peer::connect_with(&url, Some("gstwebrtc-cluster.v2")).await?;
        p.set_status(&["producer"], json!({ "name": name })).await?;
        p.send(json!({"type": "list"})).await?;
        let answer = p
            .wait_until(|m| m["type"] == "error" || m["type"] == "list")
            .await?;
        match allowed {
            true => assert_eq!(answer["type"], "list", "{name}: {answer}"),
            false => assert_eq!(answer["code"], "forbidden", "{name}: {answer}"),
        }
    }
    std::fs::remove_file(s)?;
    Ok(())
}
