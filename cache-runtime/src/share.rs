//! Decoded values kept in process memory: an in-process entry (the memory
//! store's, or the tiered store's copy) keeps the value its bytes decode to
//! beside them, so that the next hit clones that value out instead of decoding
//! the bytes again.
//!
//! Which values can be handed out that way is a property of their type (they
//! must be `Clone + Send + Sync + 'static`), which a generic function cannot
//! ask of every type: a call says how it shares with a [`Sharing`] — [`Cloned`]
//! where the type allows it, [`Decode`] (decode every hit) otherwise.
//! `#[cached]` picks one for the function's value type at compile time.

use std::any::Any;
use std::marker::PhantomData;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::entry::Entry;

/// A value as the in-process stores keep it, whatever its type.
pub type Kept = dyn Any + Send + Sync;

/// How a call hands out a value an in-process entry keeps decoded, and makes
/// the value it decoded kept. Implemented by [`Cloned`] and [`Decode`] only.
pub trait Sharing<T>: Copy + Send + Sync + 'static {
    /// A copy of `kept` if it is a `T`.
    fn take(self, kept: &Kept) -> Option<T>;
    /// A copy of `value` to keep, or `None` for a type that is not kept.
    fn keep(self, value: &T) -> Option<Box<Kept>>;
}

/// Hits clone the kept value out: for `Clone + Send + Sync + 'static` types.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cloned;

impl<T: Clone + Send + Sync + 'static> Sharing<T> for Cloned {
    fn take(self, kept: &Kept) -> Option<T> {
        kept.downcast_ref::<T>().cloned()
    }

    fn keep(self, value: &T) -> Option<Box<Kept>> {
        Some(Box::new(value.clone()))
    }
}

/// Every hit decodes the entry's bytes: for any type.
#[derive(Debug, Clone, Copy, Default)]
pub struct Decode;

impl<T> Sharing<T> for Decode {
    fn take(self, _: &Kept) -> Option<T> {
        None
    }

    fn keep(self, _: &T) -> Option<Box<Kept>> {
        None
    }
}

/// Picks [`Cloned`] for a value type that allows it and [`Decode`] for any
/// other, at compile time, for a type written out where the call is made (the
/// code `#[cached]` generates): `(&Probe::<T>::new()).sharing()` resolves to
/// [`ByClone::sharing`] when `T: Clone + Send + Sync + 'static`, and to
/// [`ByDecode::sharing`] through one more reference otherwise.
pub struct Probe<T>(PhantomData<fn() -> T>);

impl<T> Probe<T> {
    /// The probe of `T`.
    pub const fn new() -> Self {
        Probe(PhantomData)
    }
}

impl<T> Default for Probe<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// [`Probe`]'s choice for types that can be cloned out.
pub trait ByClone {
    /// [`Cloned`].
    fn sharing(&self) -> Cloned;
}

impl<T: Clone + Send + Sync + 'static> ByClone for Probe<T> {
    fn sharing(&self) -> Cloned {
        Cloned
    }
}

/// [`Probe`]'s choice for every other type.
pub trait ByDecode {
    /// [`Decode`].
    fn sharing(&self) -> Decode;
}

impl<T> ByDecode for &Probe<T> {
    fn sharing(&self) -> Decode {
        Decode
    }
}

/// One in-process entry: its bytes, and their decoded value once the first hit
/// that decoded them kept it (the bytes never change: a new value is a new
/// entry). One allocation with one reference count, which a hit on it bumps and
/// drops once.
#[derive(Clone)]
pub(crate) struct Resident(Arc<Held>);

struct Held {
    bytes: Bytes,
    decoded: OnceLock<KeptEntry>,
}

/// A kept value and when it stops being fresh.
struct KeptEntry {
    fresh_until_ms: u64,
    /// `fresh_until_ms` as a `SystemTime` (`None` past what one can hold):
    /// every hit compares the clock with it as it is read, rather than
    /// converting the clock to milliseconds since the epoch. The same test:
    /// `now < epoch + n ms` exactly when `unix_ms(now) < n`, as `unix_ms`
    /// rounds down.
    fresh_until: Option<SystemTime>,
    value: Box<Kept>,
}

impl KeptEntry {
    /// Whether the value is fresh at `now`.
    fn is_fresh(&self, now: SystemTime) -> bool {
        match self.fresh_until {
            Some(until) => now < until,
            None => self.fresh_until_ms > crate::entry::unix_ms(now),
        }
    }
}

impl std::fmt::Debug for Resident {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resident")
            .field("bytes", &self.0.bytes.len())
            .field("decoded", &self.0.decoded.get().is_some())
            .finish()
    }
}

impl Resident {
    /// An entry of `bytes`, not decoded yet.
    pub(crate) fn new(bytes: Bytes) -> Resident {
        Resident(Arc::new(Held {
            bytes,
            decoded: OnceLock::new(),
        }))
    }

    /// The entry's bytes.
    pub(crate) fn bytes(&self) -> &Bytes {
        &self.0.bytes
    }

    /// When the kept value stops being fresh, if a value is kept.
    pub(crate) fn fresh_until(&self) -> Option<SystemTime> {
        let kept = self.0.decoded.get()?;
        // Past what a `SystemTime` holds: said to end now, which only keeps
        // it out of a thread's recent hits.
        Some(kept.fresh_until.unwrap_or(UNIX_EPOCH))
    }

    /// A reference that does not keep the entry in memory.
    pub(crate) fn downgrade(&self) -> WeakResident {
        WeakResident(Arc::downgrade(&self.0))
    }

    /// The kept entry, if it is fresh at `now`, a `T`, and `share` hands it
    /// out. (A stale one is decoded again from the bytes, as stale.)
    pub(crate) fn take_fresh<T>(&self, share: impl Sharing<T>, now: SystemTime) -> Option<Entry<T>> {
        let kept = self.0.decoded.get()?;
        if !kept.is_fresh(now) {
            return None;
        }
        Some(Entry {
            value: share.take(kept.value.as_ref())?,
            fresh_until_ms: kept.fresh_until_ms,
        })
    }

    /// Keeps `entry`, decoded from this entry's bytes, unless one is kept already.
    pub(crate) fn keep<T>(&self, share: impl Sharing<T>, entry: &Entry<T>) {
        if self.0.decoded.get().is_some() {
            return;
        }
        if let Some(kept) = share.keep(&entry.value) {
            // A concurrent hit kept the same value first: either is right.
            let _ = self.0.decoded.set(KeptEntry {
                fresh_until_ms: entry.fresh_until_ms,
                fresh_until: UNIX_EPOCH.checked_add(Duration::from_millis(entry.fresh_until_ms)),
                value: kept,
            });
        }
    }
}

/// A [`Resident`] that does not keep it in memory: what a thread's recent
/// hits hold (see [`InProcessMap`](crate::backend::in_process::InProcessMap)).
pub(crate) struct WeakResident(Weak<Held>);

impl WeakResident {
    /// The entry, if something still holds it.
    pub(crate) fn upgrade(&self) -> Option<Resident> {
        self.0.upgrade().map(Resident)
    }

    /// Whether this refers to `resident`.
    pub(crate) fn is(&self, resident: &Resident) -> bool {
        std::ptr::eq(self.0.as_ptr(), Arc::as_ptr(&resident.0))
    }
}

/// An in-process entry as a store hands it to a hit.
#[derive(Debug, Clone)]
pub(crate) struct InProcess {
    pub(crate) resident: Resident,
    /// A tiered store's copy of a Redis entry (counted as an L1 hit), not the
    /// memory store's own entry.
    pub(crate) copy: bool,
    /// When the store found it live: the clock reading its kept value's
    /// freshness is judged by, so a hit reads the clock once.
    pub(crate) looked_at: SystemTime,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, PartialEq)]
    struct Report(Vec<u32>);

    struct NotClone;

    /// A fresh-until stamp far in the future.
    const FAR: u64 = u64::MAX;

    #[test]
    #[allow(clippy::needless_borrow)] // the borrow is what picks
    fn the_probe_picks_cloned_for_clone_types_and_decode_for_the_others() {
        let cloned: Cloned = (&Probe::<Report>::new()).sharing();
        let decode: Decode = (&Probe::<NotClone>::new()).sharing();
        let _ = (cloned, decode);
    }

    #[test]
    fn a_kept_value_is_cloned_out_as_its_own_type_only() {
        let resident = Resident::new(Bytes::new());
        assert!(resident.take_fresh::<Report>(Cloned, SystemTime::now()).is_none());
        let entry = Entry {
            value: Report(vec![1, 2]),
            fresh_until_ms: FAR,
        };
        resident.keep(Cloned, &entry);
        let taken = resident.take_fresh::<Report>(Cloned, SystemTime::now()).expect("kept");
        assert_eq!((taken.value, taken.fresh_until_ms), (Report(vec![1, 2]), FAR));
        assert!(
            resident.take_fresh::<String>(Cloned, SystemTime::now()).is_none(),
            "another type decodes the bytes"
        );
        assert!(resident.take_fresh::<Report>(Decode, SystemTime::now()).is_none());
        resident.keep(
            Cloned,
            &Entry {
                value: Report(vec![9]),
                fresh_until_ms: 1,
            },
        );
        assert_eq!(
            resident
                .take_fresh::<Report>(Cloned, SystemTime::now())
                .map(|e| e.value),
            Some(Report(vec![1, 2])),
            "the first stays"
        );
    }

    #[test]
    fn a_stale_kept_value_is_not_handed_out() {
        let resident = Resident::new(Bytes::new());
        resident.keep(
            Cloned,
            &Entry {
                value: Report(vec![1]),
                fresh_until_ms: 1,
            },
        );
        assert!(resident.take_fresh::<Report>(Cloned, SystemTime::now()).is_none());
    }

    #[test]
    fn a_kept_value_is_fresh_until_its_millisecond() {
        let now = crate::entry::unix_ms(SystemTime::now());
        for (fresh_until_ms, fresh) in [
            (now + 60_000, true),
            (now.saturating_sub(1), false),
            (0, false),
            (FAR, true),
        ] {
            let resident = Resident::new(Bytes::new());
            resident.keep(
                Cloned,
                &Entry {
                    value: Report(vec![1]),
                    fresh_until_ms,
                },
            );
            assert_eq!(
                resident.take_fresh::<Report>(Cloned, SystemTime::now()).is_some(),
                fresh,
                "{fresh_until_ms}"
            );
        }
    }

    #[test]
    fn decode_keeps_nothing() {
        let resident = Resident::new(Bytes::new());
        resident.keep(
            Decode,
            &Entry {
                value: Report(vec![1]),
                fresh_until_ms: FAR,
            },
        );
        assert!(resident.take_fresh::<Report>(Cloned, SystemTime::now()).is_none());
    }
}
