//! The relay's `meta`, whatever its engine: what it relays (`stream`, `relay-of`, `depth`), how
//! many it serves (`capacity`) and how (`engine`). Placement reads it (docs/relays.md).

use crate::Args;

/// The meta a relay registers with before its source is known.
pub fn initial(args: &Args) -> gst::Structure {
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("{} relay", args.stream()));
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
    if let Some(stream) = source_meta.and_then(|m| m.get("stream")?.as_str()) {
        meta.set("stream", stream);
    }
    depth
}
