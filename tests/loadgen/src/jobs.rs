//! One scenario run against one target (its own servers started and checked alive after), and
//! the figures of several runs of it merged into one (medians).

use std::path::PathBuf;

use anyhow::Result;
use serde_json::{json, Map, Value};

use crate::procs::{self, Binaries, Target, Topo};
use crate::scenarios;

pub enum Job {
    Relay(usize, usize),
    Idle(usize),
    Presence(usize, usize),
    Setup(usize, usize),
    FirstFrame(PathBuf),
}

pub async fn run_job(
    target: Target,
    bins: &Binaries,
    job: &Job,
    ttff_runs: usize,
    log: Option<&PathBuf>,
) -> Result<Value> {
    let mut topo = Topo::start(target, bins).await?;
    let res = match job {
        Job::Relay(p, r) => scenarios::relay(&topo, *p, *r).await,
        Job::Idle(n) => scenarios::idle(&topo, *n).await,
        Job::Presence(l, k) => scenarios::presence(&topo, *l, *k).await,
        Job::Setup(p, s) => scenarios::setup(&topo, *p, *s).await,
        Job::FirstFrame(dir) => {
            let mut runs = procs::first_frame_ms(&topo, dir, ttff_runs, log).await?;
            let raw = runs.clone();
            runs.sort_unstable();
            Ok(json!({"runs_ms": raw, "median_ms": runs[runs.len() / 2]}))
        }
    };
    topo.check_alive()?;
    res
}

/// One result from several runs of a scenario: each number is the median of its runs (the
/// runs that failed left out), and the runs themselves are kept under `runs`.
pub fn median_of_runs(values: Vec<Value>) -> Value {
    let ok: Vec<Value> = values
        .iter()
        .filter(|v| v.get("error").is_none())
        .cloned()
        .collect();
    if values.len() == 1 || ok.is_empty() {
        return values.into_iter().next().unwrap_or(Value::Null);
    }
    let mut merged = median_value(&ok.iter().collect::<Vec<_>>());
    if let Value::Object(o) = &mut merged {
        o.insert("runs".into(), Value::Array(values));
    }
    merged
}

fn median_value(values: &[&Value]) -> Value {
    match values.first() {
        Some(Value::Number(_)) => {
            let mut nums: Vec<&Value> = values.iter().copied().filter(|v| v.is_number()).collect();
            nums.sort_by(|a, b| {
                a.as_f64()
                    .unwrap_or(0.0)
                    .total_cmp(&b.as_f64().unwrap_or(0.0))
            });
            // the lower middle for an even count: a figure that was measured, as it was written
            nums.get((nums.len().max(1) - 1) / 2)
                .map_or(Value::Null, |v| (*v).clone())
        }
        Some(Value::Object(first)) => {
            let mut out = Map::new();
            for key in first.keys() {
                let all: Vec<&Value> = values.iter().filter_map(|v| v.get(key)).collect();
                out.insert(key.clone(), median_value(&all));
            }
            Value::Object(out)
        }
        // every run must agree for a yes
        Some(Value::Bool(_)) => json!(values.iter().all(|v| v.as_bool() == Some(true))),
        Some(v) => (*v).clone(),
        None => Value::Null,
    }
}
