//! The web app every node serves to browsers (GET without a WebSocket upgrade): embedded at
//! build time from `web/dist`, or read from `--web-root`.

use std::borrow::Cow;
use std::path::{Component, Path, PathBuf};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));
}

/// Shown when the binary was built before the web app (`./dev setup` builds it).
const NOT_BUILT: &str = "<!doctype html><meta charset=utf-8><title>gst-webrtc-cluster</title>\
<p>This node was built without its web app. Run <code>./dev setup</code> (or <code>npm ci &amp;&amp; \
npm run build</code> in <code>web/</code>) and rebuild, or start the node with <code>--web-root</code>.";

/// Where the app's files come from.
#[derive(Debug, Clone)]
pub enum Assets {
    Embedded,
    Dir(PathBuf),
}

impl Assets {
    pub fn new(root: Option<PathBuf>) -> Assets {
        root.map_or(Assets::Embedded, Assets::Dir)
    }

    /// The file for a request path and its content type; `None`: 404.
    pub fn get(&self, path: &str) -> Option<(Cow<'static, [u8]>, &'static str)> {
        let rel = path.trim_start_matches('/');
        let rel = if rel.is_empty() { "index.html" } else { rel };
        // Only plain relative paths: no `..`, no absolute parts.
        if !Path::new(rel)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
        {
            return None;
        }
        let body: Cow<'static, [u8]> = match self {
            Assets::Embedded => match embedded::FILES.iter().find(|(name, _)| *name == rel) {
                Some((_, bytes)) => Cow::Borrowed(*bytes),
                None if rel == "index.html" => Cow::Borrowed(NOT_BUILT.as_bytes()),
                None => return None,
            },
            Assets::Dir(root) => Cow::Owned(std::fs::read(root.join(rel)).ok()?),
        };
        Some((body, content_type(rel)))
    }
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or_default() {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_is_the_index_and_paths_cannot_escape() {
        let assets = Assets::Embedded;
        assert!(assets
            .get("/")
            .is_some_and(|(_, t)| t.starts_with("text/html")));
        assert!(assets.get("/../Cargo.toml").is_none());
        let dir = std::env::temp_dir().join(format!("gwc-web-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("index.html"), "hi").unwrap();
        let assets = Assets::Dir(dir.clone());
        assert_eq!(assets.get("/").unwrap().0.as_ref(), b"hi");
        assert!(assets.get("/../../etc/passwd").is_none());
        assert!(assets.get("/missing.js").is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
