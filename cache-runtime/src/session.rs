//! A [`tower-sessions`](https://docs.rs/tower-sessions) session store on the cache
//! (feature `sessions`): sessions live in Redis (or the memory backend) beside the
//! cached entries, so every instance of a service sees the same sessions.
//!
//! - **Key**: `{namespace}:session:{id}`, a hand-written key ([`Key::raw`]); the
//!   record is stored as JSON in the runtime's entry format.
//! - **Lifetime**: until the record's expiry date, and never longer than the
//!   cache's TTL ceiling (`CACHE_MAX_TTL`, 24 hours at most): a session idle for a
//!   day is gone even if its cookie says two weeks. Use
//!   `Expiry::OnInactivity(Duration::hours(24))` or shorter to make both agree.
//! - **Per-user index**: when the session data holds a user id under
//!   [`USER_ID_KEY`] (`"user_id"`, or the key given to
//!   [`SessionStore::user_id_key`]), the session is stored with the tag
//!   `session:user:{id}`, and [`SessionStore::delete_user_sessions`] removes every
//!   session of that user — "log out everywhere" — with one
//!   [`Cache::invalidate_tag`]. Store the id once the user has logged in:
//!   `session.insert("user_id", user.id).await?`.
//! - **Statistics** are kept under the function `session`.
//!
//! ```
//! # async fn demo() -> aside::Result<()> {
//! use aside::{session::SessionStore, Cache};
//!
//! let cache = Cache::builder().memory().build().await?;
//! let store = SessionStore::new(cache);
//! // With tower-sessions: `SessionManagerLayer::new(store.clone())` on the router;
//! // after a password change: `store.delete_user_sessions(&user_id).await?`.
//! assert_eq!(store.delete_user_sessions(&42).await?, 0);
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
//! ```

use std::borrow::Cow;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use time::OffsetDateTime;
use tower_sessions_core::session::{Id, Record};
use tower_sessions_core::session_store::{self, Error as StoreError};

use crate::cache::Cache;
use crate::error::Result;
use crate::key::{self, Key, Piece};
use crate::outcome::Plain;
use crate::policy::Policy;

/// The session-data key whose value is the user id: sessions carrying it are
/// indexed by user (see [`SessionStore::delete_user_sessions`]).
pub const USER_ID_KEY: &str = "user_id";

/// The prefix of session keys: a session lives at `{namespace}:session:{id}`.
pub const PREFIX: &str = "session";

/// The tag of the sessions of one user: `session:user:` and the rendered id.
const USER_TAG: &str = "session:user:";

/// A tower-sessions [`SessionStore`](session_store::SessionStore) keeping sessions
/// in a [`Cache`]; see the [module documentation](self).
///
/// Cheap to clone; clones share the cache.
#[derive(Clone, Debug)]
pub struct SessionStore {
    cache: Cache,
    user_id_key: Cow<'static, str>,
}

impl SessionStore {
    /// A store in `cache`, indexing sessions by the user id under [`USER_ID_KEY`].
    pub fn new(cache: Cache) -> SessionStore {
        SessionStore {
            cache,
            user_id_key: Cow::Borrowed(USER_ID_KEY),
        }
    }

    /// Reads the user id from this session-data key instead of [`USER_ID_KEY`].
    pub fn user_id_key(mut self, key: impl Into<Cow<'static, str>>) -> SessionStore {
        self.user_id_key = key.into();
        self
    }

    /// The cache the sessions live in.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The key of session `id`, before the namespace: `session:{id}`.
    ///
    /// ```
    /// use tower_sessions_core::session::Id;
    /// # let store = aside::session::SessionStore::new(aside::Cache::lazy(Default::default()));
    /// let id = Id(1);
    /// assert_eq!(store.key(&id), format!("session:{id}"));
    /// assert_eq!(store.cache().full_key(store.key(&id)).unwrap(), format!("aside:session:{id}"));
    /// ```
    pub fn key(&self, id: &Id) -> String {
        format!("{PREFIX}:{id}")
    }

    /// Deletes every session of the user whose id (as stored under the user-id
    /// key of the session data) is `user_id`, and returns how many there were.
    /// Numbers and strings render alike: `42` and `"42"` are the same user.
    ///
    /// ```
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use tower_sessions_core::{session::{Id, Record}, SessionStore as _};
    /// let cache = aside::Cache::builder().memory().build().await?;
    /// let store = aside::session::SessionStore::new(cache);
    /// let expiry_date = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    /// for id in 1..=2 {
    ///     let mut data = std::collections::HashMap::new();
    ///     data.insert("user_id".to_owned(), serde_json::json!(7));
    ///     store.save(&Record { id: Id(id), data, expiry_date }).await?;
    /// }
    /// assert_eq!(store.delete_user_sessions(&7).await?, 2);
    /// assert_eq!(store.load(&Id(1)).await?, None);
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Key`](crate::Error::Key) when `user_id` does not serialize, backend
    /// failures and timeouts.
    pub async fn delete_user_sessions<U: Serialize + ?Sized>(&self, user_id: &U) -> Result<u64> {
        let tag = format!("{USER_TAG}{}", key::render_value(user_id)?);
        self.cache.invalidate_tag(&tag).await
    }

    /// The policy a record is stored with: its remaining lifetime (at most the
    /// ceiling) and its user's tag.
    fn policy(&self, record: &Record, ttl: Duration) -> Policy {
        let policy = Policy::new(ttl).function(PREFIX);
        match record.data.get(self.user_id_key.as_ref()) {
            Some(user_id) if !user_id.is_null() => policy.tag([Piece::Lit(USER_TAG), Piece::value(user_id)]),
            _ => policy,
        }
    }

    /// The time left until `expiry_date`, at most the cache's ceiling; `None` once past.
    fn remaining(&self, expiry_date: OffsetDateTime) -> Option<Duration> {
        let left = expiry_date - OffsetDateTime::now_utc();
        let left = Duration::try_from(left).ok().filter(|left| !left.is_zero())?;
        Some(left.min(self.cache.settings().max_ttl()))
    }
}

fn backend(error: crate::Error) -> StoreError {
    StoreError::Backend(error.to_string())
}

#[async_trait]
impl session_store::SessionStore for SessionStore {
    /// Stores a new session, drawing a new id while the drawn one is taken.
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        while self.cache.exists(self.key(&record.id)).await.map_err(backend)? {
            record.id = Id::default();
        }
        self.save(record).await
    }

    /// Stores the record until its expiry date (at most the ceiling), tagged with
    /// its user; an expired record is deleted instead.
    async fn save(&self, record: &Record) -> session_store::Result<()> {
        let key = self.key(&record.id);
        let Some(ttl) = self.remaining(record.expiry_date) else {
            return self.delete(&record.id).await;
        };
        // `refresh` records the tag and overwrites the entry in one leased step, so
        // a concurrent `delete_user_sessions` cannot miss it; it is fail-open, so
        // whether the record landed is read back.
        let policy = self.policy(record, ttl);
        let Plain(_) = self
            .cache
            .refresh(Key::raw(key.as_str()), &policy, || async { Plain(record.clone()) })
            .await;
        if self.cache.exists(key.as_str()).await.map_err(backend)? {
            Ok(())
        } else {
            Err(StoreError::Backend(format!("session {} was not stored", record.id)))
        }
    }

    /// The record, unless it is missing or expired. A record that does not decode
    /// (another format) is missing.
    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        let record: Option<Record> = self.cache.get_json(self.key(id)).await.map_err(backend)?;
        Ok(record.filter(|record| record.expiry_date > OffsetDateTime::now_utc()))
    }

    /// Removes the session.
    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        self.cache.invalidate_key(self.key(id)).await.map_err(backend)?;
        Ok(())
    }
}
