//! What the cluster tests share: three named nodes that know each other, producers in
//! sessions across them, waiting for a node to list a producer, its readiness.

use anyhow::Result;

use crate::{start_session, Node, Peer, Redis, Topo};

/// Three nodes on one Redis, each knowing the others.
pub async fn three_nodes(redis: &Redis, extra: &[&str]) -> Result<Vec<Node>> {
    let mut nodes = Vec::new();
    for name in ["node-a", "node-b", "node-c"] {
        nodes.push(Node::join(redis, name, extra).await?);
    }
    for node in &nodes {
        node.wait_cluster(3).await?;
    }
    Ok(nodes)
}

/// A v2 producer on `pn` in a session with a v1 consumer on `cn` (the consumer started it).
pub async fn v2_producer_in_session(pn: &Node, cn: &Node) -> Result<(Peer, Peer, String)> {
    producer_in_session(pn, cn, Some("gstwebrtc-cluster.v2")).await
}

/// A producer on `pn` (speaking `subprotocol`, v1 if none) in a session with a v1 consumer on
/// `cn` (the consumer started it).
pub async fn producer_in_session(
    pn: &Node,
    cn: &Node,
    subprotocol: Option<&str>,
) -> Result<(Peer, Peer, String)> {
    let mut p = Peer::connect_with(&pn.url(), subprotocol).await?;
    p.set_status(&["producer"], serde_json::Value::Null).await?;
    let mut c = Peer::connect(&cn.url()).await?;
    let sid = start_session(&mut p, &mut c).await?;
    Ok((p, c, sid))
}

/// Waits until `list` on `peer`'s node names `producer`.
pub async fn until_listed(peer: &mut Peer, producer: &str) -> Result<()> {
    Topo::visible(peer, producer, false).await.map(drop)
}

/// `/readyz` status of a node.
pub async fn readyz(node: &Node) -> u16 {
    node.get("/readyz").await.map_or(0, |(status, _)| status)
}
