//! How the origin's tracks (its m-sections, in offer order) become a viewer's: a layered
//! source's video layers (`a=msid:gwc-layer-k`, [`proto::layers`]) collapse into one viewer
//! track, every other track is mirrored as it is. Each layer stays its own source track in
//! the engine (its own keyframe cache, its own coalesced keyframe requests upstream); a
//! viewer's one video track follows the layer its [`crate::layer_switching`] chose.
//!
//! Without a ladder (or with one layer) a non-layered origin is mirrored exactly as before;
//! the video m-sections of a layered origin other than layer 0 are then not forwarded (the
//! viewers get the top layer only). A layer the ladder does not name, a second m-section
//! naming the same layer, or a layer in another codec than layer 0 is not forwarded either.

use proto::layers::Ladder;
use str0m::media::MediaKind;

use crate::peer::TrackInfo;

/// The layered video: its viewer track, and per ladder layer (top first) the origin track.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layered {
    pub viewer_track: usize,
    /// Per layer of the ladder: its origin track (None: no m-section names it).
    pub sources: Vec<Option<usize>>,
    pub ladder: Ladder,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    /// The viewer's tracks, in order.
    pub viewer: Vec<TrackInfo>,
    /// Per origin track: the viewer track it feeds, and its layer when layered (None: not
    /// forwarded).
    pub route: Vec<Option<(usize, Option<usize>)>>,
    pub layered: Option<Layered>,
}

impl Layout {
    /// The layout of `tracks` (the origin's, with the layer their msid names) under `ladder`,
    /// and why an m-section is not forwarded (for the log).
    pub fn new(tracks: &[TrackInfo], ladder: Option<&Ladder>) -> (Layout, Vec<String>) {
        let mut out = Layout::default();
        let mut warnings = Vec::new();
        let layers = ladder.map_or(1, |l| l.0.len());
        let mut layered: Option<Layered> = None;
        for (i, t) in tracks.iter().enumerate() {
            let layer = t.layer.filter(|_| t.kind == MediaKind::Video);
            let Some(k) = layer else {
                out.route.push(Some((out.viewer.len(), None)));
                out.viewer.push(*t);
                continue;
            };
            if k >= layers {
                warnings.push(format!(
                    "m-section {i} names layer {k}, the ladder has {layers}: not forwarded"
                ));
                out.route.push(None);
                continue;
            }
            match (ladder.filter(|_| layers > 1), layered.as_mut()) {
                // One layer: the track itself.
                (None, _) => {
                    out.route.push(Some((out.viewer.len(), None)));
                    out.viewer.push(*t);
                }
                (Some(ladder), None) => {
                    let mut sources = vec![None; layers];
                    sources[k] = Some(i);
                    layered = Some(Layered {
                        viewer_track: out.viewer.len(),
                        sources,
                        ladder: ladder.clone(),
                    });
                    out.route.push(Some((out.viewer.len(), Some(k))));
                    out.viewer.push(*t);
                }
                (Some(_), Some(l)) => {
                    let first = l.sources.iter().flatten().next().map(|s| tracks[*s].codec);
                    if l.sources[k].is_some() || first != Some(t.codec) {
                        warnings.push(format!(
                            "m-section {i}: layer {k} again, or in another codec: not forwarded"
                        ));
                        out.route.push(None);
                        continue;
                    }
                    l.sources[k] = Some(i);
                    out.route.push(Some((l.viewer_track, Some(k))));
                }
            }
        }
        out.layered = layered;
        (out, warnings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Codec;

    fn t(kind: MediaKind, codec: Codec, layer: Option<usize>) -> TrackInfo {
        TrackInfo { kind, codec, layer }
    }

    fn ladder() -> Ladder {
        "1280x720@2000,640x360@600,320x180@150".parse().unwrap()
    }

    #[test]
    fn layers_collapse_into_one_viewer_track_audio_stays() {
        let a = t(MediaKind::Audio, Codec::Opus, Some(0));
        let v = |k| t(MediaKind::Video, Codec::Vp8, Some(k));
        let (l, w) = Layout::new(&[a, v(0), v(1), v(2)], Some(&ladder()));
        assert!(w.is_empty());
        assert_eq!(l.viewer, vec![a, v(0)]);
        assert_eq!(
            l.route,
            vec![
                Some((0, None)),
                Some((1, Some(0))),
                Some((1, Some(1))),
                Some((1, Some(2)))
            ]
        );
        let layered = l.layered.unwrap();
        assert_eq!(layered.sources, vec![Some(1), Some(2), Some(3)]);
        assert_eq!(layered.viewer_track, 1);
    }

    #[test]
    fn a_plain_origin_is_mirrored_as_it_is() {
        let tracks = [
            t(MediaKind::Video, Codec::H264, None),
            t(MediaKind::Audio, Codec::Opus, None),
        ];
        for ladder in [None, Some(&ladder())] {
            let (l, w) = Layout::new(&tracks, ladder);
            assert!(w.is_empty());
            assert_eq!(l.viewer, tracks.to_vec());
            assert_eq!(l.route, vec![Some((0, None)), Some((1, None))]);
            assert!(l.layered.is_none());
        }
    }

    #[test]
    fn layers_beyond_the_ladder_duplicates_and_other_codecs_are_not_forwarded() {
        let v = |k, c| t(MediaKind::Video, c, Some(k));
        let tracks = [
            v(0, Codec::Vp8),
            v(5, Codec::Vp8),
            v(0, Codec::Vp8),
            v(1, Codec::H264),
            v(2, Codec::Vp8),
        ];
        let (l, w) = Layout::new(&tracks, Some(&ladder()));
        assert_eq!(w.len(), 3, "{w:?}");
        assert_eq!(l.viewer.len(), 1);
        assert_eq!(
            l.route,
            vec![Some((0, Some(0))), None, None, None, Some((0, Some(2)))]
        );
        assert_eq!(l.layered.unwrap().sources, vec![Some(0), None, Some(4)]);
    }

    #[test]
    fn without_a_ladder_a_layered_origin_gives_its_top_layer_only() {
        let v = |k| t(MediaKind::Video, Codec::Vp8, Some(k));
        let (l, w) = Layout::new(&[v(0), v(1), v(2)], None);
        assert_eq!(w.len(), 2);
        assert_eq!(l.viewer, vec![v(0)]);
        assert_eq!(l.route, vec![Some((0, None)), None, None]);
        assert!(l.layered.is_none());
    }
}
