//! The relay's side as a consumer of its source (the origin, or the relay above): a webrtcsrc
//! with our signaller, its streams handed to `republish.rs`. When the source's session ends,
//! a relay that follows a stream by name (`--source-name`) keeps its registration and its
//! consumers, and *reattaches*: a new webrtcsrc looks for a producer of that name again, and
//! its streams go into the same chains, so the consumers' sessions continue (if the codec is
//! the same; otherwise the relay exits 1, its consumers' sessions end and they are placed
//! again). Not back within --timeout: exit 1.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_core::events::{self, EventHandler, Registration, Stop};
use agent_core::exit::Ending;
use agent_core::shutdown::Shutdown;
use agent_core::signaller::{EndedBy, Target};
use anyhow::{anyhow, Context};
use gst::glib;
use gst::prelude::*;
use tracing::{info, warn};

use crate::republish::Republish;
use crate::{Args, Shared};

/// Where the relay's media comes from, across the source's comings and goings.
/// What a relay of either engine does when its source session ends: `Some` ends the relay with
/// that error, `None` waits for the origin to return (reattach).
pub fn after_source_ended(target: &Target, session_id: &str, by: EndedBy) -> Option<anyhow::Error> {
    if by == EndedBy::Operator {
        // An operator's decision: the relay does not take its source again by itself.
        let why = format!("the source session {session_id} was ended by an operator");
        return Some(Ending::Operator(why).into());
    }
    if matches!(target, Target::Id(_)) {
        return Some(anyhow!(
            "the origin's session {session_id} ended: its producer went away"
        ));
    }
    info!(session = %session_id, "the origin's session {session_id} ended; waiting for it to return");
    None
}

pub struct Source {
    pub pipeline: glib::WeakRef<gst::Pipeline>,
    pub args: Args,
    pub target: Target,
    pub republish: Arc<Republish>,
    pub shared: Arc<Shared>,
    /// The serving side, whose meta learns what it relays.
    pub sink: glib::WeakRef<gst::Element>,
    pub main_loop: glib::MainLoop,
    pub failure: Arc<Mutex<Option<anyhow::Error>>>,
    pub shutdown: Shutdown,
    /// The webrtcsrc of the current attachment.
    pub current: RefCell<Option<gst::Element>>,
}

impl Source {
    /// A webrtcsrc looking for the source, its streams going to the serving side.
    pub fn attach(self: &Rc<Self>) -> anyhow::Result<()> {
        let pipeline = self.pipeline.upgrade().context("no pipeline")?;
        let (events_tx, events) = std::sync::mpsc::channel();
        // the element gst-launch users have (`gst-plugin/`), watching once: the relay decides
        // what comes after (reattach)
        let args = &self.args;
        let src = gstgwc::agent::src(&args.signalling, &args.ice, &self.target, None, events_tx);
        let republish = self.republish.clone();
        let remote = src.downgrade();
        src.connect_pad_added(move |_, pad| {
            let signaller = remote.upgrade().and_then(|src| src.cluster_signaller());
            let streams = signaller.and_then(|s| s.remote_streams());
            if let Err(e) = republish.add(pad, streams) {
                warn!("cannot relay {}: {e:#}", pad.name());
            }
        });
        let src = src.upcast::<gst::Element>();
        pipeline.add(&src)?;
        src.sync_state_with_parent()?;
        *self.current.borrow_mut() = Some(src);
        let handler = Upstream {
            source: self.clone(),
            since: None,
            timeout: Duration::from_secs(self.args.timeout),
            done: false,
        };
        events::poll(
            Duration::from_millis(20),
            events,
            self.shutdown.clone(),
            handler,
        );
        Ok(())
    }

    /// The source's session ended: drop its webrtcsrc and look for the source again.
    fn reattach(self: &Rc<Self>) {
        *self.shared.upstream_session.lock().unwrap() = None;
        if let Some(old) = self.current.borrow_mut().take() {
            let _ = old.set_state(gst::State::Null);
            if let Some(pipeline) = self.pipeline.upgrade() {
                let _ = pipeline.remove(&old);
            }
        }
        self.shared.reattachments.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.attach() {
            self.fail(e.context("cannot look for the origin again"));
        }
    }

    fn fail(&self, e: anyhow::Error) {
        *self.failure.lock().unwrap() = Some(e);
        self.main_loop.quit();
    }
}

/// One attachment's signaller events.
struct Upstream {
    source: Rc<Source>,
    /// Registered, searching for the source since.
    since: Option<Instant>,
    timeout: Duration,
    /// This attachment is over (its poll stops).
    done: bool,
}

impl Upstream {
    fn fail(&mut self, e: anyhow::Error) -> glib::ControlFlow {
        self.done = true;
        self.source.fail(e);
        glib::ControlFlow::Break
    }
}

impl EventHandler for Upstream {
    fn reconnects(&self) -> &AtomicU64 {
        &self.source.shared.reconnects_up
    }

    fn stop(&mut self, why: Stop) {
        if why == Stop::Signal {
            info!("signal received, stopping");
        }
        match why.into_error() {
            None => {
                self.done = true;
                self.source.main_loop.quit();
            }
            Some(e) => {
                self.fail(e);
            }
        }
    }

    fn registered(&mut self, r: Registration) {
        self.since.get_or_insert_with(Instant::now);
        info!(peer = %r.peer_id, "upstream: registered on {}", r.at());
    }

    fn producer_chosen(&mut self, producer_id: String, meta: Option<serde_json::Value>) {
        if let Some(sink) = self.source.sink.upgrade() {
            let mut m = sink.property::<gst::Structure>("meta");
            let depth = crate::meta::follow_source(&mut m, &producer_id, meta.as_ref());
            info!(origin = %producer_id, depth, "relaying producer {producer_id}");
            sink.set_property("meta", m);
        }
        *self.source.shared.origin.lock().unwrap() = Some(producer_id);
    }

    fn session_started(&mut self, session_id: String, _producer: String) {
        info!(session = %session_id, "upstream session {session_id} started");
        *self.source.shared.upstream_session.lock().unwrap() = Some(session_id);
    }

    fn session_ended(&mut self, session_id: String, by: EndedBy) -> glib::ControlFlow {
        if let Some(e) = after_source_ended(&self.source.target, &session_id, by) {
            return self.fail(e);
        }
        self.done = true;
        // (not from inside this signaller's own poll)
        let source = self.source.clone();
        glib::idle_add_local_once(move || source.reattach());
        glib::ControlFlow::Break
    }

    fn tick(&mut self) -> glib::ControlFlow {
        let waiting = self
            .source
            .shared
            .upstream_session
            .lock()
            .unwrap()
            .is_none();
        if waiting && self.since.is_some_and(|s| s.elapsed() > self.timeout) {
            return self.fail(anyhow!(
                "no origin appeared within {} s",
                self.timeout.as_secs()
            ));
        }
        glib::ControlFlow::Continue
    }

    fn ended(&self) -> bool {
        self.done
    }
}
