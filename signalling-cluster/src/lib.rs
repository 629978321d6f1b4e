//! A gst-webrtc-cluster signalling node.
//!
//! ```text
//!  WebSocket ──► peer::PeerConnection (actor) ──► bus::Bus ──► routing::Router
//!                 ▲  writer task ◄── mailbox::Mailbox ◄──────────┘ deliveries
//! ```
//!
//! Where each behaviour lives (`docs/architecture.md` has the whole project's map):
//!
//! | behaviour | file |
//! |---|---|
//! | upstream semantics (status, lists, leave) | `routing/mod.rs` |
//! | sessions driven by local members (start, relay, end; ending for both) | `routing/sessions.rs` |
//! | presence across nodes (the replica of other nodes' peers) | `routing/replica.rs` |
//! | relay across nodes: sending | `routing/sessions.rs` (`relay`), then `bus/cluster/publisher.rs` |
//! | relay across nodes: receiving | `bus/cluster/subscriber.rs`, then `routing/cross_node.rs` |
//! | node death: detect, reap, announce, expire | `bus/cluster/liveness.rs` |
//! | node death: what the router ends, holds, adopts | `routing/suspension.rs` |
//! | lost messages between nodes (sequence gaps), late ones (`at`) | `bus/cluster/subscriber.rs` |
//! | Redis that stops answering: deadlines, unreadiness, replaced connections | `bus/cluster/liveness.rs` |
//! | fencing: cut off from Redis longer than the node TTL, peers sent away, rejoining | `bus/cluster/fencing.rs` |
//! | placement: a consumer asking for a stream, given its origin or a relay with room, not away (`startSession` with `stream`, or `GET /place`) | `routing/placement.rs`, `bus/cluster/load.rs`, `server.rs` |
//! | Redis Sentinel: finding the master, following a failover | `bus/cluster/endpoint.rs` |
//! | resume on the same node (parked connections, replay; a claim waits for a parking) | `resume.rs`, `upgrade.rs` (`resume_peer`) |
//! | resume on another node (claims, grants, adoption) | `bus/cluster/handover.rs`, `routing/moving.rs` |
//! | the Redis schema (keys, channels, stored values) | `bus/cluster/keys.rs` |
//! | the node-to-node envelope and its kinds | `proto/src/envelope/` |
//! | one process, no Redis | `bus/memory.rs` |
//! | a Redis down at start: listening after a first failed attempt, unready, joining with backoff | `bus/joining.rs` |
//! | a peer's connection: reading, rate limit, pings, writing | `peer.rs`, `websocket.rs` |
//! | slow readers (bounded queue) | `mailbox.rs` |
//! | the handshake: v1/v2, resume token, affinity headers | `upgrade.rs` |
//! | HTTP: health, readiness, drain on SIGTERM (a standalone node closes at once) | `server.rs` |
//! | HTTP: the operations API (404 for what no node knows, the audit line) and `GET /place` | `http_api.rs` |
//! | what connections and handlers share | `node.rs` |
//! | flags and environment | `config.rs` |
//! | **grants**: what a token allows (roles, stream names, tenant); enforced by the router | `grants.rs`; applied in `routing/access.rs`, `routing/placement.rs` |
//! | tokens: verifying (keys re-read on change), extracting from the upgrade | `auth.rs`, `upgrade.rs` (`grants_of`) |
//! | connection guards: limits per node and address, refusals counted and logged | `guards.rs` |
//! | **TURN credentials**: ICE servers for every client (v2 `welcome`, `GET /api/v1/ice-servers`), coturn's REST scheme, the secret re-read on change | `turn.rs`; handed out in `upgrade.rs` and `http_api.rs` |
//! | `signalling-cluster token`: minting a token | `token.rs` |
//! | `signalling-cluster admin`: the operations API's client | `admin_cli.rs` |
//! | metrics (`GET /metrics`): counters where things happen, state read at scrape | `metrics.rs` |
//! | the operations API that acts: end a session, kick a peer, drain a node, from any node | `admin.rs`; HTTP in `http_api.rs`; across nodes `bus/cluster/subscriber.rs` (`admin`) |
//! | the browser app every node serves | `web.rs` (built from `web/`) |
//! | **WHEP** playback (`POST /whep/{stream}`: the player's offer through placement, one complete answer; `DELETE` from any node) | `whep.rs` |
//! | **WHIP** ingest (`POST /whip/{stream}`: a stand-in producer for the publisher, handed to a free ingest member, `relay-agent --whip`; 409, 503) | `whip.rs`; placement passes over the stand-in in `routing/placement.rs` |
//! | what WHIP and WHEP share: the request as an in-process peer of the bus, errors as HTTP, CORS, `Link: rel="ice-server"`; the SDP checks and candidates | `http_peer.rs`, `sdp.rs` |
//! | the router's unit tests | `routing/tests.rs` (and each `routing/` file's own) |

pub mod admin;
pub mod admin_cli;
pub mod auth;
pub mod bus;
pub mod config;
#[cfg(test)]
mod fuzzing;
pub mod grants;
pub mod guards;
pub mod http_api;
pub mod http_peer;
pub mod mailbox;
pub mod metrics;
pub mod node;
pub mod peer;
pub mod resume;
pub mod routing;
pub mod sdp;
pub mod server;
mod tls;
pub mod token;
pub mod turn;
pub mod upgrade;
pub mod web;
pub mod websocket;
pub mod whep;
pub mod whip;

pub use config::Config;
