//! How an entry is cached: fresh lifetime, stale window, lock lease, waiting, tags.

use std::borrow::Cow;
use std::time::Duration;

use crate::stats::FunctionSite;

/// How `get_or_compute` caches one call: the arguments of `#[cached]`, as a value.
///
/// ```
/// use std::time::Duration;
/// use aside::Policy;
///
/// let policy = Policy::new(Duration::from_secs(300))
///     .stale(Duration::from_secs(60))
///     .function("computed:revenue")
///     .tags(["orders", "region:eu"]);
/// assert_eq!(policy.ttl(), Duration::from_secs(300));
/// assert_eq!(policy.tag_list(), ["orders", "region:eu"]);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    ttl: Duration,
    stale: Duration,
    lock_ttl: Duration,
    wait: Duration,
    cache_none: bool,
    /// Millionths of the TTL; `None`: the cache's `CACHE_TTL_JITTER`.
    jitter: Option<u32>,
    /// Millionths of the fresh life after which a hit starts a background refresh.
    refresh_ahead: Option<u32>,
    /// With a stale value at hand, how long the refreshing caller waits for its
    /// computation before taking the stale value (detached calls only).
    soft_timeout: Option<Duration>,
    function: Option<Cow<'static, str>>,
    tags: Vec<String>,
    /// Why a tag could not be rendered: the call then computes without the cache,
    /// since an entry missing a tag could survive that tag's invalidation.
    unusable: Option<String>,
    /// Where `#[cached]` remembers the function's counters.
    site: Site,
}

/// The [`FunctionSite`] of the `#[cached]` call site that built a policy. A
/// memo, not a term of the policy: policies compare equal whatever it holds.
#[derive(Clone, Copy, Default)]
struct Site(Option<&'static FunctionSite>);

impl PartialEq for Site {
    fn eq(&self, _: &Site) -> bool {
        true
    }
}

impl Eq for Site {}

impl std::fmt::Debug for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Site(..)" } else { "Site(None)" })
    }
}

/// The fresh lifetime of a `Policy::default()` and of `#[cached]` without `ttl`.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

/// The shortest fresh lifetime `#[cached(ttl)]` accepts, and the one a shorter
/// TTL from the value ([`Adaptive::ttl_from`](crate::Adaptive::ttl_from)) is raised to.
pub const MIN_TTL: Duration = Duration::from_secs(1);

/// The shortest lock lease: it is renewed every third of its length, so a
/// shorter one could expire between two renewals (each a round trip, up to the
/// operation timeout) and nothing would ever be stored.
pub const MIN_LOCK_TTL: Duration = Duration::from_secs(1);

/// The default lock lease. A holder renews it every second, so a holder whose
/// process died is replaced within 3 s (plus one re-check, 500 ms).
pub const DEFAULT_LOCK_TTL: Duration = Duration::from_secs(3);

/// The default wait for another caller's computation: longer than the lease, so
/// a dead holder is replaced before anyone gives up.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(10);

impl Default for Policy {
    /// A 300 s TTL, no stale window, a 3 s lock lease and a 10 s wait.
    fn default() -> Self {
        Policy::new(DEFAULT_TTL)
    }
}

impl Policy {
    /// A policy with fresh lifetime `ttl` and the defaults of everything else.
    ///
    /// A zero `ttl` is accepted here and refused when storing: the value is still
    /// returned, nothing is written, and the error is logged and counted.
    pub const fn new(ttl: Duration) -> Policy {
        Policy {
            ttl,
            stale: Duration::ZERO,
            lock_ttl: DEFAULT_LOCK_TTL,
            wait: DEFAULT_WAIT,
            cache_none: false,
            jitter: None,
            refresh_ahead: None,
            soft_timeout: None,
            function: None,
            tags: Vec::new(),
            unusable: None,
            site: Site(None),
        }
    }

    /// After `ttl`, serve the old value for this long while one caller refreshes it.
    pub const fn stale(mut self, stale: Duration) -> Policy {
        self.stale = stale;
        self
    }

    /// The stampede lock's lease, renewed every third of it while the computation
    /// runs; at least [`MIN_LOCK_TTL`] (a shorter one is raised to it).
    ///
    /// A shorter lease lets a dead holder be replaced sooner; a longer one
    /// tolerates longer stalls of Redis before a second computation starts.
    ///
    /// ```
    /// use std::time::Duration;
    /// use aside::policy::{Policy, MIN_LOCK_TTL};
    /// assert_eq!(Policy::default().lock_ttl(Duration::from_millis(1)).lock_lease(), MIN_LOCK_TTL);
    /// ```
    pub const fn lock_ttl(mut self, lock_ttl: Duration) -> Policy {
        self.lock_ttl = if lock_ttl.as_nanos() < MIN_LOCK_TTL.as_nanos() {
            MIN_LOCK_TTL
        } else {
            lock_ttl
        };
        self
    }

    /// How long a caller waits for another's computation before computing
    /// itself (without storing). Any length is accepted, `Duration::MAX` included.
    pub const fn wait(mut self, wait: Duration) -> Policy {
        self.wait = wait;
        self
    }

    /// For `Option<T>` results: also cache `None`.
    pub const fn cache_none(mut self, cache_none: bool) -> Policy {
        self.cache_none = cache_none;
        self
    }

    /// Spreads the expiries of entries written together: each stored TTL is
    /// drawn uniformly from `[ttl·(1−jitter), ttl]` — never longer than asked, never
    /// above the ceiling — for the policy's `ttl` and a value's own
    /// ([`Adaptive::ttl_from`](crate::Adaptive::ttl_from)) alike; the `stale`
    /// window follows the drawn TTL. A fraction from 0 to
    /// [`MAX_TTL_JITTER`](crate::config::MAX_TTL_JITTER) (0.5); others are clamped
    /// into that range (NaN to 0). Without it, the cache's `CACHE_TTL_JITTER`
    /// (default 0). `set_json` writes its TTL exactly.
    ///
    /// ```
    /// # async fn demo() {
    /// use std::time::Duration;
    /// use aside::{Cache, Plain, Policy};
    /// let cache = Cache::builder().memory().build().await.unwrap();
    /// let policy = Policy::new(Duration::from_secs(1000)).jitter(0.1);
    /// for n in 0..20 {
    ///     let Plain(_) = cache.get_or_compute(format!("n:{n}"), &policy, || async move { Plain(n) }).await;
    /// }
    /// for n in 0..20 {
    ///     let ttl = cache.ttl(format!("n:{n}")).await.unwrap().unwrap();
    ///     assert!(ttl <= Duration::from_secs(1000) && ttl >= Duration::from_secs(899));
    /// }
    /// # }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo());
    /// ```
    pub fn jitter(mut self, jitter: f64) -> Policy {
        let fraction = if jitter.is_nan() {
            0.0
        } else {
            jitter.clamp(0.0, crate::config::MAX_TTL_JITTER)
        };
        self.jitter = Some(crate::config::jitter_units(fraction));
        self
    }

    /// The jitter set with [`jitter`](Policy::jitter), if any.
    pub fn jitter_fraction(&self) -> Option<f64> {
        self.jitter
            .map(|units| f64::from(units) / f64::from(crate::config::JITTER_UNIT))
    }

    /// The jitter in millionths, or `default` when the policy sets none.
    pub(crate) fn jitter_units(&self, default: u32) -> u32 {
        self.jitter.unwrap_or(default)
    }

    /// Refresh ahead: a hit after this fraction of its entry's fresh life (for
    /// example `0.8`: in the last 20 % of `ttl`) returns the value at once and
    /// starts one background refresh of it, cluster-wide (under the entry's
    /// lease), so a key that keeps being read never goes cold. The refresh
    /// checks the store first (another process may have refreshed it), and an
    /// invalidation during it refuses its store, as for any computation.
    ///
    /// A fraction strictly between 0 and 1; others (NaN included) turn refresh
    /// ahead off. It takes effect through
    /// [`get_or_compute_detached`](crate::Cache::get_or_compute_detached), whose
    /// computation may outlive its caller; `get_or_compute` cannot run a
    /// borrowed computation in the background, and ignores it.
    ///
    /// ```
    /// use aside::Policy;
    /// assert_eq!(Policy::default().refresh_ahead(0.8).refresh_ahead_fraction(), Some(0.8));
    /// assert_eq!(Policy::default().refresh_ahead(1.5).refresh_ahead_fraction(), None);
    /// ```
    pub fn refresh_ahead(mut self, fraction: f64) -> Policy {
        self.refresh_ahead = (fraction > 0.0 && fraction < 1.0)
            .then(|| crate::config::jitter_units(fraction))
            .filter(|units| *units > 0 && *units < crate::config::JITTER_UNIT);
        self
    }

    /// The refresh-ahead fraction set with [`refresh_ahead`](Policy::refresh_ahead), if any.
    pub fn refresh_ahead_fraction(&self) -> Option<f64> {
        self.refresh_ahead
            .map(|units| f64::from(units) / f64::from(crate::config::JITTER_UNIT))
    }

    /// Whether an entry fresh until `fresh_until_ms` (Unix milliseconds) is, at
    /// `now_ms`, in the part of its fresh life that starts a refresh ahead.
    pub(crate) fn due_ahead(&self, fresh_until_ms: u64, now_ms: u64) -> bool {
        let Some(units) = self.refresh_ahead else {
            return false;
        };
        let rest = f64::from(crate::config::JITTER_UNIT - units) / f64::from(crate::config::JITTER_UNIT);
        let window = u64::try_from(self.ttl.mul_f64(rest).as_millis()).unwrap_or(u64::MAX);
        fresh_until_ms.saturating_sub(now_ms) <= window
    }

    /// Soft timeout: when a stale value is at hand (within [`stale`](Policy::stale))
    /// and the caller that refreshes it waits longer than this for the
    /// computation, it returns the stale value; the computation finishes and
    /// stores in the background. Zero: that caller takes the stale value at
    /// once, like every other caller. Without a soft timeout, a detached call
    /// that refreshes waits for its computation.
    ///
    /// It takes effect through
    /// [`get_or_compute_detached`](crate::Cache::get_or_compute_detached), as
    /// [`refresh_ahead`](Policy::refresh_ahead) does.
    ///
    /// ```
    /// use std::time::Duration;
    /// use aside::Policy;
    /// let policy = Policy::default().stale(Duration::from_secs(60)).soft_timeout(Duration::from_millis(200));
    /// assert_eq!(policy.soft_timeout_limit(), Some(Duration::from_millis(200)));
    /// ```
    pub const fn soft_timeout(mut self, soft_timeout: Duration) -> Policy {
        self.soft_timeout = Some(soft_timeout);
        self
    }

    /// The soft timeout set with [`soft_timeout`](Policy::soft_timeout), if any.
    pub fn soft_timeout_limit(&self) -> Option<Duration> {
        self.soft_timeout
    }

    /// The name statistics are kept under (`prefix:name` for `#[cached]` functions).
    pub fn function(mut self, name: impl Into<Cow<'static, str>>) -> Policy {
        self.function = Some(name.into());
        self
    }

    /// Tags recorded with the entry, for [`invalidate_tag`](crate::Cache::invalidate_tag).
    ///
    /// Tags are exact text. `{` and `}` are reserved (in a Redis Cluster they would
    /// split a tag's bookkeeping over two hash slots): a policy with such a tag
    /// computes every call without the cache — on every backend alike — logged at
    /// `warn` and counted as a backend error. Build tags holding values with
    /// [`tag!`](crate::tag), which escapes them.
    ///
    /// ```
    /// use aside::Policy;
    /// let policy = Policy::default().tags(["orders", "region:eu"]);
    /// assert_eq!(policy.tag_list(), ["orders", "region:eu"]);
    /// ```
    pub fn tags<T: Into<String>>(mut self, tags: impl IntoIterator<Item = T>) -> Policy {
        self.tags = tags.into_iter().map(Into::into).collect();
        if let Some(problem) = self
            .tags
            .iter()
            .find_map(|tag| crate::key::check_braces("a tag", tag).err())
        {
            self.unusable.get_or_insert(problem);
        }
        self
    }

    /// Adds one tag rendered from a template: literal text and escaped argument
    /// values, as `tags = ["region:{region}"]` writes it. Literal text with `{` or
    /// `}` makes the policy unusable, as in [`tags`](Policy::tags).
    ///
    /// ```
    /// use aside::{key::Piece, Policy};
    /// let policy = Policy::default().tag([Piece::Lit("region:"), Piece::value("eu west")]);
    /// assert_eq!(policy.tag_list(), ["region:eu%20west"]);
    /// ```
    pub fn tag(mut self, pieces: impl IntoIterator<Item = crate::key::Piece>) -> Policy {
        match crate::key::concat(pieces) {
            Ok(tag) => self.tags.push(tag),
            Err(problem) => {
                self.unusable
                    .get_or_insert(format!("a tag cannot be rendered: {problem}"));
            }
        }
        self
    }

    /// Why this policy cannot be used to store, if a tag failed to render.
    pub(crate) fn unusable(&self) -> Option<&str> {
        self.unusable.as_deref()
    }

    /// The fresh lifetime.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The stale window after the fresh lifetime.
    pub fn stale_window(&self) -> Duration {
        self.stale
    }

    /// The lock lease.
    pub fn lock_lease(&self) -> Duration {
        self.lock_ttl
    }

    /// The wait before computing without the lock.
    pub fn wait_limit(&self) -> Duration {
        self.wait
    }

    /// Whether `None` is cached.
    pub fn caches_none(&self) -> bool {
        self.cache_none
    }

    /// The statistics name, if any.
    pub fn function_name(&self) -> Option<&str> {
        self.function.as_deref()
    }

    /// Counts the function's calls through `site`, a static of the `#[cached]`
    /// call site that built this policy (see [`FunctionSite`]).
    pub(crate) fn counted_at(mut self, site: &'static FunctionSite) -> Policy {
        self.site = Site(Some(site));
        self
    }

    /// The call site's memo of the function's counters, if `#[cached]` built this policy.
    pub(crate) fn site(&self) -> Option<&'static FunctionSite> {
        self.site.0
    }

    /// The tags.
    pub fn tag_list(&self) -> &[String] {
        &self.tags
    }
}

/// A TTL after the ceiling was applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Clamped {
    pub(crate) ttl: Duration,
    pub(crate) clamped: bool,
}

/// Applies `ceiling` to `ttl`.
pub(crate) fn clamp(ttl: Duration, ceiling: Duration) -> Clamped {
    if ttl > ceiling {
        Clamped {
            ttl: ceiling,
            clamped: true,
        }
    } else {
        Clamped { ttl, clamped: false }
    }
}

/// `ttl` less a uniformly drawn share of up to `units` millionths of it.
pub(crate) fn jittered(ttl: Duration, units: u32) -> Duration {
    if units == 0 {
        return ttl;
    }
    use std::hash::{BuildHasher as _, Hasher as _};
    use std::sync::atomic::{AtomicU64, Ordering};
    static DRAWS: AtomicU64 = AtomicU64::new(0);
    // `RandomState` is seeded at random per process (and per thread, then
    // incremented): hashing a counter with it gives independent uniform draws.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(DRAWS.fetch_add(1, Ordering::Relaxed));
    let unit = (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64;
    jitter_by(ttl, units, unit)
}

/// `ttl` less `unit` (in `[0, 1)`) of its `units` millionths.
fn jitter_by(ttl: Duration, units: u32, unit: f64) -> Duration {
    let share = f64::from(units) / f64::from(crate::config::JITTER_UNIT) * unit;
    ttl.saturating_sub(ttl.mul_f64(share.clamp(0.0, 1.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_draws_within_the_share_and_never_above_the_ttl() {
        let ttl = Duration::from_secs(1000);
        assert_eq!(jitter_by(ttl, 100_000, 0.0), ttl);
        assert_eq!(jitter_by(ttl, 100_000, 0.5), Duration::from_secs(950));
        assert_eq!(jitter_by(ttl, 0, 0.9), ttl);
        let draws: Vec<Duration> = (0..1000).map(|_| jittered(ttl, 100_000)).collect();
        assert!(draws.iter().all(|d| *d <= ttl && *d > Duration::from_secs(900)));
        let low = draws.iter().filter(|d| **d < Duration::from_secs(950)).count();
        assert!((350..650).contains(&low), "about half below the middle: {low}");
    }

    #[test]
    fn braced_tags_make_the_policy_unusable() {
        assert_eq!(Policy::default().tags(["orders", "region:eu"]).unusable(), None);
        assert!(Policy::default().tags(["orders", "region:{eu}"]).unusable().is_some());
        let templated = Policy::default().tag([crate::key::Piece::Lit("{r}:"), crate::key::Piece::value("eu")]);
        assert!(templated.unusable().is_some());
        let escaped = Policy::default().tag([crate::key::Piece::Lit("r:"), crate::key::Piece::value("{eu}")]);
        assert_eq!(escaped.unusable(), None);
        assert_eq!(escaped.tag_list(), ["r:%7Beu%7D"]);
    }

    #[test]
    fn clamping() {
        let day = Duration::from_secs(86_400);
        assert_eq!(
            clamp(Duration::from_secs(10), day),
            Clamped {
                ttl: Duration::from_secs(10),
                clamped: false
            }
        );
        assert_eq!(
            clamp(day * 2, day),
            Clamped {
                ttl: day,
                clamped: true
            }
        );
    }
}
