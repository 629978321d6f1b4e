//! SIGINT/SIGTERM as a flag: GLib 0.22 has no unix-signal source, and a flag polled from the
//! main loop keeps all stopping work on the main thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;

#[derive(Clone)]
pub struct Shutdown(Arc<AtomicBool>);

impl Shutdown {
    pub fn install() -> anyhow::Result<Shutdown> {
        let flag = Arc::new(AtomicBool::new(false));
        for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(signal, flag.clone())
                .context("cannot install signal handler")?;
        }
        Ok(Shutdown(flag))
    }

    pub fn requested(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// A flag no signal sets, for tests.
    #[cfg(test)]
    pub(crate) fn new() -> Shutdown {
        Shutdown(Arc::default())
    }

    #[cfg(test)]
    pub(crate) fn request(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}
