//! Reading webrtcbin statistics (`get-stats`, W3C-like names) into plain numbers.

use gst::prelude::*;
use gst_webrtc::WebRTCStatsType;

/// One entry of a webrtcbin stats structure.
pub struct Entry {
    /// The stats id (the field name in webrtcbin's answer).
    pub id: String,
    pub kind: WebRTCStatsType,
    pub fields: gst::Structure,
}

impl Entry {
    pub fn u64(&self, name: &str) -> Option<u64> {
        let v = self.fields.value(name).ok()?;
        v.get::<u64>()
            .ok()
            .or_else(|| v.get::<u32>().ok().map(u64::from))
            .or_else(|| v.get::<i64>().ok().and_then(|x| u64::try_from(x).ok()))
            .or_else(|| v.get::<i32>().ok().and_then(|x| u64::try_from(x).ok()))
    }
    pub fn i64(&self, name: &str) -> Option<i64> {
        let v = self.fields.value(name).ok()?;
        v.get::<i64>()
            .ok()
            .or_else(|| v.get::<i32>().ok().map(i64::from))
            .or_else(|| v.get::<u32>().ok().map(i64::from))
            .or_else(|| v.get::<u64>().ok().and_then(|x| i64::try_from(x).ok()))
    }
    pub fn f64(&self, name: &str) -> Option<f64> {
        self.fields.get::<f64>(name).ok()
    }
    pub fn str(&self, name: &str) -> Option<String> {
        self.fields.get::<String>(name).ok()
    }
}

/// The typed entries of a `get-stats` answer (other fields are skipped).
pub fn entries(stats: &gst::StructureRef) -> Vec<Entry> {
    stats
        .iter()
        .filter_map(|(id, value)| {
            let fields = value.get::<gst::Structure>().ok()?;
            let kind = fields.get::<WebRTCStatsType>("type").ok()?;
            Some(Entry {
                id: id.to_string(),
                kind,
                fields,
            })
        })
        .collect()
}

/// Asks a webrtcbin for its stats and waits for the answer (call from a worker thread).
pub fn webrtcbin_stats(webrtcbin: &gst::Element) -> Option<gst::Structure> {
    let promise = gst::Promise::new();
    webrtcbin.emit_by_name::<()>("get-stats", &[&None::<gst::Pad>, &promise]);
    match promise.wait() {
        gst::PromiseResult::Replied => promise.get_reply().map(|s| s.to_owned()),
        _ => None,
    }
}

/// The topmost bin `element` is in (its pipeline; webrtcsink sits in a gwcwebrtcsink in it).
pub fn pipeline_of(element: &gst::Element) -> Option<gst::Bin> {
    let mut top = element.parent()?;
    while let Some(up) = top.parent() {
        top = up;
    }
    top.downcast::<gst::Bin>().ok()
}

/// The first webrtcbin inside `bin`, at any depth.
pub fn find_webrtcbin(bin: &gst::Bin) -> Option<gst::Element> {
    bin.iterate_recurse().into_iter().flatten().find(|e| {
        e.factory()
            .is_some_and(|f| f.name().as_str() == "webrtcbin")
    })
}

/// The codec (`video/VP8` …) an rtp stats entry refers to, through its `codec-id`.
pub fn codec_of(entries: &[Entry], rtp: &Entry) -> Option<String> {
    let id = rtp.str("codec-id")?;
    entries
        .iter()
        .find(|e| {
            e.kind == WebRTCStatsType::Codec
                && (e.id == id || e.str("id").as_deref() == Some(id.as_str()))
        })
        .and_then(|c| {
            c.str("mime-type")
                .or_else(|| c.str("encoding-name"))
                .or_else(|| c.u64("payload-type").map(|pt| format!("pt {pt}")))
        })
}

/// The selected candidate pair's types, `LOCAL/REMOTE` (`relay/host`, `host/host` …), once
/// ICE has chosen one: how the media travels (through TURN when either side is `relay`).
pub fn ice_pair(entries: &[Entry]) -> Option<String> {
    let pair = entries
        .iter()
        .find(|e| e.kind == WebRTCStatsType::CandidatePair)?;
    let kind = |field: &str| {
        let id = pair.str(field)?;
        let candidate = entries
            .iter()
            .find(|e| e.id == id || e.str("id").as_deref() == Some(id.as_str()))?;
        candidate.str("candidate-type").or_else(|| {
            // (an enum in some GStreamer versions)
            let v = candidate.fields.value("candidate-type").ok()?;
            let (_, value) = gst::glib::EnumValue::from_value(v)?;
            Some(value.nick().to_string())
        })
    };
    Some(format!(
        "{}/{}",
        kind("local-candidate-id")?,
        kind("remote-candidate-id")?
    ))
}

/// Bits per second between two byte counters `dt` seconds apart.
pub fn rate_bps(bytes_now: u64, bytes_before: u64, dt: f64) -> f64 {
    if dt <= 0.0 {
        return 0.0;
    }
    bytes_now.saturating_sub(bytes_before) as f64 * 8.0 / dt
}

/// Factory names of the elements in `bin` (recursively) whose class has `class` (e.g.
/// `Codec/Encoder`), in pipeline order.
pub fn elements_of_class(bin: &gst::Bin, class: &str) -> Vec<String> {
    bin.iterate_recurse()
        .into_iter()
        .filter_map(Result::ok)
        .filter_map(|e| e.factory())
        .filter(|f| f.metadata("klass").is_some_and(|k| k.contains(class)))
        .map(|f| f.name().to_string())
        .collect()
}

/// Factory names of the elements of class `class` (e.g. `Codec/Decoder`) that put out at
/// least one buffer, kept in a set that outlives the pipeline.
pub type Worked = std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>;

/// Records in `worked` every element of class `class` added to `bin` (at any depth, from now
/// on) once it puts out its first buffer. What ran is known as it happens: reading the bin
/// at the end would miss what is gone by then (webrtcsrc removes a session's bin, decoders
/// included, as soon as the session ends).
pub fn record_working(bin: &gst::Bin, class: &'static str, worked: Worked) {
    bin.connect_deep_element_added(move |_, _, element| {
        // A bin added whole brings its children without a signal of their own.
        let mut added = vec![element.clone()];
        if let Some(inner) = element.downcast_ref::<gst::Bin>() {
            added.extend(inner.iterate_recurse().into_iter().flatten());
        }
        for e in added {
            let Some(factory) = e.factory() else { continue };
            if !factory.metadata("klass").is_some_and(|k| k.contains(class)) {
                continue;
            }
            let name = factory.name().to_string();
            for pad in e.src_pads() {
                let (worked, name) = (worked.clone(), name.clone());
                let data = gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST;
                pad.add_probe(data, move |_, _| {
                    worked.lock().unwrap().insert(name.clone());
                    gst::PadProbeReturn::Remove
                });
            }
        }
    });
}
