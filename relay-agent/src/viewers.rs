//! What both engines do when the relay's own signaller (the side its viewers reach) reports a
//! viewer joining, leaving or refused: count it and say so, in the same words whatever the
//! engine (tests and operators read these lines).

use std::sync::atomic::Ordering;

use agent_core::events::Registration;
use agent_core::signaller::EndedBy;
use gst::glib;
use tracing::{info, warn};

use crate::Shared;

pub fn registered(r: Registration) {
    info!(peer = %r.peer_id, "serving as {} on {}", r.peer_id, r.at());
}

pub fn session_started(shared: &Shared, session_id: String, consumer: String) {
    shared.sessions.fetch_add(1, Ordering::Relaxed);
    info!(session = %session_id, "consumer {consumer} connected");
}

pub fn session_ended(session_id: String, by: EndedBy) -> glib::ControlFlow {
    let how = match by {
        EndedBy::Operator => ", ended by an operator",
        EndedBy::Us | EndedBy::Other => "",
    };
    info!(session = %session_id, "consumer left (session {session_id}{how})");
    glib::ControlFlow::Continue
}

pub fn consumer_refused(consumer: String, limit: u32) {
    warn!("refused consumer {consumer}: already serving --max-consumers {limit}");
}
