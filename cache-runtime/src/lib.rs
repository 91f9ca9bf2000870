//! The runtime of [aside](https://docs.rs/aside): everything `#[cached]` functions
//! do at run time lives here — the [`Cache`] handle, the Redis and memory
//! backends, [keys](key), [policy], [statistics](Stats) and [settings](config).
//!
//! Users depend on the `aside` facade, which re-exports this crate; the items are
//! documented here.
//!
//! ```
//! # async fn demo() -> aside::Result<()> {
//! use std::time::Duration;
//! use aside::{Cache, Policy};
//!
//! // No REDIS_URL: the in-process memory backend.
//! let cache = Cache::builder().build().await?;
//! let policy = Policy::new(Duration::from_secs(300));
//! let total: Result<u64, std::io::Error> =
//!     cache.get_or_compute("orders:total", &policy, || async { Ok(1234) }).await;
//! assert_eq!(total.ok(), Some(1234));
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod backend;
mod breaker;
mod cache;
mod codec;
pub mod config;
mod entry;
mod error;
mod events;
mod flow;
#[cfg(feature = "tower")]
pub mod http;
pub mod key;
mod lock;
#[cfg(feature = "metrics")]
pub mod metrics;
mod outcome;
pub mod policy;
mod redact;
mod seal;
#[cfg(feature = "sessions")]
pub mod session;
mod share;
mod stats;
mod status;
mod tags;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use breaker::{BreakerState, NodeBreaker};
pub use cache::global::{expire_key, expire_tag, invalidate_key, invalidate_pattern, invalidate_tag, stats};
pub use cache::{AfterCommit, Cache, CacheBuilder};
pub use config::{BackendKind, MemoryCapacity, RedisTarget, Settings, TTL_CEILING};
pub use entry::EntryFormat;
pub use error::{Error, Result};
pub use events::{Events, Invalidation, InvalidationKind};
pub use key::Key;
pub use outcome::{Adaptive, Outcome, Plain};
pub use policy::Policy;
pub use stats::{Counters, InProcessSize, Stats};
pub use status::CacheStatus;

/// Where every cache's counters go besides its own cells: the `metrics` exporter
/// with that feature, nowhere without. The one place that joins `stats` (which
/// owns the [`stats::Sink`] interface) to the exporter implementing it.
#[cfg(feature = "metrics")]
const STATS_SINK: Option<&'static dyn stats::Sink> = Some(&metrics::Exporter);
#[cfg(not(feature = "metrics"))]
const STATS_SINK: Option<&'static dyn stats::Sink> = None;
