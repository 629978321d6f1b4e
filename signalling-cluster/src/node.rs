//! What a node's connections and HTTP handlers share.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::auth::Verifier;
use crate::bus::Bus;
use crate::config::Config;
use crate::guards::Guards;
use crate::resume::ResumeRegistry;

/// What every HTTP worker and every upgrade shares.
pub struct NodeState {
    pub node_id: String,
    pub bus: Arc<dyn Bus>,
    pub config: Config,
    /// Set on SIGTERM: `/readyz` fails so load balancers stop sending new peers.
    pub draining: AtomicBool,
    /// v2 peers whose connection dropped, waiting to resume.
    pub registry: Arc<ResumeRegistry>,
    /// Token verification; `None`: auth off (the drop-in upstream server).
    pub verifier: Option<Verifier>,
    /// Connection limits and refusal counts.
    pub guards: Arc<Guards>,
    /// The ICE servers handed to clients; `None`: no `--turn-url`/`--stun-url`.
    pub turn: Option<Arc<crate::turn::Turn>>,
}
