//! The layers of a layered source (an encoding ladder, issue 26), as the producer's
//! `--ladder` flag and its meta's `layers` field write them: `WxH@kbps`, comma-separated, top
//! first. Layer `k` is the `k`-th of that list (0 = the highest), and its video m-section in
//! the origin's SDP carries `a=msid:` with stream id [`msid`]`(k)`. docs/protocol.md "Layers".

use std::fmt;
use std::str::FromStr;

/// The meta field that lists a layered source's layers (absent: one layer, as before).
pub const META_KEY: &str = "layers";

/// One encoding of the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layer {
    pub width: u32,
    pub height: u32,
    /// Target bitrate, kbit/s.
    pub kbps: u32,
}

/// A source's layers, top first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ladder(pub Vec<Layer>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LadderError {
    #[error("'{0}' is not WIDTHxHEIGHT@KBPS (e.g. 1280x720@2000)")]
    Layer(String),
    #[error("a ladder needs at least one layer")]
    Empty,
    #[error("layers go from the highest down: '{0}' is not below the layer before it")]
    Order(String),
}

/// The msid stream id of layer `k`'s video m-section.
pub fn msid(k: usize) -> String {
    format!("gwc-layer-{k}")
}

/// The layer an msid stream id names, if it is one of [`msid`]'s.
pub fn layer_of_msid(stream_id: &str) -> Option<usize> {
    stream_id.strip_prefix("gwc-layer-")?.parse().ok()
}

impl Ladder {
    /// The layer a viewer capped at `max_height` may receive at most: the highest no taller
    /// than the cap (the lowest when all are).
    pub fn highest_within(&self, max_height: u32) -> usize {
        self.0
            .iter()
            .position(|l| l.height <= max_height)
            .unwrap_or(self.0.len().saturating_sub(1))
    }
}

impl FromStr for Layer {
    type Err = LadderError;
    fn from_str(s: &str) -> Result<Layer, LadderError> {
        let bad = || LadderError::Layer(s.to_owned());
        let (size, kbps) = s.trim().split_once('@').ok_or_else(bad)?;
        let (w, h) = size.split_once('x').ok_or_else(bad)?;
        let n = |v: &str| v.parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(bad);
        Ok(Layer {
            width: n(w)?,
            height: n(h)?,
            kbps: n(kbps)?,
        })
    }
}

impl FromStr for Ladder {
    type Err = LadderError;
    fn from_str(s: &str) -> Result<Ladder, LadderError> {
        let layers = s
            .split(',')
            .filter(|l| !l.trim().is_empty())
            .map(Layer::from_str)
            .collect::<Result<Vec<_>, _>>()?;
        if layers.is_empty() {
            return Err(LadderError::Empty);
        }
        for pair in layers.windows(2) {
            if pair[1].height >= pair[0].height || pair[1].kbps >= pair[0].kbps {
                return Err(LadderError::Order(pair[1].to_string()));
            }
        }
        Ok(Ladder(layers))
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}@{}", self.width, self.height, self.kbps)
    }
}

impl fmt::Display for Ladder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, l) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{l}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ladder_round_trips_through_its_text() {
        let text = "1280x720@2000,640x360@600,320x180@150";
        let ladder: Ladder = text.parse().unwrap();
        assert_eq!(ladder.0.len(), 3);
        assert_eq!(
            ladder.0[1],
            Layer {
                width: 640,
                height: 360,
                kbps: 600
            }
        );
        assert_eq!(ladder.to_string(), text);
    }

    #[test]
    fn malformed_and_unordered_ladders_are_refused() {
        assert_eq!("".parse::<Ladder>(), Err(LadderError::Empty));
        assert!(matches!(
            "1280x720".parse::<Ladder>(),
            Err(LadderError::Layer(_))
        ));
        assert!(matches!(
            "0x720@20".parse::<Ladder>(),
            Err(LadderError::Layer(_))
        ));
        assert!(matches!(
            "640x360@600,1280x720@2000".parse::<Ladder>(),
            Err(LadderError::Order(_))
        ));
    }

    #[test]
    fn a_cap_picks_the_highest_layer_within_it() {
        let ladder: Ladder = "1280x720@2000,640x360@600,320x180@150".parse().unwrap();
        assert_eq!(ladder.highest_within(1080), 0);
        assert_eq!(ladder.highest_within(400), 1);
        assert_eq!(ladder.highest_within(100), 2);
    }

    #[test]
    fn layer_msids_name_their_layer() {
        assert_eq!(layer_of_msid(&msid(2)), Some(2));
        assert_eq!(layer_of_msid("stream"), None);
    }
}
