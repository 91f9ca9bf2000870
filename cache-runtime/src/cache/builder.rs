//! [`CacheBuilder`]: a cache configured in code.

use std::time::Duration;

use super::Cache;
use crate::config::{BackendKind, Settings};
use crate::entry::EntryFormat;
use crate::error::{Error, Result};
use crate::seal::{KeyNames, Keys, SecretKey};

/// The builder methods of the keys, as errors name them.
const BUILDER_KEYS: KeyNames = KeyNames {
    signing: "signing_key",
    signing_previous: "signing_key_previous",
    encryption: "encryption_key",
    encryption_previous: "encryption_key_previous",
};

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
    /// [`tiered`](CacheBuilder::tiered) was asked for.
    tiered: bool,
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
            tiered: false,
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

    /// Puts a bounded first tier in process memory (sized by
    /// [`memory_capacity`](CacheBuilder::memory_capacity)) in front of the Redis
    /// given with [`redis_url`](CacheBuilder::redis_url), as `CACHE_BACKEND=tiered`
    /// does: a hit on a copy costs no round trip, and every store or
    /// invalidation made through aside, in any process, drops the copies of
    /// what it changed. Without a Redis URL, [`build`](CacheBuilder::build) fails.
    ///
    /// ```
    /// # async fn demo() {
    /// let err = aside::Cache::builder().memory().tiered().build().await.unwrap_err();
    /// assert!(err.to_string().contains("tiered"));
    /// # }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo());
    /// ```
    pub fn tiered(mut self) -> Self {
        self.tiered = true;
        self
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

    /// Signs every entry with this key (`CACHE_SIGNING_KEY`), given as at least
    /// 64 hex digits (32 bytes; `openssl rand -hex 32`), and serves only entries
    /// signed with it or with [`signing_key_previous`](CacheBuilder::signing_key_previous):
    /// anything else found in the store — forged, tampered with, copied from
    /// another key, unsigned — is a miss, counted in `unverified`, and recomputed.
    ///
    /// The signature binds the entry to its full key, so one user's entry copied
    /// under another user's key is refused too. Values stay readable in the
    /// store; see [`encryption_key`](CacheBuilder::encryption_key) to hide them.
    ///
    /// ```
    /// # async fn demo() -> aside::Result<()> {
    /// use std::time::Duration;
    /// use aside::Cache;
    ///
    /// let key = "5e".repeat(32); // in production: from a secret store
    /// let cache = Cache::builder().signing_key(&key).build().await?;
    /// cache.set_json("total", &1234, Duration::from_secs(60)).await?;
    /// assert_eq!(cache.get_json::<u32>("total").await?, Some(1234));
    ///
    /// // A short or malformed key is an error naming the setting, never the key.
    /// let err = Cache::builder().signing_key("5e5e").build().await.unwrap_err();
    /// assert!(err.to_string().contains("signing_key") && !err.to_string().contains("5e5e"));
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
    /// ```
    pub fn signing_key(mut self, hex: &str) -> Self {
        let parsed = SecretKey::parse(BUILDER_KEYS.signing, hex, None).map(|key| {
            self.settings.keys.signing = Some(key);
        });
        self.keep(parsed)
    }

    /// During a rotation, also serves entries signed with this key
    /// (`CACHE_SIGNING_KEY_PREVIOUS`); new entries are signed with
    /// [`signing_key`](CacheBuilder::signing_key), which must be set too.
    ///
    /// ```
    /// use aside::Cache;
    ///
    /// let (old, new) = ("01".repeat(32), "02".repeat(32));
    /// let settings = Cache::builder().signing_key(&new).signing_key_previous(&old).settings().unwrap();
    /// assert!(settings.signs_entries());
    /// // A previous key alone is an error: new entries need a current one.
    /// let err = Cache::builder().signing_key_previous(&old).settings().unwrap_err();
    /// assert!(err.to_string().contains("signing_key_previous"));
    /// ```
    pub fn signing_key_previous(mut self, hex: &str) -> Self {
        let parsed = SecretKey::parse(BUILDER_KEYS.signing_previous, hex, None).map(|key| {
            self.settings.keys.signing_previous = Some(key);
        });
        self.keep(parsed)
    }

    /// Seals every value with this key (`CACHE_ENCRYPTION_KEY`), given as exactly
    /// 64 hex digits (32 bytes; `openssl rand -hex 32`): XChaCha20-Poly1305 with a
    /// random nonce per entry, so a Redis dump or a shared Redis shows nothing of
    /// the values. Only entries sealed with it or with
    /// [`encryption_key_previous`](CacheBuilder::encryption_key_previous) for the
    /// same full key are served; anything else is a miss counted in `unverified`.
    ///
    /// Use a key other than the signing key (the same one is refused).
    ///
    /// ```
    /// # async fn demo() -> aside::Result<()> {
    /// use std::time::Duration;
    /// use aside::Cache;
    ///
    /// let key = "c4".repeat(32); // in production: from a secret store
    /// let cache = Cache::builder().encryption_key(&key).build().await?;
    /// cache.set_json("email", &"ada@example.com", Duration::from_secs(60)).await?;
    /// assert_eq!(cache.get_json::<String>("email").await?.as_deref(), Some("ada@example.com"));
    /// assert!(cache.settings().encrypts_entries());
    ///
    /// let err = Cache::builder().encryption_key(&"c4".repeat(16)).build().await.unwrap_err();
    /// assert!(err.to_string().contains("encryption_key"));
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
    /// ```
    pub fn encryption_key(mut self, hex: &str) -> Self {
        let parsed = SecretKey::parse(BUILDER_KEYS.encryption, hex, Some(Keys::ENCRYPTION_KEY_BYTES)).map(|key| {
            self.settings.keys.encryption = Some(key);
        });
        self.keep(parsed)
    }

    /// During a rotation, also opens entries sealed with this key
    /// (`CACHE_ENCRYPTION_KEY_PREVIOUS`); new entries are sealed with
    /// [`encryption_key`](CacheBuilder::encryption_key), which must be set too.
    ///
    /// ```
    /// # async fn demo() -> aside::Result<()> {
    /// use aside::Cache;
    ///
    /// let (old, new) = ("0a".repeat(32), "0b".repeat(32));
    /// let settings = Cache::builder().encryption_key(&new).encryption_key_previous(&old).settings()?;
    /// assert!(settings.encrypts_entries());
    /// // A previous key alone is an error: new entries need a current one.
    /// assert!(Cache::builder().encryption_key_previous(&old).settings().is_err());
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
    /// ```
    pub fn encryption_key_previous(mut self, hex: &str) -> Self {
        let parsed =
            SecretKey::parse(BUILDER_KEYS.encryption_previous, hex, Some(Keys::ENCRYPTION_KEY_BYTES)).map(|key| {
                self.settings.keys.encryption_previous = Some(key);
            });
        self.keep(parsed)
    }

    /// The settings so far.
    ///
    /// # Errors
    ///
    /// The first invalid value given to the builder; a previous key without a
    /// current one, or one key given for both signing and encryption; `tiered`
    /// without a Redis URL.
    pub fn settings(mut self) -> Result<Settings> {
        if let Some(error) = self.error {
            return Err(error);
        }
        if self.tiered {
            self.settings.backend = match self.settings.backend {
                BackendKind::Redis(target) | BackendKind::Tiered(target) => BackendKind::Tiered(target),
                _ => {
                    return Err(Error::Config {
                        var: "CACHE_BACKEND",
                        problem: "`tiered` needs a Redis URL (`redis_url`)".into(),
                    })
                }
            };
        }
        self.settings.keys.check(&BUILDER_KEYS)?;
        Ok(self.settings)
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
