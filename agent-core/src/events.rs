//! What an agent does with its signaller's [`AgentEvent`]s: one poll on the GLib main loop
//! that both agents share.
//!
//! [`poll`] reads the signaller's channel every interval on the main thread (so the agent's
//! pipeline work stays there), checks SIGINT/SIGTERM first, and does what is the same for
//! every agent: a lost connection is counted and logged; a signaller that gave up, that the
//! server refused for good, or that an operator kicked ends the run ([`Stop`], with the exit
//! code of [`crate::exit`]). Everything else goes to the agent's [`EventHandler`], which only
//! implements the kinds it cares about.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use gst::glib::{self, ControlFlow};
use tracing::warn;

use crate::exit::Ending;
use crate::shutdown::Shutdown;
use crate::signaller::{AgentEvent, EndedBy};

/// The signaller registered (or resumed) with a server.
#[derive(Debug, Clone, PartialEq)]
pub struct Registration {
    pub server: String,
    pub peer_id: String,
    pub node_id: Option<String>,
    pub v2: bool,
    /// Same peer id and sessions as before the connection was lost.
    pub resumed: bool,
}

impl Registration {
    /// Where: `wss://a:8443` or `wss://a:8443 node n1`.
    pub fn at(&self) -> String {
        match &self.node_id {
            Some(node) => format!("{} node {node}", self.server),
            None => self.server.clone(),
        }
    }

    /// The protocol version spoken: 2 or 1.
    pub fn protocol(&self) -> u8 {
        if self.v2 {
            2
        } else {
            1
        }
    }
}

/// Why the run stops, whatever the agent.
#[derive(Debug, Clone, PartialEq)]
pub enum Stop {
    /// SIGINT/SIGTERM.
    Signal,
    /// No server could be reached for `--retry-for`: a failure.
    GaveUp(String),
    /// The server refused us for good (exit 4).
    Refused(String),
    /// An operator stopped us: kicked, or a session ended by one (exit 5).
    Operator(String),
}

impl Stop {
    /// The error the run ends with (`None`: a clean stop).
    pub fn into_error(self) -> Option<anyhow::Error> {
        match self {
            Stop::Signal => None,
            Stop::GaveUp(e) => Some(anyhow::anyhow!(e)),
            Stop::Refused(e) => Some(Ending::Refused(e).into()),
            Stop::Operator(e) => Some(Ending::Operator(e).into()),
        }
    }
}

/// An agent's side of [`poll`]. Methods returning [`ControlFlow::Break`] end the poll (the
/// agent has ended its run); the rest of the events already received are then not read.
pub trait EventHandler {
    /// Bumped on every lost connection (`reconnects` in the stats and metrics).
    fn reconnects(&self) -> &AtomicU64;
    /// End the run (quit the main loop), with [`Stop::into_error`]'s failure.
    fn stop(&mut self, why: Stop);
    fn registered(&mut self, registration: Registration);
    fn session_started(&mut self, session_id: String, peer_id: String);
    fn session_ended(&mut self, session_id: String, by: EndedBy) -> ControlFlow;
    /// An `error` from the server; by default only logged.
    fn server_error(&mut self, details: String, code: Option<proto::ErrorCode>) -> ControlFlow {
        let _ = code;
        warn!("server: {details}");
        ControlFlow::Continue
    }
    /// Consumer: its producer was found.
    fn producer_chosen(&mut self, _producer_id: String, _meta: Option<serde_json::Value>) {}
    /// Producer: a consumer was turned away (`--max-consumers`).
    fn consumer_refused(&mut self, _peer_id: String, _limit: u32) {}
    /// After each poll's events: the agent's own clocks (timeouts, progress).
    fn tick(&mut self) -> ControlFlow {
        ControlFlow::Continue
    }
    /// True once the run ended another way (a pipeline error): the poll then removes itself
    /// before reading anything (a consumer's next attempt runs on the same main context).
    fn ended(&self) -> bool {
        false
    }
}

/// Polls `events` every `every` on the thread-default main context until `handler` ends the
/// run: see the module documentation.
pub fn poll<H: EventHandler + 'static>(
    every: Duration,
    events: Receiver<AgentEvent>,
    shutdown: Shutdown,
    mut handler: H,
) {
    glib::timeout_add_local(every, move || {
        if pump(&mut handler, &events, &shutdown).is_break() {
            return ControlFlow::Break;
        }
        handler.tick()
    });
}

/// One poll: the shutdown check, then every event received so far.
pub fn pump(
    handler: &mut impl EventHandler,
    events: &Receiver<AgentEvent>,
    shutdown: &Shutdown,
) -> ControlFlow {
    if handler.ended() {
        return ControlFlow::Break;
    }
    if shutdown.requested() {
        handler.stop(Stop::Signal);
        return ControlFlow::Break;
    }
    while let Ok(event) = events.try_recv() {
        if dispatch(handler, event).is_break() {
            return ControlFlow::Break;
        }
    }
    ControlFlow::Continue
}

/// What every agent does with one event, and what it leaves to `handler`.
pub fn dispatch(handler: &mut impl EventHandler, event: AgentEvent) -> ControlFlow {
    match event {
        AgentEvent::Registered {
            server,
            peer_id,
            node_id,
            v2,
            resumed,
        } => handler.registered(Registration {
            server,
            peer_id,
            node_id,
            v2,
            resumed,
        }),
        AgentEvent::Reconnecting { server, reason } => {
            handler.reconnects().fetch_add(1, Ordering::Relaxed);
            warn!("lost {server} ({reason}); reconnecting");
        }
        AgentEvent::GaveUp { error } => {
            handler.stop(Stop::GaveUp(error));
            return ControlFlow::Break;
        }
        AgentEvent::Refused { reason } => {
            handler.stop(Stop::Refused(reason));
            return ControlFlow::Break;
        }
        AgentEvent::Kicked {
            reason,
            reconnecting: false,
        } => {
            handler.stop(Stop::Operator(reason));
            return ControlFlow::Break;
        }
        AgentEvent::Kicked {
            reason,
            reconnecting: true,
        } => warn!("{reason}; registering again (--reconnect-after-kick)"),
        AgentEvent::ProducerChosen { producer_id, meta } => {
            handler.producer_chosen(producer_id, meta)
        }
        AgentEvent::SessionStarted {
            session_id,
            peer_id,
        } => handler.session_started(session_id, peer_id),
        AgentEvent::SessionEnded { session_id, by } => {
            return handler.session_ended(session_id, by)
        }
        AgentEvent::ConsumerRefused { peer_id, limit } => handler.consumer_refused(peer_id, limit),
        AgentEvent::ServerError { details, code } => return handler.server_error(details, code),
    }
    ControlFlow::Continue
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what it was told, in order.
    #[derive(Default)]
    struct Recorder {
        reconnects: AtomicU64,
        calls: Vec<String>,
        end_on_session_end: bool,
        ended: bool,
    }

    impl EventHandler for Recorder {
        fn reconnects(&self) -> &AtomicU64 {
            &self.reconnects
        }
        fn stop(&mut self, why: Stop) {
            self.calls.push(format!("stop {why:?}"));
        }
        fn registered(&mut self, r: Registration) {
            self.calls.push(format!(
                "registered {} at {} v{}",
                r.peer_id,
                r.at(),
                r.protocol()
            ));
        }
        fn session_started(&mut self, session_id: String, peer_id: String) {
            self.calls.push(format!("started {session_id} {peer_id}"));
        }
        fn session_ended(&mut self, session_id: String, by: EndedBy) -> ControlFlow {
            self.calls.push(format!("ended {session_id} {by:?}"));
            if self.end_on_session_end {
                ControlFlow::Break
            } else {
                ControlFlow::Continue
            }
        }
        fn ended(&self) -> bool {
            self.ended
        }
    }

    fn channel(events: Vec<AgentEvent>) -> Receiver<AgentEvent> {
        let (tx, rx) = std::sync::mpsc::channel();
        for e in events {
            tx.send(e).unwrap();
        }
        rx
    }

    fn registered(node: Option<&str>, v2: bool) -> AgentEvent {
        AgentEvent::Registered {
            server: "ws://a".into(),
            peer_id: "p1".into(),
            node_id: node.map(Into::into),
            v2,
            resumed: false,
        }
    }

    fn lost() -> AgentEvent {
        AgentEvent::Reconnecting {
            server: "ws://a".into(),
            reason: "closed".into(),
        }
    }

    #[test]
    fn registration_says_where_and_which_protocol() {
        let mut h = Recorder::default();
        let events = channel(vec![registered(Some("n1"), true), registered(None, false)]);
        assert!(pump(&mut h, &events, &Shutdown::new()).is_continue());
        assert_eq!(
            h.calls,
            [
                "registered p1 at ws://a node n1 v2",
                "registered p1 at ws://a v1"
            ]
        );
    }

    #[test]
    fn lost_connections_are_counted_without_the_handler() {
        let mut h = Recorder::default();
        let events = channel(vec![lost(), lost()]);
        assert!(pump(&mut h, &events, &Shutdown::new()).is_continue());
        assert_eq!(h.reconnects.load(Ordering::Relaxed), 2);
        assert!(h.calls.is_empty());
    }

    #[test]
    fn giving_up_stops_and_leaves_later_events_unread() {
        let mut h = Recorder::default();
        let events = channel(vec![
            AgentEvent::GaveUp {
                error: "unreachable".into(),
            },
            lost(),
        ]);
        assert!(pump(&mut h, &events, &Shutdown::new()).is_break());
        assert_eq!(h.calls, [r#"stop GaveUp("unreachable")"#]);
        assert!(events.try_recv().is_ok(), "the event after GaveUp is left");
    }

    #[test]
    fn a_handler_break_ends_the_poll() {
        let mut h = Recorder {
            end_on_session_end: true,
            ..Default::default()
        };
        let ended = || AgentEvent::SessionEnded {
            session_id: "s1".into(),
            by: EndedBy::Other,
        };
        let events = channel(vec![ended(), ended()]);
        assert!(pump(&mut h, &events, &Shutdown::new()).is_break());
        assert_eq!(h.calls, ["ended s1 Other"]);
    }

    #[test]
    fn a_refusal_or_a_kick_stops_and_a_kick_with_reconnect_goes_on() {
        let mut h = Recorder::default();
        let kicked = |reconnecting| AgentEvent::Kicked {
            reason: "policy".into(),
            reconnecting,
        };
        let events = channel(vec![kicked(true), lost(), kicked(false), lost()]);
        assert!(pump(&mut h, &events, &Shutdown::new()).is_break());
        assert_eq!(h.calls, [r#"stop Operator("policy")"#]);
        assert_eq!(h.reconnects.load(Ordering::Relaxed), 1);

        let mut h = Recorder::default();
        let refused = AgentEvent::Refused {
            reason: "forbidden".into(),
        };
        assert!(pump(&mut h, &channel(vec![refused]), &Shutdown::new()).is_break());
        assert_eq!(h.calls, [r#"stop Refused("forbidden")"#]);
        let code = |stop: Stop| stop.into_error().map(|e| crate::exit::code_of(&e));
        assert_eq!(code(Stop::Refused("x".into())), Some(crate::exit::REFUSED));
        assert_eq!(
            code(Stop::Operator("x".into())),
            Some(crate::exit::OPERATOR)
        );
        assert_eq!(code(Stop::GaveUp("x".into())), Some(crate::exit::FAILURE));
        assert_eq!(code(Stop::Signal), None);
    }

    #[test]
    fn a_signal_stops_before_any_event_and_an_ended_run_reads_nothing() {
        let shutdown = Shutdown::new();
        shutdown.request();
        let mut h = Recorder::default();
        let events = channel(vec![lost()]);
        assert!(pump(&mut h, &events, &shutdown).is_break());
        assert_eq!(h.calls, ["stop Signal"]);

        let mut h = Recorder {
            ended: true,
            ..Default::default()
        };
        assert!(pump(&mut h, &events, &shutdown).is_break());
        assert!(h.calls.is_empty());
        assert_eq!(h.reconnects.load(Ordering::Relaxed), 0);
    }
}
