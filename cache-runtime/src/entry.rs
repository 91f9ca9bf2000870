//! The stored form of a value: a small header, then JSON.
//!
//! ```text
//! byte 0      0xA5 (magic: never the first byte of UTF-8 text, so no plain string is mistaken for an entry)
//! byte 1      format version (1)
//! bytes 2..10 the instant the value stops being fresh, in Unix milliseconds, big-endian
//! bytes 10..  the value as JSON
//! ```
//!
//! A later format bumps byte 1; an entry whose header is unknown decodes as an
//! error, which callers count and treat as a miss, so old readers never misread
//! new entries and vice versa.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};

const MAGIC: u8 = 0xA5;
const FORMAT: u8 = 1;
const HEADER: usize = 10;

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
}

/// Encodes `value`, fresh for `fresh_for` from now.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T, fresh_for: Duration) -> Result<Vec<u8>> {
    let fresh_until =
        unix_ms(SystemTime::now()).saturating_add(u64::try_from(fresh_for.as_millis()).unwrap_or(u64::MAX));
    let mut bytes = Vec::with_capacity(256);
    bytes.push(MAGIC);
    bytes.push(FORMAT);
    bytes.extend_from_slice(&fresh_until.to_be_bytes());
    serde_json::to_writer(&mut bytes, value).map_err(Error::Encode)?;
    Ok(bytes)
}

/// Decodes an entry written by [`encode`].
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> std::result::Result<Entry<T>, DecodeError> {
    if bytes.len() < HEADER {
        return Err(DecodeError::Short(bytes.len()));
    }
    if bytes[0] != MAGIC {
        return Err(DecodeError::Magic(bytes[0]));
    }
    if bytes[1] != FORMAT {
        return Err(DecodeError::Format(bytes[1]));
    }
    let mut stamp = [0u8; 8];
    stamp.copy_from_slice(&bytes[2..HEADER]);
    let value = serde_json::from_slice(&bytes[HEADER..])?;
    Ok(Entry {
        value,
        fresh_until_ms: u64::from_be_bytes(stamp),
    })
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
        other_format[1] = 2;
        assert!(matches!(decode::<u8>(&other_format), Err(DecodeError::Format(2))));
        let wrong_type = encode(&"text", Duration::from_secs(1)).unwrap();
        assert!(matches!(decode::<u64>(&wrong_type), Err(DecodeError::Json(_))));
    }
}
