//! WHIP ingest (docs/whip-whep.md): how a node and its ingest members (`relay-agent --whip`)
//! find each other through ordinary peer status, without a message of their own.
//!
//! An ingest member waits as a listener named [`MEMBER_NAME`]. For a WHIP publication the node
//! registers the publisher as a producer whose meta has `name` (the stream), [`KEY`] =
//! [`WHIP`] and [`BY`] = the member's peer id; that member, listening, sees it and starts a
//! session with it, and the node sends it the publisher's offer.

/// The `meta.name` of an ingest member waiting as a listener.
pub const MEMBER_NAME: &str = "gwc-whip-ingest";
/// The meta key marking a producer that stands for a WHIP publisher (value [`WHIP`]):
/// placement passes over it (it serves no viewer; its ingest member does).
pub const KEY: &str = "ingest";
pub const WHIP: &str = "whip";
/// The meta key naming the ingest member (peer id) chosen for the publication.
pub const BY: &str = "ingest-by";

/// Whether `meta` is that of a WHIP publisher's stand-in.
pub fn is_whip(meta: Option<&serde_json::Value>) -> bool {
    meta.and_then(|m| m.get(KEY)?.as_str()) == Some(WHIP)
}
