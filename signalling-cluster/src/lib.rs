//! A gst-webrtc-cluster signalling node.
//!
//! ```text
//!  WebSocket ──► peer::PeerConnection (actor) ──► bus::Bus ──► routing::Router
//!                 ▲  writer task ◄── mailbox::Mailbox ◄──────────┘ deliveries
//! ```
//!
//! * [`routing`]: upstream semantics as a pure state machine.
//! * [`bus`]: how peers reach the router ([`bus::MemoryBus`] alone; Redis in a cluster).
//! * [`peer`]: one actor per connection; [`mailbox`]: its bounded outgoing queue.
//! * [`server`]: HTTP, health endpoints, TLS; [`upgrade`]: the WebSocket handshake, after
//!   which [`websocket`] reads and writes frames on the connection itself.
//! * [`config`]: flags and environment.
//! * [`web`]: the browser app every node serves.

pub mod bus;
pub mod config;
pub mod mailbox;
pub mod node;
pub mod peer;
pub mod resume;
pub mod routing;
pub mod server;
mod tls;
pub mod upgrade;
pub mod web;
pub mod websocket;

pub use config::Config;
