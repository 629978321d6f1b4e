//! Reading an envelope as a receiver does: the header and every message it carries, in one
//! pass over the text when the kind comes before the body (the hot path of every node), the
//! careful way otherwise.

use serde::Deserialize;

use super::*;

/// An envelope as a receiver reads it: the header and every message it carries.
#[derive(Debug)]
pub struct Received {
    pub from: String,
    pub boot: u64,
    pub seq: u64,
    /// When it was sent (0: not said); see [`Envelope::at`].
    pub at: u64,
    /// The envelope's kind ([`BATCH_KIND`] for a batch).
    pub kind: String,
    /// As [`Envelope::messages`] gives them.
    pub messages: Vec<Result<Option<NodeMessage>, EnvelopeError>>,
}

impl Received {
    /// Reads an envelope and its messages, in one pass over the text when the kind comes
    /// before the body (as this crate writes it): the hot path of every node, where reading
    /// the body first as raw JSON and then again as messages scanned each payload three times.
    /// Anything else (another field order, a message that cannot be read) is read again the
    /// careful way, [`Envelope::parse`] and [`Envelope::messages`], so the outcome is the same.
    pub fn parse(text: &str) -> Result<Received, EnvelopeError> {
        let mut de = serde_json::Deserializer::from_str(text);
        let quick = serde::Deserializer::deserialize_map(&mut de, OnePass)
            .ok()
            .flatten()
            .filter(|_| de.end().is_ok());
        if let Some(received) = quick {
            return Ok(received);
        }
        let env = Envelope::parse(text)?;
        let messages = env.messages()?;
        Ok(Received {
            from: env.from,
            boot: env.boot,
            seq: env.seq,
            at: env.at,
            kind: env.kind,
            messages,
        })
    }
}

/// The fields of an envelope and of a batch item, read without allocating.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum Field {
    V,
    From,
    Boot,
    Seq,
    At,
    Kind,
    Body,
    #[serde(other)]
    Other,
}

/// Reads an envelope in one pass; `None` when it cannot (body before kind, or a newer
/// version): the caller then reads it the careful way.
struct OnePass;

impl<'de> serde::de::Visitor<'de> for OnePass {
    type Value = Option<Received>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an envelope")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        use serde::de::IgnoredAny;
        let (mut v, mut from, mut boot, mut seq, mut at, mut kind) = (None, None, 0, None, 0, None);
        let mut messages = None;
        while let Some(key) = map.next_key::<Field>()? {
            match key {
                Field::V => v = Some(map.next_value::<u16>()?),
                Field::From => from = Some(map.next_value::<String>()?),
                Field::Boot => boot = map.next_value::<u64>()?,
                Field::Seq => seq = Some(map.next_value::<u64>()?),
                Field::At => at = map.next_value::<u64>()?,
                Field::Kind => kind = Some(map.next_value::<String>()?),
                Field::Body => match (&kind, v) {
                    (Some(k), Some(v)) if v <= ENVELOPE_VERSION => {
                        messages = Some(if k == BATCH_KIND {
                            map.next_value_seed(BatchSeed)?
                        } else {
                            vec![Ok(map.next_value_seed(BodySeed(k))?)]
                        });
                    }
                    _ => return Ok(None),
                },
                Field::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(match (from, seq, kind, messages) {
            (Some(from), Some(seq), Some(kind), Some(messages)) => Some(Received {
                from,
                boot,
                seq,
                at,
                kind,
                messages,
            }),
            _ => None,
        })
    }
}

/// A body of a known kind.
struct BodySeed<'k>(&'k str);

impl<'de> serde::de::DeserializeSeed<'de> for BodySeed<'_> {
    type Value = Option<NodeMessage>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        decode(self.0, d)
    }
}

/// A batch's list of `{"kind", "body"}` items.
struct BatchSeed;

impl<'de> serde::de::DeserializeSeed<'de> for BatchSeed {
    type Value = Vec<Result<Option<NodeMessage>, EnvelopeError>>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for BatchSeed {
    type Value = Vec<Result<Option<NodeMessage>, EnvelopeError>>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list of messages")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(8));
        while let Some(msg) = seq.next_element_seed(ItemSeed)? {
            out.push(Ok(msg));
        }
        Ok(out)
    }
}

/// One `{"kind", "body"}` item of a batch, kind first.
struct ItemSeed;

impl<'de> serde::de::DeserializeSeed<'de> for ItemSeed {
    type Value = Option<NodeMessage>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for ItemSeed {
    type Value = Option<NodeMessage>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a message")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        use serde::de::Error;
        // (kinds are plain ASCII as we write them: borrowed; an escaped one fails here and the
        // careful reader takes over)
        let (mut kind, mut msg) = (None::<&'de str>, None);
        while let Some(key) = map.next_key::<Field>()? {
            match key {
                Field::Kind => kind = Some(map.next_value()?),
                // (body before kind: the careful reader handles it)
                Field::Body => match kind {
                    Some(k) => msg = Some(map.next_value_seed(BodySeed(k))?),
                    None => return Err(A::Error::custom("body before kind")),
                },
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        msg.ok_or_else(|| A::Error::custom("a message without a body"))
    }
}
