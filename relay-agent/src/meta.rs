//! The relay's `meta`, whatever its engine: what it relays (`stream`, `relay-of`, `depth`), how
//! many it serves (`capacity`) and how (`engine`). Placement reads it (docs/relays.md).
//! Also what the source's meta says that the relay uses: its depth, its stream, its layers.
//!
//! A relay's own meta names no `layers`: each of its viewers gets one video track (the layer
//! chosen for it), so a relay of this relay sees a one-layer source.

use std::sync::{Arc, Mutex};

use proto::layers::{Ladder, META_KEY};
use tracing::warn;

use crate::Args;

/// The current source's ladder (None: one layer), set when the source is chosen, read when
/// its offer is answered.
pub type SourceLadder = Arc<Mutex<Option<Ladder>>>;

/// The source's ladder from its meta's `layers` (absent: one layer). A malformed one is
/// warned about and taken as one layer: the relay still serves the source's top layer.
pub fn ladder(source_meta: Option<&serde_json::Value>) -> Option<Ladder> {
    let text = source_meta?.get(META_KEY)?;
    let parsed = text
        .as_str()
        .ok_or_else(|| "not a string".to_owned())
        .and_then(|t| t.parse::<Ladder>().map_err(|e| e.to_string()));
    match parsed {
        Ok(l) => Some(l),
        Err(e) => {
            warn!("the source's meta '{META_KEY}' ({text}) is unusable: {e}; taken as one layer");
            None
        }
    }
}

/// The meta a relay registers with before its source is known.
pub fn initial(args: &Args) -> gst::Structure {
    let name = match (&args.name, args.whip) {
        (Some(name), _) => name.clone(),
        (None, true) => "whip ingest".into(),
        (None, false) => format!("{} relay", args.stream()),
    };
    let mut meta = gst::Structure::builder("meta")
        .field("name", name)
        .field("stream", args.stream())
        .field("engine", args.engine.as_str());
    if let Some(n) = args.max_consumers {
        meta = meta.field("capacity", n.to_string());
    }
    meta.build()
}

/// The source was chosen: `relay-of` names it, `depth` is one deeper than its own (an origin
/// has none: 0), and a relay of a relay serves its source's stream. Returns the depth.
pub fn follow_source(
    meta: &mut gst::StructureRef,
    producer_id: &str,
    source_meta: Option<&serde_json::Value>,
) -> u32 {
    let depth = source_meta
        .and_then(|m| m.get("depth"))
        .and_then(|d| {
            d.as_str()
                .and_then(|d| d.parse::<u32>().ok())
                .or(d.as_u64().map(|d| d as u32))
        })
        .unwrap_or(0)
        + 1;
    meta.set("relay-of", producer_id);
    meta.set("depth", depth.to_string());
    // (a relay's source names its stream; a WHIP publisher's stand-in is named after it)
    let stream = source_meta.and_then(|m| match proto::ingest::is_whip(Some(m)) {
        true => m.get("name")?.as_str(),
        false => m.get("stream")?.as_str(),
    });
    if let Some(stream) = stream {
        meta.set("stream", stream);
    }
    depth
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_s_ladder_is_read_from_its_meta_and_garbage_is_one_layer() {
        let m = serde_json::json!({"layers": "1280x720@2000,640x360@600,320x180@150"});
        assert_eq!(ladder(Some(&m)).map(|l| l.0.len()), Some(3));
        for garbage in [
            serde_json::json!({"layers": "720p please"}),
            serde_json::json!({"layers": "640x360@600,1280x720@2000"}),
            serde_json::json!({"layers": 3}),
            serde_json::json!({"stream": "cam"}),
        ] {
            assert_eq!(ladder(Some(&garbage)), None, "{garbage}");
        }
        assert_eq!(ladder(None), None);
    }
}
