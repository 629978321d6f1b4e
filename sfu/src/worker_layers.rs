//! A worker's viewers of a layered source: each one's [`LayerChoice`] fed (estimate, loss,
//! the layers' measured bitrates, its cap), its target layer handed to its video track's
//! [`crate::fanout::ViewerTrack`] (which switches at that layer's keyframe), str0m's
//! estimator told what to probe for, and the outcome put into its stats. Part of
//! [`crate::worker`] (its `impl Worker`).

use std::time::Instant;

use str0m::bwe::Bitrate;

use super::Worker;
use crate::codec::Codec;
use crate::layer_switching::{EstimateKind, LayerInput, Tick};
use crate::peer::Role;

/// str0m's estimator is told a new desired bitrate only when it moved this much: each change
/// makes it reconsider probing at once.
const DESIRED_CHANGE: f64 = 0.10;

impl Worker {
    /// The source track whose keyframe answers a viewer's keyframe request on its track
    /// `track`: a layered video's target layer (the switch pending needs that keyframe anyway,
    /// and it mends the viewer too; a switch down stops the followed layer meanwhile, see
    /// [`crate::fanout::ViewerTrack::keyframe_asked`]), any other track's own source.
    pub(super) fn keyframe_asked(&mut self, id: u64, track: usize) -> Option<usize> {
        if let Some(l) = self
            .layout
            .layered
            .as_ref()
            .filter(|l| l.viewer_track == track)
        {
            let Some(Role::Viewer(v)) = self.peers.get_mut(&id).map(|p| &mut p.role) else {
                return None;
            };
            v.choice.keyframe_asked();
            let fan = v.tracks.get_mut(track)?.2.as_mut()?;
            fan.keyframe_asked();
            return l.sources.get(fan.target()).copied().flatten();
        }
        self.layout
            .route
            .iter()
            .position(|r| *r == Some((track, None)))
    }

    pub(super) fn estimate(&mut self, id: u64, kind: EstimateKind, bps: u64) {
        if let Some(Role::Viewer(v)) = self.peers.get_mut(&id).map(|p| &mut p.role) {
            v.choice.estimate(kind, bps);
        }
    }

    pub(super) fn loss(&mut self, id: u64, fraction: f32) {
        if let Some(Role::Viewer(v)) = self.peers.get_mut(&id).map(|p| &mut p.role) {
            v.choice.loss(fraction);
        }
    }

    pub(super) fn egress(&mut self, id: u64, packets: u64, nacks: u64) {
        if let Some(Role::Viewer(v)) = self.peers.get_mut(&id).map(|p| &mut p.role) {
            v.choice.egress(packets, nacks);
        }
    }

    /// Every joined viewer's layer, at housekeeping.
    pub(super) fn choose_layers(&mut self, now: Instant) {
        if self.layout.layered.is_none() {
            return;
        }
        let ids: Vec<u64> = self
            .peers
            .iter()
            .filter(|(_, p)| matches!(&p.role, Role::Viewer(v) if v.joined))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.choose_layer(id, now);
        }
    }

    /// One viewer's layer: its choice ticked, the target given to its video track.
    pub(super) fn choose_layer(&mut self, id: u64, now: Instant) {
        let Some(layered) = self.layout.layered.as_ref() else {
            return;
        };
        let inputs: Vec<LayerInput> = layered
            .sources
            .iter()
            .zip(&layered.ladder.0)
            .map(|(source, layer)| {
                let meter = source.and_then(|s| self.meters.get(s));
                LayerInput {
                    ladder_bps: u64::from(layer.kbps) * 1000,
                    measured_bps: meter.and_then(|m| m.bps(now)),
                    live: meter.is_some_and(|m| m.live(now)),
                }
            })
            .collect();
        // The audio's share: every Opus track's (0 without audio; None: not measured yet).
        let mut audio = Some(0);
        for (i, s) in self.sources.iter().enumerate() {
            if s.codec == Codec::Opus {
                let bps = self.meters.get(i).and_then(|m| m.bps(now));
                audio = audio.zip(bps).map(|(a, b)| a + b);
            }
        }
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let Role::Viewer(viewer) = &mut peer.role else {
            return;
        };
        let cap = viewer
            .max_height
            .map_or(0, |h| layered.ladder.highest_within(h));
        let decision = viewer.choice.tick(
            Tick {
                layers: &inputs,
                audio_bps: audio,
                cap,
            },
            now,
        );
        let Some(fan) = viewer
            .tracks
            .get_mut(layered.viewer_track)
            .and_then(|t| t.2.as_mut())
        else {
            return;
        };
        if let Some(target) = decision.target {
            fan.set_target(target);
        }
        let (layer, target) = (fan.layer(), fan.target());
        let (ups, downs) = (fan.switches_up, fan.switches_down);
        let moved = (decision.desired_bps as f64 - viewer.desired_bps as f64).abs()
            > viewer.desired_bps as f64 * DESIRED_CHANGE;
        if let Some(restart) = decision.reseed_bps {
            // A step up's keyframe misread as overuse (`layer_switching::RESEED_CAP`).
            peer.rtc.bwe().reset(Bitrate::bps(restart));
        } else if let Some(estimate) = viewer.choice.estimate_bps().filter(|_| decision.probe) {
            // Restarted at the estimate it had, str0m sends its initial probe clusters (3× and
            // 6× of it, at most 2× the desired bitrate), which find a lifted limit.
            peer.rtc.bwe().reset(Bitrate::bps(estimate));
        }
        if moved || decision.probe {
            viewer.desired_bps = decision.desired_bps;
            peer.rtc
                .bwe()
                .set_desired_bitrate(Bitrate::bps(decision.desired_bps));
        }
        if let Some(s) = self.viewer_stats.get_mut(&id) {
            s.layer = layer;
            s.layer_height = layer
                .and_then(|l| layered.ladder.0.get(l))
                .map(|l| l.height);
            s.target_layer = Some(target);
            s.layer_switches_up = ups;
            s.layer_switches_down = downs;
        }
    }
}
