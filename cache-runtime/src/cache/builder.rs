//! [`CacheBuilder`]: a cache configured in code.

use std::time::Duration;

use super::Cache;
use crate::config::{BackendKind, Settings};
use crate::entry::EntryFormat;
use crate::error::{Error, Result};

/// Builds a [`Cache`] in code; every setting starts at its default (memory backend).
///
/// ```
/// # async fn demo() -> aside::Result<()> {
/// use std::time::Duration;
/// use aside::Cache;
///
/// let cache = Cache::builder()
///     .namespace("shop")
///     .key_version(2)
///     .max_ttl(Duration::from_secs(3600))
///     .build()
///     .await?;
/// assert_eq!(cache.full_key("cart:7")?, "shop:cart:7");
///
/// // A bad URL is an error naming the problem, never the password.
/// let err = Cache::builder().redis_url("redis://:hunter2@host:port").build().await.unwrap_err();
/// assert!(!err.to_string().contains("hunter2"));
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
/// ```
#[derive(Debug, Default)]
pub struct CacheBuilder {
    settings: Settings,
    error: Option<Error>,
}

impl CacheBuilder {
    /// Starts from the environment's settings instead of the defaults.
    ///
    /// # Errors
    ///
    /// As [`Settings::from_env`].
    pub fn from_env() -> Result<CacheBuilder> {
        Ok(CacheBuilder {
            settings: Settings::from_env()?,
            error: None,
        })
    }

    fn keep(mut self, result: Result<()>) -> Self {
        if let Err(error) = result {
            self.error.get_or_insert(error);
        }
        self
    }

    /// Use Redis at `url` (`redis://`, `rediss://`, `redis+cluster://h1:p1,h2:p2`,
    /// `redis+sentinel://h1:p1,h2:p2/<master-name>`; see [`RedisTarget::parse`](crate::RedisTarget::parse)).
    pub fn redis_url(mut self, url: &str) -> Self {
        let parsed = crate::config::RedisTarget::parse(url).map(|target| {
            self.settings.backend = BackendKind::Redis(target);
        });
        self.keep(parsed)
    }

    /// Use the in-process memory backend.
    pub fn memory(mut self) -> Self {
        self.settings.backend = BackendKind::Memory;
        self
    }

    /// Store nothing: every call computes.
    pub fn off(mut self) -> Self {
        self.settings.backend = BackendKind::Off;
        self
    }

    /// The first key segment (`CACHE_NAMESPACE`).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        let checked = crate::config::validate_namespace("namespace", namespace.into()).map(|namespace| {
            self.settings.namespace = namespace;
        });
        self.keep(checked)
    }

    /// The namespace-wide key version (`CACHE_KEY_VERSION`), at least 1.
    pub fn key_version(mut self, version: u32) -> Self {
        let checked = crate::config::parse_key_version("key_version", &version.to_string()).map(|version| {
            self.settings.key_version = version;
        });
        self.keep(checked)
    }

    /// The TTL ceiling (`CACHE_MAX_TTL`), 1 s ..= 24 h.
    pub fn max_ttl(mut self, ttl: Duration) -> Self {
        let checked = crate::config::validate_max_ttl("max_ttl", ttl).map(|ttl| {
            self.settings.max_ttl = ttl;
        });
        self.keep(checked)
    }

    /// The default TTL jitter (`CACHE_TTL_JITTER`) for policies that set none, a
    /// fraction of the TTL from 0 to [`MAX_TTL_JITTER`](crate::config::MAX_TTL_JITTER).
    pub fn ttl_jitter(mut self, fraction: f64) -> Self {
        let checked = crate::config::parse_jitter("ttl_jitter", &fraction.to_string()).map(|units| {
            self.settings.ttl_jitter = units;
        });
        self.keep(checked)
    }

    /// The per-operation timeout (`CACHE_OP_TIMEOUT`), 1 ms ..= 60 s.
    pub fn op_timeout(mut self, timeout: Duration) -> Self {
        let checked = crate::config::validate_op_timeout("op_timeout", timeout).map(|timeout| {
            self.settings.op_timeout = timeout;
        });
        self.keep(checked)
    }

    /// The memory backend's bound (`CACHE_MEMORY_CAPACITY`).
    pub fn memory_capacity(mut self, capacity: crate::config::MemoryCapacity) -> Self {
        self.settings.memory_capacity = capacity;
        self
    }

    /// Trusts the CA in `pem` (PEM text) for `rediss://` servers instead of the
    /// system's roots (`CACHE_TLS_CA_FILE`).
    pub fn tls_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        let checked = crate::config::validate_ca_pem("tls_ca_pem", pem.into()).map(|pem| {
            self.settings.tls_ca_pem = Some(pem);
        });
        self.keep(checked)
    }

    /// Values larger than this many encoded bytes are not stored (`CACHE_MAX_VALUE_SIZE`).
    pub fn max_value_size(mut self, bytes: usize) -> Self {
        self.settings.max_value_size = bytes;
        self
    }

    /// How cached functions' values are encoded (`CACHE_ENTRY_FORMAT`); values
    /// written with [`Cache::set_json`] are always JSON.
    ///
    /// ```
    /// # async fn demo() -> aside::Result<()> {
    /// use std::time::Duration;
    /// use aside::{Cache, EntryFormat, Plain, Policy};
    ///
    /// let cache = Cache::builder().entry_format(EntryFormat::MessagePack).build().await?;
    /// let policy = Policy::new(Duration::from_secs(60));
    /// let Plain(months) = cache.get_or_compute("months", &policy, || async { Plain(vec![1, 2, 3]) }).await;
    /// // Read back from its compact form.
    /// assert_eq!(cache.get_json::<Vec<u32>>("months").await?, Some(months));
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
    /// ```
    pub fn entry_format(mut self, format: EntryFormat) -> Self {
        self.settings.entry_format = format;
        self
    }

    /// The settings so far.
    ///
    /// # Errors
    ///
    /// The first invalid value given to the builder.
    pub fn settings(self) -> Result<Settings> {
        match self.error {
            Some(error) => Err(error),
            None => Ok(self.settings),
        }
    }

    /// Builds the cache and connects now.
    ///
    /// # Errors
    ///
    /// The first invalid value given to the builder; connection failures as
    /// [`Cache::from_env`].
    pub async fn build(self) -> Result<Cache> {
        Cache::connect(self.settings()?).await
    }

    /// Builds the cache without connecting: the first call connects.
    ///
    /// # Errors
    ///
    /// The first invalid value given to the builder.
    pub fn build_lazy(self) -> Result<Cache> {
        Ok(Cache::lazy(self.settings()?))
    }
}
