//! `--stats-interval` and `--metrics-addr`: one thread takes a snapshot every interval, prints
//! it as a JSON line and keeps it for the metrics endpoint.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tracing::info;

use crate::cli::OutputArgs;

/// The reporting thread, to stop before a final line that must be the last on stdout.
#[derive(Default)]
pub struct Reporting {
    /// Held while a line is printed; `true` once stopped.
    stopped: Arc<Mutex<bool>>,
}

impl Reporting {
    /// No stats line is printed after this returns (one being printed is finished first).
    pub fn stop(&self) {
        *self.stopped.lock().unwrap() = true;
    }
}

/// Starts reporting if asked to. `collect` returns `None` when there is nothing left to
/// report on (the thread then ends); `render` gives a snapshot's Prometheus text.
pub fn start<S>(
    output: &OutputArgs,
    mut collect: impl FnMut() -> Option<S> + Send + 'static,
    render: fn(&S) -> String,
) -> anyhow::Result<Reporting>
where
    S: Serialize + Send + 'static,
{
    let reporting = Reporting::default();
    if output.stats_interval.is_none() && output.metrics_addr.is_none() {
        return Ok(reporting);
    }
    let stopped = reporting.stopped.clone();
    let latest = Arc::new(Mutex::new(None::<S>));
    if let Some(addr) = output.metrics_addr {
        let latest = latest.clone();
        let bound = crate::metrics::serve(
            addr,
            Arc::new(move || {
                latest
                    .lock()
                    .unwrap()
                    .as_ref()
                    .map(render)
                    .unwrap_or_default()
            }),
        )?;
        info!("metrics on http://{bound}/metrics");
    }
    let print = output.stats_interval.is_some();
    let interval = output.stats_interval.unwrap_or(Duration::from_secs(1));
    std::thread::Builder::new()
        .name("stats".into())
        .spawn(move || loop {
            std::thread::sleep(interval);
            let Some(snapshot) = collect() else { return };
            let stopped = stopped.lock().unwrap();
            if *stopped {
                return;
            }
            if print {
                if let Ok(line) = serde_json::to_string(&snapshot) {
                    println!("{line}");
                }
            }
            drop(stopped);
            *latest.lock().unwrap() = Some(snapshot);
        })?;
    Ok(reporting)
}
