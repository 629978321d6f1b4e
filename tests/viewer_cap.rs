//! A viewer's cap on the video height it wants (v2 `startSession.maxHeight`, issue 26) over
//! real WebSockets, on one node and across two nodes of a real Redis: the producer side is
//! given it (a v2 producer; a v1 producer's bytes stay upstream's), a bad value is refused
//! with a v2 error and the connection stays, a v1 consumer's is ignored as upstream does.

use anyhow::Result;
use cluster_tests::{Peer, Topo};
use serde_json::{json, Value};

const V2: &str = "gstwebrtc-cluster.v2";

cluster_tests::on_one_node_and_a_cluster!(
    two_nodes = 2;
    the_producer_side_receives_the_viewers_max_height,
    a_v1_producer_never_sees_max_height,
    a_bad_max_height_gets_an_error_and_the_connection_stays,
    a_v1_consumers_max_height_is_ignored,
);

/// A producer (v2 or not) on node 0 and a consumer (v2 or not) on the last node that sees it.
async fn pair(t: &Topo, producer_v2: bool, consumer_v2: bool) -> Result<(Peer, Peer)> {
    let last = t.nodes.len() - 1;
    let mut p = Peer::connect_with(&t.url(0), producer_v2.then_some(V2)).await?;
    p.set_status(&["producer"], json!({"name": "cam"})).await?;
    let mut c = Peer::connect_with(&t.url(last), consumer_v2.then_some(V2)).await?;
    Topo::visible(&mut c, &p.id, false).await?;
    Ok((p, c))
}

async fn the_producer_side_receives_the_viewers_max_height(t: &Topo) -> Result<()> {
    let (mut p, mut c) = pair(t, true, true).await?;
    c.send(json!({"type": "startSession", "peerId": p.id, "maxHeight": 360}))
        .await?;
    c.expect("sessionStarted").await?;
    let start = p.expect("startSession").await?;
    assert_eq!(start["maxHeight"], 360, "{start}");
    assert_eq!(start["peerId"], c.id.as_str());
    // placed by stream, the same
    c.send(json!({"type": "startSession", "stream": "cam", "maxHeight": 180}))
        .await?;
    c.expect("sessionStarted").await?;
    let start = p.expect("startSession").await?;
    assert_eq!(start["maxHeight"], 180, "{start}");
    // without one, none
    c.send(json!({"type": "startSession", "peerId": p.id}))
        .await?;
    c.expect("sessionStarted").await?;
    let start = p.expect("startSession").await?;
    assert!(start.get("maxHeight").is_none(), "{start}");
    Ok(())
}

async fn a_v1_producer_never_sees_max_height(t: &Topo) -> Result<()> {
    let (mut p, mut c) = pair(t, false, true).await?;
    c.send(json!({"type": "startSession", "peerId": p.id, "maxHeight": 360}))
        .await?;
    let sid = c.expect("sessionStarted").await?["sessionId"].clone();
    let start = p.recv_text().await?;
    // upstream's bytes exactly
    assert_eq!(
        start,
        format!(
            r#"{{"type":"startSession","peerId":"{}","sessionId":{sid},"offer":null}}"#,
            c.id
        )
    );
    Ok(())
}

async fn a_bad_max_height_gets_an_error_and_the_connection_stays(t: &Topo) -> Result<()> {
    let (mut p, mut c) = pair(t, true, true).await?;
    for bad in [json!(0), json!(8193), json!(-5), json!(1.5), json!("720")] {
        c.send(json!({"type": "startSession", "peerId": p.id, "maxHeight": bad}))
            .await?;
        let err: Value = c.expect("error").await?;
        assert_eq!(err["code"], "invalid-message", "{err}");
        let details = err["details"].as_str().unwrap_or_default();
        assert!(details.contains("maxHeight"), "{bad}: {err}");
    }
    // no session was started, and the connection still serves
    c.send(json!({"type": "startSession", "peerId": p.id, "maxHeight": 720}))
        .await?;
    c.expect("sessionStarted").await?;
    let start = p.expect("startSession").await?;
    assert_eq!(start["maxHeight"], 720, "{start}");
    Ok(())
}

async fn a_v1_consumers_max_height_is_ignored(t: &Topo) -> Result<()> {
    let (mut p, mut c) = pair(t, true, false).await?;
    // upstream ignores fields it does not know: no error, and no cap passed on
    c.send(json!({"type": "startSession", "peerId": p.id, "maxHeight": 0}))
        .await?;
    c.expect("sessionStarted").await?;
    let start = p.expect("startSession").await?;
    assert!(start.get("maxHeight").is_none(), "{start}");
    Ok(())
}
