//! Writes the GStreamer-made RTP payloads the forwarding core's keyframe tests read
//! (`sfu/src/testdata/*.rtp`, used by `sfu/src/{vp9,h265,av1}.rs`): real encoders (vp9enc,
//! x265enc, av1enc) and the payloaders webrtcsink uses (rtpvp9pay, rtph265pay, rtpav1pay).
//!
//!     cargo run -p cluster-tests --bin rtp-fixtures -- sfu/src/testdata
//!
//! Each file is a list of records: `flags` (u8), `length` (u16, big-endian), the RTP payload.
//! Flags: 1 = the encoder marked the frame a keyframe (no DELTA_UNIT), 2 = the first packet
//! of its frame, 4 = the RTP marker bit. 25 frames of 160x120, a keyframe every 10, an MTU of
//! 400 bytes so that frames span several packets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use gst::prelude::*;

const FIXTURES: &[(&str, &str)] = &[
    (
        "vp9.rtp",
        "vp9enc keyframe-max-dist=10 deadline=1 cpu-used=8 target-bitrate=300000 \
         ! rtpvp9pay mtu=400 picture-id-mode=15-bit",
    ),
    (
        "h265-aggregated.rtp",
        "x265enc key-int-max=10 speed-preset=ultrafast tune=zerolatency bitrate=300 \
         ! rtph265pay mtu=400 config-interval=-1 aggregate-mode=zero-latency",
    ),
    (
        "h265-single.rtp",
        "x265enc key-int-max=10 speed-preset=ultrafast tune=zerolatency bitrate=300 \
         ! rtph265pay mtu=400 config-interval=-1 aggregate-mode=none",
    ),
    (
        "av1.rtp",
        "av1enc usage-profile=realtime cpu-used=10 keyframe-max-dist=10 target-bitrate=300 \
         ! av1parse ! rtpav1pay mtu=400",
    ),
];

fn main() -> Result<()> {
    let dir = std::env::args()
        .nth(1)
        .context("usage: rtp-fixtures OUTPUT_DIR")?;
    gst::init()?;
    gstrsrtp::plugin_register_static()?;
    for (file, chain) in FIXTURES {
        let records = payloads(chain).with_context(|| format!("{file}: {chain}"))?;
        let keys = records.iter().filter(|r| r.0 & 3 == 3).count();
        let path = std::path::Path::new(&dir).join(file);
        let mut bytes = Vec::new();
        for (flags, payload) in &records {
            bytes.push(*flags);
            bytes.extend_from_slice(&u16::try_from(payload.len())?.to_be_bytes());
            bytes.extend_from_slice(payload);
        }
        std::fs::write(&path, bytes)?;
        println!(
            "{}: {} packets, {keys} keyframes",
            path.display(),
            records.len()
        );
    }
    Ok(())
}

/// The payloads of `chain` fed 25 test frames, with their flags.
fn payloads(chain: &str) -> Result<Vec<(u8, Vec<u8>)>> {
    let pipeline = gst::parse::launch(&format!(
        "videotestsrc num-buffers=25 pattern=ball \
         ! video/x-raw,width=160,height=120,framerate=30/1 ! {chain} name=pay ! appsink name=out sync=false"
    ))?
    .downcast::<gst::Pipeline>()
    .map_err(|_| anyhow::anyhow!("not a pipeline"))?;
    let pay = pipeline.by_name("pay").context("no payloader")?;
    // The encoder's verdict per frame, by PTS (the payloader keeps it on its packets).
    let keyframes = Arc::new(Mutex::new(HashMap::new()));
    let seen = keyframes.clone();
    pay.static_pad("sink")
        .context("payloader without sink pad")?
        .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if let Some(buffer) = info.buffer() {
                let key = !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT);
                seen.lock().unwrap().insert(buffer.pts(), key);
            }
            gst::PadProbeReturn::Ok
        });
    let sink = pipeline
        .by_name("out")
        .context("no appsink")?
        .downcast::<gst_app::AppSink>()
        .map_err(|_| anyhow::anyhow!("not an appsink"))?;
    pipeline.set_state(gst::State::Playing)?;
    let mut records = Vec::new();
    let mut last_timestamp = None;
    while let Ok(sample) = sink.pull_sample() {
        let buffer = sample.buffer().context("sample without buffer")?;
        let map = buffer.map_readable()?;
        let (timestamp, marker, payload) = split_rtp(&map)?;
        let key = *keyframes
            .lock()
            .unwrap()
            .get(&buffer.pts())
            .context("a packet of no frame")?;
        let first = last_timestamp != Some(timestamp);
        last_timestamp = Some(timestamp);
        let flags = u8::from(key) | (u8::from(first) << 1) | (u8::from(marker) << 2);
        records.push((flags, payload.to_vec()));
    }
    pipeline.set_state(gst::State::Null)?;
    if records.is_empty() {
        bail!("no packets");
    }
    Ok(records)
}

/// An RTP packet's timestamp, marker bit and payload (RFC 3550 section 5.1).
fn split_rtp(packet: &[u8]) -> Result<(u32, bool, &[u8])> {
    if packet.len() < 12 || packet[0] >> 6 != 2 {
        bail!("not RTP");
    }
    let marker = packet[1] & 0x80 != 0;
    let timestamp = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
    let mut at = 12 + 4 * usize::from(packet[0] & 0x0f);
    if packet[0] & 0x10 != 0 {
        let words = packet.get(at + 2..at + 4).context("extension cut")?;
        at += 4 + 4 * usize::from(u16::from_be_bytes([words[0], words[1]]));
    }
    let mut end = packet.len();
    if packet[0] & 0x20 != 0 {
        end -= usize::from(*packet.last().context("empty")?);
    }
    let payload = packet
        .get(at..end)
        .context("header longer than the packet")?;
    Ok((timestamp, marker, payload))
}
