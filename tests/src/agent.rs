//! producer-agent / consumer-agent processes under test: started with piped output that is
//! collected line by line while they run, killed when dropped.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

use crate::{bin, Proc};

pub struct Agent {
    pub proc: Proc,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    exit: Option<Option<i32>>,
}

impl Agent {
    /// `producer-agent` with the test defaults (small picture, no STUN) and `args`.
    pub fn producer(args: &[&str]) -> anyhow::Result<Agent> {
        let mut all = vec!["--width", "320", "--height", "240"];
        all.extend_from_slice(args);
        Self::spawn("producer-agent", &all)
    }

    pub fn consumer(args: &[&str]) -> anyhow::Result<Agent> {
        Self::spawn("consumer-agent", args)
    }

    pub fn spawn(name: &str, args: &[&str]) -> anyhow::Result<Agent> {
        let mut cmd = Command::new(bin(name));
        cmd.args(args);
        Self::spawn_command(cmd, name)
    }

    /// Any command, with its output collected the same way (e.g. the browser driver).
    pub fn spawn_command(mut cmd: Command, name: &str) -> anyhow::Result<Agent> {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Readable progress lines (uncoloured: stderr is a pipe).
            .env("GWC_LOG_FORMAT", "text");
        let mut proc = Proc::spawn(cmd, name)?;
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let out = proc.child.stdout.take().context("no stdout")?;
        let err = proc.child.stderr.take().context("no stderr")?;
        collect(out, stdout.clone());
        collect(err, stderr.clone());
        Ok(Agent {
            proc,
            stdout,
            stderr,
            exit: None,
        })
    }

    pub fn stdout(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Stdout lines that are JSON objects with `"type": kind` (stats lines).
    pub fn json_lines(&self, kind: &str) -> Vec<Value> {
        self.stdout()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["type"] == kind)
            .collect()
    }

    /// The first stdout JSON line whose `key` is `value`.
    pub fn json_lines_with(&self, key: &str, value: &str) -> Option<Value> {
        self.stdout()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v[key] == value)
    }

    /// The last stdout line as JSON (the consumer's report).
    pub fn report(&self) -> anyhow::Result<Value> {
        let lines = self.stdout();
        let last = lines.last().context("nothing on stdout")?;
        serde_json::from_str(last).with_context(|| format!("not JSON: {last}"))
    }

    /// The word after the first `marker` on stderr: a peer id, from `registered 'x' as ID`,
    /// `registered as ID`, `serving as ID`.
    pub fn word_after(&self, marker: &str) -> Option<String> {
        let stderr = self.stderr();
        let rest = stderr.split(marker).nth(1)?;
        rest.split_whitespace().next().map(String::from)
    }

    /// Waits for `marker` on stderr and returns the word after it (see [`Agent::word_after`]).
    pub async fn wait_word_after(&self, marker: &str, limit: Duration) -> anyhow::Result<String> {
        self.wait_stderr(marker, limit).await?;
        self.wait(limit, marker, |a| a.word_after(marker).is_some())
            .await?;
        self.word_after(marker).context("no word after the marker")
    }

    pub fn signal(&self, sig: i32) {
        self.proc.signal(sig);
    }

    /// Waits for the process to exit; its exit code (None: killed by a signal).
    pub async fn exit_within(&mut self, limit: Duration) -> anyhow::Result<Option<i32>> {
        if let Some(code) = self.exit {
            return Ok(code);
        }
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.proc.child.try_wait()? {
                // Let the reader threads drain the pipes.
                tokio::time::sleep(Duration::from_millis(200)).await;
                self.exit = Some(status.code());
                return Ok(status.code());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} still running after {limit:?}; stderr:\n{}",
                    self.proc.name,
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until stderr contains `needle`.
    pub async fn wait_stderr(&self, needle: &str, limit: Duration) -> anyhow::Result<()> {
        self.wait(limit, needle, |a| a.stderr().contains(needle))
            .await
    }

    /// Waits until `pred` holds of the agent.
    pub async fn wait(
        &self,
        limit: Duration,
        what: &str,
        pred: impl Fn(&Agent) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        while !pred(self) {
            if Instant::now() > deadline {
                bail!(
                    "{}: no '{what}' within {limit:?}; stderr:\n{}",
                    self.proc.name,
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}

/// Runs agent `name` with `args` to its end: its exit code (None: killed by a signal) and
/// stderr.
pub async fn run_to_exit(
    name: &str,
    args: &[&str],
    limit: Duration,
) -> anyhow::Result<(Option<i32>, String)> {
    let mut agent = Agent::spawn(name, args)?;
    let code = agent.exit_within(limit).await?;
    Ok((code, agent.stderr()))
}

/// The test harness shows this only when the test fails: both sides' story. With
/// `AGENT_LOG_DIR` set, each agent's whole stdout and stderr are also written there
/// (`<name>-<pid>.log`), for timelines longer than the tail.
impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(dir) = std::env::var_os("AGENT_LOG_DIR") {
            let name: String = self
                .proc
                .name
                .chars()
                .map(|c| if c.is_alphanumeric() { c } else { '_' })
                .collect();
            let path =
                std::path::Path::new(&dir).join(format!("{name}-{}.log", self.proc.child.id()));
            let all = [self.stdout(), self.stderr.lock().unwrap().clone()].concat();
            let _ = std::fs::create_dir_all(&dir);
            let _ = std::fs::write(&path, all.join("\n"));
        }
        let lines = self.stderr.lock().unwrap().clone();
        let tail = &lines[lines.len().saturating_sub(40)..];
        eprintln!(
            "--- {} stderr (last {} lines):\n{}",
            self.proc.name,
            tail.len(),
            tail.join("\n")
        );
    }
}

fn collect(pipe: impl std::io::Read + Send + 'static, into: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { return };
            into.lock().unwrap().push(line);
        }
    });
}

/// Counts the video frames of a recording by decoding it (demuxer, decoder, fakesink).
pub fn decoded_frames(path: &std::path::Path) -> anyhow::Result<u64> {
    use gst::prelude::*;
    crate::media::init();
    let pipeline = gst::parse::launch(&format!(
        "filesrc location=\"{}\" ! decodebin name=d d. ! videoconvert ! video/x-raw ! fakesink name=count sync=false",
        path.display()
    ))?
    .downcast::<gst::Pipeline>()
    .map_err(|_| anyhow::anyhow!("not a pipeline"))?;
    let frames = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = frames.clone();
    pipeline
        .by_name("count")
        .and_then(|s| s.static_pad("sink"))
        .context("no fakesink")?
        .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            gst::PadProbeReturn::Ok
        });
    pipeline.set_state(gst::State::Playing)?;
    let bus = pipeline.bus().context("no bus")?;
    let msg = bus.timed_pop_filtered(
        gst::ClockTime::from_seconds(60),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    );
    let _ = pipeline.set_state(gst::State::Null);
    match msg.as_ref().map(|m| m.view()) {
        Some(gst::MessageView::Eos(_)) => Ok(frames.load(std::sync::atomic::Ordering::Relaxed)),
        Some(gst::MessageView::Error(e)) => {
            bail!("{} does not play: {}", path.display(), e.error())
        }
        _ => bail!("{} did not finish decoding within 60 s", path.display()),
    }
}

/// Runs an agent that must exit quickly; returns its code and stderr.
pub async fn quick(name: &str, args: &[&str]) -> anyhow::Result<(Option<i32>, String)> {
    let mut a = Agent::spawn(name, args)?;
    let code = a.exit_within(Duration::from_secs(40)).await?;
    Ok((code, a.stderr()))
}
