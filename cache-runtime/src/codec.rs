//! How one cache turns values into stored entries and back: the entry format,
//! the signature and seal (with keys), the TTL ceiling and the size limit, with
//! the logs and counts of entries that do not verify or decode, are clamped, or
//! are not stored.
//!
//! Every read of an entry's bytes goes through [`Codec::decode`] (counted) or
//! [`Codec::read`] (silent), so none skips the signature or the seal.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::config::Settings;
use crate::entry::{self, Entry, EntryFormat};
use crate::error::{Error, Result};
use crate::policy::clamp;
use crate::redact::Redacted;
use crate::seal::Seal;
use crate::stats::{Event, Probe};

/// The entry rules of one cache.
#[derive(Debug)]
pub(crate) struct Codec {
    format: EntryFormat,
    max_ttl: Duration,
    max_value_size: usize,
    seal: Seal,
    clamp_logged: AtomicBool,
}

impl Codec {
    pub(crate) fn new(settings: &Settings) -> Codec {
        Codec {
            format: settings.entry_format,
            max_ttl: settings.max_ttl,
            max_value_size: settings.max_value_size,
            seal: Seal::new(&settings.keys),
            clamp_logged: AtomicBool::new(false),
        }
    }

    /// The format cached functions' values are written in.
    pub(crate) fn format(&self) -> EntryFormat {
        self.format
    }

    /// Encodes `value` with `encode`, fresh for `fresh`, kept for `lifetime`
    /// clamped to the ceiling, and signs or seals it for the full key `key`.
    /// Returns the bytes and the TTL to write.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTtl`] for a zero `fresh`, the encoder's errors, and
    /// [`Error::Encode`] when the entry cannot be sealed.
    pub(crate) fn encode<T: ?Sized>(
        &self,
        key: &str,
        value: &T,
        fresh: Duration,
        lifetime: Duration,
        encode: impl FnOnce(&T, Duration) -> Result<Vec<u8>>,
    ) -> Result<(Bytes, Duration)> {
        if fresh.is_zero() {
            return Err(Error::InvalidTtl(fresh));
        }
        let ceiling = clamp(lifetime, self.max_ttl);
        if ceiling.clamped {
            self.log_clamp(key, lifetime);
        }
        let bytes = self.seal.wrap(key, encode(value, fresh.min(ceiling.ttl))?)?;
        Ok((Bytes::from(bytes), ceiling.ttl))
    }

    /// `value` in this cache's format, fresh for `fresh`, signed or sealed for
    /// the full key `key`: what a computation hands to the callers of this
    /// process waiting for it.
    ///
    /// # Errors
    ///
    /// The encoder's errors, and [`Error::Encode`] when it cannot be sealed.
    pub(crate) fn pack<T: Serialize + DeserializeOwned>(&self, key: &str, value: &T, fresh: Duration) -> Result<Bytes> {
        let bytes = entry::encode_as(value, fresh, self.format)?;
        Ok(Bytes::from(self.seal.wrap(key, bytes)?))
    }

    /// Checks the size limit (`CACHE_MAX_VALUE_SIZE`).
    ///
    /// # Errors
    ///
    /// [`Error::ValueTooLarge`] above the limit.
    pub(crate) fn fits(&self, bytes: &[u8]) -> Result<()> {
        let limit = self.max_value_size;
        if bytes.len() > limit {
            return Err(Error::ValueTooLarge {
                size: bytes.len(),
                limit,
            });
        }
        Ok(())
    }

    /// Decodes the entry read at the full key `key`; one that does not verify
    /// (with keys) or does not decode is logged, counted, and a miss.
    pub(crate) fn decode<T: DeserializeOwned>(&self, key: &str, bytes: &[u8], probe: &Probe<'_>) -> Option<Entry<T>> {
        let plain = match self.seal.open(key, bytes) {
            Ok(plain) => plain,
            Err(why) => {
                probe.record(Event::Unverified);
                tracing::warn!(target: "aside", key = %Redacted(key), error = %why,
                    "entry does not verify; treating it as a miss");
                return None;
            }
        };
        match entry::decode(&plain) {
            Ok(entry) => Some(entry),
            Err(error) => {
                probe.record(Event::DecodeError);
                tracing::warn!(target: "aside", key = %Redacted(key), %error,
                    "entry does not decode; treating it as a miss");
                None
            }
        }
    }

    /// Decodes the entry at the full key `key` without logging or counting: for
    /// bytes a caller of this process handed over, or read again after a
    /// counted read. Verified all the same.
    pub(crate) fn read<T: DeserializeOwned>(&self, key: &str, bytes: &[u8]) -> Option<Entry<T>> {
        let plain = self.seal.open(key, bytes).ok()?;
        entry::decode(&plain).ok()
    }

    /// The value of the entry at the full key `key`, if it verifies, decodes
    /// and is fresh; silent, as [`read`](Codec::read).
    pub(crate) fn fresh<T: DeserializeOwned>(&self, key: &str, bytes: &[u8]) -> Option<T> {
        self.read::<T>(key, bytes)
            .filter(Entry::is_fresh)
            .map(|entry| entry.value)
    }

    /// Logs and counts a value that was computed but not stored.
    pub(crate) fn count_unstored(&self, probe: &Probe<'_>, key: &str, error: &Error) {
        match error {
            Error::ValueTooLarge { size, limit } => {
                probe.record(Event::Oversized);
                tracing::debug!(target: "aside", key = %Redacted(key), size, limit, "value not stored: larger than the size limit");
            }
            error => tracing::warn!(target: "aside", key = %Redacted(key),
                %error, "value not stored"),
        }
    }

    fn log_clamp(&self, key: &str, asked: Duration) {
        let ceiling = self.max_ttl;
        if !self.clamp_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(target: "aside", key = %Redacted(key), asked = ?asked, ceiling = ?ceiling,
                "TTL above the ceiling clamped (further clamps are logged at debug)");
        } else {
            tracing::debug!(target: "aside", key = %Redacted(key), asked = ?asked, ceiling = ?ceiling, "TTL clamped");
        }
    }
}
