//! Typed errors of the cache.
//!
//! Errors never carry secrets: Redis URLs are stored redacted (see
//! [`RedisTarget`](crate::config::RedisTarget)), so printing an [`Error`] with
//! `{}` or `{:?}` is always safe.

use std::time::Duration;

/// A `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the cache.
///
/// Annotated functions never see these: a cache error there is logged, counted
/// in [`Stats`](crate::Stats) and the function falls back to computing
/// (fail-open). The by-hand methods of [`Cache`](crate::Cache) return them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting (environment variable or builder value) is invalid.
    #[error("invalid setting {var}: {problem}")]
    Config {
        /// The variable or builder method, e.g. `REDIS_URL`.
        var: &'static str,
        /// What is wrong with it; never contains a password.
        problem: String,
    },

    /// Connecting to Redis failed (unreachable, wrong password, TLS failure).
    #[error("cannot connect to {target}: {source}")]
    Connect {
        /// The redacted URL of the server.
        target: String,
        /// What redis-rs reported.
        #[source]
        source: redis::RedisError,
    },

    /// A Redis command failed.
    #[error("redis {op} failed: {source}")]
    Redis {
        /// The command, e.g. `GET`.
        op: &'static str,
        /// What redis-rs reported.
        #[source]
        source: redis::RedisError,
    },

    /// A backend operation took longer than the operation timeout.
    #[error("{op} timed out after {after:?}")]
    Timeout {
        /// The command, e.g. `GET`.
        op: &'static str,
        /// The timeout in force (`CACHE_OP_TIMEOUT`).
        after: Duration,
    },

    /// The circuit breaker is open: Redis failed repeatedly and is skipped until
    /// a probe succeeds.
    #[error("redis skipped: the circuit breaker is open after repeated failures")]
    CircuitOpen,

    /// A value could not be serialized (its `Serialize` implementation failed,
    /// or JSON cannot represent it, such as a map with non-string keys).
    #[error("cannot encode the value: {0}")]
    Encode(#[source] Box<dyn std::error::Error + Send + Sync>),

    /// A key argument could not be serialized to JSON, so no key can be built.
    #[error("cannot build a key from the arguments: {0}")]
    Key(String),

    /// An encoded value is larger than `CACHE_MAX_VALUE_SIZE`; it was not stored.
    #[error("value of {size} bytes is larger than the {limit}-byte limit; not stored")]
    ValueTooLarge {
        /// The encoded size.
        size: usize,
        /// The limit in force.
        limit: usize,
    },

    /// A TTL is zero (or otherwise unusable).
    #[error("invalid TTL {0:?}: a TTL must be at least one millisecond")]
    InvalidTtl(Duration),

    /// [`Cache::set_global`](crate::Cache::set_global) was called after the global
    /// cache had been set or used.
    #[error("the global cache is already initialized")]
    GlobalAlreadySet,
}

impl Error {
    /// `true` when the error comes from the backend being unreachable, slow or failing,
    /// as opposed to a programming or configuration mistake.
    pub fn is_backend(&self) -> bool {
        matches!(
            self,
            Error::Connect { .. } | Error::Redis { .. } | Error::Timeout { .. } | Error::CircuitOpen
        )
    }

    /// `true` when the error says Redis is unreachable or not serving (the kind
    /// that trips the circuit breaker), as opposed to Redis answering with an error.
    pub(crate) fn is_unavailability(&self) -> bool {
        match self {
            Error::Connect { .. } | Error::Timeout { .. } | Error::CircuitOpen => true,
            Error::Redis { source, .. } => {
                use redis::{ErrorKind, ServerErrorKind};
                source.is_io_error()
                    || source.is_connection_dropped()
                    || source.is_connection_refusal()
                    || source.is_timeout()
                    || matches!(
                        source.kind(),
                        ErrorKind::Server(
                            ServerErrorKind::ClusterDown
                                | ServerErrorKind::BusyLoading
                                | ServerErrorKind::MasterDown
                                | ServerErrorKind::TryAgain
                        )
                    )
            }
            _ => false,
        }
    }
}
