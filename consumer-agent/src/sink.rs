//! Where received streams go: `display`, `file:PATH` (no re-encoding), `null` (decode and
//! count), `encoded` (count without decoding) or `pipeline:'FRAGMENT'`. Video frames are
//! counted on the way.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Context};
use gst::prelude::*;
use tracing::{info, warn};

/// `--sink`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    Display,
    /// Record to a Matroska (.mkv/.webm) or MP4 (.mp4) file, without re-encoding.
    File(PathBuf),
    Null,
    /// Count the encoded video frames (access units), decoding nothing.
    Encoded,
    /// A gst-launch fragment with unlinked sink pads; it receives raw (decoded) video/audio.
    Pipeline(String),
}

impl FromStr for Sink {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "display" => Ok(Sink::Display),
            "null" => Ok(Sink::Null),
            "encoded" => Ok(Sink::Encoded),
            _ => {
                if let Some(path) = s.strip_prefix("file:") {
                    let path = PathBuf::from(path);
                    Container::of(&path)?;
                    writable_place(&path)?;
                    Ok(Sink::File(path))
                } else if let Some(fragment) = s.strip_prefix("pipeline:") {
                    if fragment.trim().is_empty() {
                        return Err("pipeline: needs a gst-launch fragment".into());
                    }
                    Ok(Sink::Pipeline(fragment.to_string()))
                } else {
                    Err(format!(
                        "unknown sink '{s}' (supported: display, null, encoded, file:PATH.mkv|.mp4, pipeline:'FRAGMENT')"
                    ))
                }
            }
        }
    }
}

/// A recording can be made at `path`: its directory exists (the muxer's filesink would only
/// say "Element failed to change its state"), and it is not a directory itself.
fn writable_place(path: &Path) -> Result<(), String> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(format!(
            "cannot record to '{}': no directory {}",
            path.display(),
            dir.display()
        ));
    }
    if path.is_dir() {
        return Err(format!(
            "cannot record to '{}': a directory",
            path.display()
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    Matroska,
    Mp4,
}

impl Container {
    pub fn of(path: &Path) -> Result<Container, String> {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("mkv") | Some("webm") => Ok(Container::Matroska),
            Some("mp4") | Some("m4v") => Ok(Container::Mp4),
            _ => Err(format!(
                "cannot tell the container of '{}': use .mkv (any codec) or .mp4 (H.264)",
                path.display()
            )),
        }
    }

    /// Codecs webrtcsrc may negotiate so that the file needs no re-encoding.
    pub fn video_codecs(self) -> Option<Vec<&'static str>> {
        match self {
            Container::Matroska => None, // every codec webrtcsrc knows fits
            Container::Mp4 => Some(vec!["H264"]),
        }
    }
}

/// The `n`-th recording of a run goes to PATH, then PATH-1.ext, PATH-2.ext…
pub fn segment_path(path: &Path, n: u32) -> PathBuf {
    if n == 0 {
        return path.to_path_buf();
    }
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("recording");
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("mkv");
    path.with_file_name(format!("{stem}-{n}.{ext}"))
}

/// How many streams the producer sends (from its SDP), once known.
pub type ExpectedStreams = Arc<dyn Fn() -> Option<usize> + Send + Sync>;

/// Links webrtcsrc's pads as the sink says, as they appear.
pub struct Linker {
    pub frames: Arc<AtomicU64>,
    /// Where EOS goes on a clean stop (file sink): the entry of each recorded stream.
    pub entries: Arc<Mutex<Vec<gst::Pad>>>,
    /// The recording's muxer, created with the pipeline (file sink).
    mux: Option<gst::Element>,
    sink: Sink,
    expected: ExpectedStreams,
    gate: Arc<Mutex<Gate>>,
    frame_log: Option<Arc<FrameLog>>,
    /// Lower layers of a layered origin seen so far, left undecoded (see [`lower_layer`]).
    skipped: Arc<AtomicU64>,
}

/// The layer a webrtcsrc pad carries if it is a lower layer of a layered origin (its msid is
/// `gwc-layer-k`, k > 0; docs/protocol.md "Layers"): a viewer connected to the origin
/// directly receives every layer, and plays the top one (with the audio).
fn lower_layer(pad: &gst::Pad) -> Option<usize> {
    pad.find_property("msid")?;
    let msid = pad.property::<Option<String>>("msid")?;
    proto::layers::layer_of_msid(&msid).filter(|k| *k > 0)
}

/// `--frame-log`: one line per encoded video frame, `HASH UNIX_MICROS`, the hash of the
/// frame's bytes and when it arrived. Two consumers of one stream on one machine (one direct,
/// one through a relay) match their frames by hash: the difference is what the hop adds.
pub struct FrameLog(Mutex<std::io::BufWriter<std::fs::File>>);

impl FrameLog {
    pub fn create(path: &Path) -> anyhow::Result<Arc<FrameLog>> {
        let file = std::fs::File::create(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Arc::new(FrameLog(Mutex::new(std::io::BufWriter::new(
            file,
        )))))
    }

    fn record(&self, frame: &gst::BufferRef) {
        use std::hash::{Hash, Hasher};
        use std::io::Write;
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0);
        let Ok(map) = frame.map_readable() else {
            return;
        };
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        map.as_slice().hash(&mut hasher);
        let mut out = self.0.lock().unwrap();
        let _ = writeln!(out, "{:016x} {at}", hasher.finish());
        let _ = out.flush();
    }
}

/// Muxers take no new stream, nor its caps, once they have written their header, and
/// webrtcsrc adds its pads one by one as each stream's first packet arrives: buffers are held
/// at the muxer until every stream the producer sends has its muxer pad with caps (or for 3 s
/// at most).
#[derive(Default)]
struct Gate {
    held: Vec<(gst::Pad, gst::PadProbeId)>,
    /// Muxer pads that have their caps.
    with_caps: std::collections::HashSet<String>,
    open: bool,
}

impl Gate {
    fn open(&mut self) {
        self.open = true;
        for (pad, probe) in self.held.drain(..) {
            pad.remove_probe(probe);
        }
    }

    fn maybe_open(&mut self, expected: usize) {
        if !self.open && self.held.len() >= expected && self.with_caps.len() >= expected {
            tracing::debug!(?self.with_caps, expected, "all streams ready: recording");
            self.open();
        }
    }
}

impl Linker {
    /// Adds what the sink needs up front (file: muxer and filesink; pipeline: the fragment).
    pub fn new(
        pipeline: &gst::Pipeline,
        sink: &Sink,
        segment: u32,
        frames: Arc<AtomicU64>,
        expected: ExpectedStreams,
        frame_log: Option<Arc<FrameLog>>,
    ) -> anyhow::Result<(Linker, Option<PathBuf>)> {
        let mut recording = None;
        let mux = match sink {
            Sink::File(path) => {
                let path = segment_path(path, segment);
                let container = Container::of(&path).map_err(|e| anyhow!(e))?;
                let mux = gst::ElementFactory::make(match container {
                    Container::Matroska => "matroskamux",
                    Container::Mp4 => "mp4mux",
                })
                .build()?;
                let filesink = gst::ElementFactory::make("filesink")
                    .property("location", path.to_string_lossy().as_ref())
                    .build()?;
                pipeline.add_many([&mux, &filesink])?;
                mux.link(&filesink)?;
                info!("recording to {}", path.display());
                recording = Some(path);
                Some(mux)
            }
            _ => None,
        };
        Ok((
            Linker {
                frames,
                entries: Default::default(),
                mux,
                sink: sink.clone(),
                expected,
                gate: Default::default(),
                frame_log,
                skipped: Default::default(),
            },
            recording,
        ))
    }

    /// Called from webrtcsrc's pad-added.
    pub fn link(&self, pipeline: &gst::Pipeline, pad: &gst::Pad) -> anyhow::Result<()> {
        let video = pad.name().starts_with("video");
        if let Some(k) = lower_layer(pad).filter(|_| video) {
            // Not decoded (a fakesink takes the RTP as it is), not counted, not recorded.
            self.skipped.fetch_add(1, Ordering::Relaxed);
            info!("layer {k} of the origin ({}): not played", pad.name());
            let bin = gst::parse::bin_from_description("fakesink sync=false", true)?;
            pipeline.add(&bin)?;
            bin.sync_state_with_parent()?;
            let sinkpad = bin.static_pad("sink").context("fakesink bin")?;
            if matches!(self.sink, Sink::File(_)) {
                // (a stop ends it too: the pipeline's end of stream, which finalizes the
                // recording, waits for every sink)
                self.entries.lock().unwrap().push(sinkpad.clone());
            }
            return pad
                .link(&sinkpad)
                .map(drop)
                .map_err(|e| anyhow!("cannot link {}: {e}", pad.name()));
        }
        let (desc, counted) = match (&self.sink, video) {
            // Raw caps downstream make webrtcsrc decode: with a sink that accepts anything it
            // would hand out RTP, and we would count packets instead of frames.
            (Sink::Null, true) => (
                "videoconvert ! video/x-raw ! fakesink name=count sync=false".to_string(),
                true,
            ),
            (Sink::Null, false) => (
                "audioconvert ! audio/x-raw ! fakesink sync=false".to_string(),
                false,
            ),
            (Sink::Display, true) => ("videoconvert ! autovideosink name=count".to_string(), true),
            (Sink::Display, false) => (
                "audioconvert ! audioresample ! autoaudiosink".to_string(),
                false,
            ),
            (Sink::Pipeline(fragment), true) => {
                (format!("videoconvert name=count ! {fragment}"), true)
            }
            (Sink::Pipeline(_), false) => (
                "audioconvert ! audio/x-raw ! fakesink sync=false".to_string(),
                false,
            ),
            (Sink::File(_), _) => return self.link_recording(pipeline, pad, video),
            (Sink::Encoded, true) => return self.link_encoded(pipeline, pad),
            // (a description cannot start with caps: "audio/x-opus ! …" is parsed as an element)
            (Sink::Encoded, false) => (
                "capsfilter caps=audio/x-opus ! fakesink sync=false".to_string(),
                false,
            ),
        };
        let bin = gst::parse::bin_from_description(&desc, true)
            .with_context(|| format!("sink for {}", pad.name()))?;
        if counted {
            count_frames(&bin, self.frames.clone(), None)?;
        }
        pipeline.add(&bin)?;
        bin.sync_state_with_parent()?;
        let sinkpad = bin
            .static_pad("sink")
            .context("sink bin without sink pad")?;
        pad.link(&sinkpad)
            .map_err(|e| anyhow!("cannot link {}: {e}", pad.name()))?;
        Ok(())
    }

    /// `pad ! capsfilter(encoded) ! parsebin ! [h26xparse to access units] ! fakesink`: webrtcsrc
    /// stops at the encoded caps, and each access unit is one frame counted.
    fn link_encoded(&self, pipeline: &gst::Pipeline, pad: &gst::Pad) -> anyhow::Result<()> {
        let filter = gst::ElementFactory::make("capsfilter")
            .property("caps", ENCODED_VIDEO.parse::<gst::Caps>()?)
            .build()?;
        let parse = gst::ElementFactory::make("parsebin").build()?;
        pipeline.add_many([&filter, &parse])?;
        filter.link(&parse)?;
        let (weak, counter) = (pipeline.downgrade(), self.frames.clone());
        let log = self.frame_log.clone();
        parse.connect_pad_added(move |_, parsed| {
            let Some(pipeline) = weak.upgrade() else {
                return;
            };
            if let Err(e) = count_encoded(&pipeline, parsed, counter.clone(), log.clone()) {
                warn!("cannot count {}: {e:#}", parsed.name());
            }
        });
        filter.sync_state_with_parent()?;
        parse.sync_state_with_parent()?;
        pad.link(&filter.static_pad("sink").context("capsfilter sink")?)
            .map_err(|e| anyhow!("cannot link {}: {e}", pad.name()))?;
        Ok(())
    }

    /// Holds buffers at a new muxer pad until the gate opens (see [`Gate`]).
    fn hold(&self, mux_pad: &gst::Pad) {
        let mut gate = self.gate.lock().unwrap();
        if gate.open {
            return;
        }
        let block =
            gst::PadProbeType::BLOCK | gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST;
        if let Some(probe) = mux_pad.add_probe(block, |_, _| gst::PadProbeReturn::Ok) {
            gate.held.push((mux_pad.clone(), probe));
        }
        let (caps_gate, expected) = (self.gate.clone(), self.recorded_streams());
        mux_pad.add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, move |pad, info| {
            if let Some(gst::PadProbeData::Event(ev)) = &info.data {
                if ev.type_() == gst::EventType::Caps {
                    let mut gate = caps_gate.lock().unwrap();
                    if gate.open && pad.current_caps().is_some() {
                        // A refinement (the parser adds a profile after the first keyframe):
                        // once the header is out the muxer would fail on it; the first caps
                        // already say what the container needs.
                        return agent_core::DISCARD;
                    }
                    gate.with_caps.insert(pad.name().to_string());
                    gate.maybe_open(expected().unwrap_or(1));
                }
            }
            gst::PadProbeReturn::Ok
        });
        if gate.held.len() == 1 {
            let gate = self.gate.clone();
            gst::glib::timeout_add_once(std::time::Duration::from_secs(3), move || {
                let mut gate = gate.lock().unwrap();
                if !gate.open {
                    warn!("not every stream of the producer arrived; recording what did");
                    gate.open();
                }
            });
        }
        gate.maybe_open(self.recorded_streams()().unwrap_or(1));
    }

    /// The streams a recording waits for: the producer's, less its lower layers (a layered
    /// origin's lower layers are not recorded; those not seen yet are waited for at most 3 s).
    fn recorded_streams(&self) -> ExpectedStreams {
        let (all, skipped) = (self.expected.clone(), self.skipped.clone());
        Arc::new(move || {
            all().map(|n| {
                n.saturating_sub(skipped.load(Ordering::Relaxed) as usize)
                    .max(1)
            })
        })
    }

    /// `pad ! capsfilter(encoded) ! parsebin ! [h26xparse] ! queue ! mux`: webrtcsrc stops
    /// decoding at the encoded caps, so the file holds what the producer sent.
    fn link_recording(
        &self,
        pipeline: &gst::Pipeline,
        pad: &gst::Pad,
        video: bool,
    ) -> anyhow::Result<()> {
        let mux = self.mux.clone().context("no muxer")?;
        // The muxer pad now, before any data reaches the muxer (see `Gate`).
        let mux_pad = mux
            .request_pad_simple(if video { "video_%u" } else { "audio_%u" })
            .context("the muxer takes no more streams")?;
        self.hold(&mux_pad);
        let caps = if video { ENCODED_VIDEO } else { "audio/x-opus" };
        let filter = gst::ElementFactory::make("capsfilter")
            .property("caps", caps.parse::<gst::Caps>()?)
            .build()?;
        let parse = gst::ElementFactory::make("parsebin").build()?;
        pipeline.add_many([&filter, &parse])?;
        filter.link(&parse)?;
        let counter = video.then(|| self.frames.clone());
        let weak = pipeline.downgrade();
        parse.connect_pad_added(move |_, parsed| {
            let Some(pipeline) = weak.upgrade() else {
                return;
            };
            if let Err(e) = link_to_mux(&pipeline, parsed, &mux_pad, counter.clone()) {
                warn!("cannot record {}: {e:#}", parsed.name());
            }
        });
        filter.sync_state_with_parent()?;
        parse.sync_state_with_parent()?;
        let entry = filter.static_pad("sink").context("capsfilter sink")?;
        pad.link(&entry)
            .map_err(|e| anyhow!("cannot link {} to the recording: {e}", pad.name()))?;
        self.entries.lock().unwrap().push(entry.clone());

        Ok(())
    }
}

/// Counts the buffers reaching the element named `count` in `bin`: one per frame.
fn count_frames(
    bin: &gst::Bin,
    counter: Arc<AtomicU64>,
    log: Option<Arc<FrameLog>>,
) -> anyhow::Result<()> {
    let count_pad = bin
        .by_name("count")
        .and_then(|e| e.static_pad("sink"))
        .context("no counting element")?;
    count_pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        counter.fetch_add(1, Ordering::Relaxed);
        if let (Some(log), Some(frame)) = (&log, info.buffer()) {
            log.record(frame);
        }
        gst::PadProbeReturn::Ok
    });
    Ok(())
}

/// The media type (`video/x-h264`, …) a pad gives.
fn caps_name(pad: &gst::Pad) -> String {
    let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
    caps.structure(0)
        .map(|s| s.name().to_string())
        .unwrap_or_default()
}

/// Video caps webrtcsrc can hand out without decoding.
const ENCODED_VIDEO: &str = "video/x-vp8;video/x-vp9;video/x-h264;video/x-h265;video/x-av1";

/// `parsed ! [h26xparse ! access units] ! fakesink`, counting what reaches the fakesink.
fn count_encoded(
    pipeline: &gst::Pipeline,
    parsed: &gst::Pad,
    counter: Arc<AtomicU64>,
    log: Option<Arc<FrameLog>>,
) -> anyhow::Result<()> {
    let name = caps_name(parsed);
    let desc = match name.as_str() {
        "video/x-h264" => "h264parse ! video/x-h264,alignment=au ! fakesink name=count sync=false",
        "video/x-h265" => "h265parse ! video/x-h265,alignment=au ! fakesink name=count sync=false",
        _ => "fakesink name=count sync=false",
    };
    let bin = gst::parse::bin_from_description(desc, true)?;
    count_frames(&bin, counter, log)?;
    pipeline.add(&bin)?;
    bin.sync_state_with_parent()?;
    parsed
        .link(&bin.static_pad("sink").context("counting bin sink")?)
        .map_err(|e| anyhow!("cannot link {name}: {e}"))?;
    info!("counting {name} frames without decoding");
    Ok(())
}

fn link_to_mux(
    pipeline: &gst::Pipeline,
    parsed: &gst::Pad,
    mux_pad: &gst::Pad,
    counter: Option<Arc<AtomicU64>>,
) -> anyhow::Result<()> {
    let name = caps_name(parsed);
    // Containers want H.264/H.265 as length-prefixed AUs; the parser converts.
    let desc = match name.as_str() {
        "video/x-h264" => "h264parse ! queue",
        "video/x-h265" => "h265parse ! queue",
        _ => "queue",
    };
    let chain = gst::parse::bin_from_description(desc, true)?;
    pipeline.add(&chain)?;
    chain
        .static_pad("src")
        .context("chain src")?
        .link(mux_pad)
        .map_err(|e| anyhow!("the muxer refuses {name}: {e}"))?;
    chain.sync_state_with_parent()?;
    mux_pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        // The first parsed H.264 units after joining a stream may carry no timestamp, which
        // mp4mux rejects as an error; they are not decodable on their own anyway.
        if let Some(gst::PadProbeData::Buffer(buffer)) = &info.data {
            if buffer.pts().is_none() {
                return agent_core::DISCARD;
            }
        }
        if let Some(counter) = &counter {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        gst::PadProbeReturn::Ok
    });
    parsed
        .link(&chain.static_pad("sink").context("chain sink")?)
        .map_err(|e| anyhow!("cannot link {name}: {e}"))?;
    info!("recording {name}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sinks_parse() {
        assert_eq!("null".parse::<Sink>(), Ok(Sink::Null));
        assert_eq!("encoded".parse::<Sink>(), Ok(Sink::Encoded));
        assert_eq!(
            "file:/tmp/a.mkv".parse::<Sink>(),
            Ok(Sink::File("/tmp/a.mkv".into()))
        );
        assert!("file:/tmp/a.avi"
            .parse::<Sink>()
            .unwrap_err()
            .contains("container"));
        assert!("pipeline:".parse::<Sink>().is_err());
        assert!("speaker".parse::<Sink>().is_err());
        let no_dir = "file:/nonexistent-dir/x.mkv".parse::<Sink>().unwrap_err();
        assert!(no_dir.contains("no directory /nonexistent-dir"), "{no_dir}");
        assert!("file:/tmp.mkv".parse::<Sink>().is_ok(), "a file in /");
        let dir = std::env::temp_dir().join(format!("gwc-sink-{}.mkv", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a_directory = format!("file:{}", dir.display()).parse::<Sink>();
        let _ = std::fs::remove_dir(&dir);
        assert!(a_directory.unwrap_err().contains("a directory"));
    }

    #[test]
    fn later_recordings_get_numbered_names() {
        let p = Path::new("/r/cam.mkv");
        assert_eq!(segment_path(p, 0), PathBuf::from("/r/cam.mkv"));
        assert_eq!(segment_path(p, 2), PathBuf::from("/r/cam-2.mkv"));
    }
}
