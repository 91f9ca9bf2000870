//! The stored form of a value: a small header, then the value in its format.
//!
//! ```text
//! byte 0      0xA5 (magic: never the first byte of UTF-8 text, so no plain string is mistaken for an entry)
//! byte 1      format: 1 = JSON, 2 = MessagePack (structs as arrays)
//! bytes 2..10 the instant the value stops being fresh, in Unix milliseconds, big-endian
//! bytes 10..  the value
//! ```
//!
//! With a signing or encryption key the entry is wrapped in an envelope with
//! the same magic byte and byte 1 `0x81` (signed) or `0x82` (sealed); see
//! [`seal`](crate::seal). A cache without keys sees those as unknown formats.
//!
//! Readers go by byte 1, whatever format their own cache writes, so a fleet can
//! switch formats one process at a time. An entry whose header is unknown decodes
//! as an error, which callers count and treat as a miss, so old readers never
//! misread new entries and vice versa.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};

pub(crate) const MAGIC: u8 = 0xA5;
const HEADER: usize = 10;
/// Where the fresh-until stamp sits in the header.
pub(crate) const STAMP_AT: usize = 2;
const JSON: u8 = 1;
const MESSAGE_PACK: u8 = 2;

/// How a [`Cache`](crate::Cache) encodes the values of cached functions
/// (`CACHE_ENTRY_FORMAT`, [`CacheBuilder::entry_format`](crate::CacheBuilder::entry_format)).
///
/// Every reader decodes both, so changing it needs no flush: entries written in
/// the other format keep being read until they expire.
///
/// ```
/// use aside::{EntryFormat, Settings};
///
/// let settings = Settings::from_lookup(|name| (name == "CACHE_ENTRY_FORMAT").then(|| "msgpack".to_owned()))
///     .unwrap();
/// assert_eq!(settings.entry_format(), EntryFormat::MessagePack);
/// assert_eq!(Settings::default().entry_format(), EntryFormat::Json);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EntryFormat {
    /// JSON (`serde_json`), the default: readable with `redis-cli`, and an entry
    /// written before a struct gained a `#[serde(default)]` field still decodes.
    #[default]
    Json,
    /// MessagePack with structs as arrays (`rmp-serde`): for struct-heavy values,
    /// several times smaller and faster to decode, since field names are not stored.
    ///
    /// A value that does not read back from this form (say a struct with
    /// `#[serde(skip_serializing_if)]` or `#[serde(flatten)]`, whose fields are
    /// then out of place) is stored as JSON instead, so it is never a permanent
    /// miss. Adding or reordering struct fields needs a new `version`.
    MessagePack,
}

impl EntryFormat {
    /// The format's byte in the entry header.
    fn byte(self) -> u8 {
        match self {
            EntryFormat::Json => JSON,
            EntryFormat::MessagePack => MESSAGE_PACK,
        }
    }

    /// The setting's spelling: `json` or `msgpack`.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryFormat::Json => "json",
            EntryFormat::MessagePack => "msgpack",
        }
    }

    pub(crate) fn parse(var: &'static str, text: &str) -> Result<EntryFormat> {
        match text.to_ascii_lowercase().as_str() {
            "json" => Ok(EntryFormat::Json),
            "msgpack" | "messagepack" => Ok(EntryFormat::MessagePack),
            other => Err(Error::Config {
                var,
                problem: format!("unknown entry format `{other}`: expected json or msgpack"),
            }),
        }
    }
}

/// A decoded entry.
#[derive(Debug)]
pub(crate) struct Entry<T> {
    pub(crate) value: T,
    /// Unix milliseconds after which the value is stale.
    pub(crate) fresh_until_ms: u64,
}

impl<T> Entry<T> {
    /// `true` while the value is within its fresh lifetime.
    pub(crate) fn is_fresh(&self) -> bool {
        unix_ms(SystemTime::now()) < self.fresh_until_ms
    }
}

/// Why bytes did not decode as an entry.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("{0} bytes is shorter than an entry header")]
    Short(usize),
    #[error("not an aside entry (magic byte {0:#04x})")]
    Magic(u8),
    #[error("entry format {0} is not known to this version")]
    Format(u8),
    #[error("the value does not decode as the expected type: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the value does not decode as the expected type: {0}")]
    MessagePack(#[from] rmp_serde::decode::Error),
}

/// Encodes `value` as JSON, fresh for `fresh_for` from now.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T, fresh_for: Duration) -> Result<Vec<u8>> {
    let mut bytes = header(EntryFormat::Json, fresh_for);
    serde_json::to_writer(&mut bytes, value).map_err(|e| Error::Encode(Box::new(e)))?;
    Ok(bytes)
}

/// Encodes `value` in `format`, fresh for `fresh_for` from now.
///
/// MessagePack stores structs as arrays, so a struct that skips fields when
/// serializing reads back with its fields out of place: an error, or worse, other
/// values. The encoding is therefore checked once here, on the store path (where
/// a computation just ran): the bytes must decode and encode again to the same
/// bytes, or the value is stored as JSON.
pub(crate) fn encode_as<T: Serialize + DeserializeOwned>(
    value: &T,
    fresh_for: Duration,
    format: EntryFormat,
) -> Result<Vec<u8>> {
    if format == EntryFormat::MessagePack {
        let mut bytes = header(format, fresh_for);
        match rmp_serde::encode::write(&mut bytes, value) {
            Ok(()) if reads_back::<T>(&bytes[HEADER..]) => return Ok(bytes),
            Ok(()) => tracing::debug!(target: "aside", "value does not read back from MessagePack; stored as JSON"),
            Err(error) => {
                tracing::debug!(target: "aside", %error, "value does not encode as MessagePack; stored as JSON")
            }
        }
    }
    encode(value, fresh_for)
}

/// `true` when `packed` decodes as a `T` that encodes to `packed` again.
fn reads_back<T: Serialize + DeserializeOwned>(packed: &[u8]) -> bool {
    rmp_serde::from_slice::<T>(packed)
        .ok()
        .and_then(|decoded| rmp_serde::to_vec(&decoded).ok())
        .is_some_and(|again| again == packed)
}

fn header(format: EntryFormat, fresh_for: Duration) -> Vec<u8> {
    let fresh_until =
        unix_ms(SystemTime::now()).saturating_add(u64::try_from(fresh_for.as_millis()).unwrap_or(u64::MAX));
    let mut bytes = Vec::with_capacity(256);
    bytes.push(MAGIC);
    bytes.push(format.byte());
    bytes.extend_from_slice(&fresh_until.to_be_bytes());
    bytes
}

/// Decodes an entry written by [`encode`] or [`encode_as`], in either format.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> std::result::Result<Entry<T>, DecodeError> {
    if bytes.len() < HEADER {
        return Err(DecodeError::Short(bytes.len()));
    }
    if bytes[0] != MAGIC {
        return Err(DecodeError::Magic(bytes[0]));
    }
    let body = &bytes[HEADER..];
    let value = match bytes[1] {
        JSON => serde_json::from_slice(body)?,
        MESSAGE_PACK => rmp_serde::from_slice(body)?,
        other => return Err(DecodeError::Format(other)),
    };
    Ok(Entry {
        value,
        fresh_until_ms: stamp(bytes),
    })
}

/// Whether `bytes` start with a plain entry's header (not a signed or sealed
/// envelope, whose stamp cannot be read or changed without the keys).
fn plain(bytes: &[u8]) -> bool {
    bytes.len() >= HEADER && bytes[0] == MAGIC && PLAIN_FORMATS.contains(&bytes[1])
}

/// The format bytes of plain entries, as the soft-invalidation script checks them.
pub(crate) const PLAIN_FORMATS: [u8; 2] = [JSON, MESSAGE_PACK];

/// When the plain entry `bytes` stops being fresh (Unix milliseconds), read
/// from its header alone; `None` for anything else.
pub(crate) fn fresh_until(bytes: &[u8]) -> Option<u64> {
    plain(bytes).then(|| stamp(bytes))
}

/// The fresh-until stamp of a header known to be whole.
fn stamp(bytes: &[u8]) -> u64 {
    let mut stamp = [0u8; 8];
    stamp.copy_from_slice(&bytes[STAMP_AT..HEADER]);
    u64::from_be_bytes(stamp)
}

/// The plain entry `bytes` made stale at once (its fresh-until stamp zeroed;
/// value and format kept), or `None` for anything else — which soft
/// invalidation removes instead.
pub(crate) fn expired(bytes: &[u8]) -> Option<Vec<u8>> {
    if !plain(bytes) {
        return None;
    }
    let mut stale = bytes.to_vec();
    stale[STAMP_AT..HEADER].fill(0);
    Some(stale)
}

pub(crate) fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_freshness() {
        let bytes = encode(&vec![1, 2, 3], Duration::from_secs(60)).unwrap();
        let entry: Entry<Vec<u32>> = decode(&bytes).unwrap();
        assert_eq!(entry.value, [1, 2, 3]);
        assert!(entry.is_fresh());
        let stale: Entry<Vec<u32>> = decode(&encode(&vec![1], Duration::ZERO).unwrap()).unwrap();
        assert!(!stale.is_fresh());
    }

    #[test]
    fn foreign_bytes_are_errors_not_panics() {
        assert!(matches!(decode::<u8>(b""), Err(DecodeError::Short(0))));
        assert!(matches!(
            decode::<u8>(b"{\"plain\":\"json\"}"),
            Err(DecodeError::Magic(b'{'))
        ));
        let mut other_format = encode(&1u8, Duration::from_secs(1)).unwrap();
        other_format[1] = 3;
        assert!(matches!(decode::<u8>(&other_format), Err(DecodeError::Format(3))));
        let wrong_type = encode(&"text", Duration::from_secs(1)).unwrap();
        assert!(matches!(decode::<u64>(&wrong_type), Err(DecodeError::Json(_))));
        let wrong_type = encode_as(&"text".to_owned(), Duration::from_secs(1), EntryFormat::MessagePack).unwrap();
        assert!(matches!(decode::<u64>(&wrong_type), Err(DecodeError::MessagePack(_))));
    }

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Month {
        month: u32,
        revenue_cents: i64,
        note: Option<String>,
    }

    #[test]
    fn message_pack_is_compact_and_read_by_every_reader() {
        let months: Vec<Month> = (1..=12)
            .map(|month| Month {
                month,
                revenue_cents: 9_876_543,
                note: None,
            })
            .collect();
        let json = encode_as(&months, Duration::from_secs(60), EntryFormat::Json).unwrap();
        let packed = encode_as(&months, Duration::from_secs(60), EntryFormat::MessagePack).unwrap();
        assert_eq!((json[1], packed[1]), (1, 2));
        assert!(
            packed.len() * 3 < json.len(),
            "{} vs {} bytes",
            packed.len(),
            json.len()
        );
        for bytes in [&json, &packed] {
            let entry: Entry<Vec<Month>> = decode(bytes).unwrap();
            assert_eq!(entry.value, months);
            assert!(entry.is_fresh());
        }
    }

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Sparse {
        id: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
        total: u64,
    }

    #[test]
    fn a_value_that_does_not_read_back_from_message_pack_is_stored_as_json() {
        // Skipping `note` shifts `total` into its place in the array form.
        let sparse = Sparse {
            id: 7,
            note: None,
            total: 42,
        };
        let bytes = encode_as(&sparse, Duration::from_secs(60), EntryFormat::MessagePack).unwrap();
        assert_eq!(bytes[1], 1, "fell back to JSON");
        assert_eq!(decode::<Sparse>(&bytes).unwrap().value, sparse);
    }

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Shifty {
        id: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parent: Option<u64>,
        #[serde(default)]
        total: u64,
    }

    #[test]
    fn a_value_that_reads_back_as_another_is_stored_as_json() {
        // [7, 42] decodes without error, as parent 42 and total 0.
        let shifty = Shifty {
            id: 7,
            parent: None,
            total: 42,
        };
        let bytes = encode_as(&shifty, Duration::from_secs(60), EntryFormat::MessagePack).unwrap();
        assert_eq!(bytes[1], 1, "fell back to JSON");
        assert_eq!(decode::<Shifty>(&bytes).unwrap().value, shifty);
    }

    #[test]
    fn formats_parse_by_name() {
        assert_eq!(EntryFormat::parse("V", "JSON").unwrap(), EntryFormat::Json);
        assert_eq!(EntryFormat::parse("V", "msgpack").unwrap(), EntryFormat::MessagePack);
        let err = EntryFormat::parse("CACHE_ENTRY_FORMAT", "yaml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("CACHE_ENTRY_FORMAT") && err.contains("yaml"), "{err}");
    }
}
