//! The `#[cached]` attribute of [aside](https://docs.rs/aside). Use it through the
//! `aside` crate (`use aside::cached;`): the code it generates calls into
//! `aside::__private`, and everything that happens at run time lives in the runtime.
//!
//! The crate works in three steps, one file each: parse (`attr.rs` the arguments,
//! `item.rs` the function, its body kept as tokens), check (`check.rs`, every rule
//! a named function reporting into the error context of `ctxt.rs`; `generics.rs`
//! works out what the generic parameters mean for the key and the companions), and
//! expand (`expand.rs`, which only generates); `batch = ids` has its rules in
//! `check/batch.rs` and its code in `expand/batch.rs`. `lib.rs` holds these docs
//! and the entry point.
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub, rust_2018_idioms)]

mod attr;
mod check;
mod ctxt;
mod expand;
mod generics;
mod item;

use proc_macro::TokenStream;

/// Makes an expensive `async fn` cache itself: in Redis when `REDIS_URL` is set,
/// else in process memory.
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use aside::cached;
///
/// # pub struct Db;
/// # #[derive(Debug)] pub struct DbError;
/// static QUERIES: AtomicUsize = AtomicUsize::new(0);
///
/// #[cached(prefix = "computed", ttl = 300, tags = ["orders", "region:{region}"], skip(db))]
/// async fn revenue_by_region(db: &Db, region: &str, month: u32) -> Result<u64, DbError> {
///     QUERIES.fetch_add(1, Ordering::SeqCst); // one slow aggregation
///     Ok(1_000 * u64::from(month))
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let db = Db;
/// assert_eq!(revenue_by_region(&db, "eu", 11).await.unwrap(), 11_000); // miss: computes, stores
/// assert_eq!(revenue_by_region(&db, "eu", 11).await.unwrap(), 11_000); // hit: no query
/// assert_eq!(QUERIES.load(Ordering::SeqCst), 1);
///
/// assert!(revenue_by_region_invalidate("eu", 11).await?); // drops that entry
/// revenue_by_region(&db, "eu", 11).await.unwrap();
/// assert_eq!(QUERIES.load(Ordering::SeqCst), 2);
/// # Ok(()) }
/// ```
///
/// The body runs only on a miss. Errors of the cache itself never reach the caller:
/// when Redis is down, slow, or an entry does not decode, the function computes
/// (fail-open), and the runtime logs through `tracing` and counts.
///
/// # What it generates
///
/// The function keeps its name, signature, attributes and visibility; its body
/// becomes one call into the runtime, `Cache::get_or_compute(key, &policy, || async
/// move { <your body> })`, with the key and policy built from the arguments first.
/// `return` and `?` in the body are the body's own, exactly as before.
///
/// Beside it, with the same visibility and `#[cfg]`s (and inside the `impl` block
/// for methods), five companions:
///
/// | companion | does |
/// | --- | --- |
/// | `<fn>_invalidate(key args) -> Result<bool, aside::Error>` | deletes the entry; `true` if one existed |
/// | `<fn>_expire(key args) -> Result<bool, aside::Error>` | soft invalidation: the entry turns stale, served within `stale` while one caller refreshes it; `true` if one existed |
/// | `<fn>_refresh(all args) -> <fn's return type>` | runs the body now and overwrites the entry (warm-up, write-through) |
/// | `<fn>_key(key args) -> String` | the full key, for logs and debugging |
/// | `<fn>_with_status(all args) -> (<fn's return type>, aside::CacheStatus)` | the call, and how it was answered: `Hit`, `Stale`, `Miss`, `Coalesced` or `Bypassed` |
///
/// A [`batch`](#batch) function's companions take one id where the batch
/// parameter was, and differ a little (see there).
///
/// "Key args" are the arguments not in [`skip`](#skip), in order — plus those the
/// [`cache`](#cache) expression needs: `&self` for `cache = self.cache`, or a skipped
/// argument it names. `_invalidate`, `_expire` and `_refresh` are `async`; `_key` is not, and
/// gives `<no key: reason>` when an argument cannot be rendered (for instance a map
/// with non-string keys in a `key = "..."` template). Unused companions are not
/// reported as dead code; an unused cached function still is.
///
/// ```
/// # use aside::cached;
/// #[cached(ttl = 60)]
/// pub async fn price(sku: &str) -> u64 {
///     sku.len() as u64 * 100
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), aside::Error> {
/// assert_eq!(price("abc").await, 300);
/// assert_eq!(price_refresh("abc").await, 300); // computed again and stored
/// assert!(price_key("abc").starts_with("aside:computed:price:v1.1:"));
/// assert!(price_invalidate("abc").await?);
/// assert!(!price_invalidate("abc").await?); // already gone
/// # Ok(()) }
/// ```
///
/// `_with_status` is for callers that report how they were served (a header, a
/// log field, a test): `Hit` a fresh entry, `Stale` a stale one within `stale`,
/// `Miss` computed for this call, `Coalesced` answered by a concurrent caller's
/// computation, `Bypassed` computed without the cache (backend failing or `off`).
///
/// ```
/// # use aside::cached;
/// use aside::CacheStatus;
///
/// #[cached(ttl = 60)]
/// async fn stock(sku: u32) -> u32 {
///     sku * 2
/// }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// assert_eq!(stock_with_status(4).await, (8, CacheStatus::Miss));
/// assert_eq!(stock_with_status(4).await, (8, CacheStatus::Hit));
/// assert_eq!(stock(4).await, 8); // the same entry
/// # }
/// ```
///
/// # Return types
///
/// What is stored is chosen by how the return type is written:
///
/// - `Result<T, E>` (any path ending in `Result`, such as `io::Result<T>` or
///   `anyhow::Result<T>`): only `Ok` is stored; an `Err` is returned as is and the
///   next call computes again. `T` must be `Serialize + DeserializeOwned`.
/// - `Option<T>`: `Some` is stored; `None` only with [`cache_none`](#cache_none).
/// - anything else: always stored, and must be `Serialize + DeserializeOwned`.
///
/// A type alias of a `Result` or `Option` (`type Answer = Result<u64, MyError>;`)
/// is not recognized as one: it is stored as a plain value, errors included (and so
/// the error type must be serializable too). Write `Result<..>` in the signature to
/// cache only `Ok`. A function must return a value: `()` is a compile error.
///
/// ```
/// # use std::sync::atomic::{AtomicUsize, Ordering};
/// # use aside::cached;
/// static CALLS: AtomicUsize = AtomicUsize::new(0);
///
/// #[cached]
/// async fn parse(text: &str) -> Result<u32, std::num::ParseIntError> {
///     CALLS.fetch_add(1, Ordering::SeqCst);
///     text.parse()
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// assert!(parse("x").await.is_err());
/// assert!(parse("x").await.is_err()); // errors are not cached: computed again
/// assert_eq!(CALLS.load(Ordering::SeqCst), 2);
/// # }
/// ```
///
/// # Keys
///
/// An entry lives at `{namespace}:{prefix}:{name}:v{key_version}.{version}:{args}`,
/// where `{args}` is the 128-bit digest of the canonical JSON of the key arguments
/// (or the [`key`](#key) rendering). Every key argument must be `Serialize`; a
/// compile error points at the one that is not. The namespace (`CACHE_NAMESPACE`,
/// default `aside`) and key version (`CACHE_KEY_VERSION`, default 1) come from the
/// cache.
///
/// Type parameters are part of the key: `parse_as::<u32>("12")` and
/// `parse_as::<String>("12")` have their own entries, and so do the methods of
/// `Repo<u8>` and `Repo<u16>`, and same-named types in different modules
/// (`a::Report::total`, `b::Report::total`). What tells them apart — the
/// [`std::any::type_name`] of `Self` for a method, of each type parameter, the value
/// of each const parameter, the type of each `impl Trait` key argument — is hashed
/// into the digest (or, after a [`key`](#key) rendering, appended as `:` and its
/// digest); the readable `{name}` segment stays as it is. A type parameter that
/// only types a [skipped](#skip) argument is not part of the key. The companions
/// then take the same type parameters: `parse_as_invalidate::<u32>("12")`.
/// Non-generic free functions have exactly the key they would have without this.
/// (`type_name` may change with the compiler: an upgrade that changes it makes the
/// entries of generic functions and methods unreachable once, like a `version` bump.)
///
/// ```
/// # use aside::cached;
/// #[cached]
/// async fn describe<T>(n: u32) -> String {
///     format!("{}:{n}", std::any::type_name::<T>())
/// }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// assert_eq!(describe::<u8>(1).await, "u8:1");
/// assert_eq!(describe::<u16>(1).await, "u16:1"); // its own entry
/// assert_ne!(describe_key::<u8>(1), describe_key::<u16>(1));
/// # }
/// ```
///
/// # Methods
///
/// `self` is never part of the key: skip it with `skip(self)` and keep what
/// identifies the entry in the arguments (or put `self`'s fields in
/// [`tags`](#tags)). The default name is `Type::method`, `Type` being the
/// implementing type without module path or generic arguments; the full type (its
/// module path and generic arguments) is part of the key, as for type parameters,
/// so `a::Report::total` and `b::Report::total` share a name but not entries.
/// Associated functions without a receiver are named after the function alone, and
/// their type is part of the key only if their signature mentions `Self` (a macro
/// cannot see the `impl` block otherwise): give them a [`name`](#name) when two
/// types' functions share one. The attribute works in
/// inherent `impl` blocks, not in trait impls (the companions would not be members
/// of the trait).
///
/// ```
/// # use std::sync::atomic::{AtomicUsize, Ordering};
/// use aside::{cached, Cache};
///
/// struct Reports {
///     cache: Cache,
///     runs: AtomicUsize,
/// }
///
/// impl Reports {
///     #[cached(skip(self), cache = self.cache)]
///     async fn total(&self, month: u32) -> u64 {
///         self.runs.fetch_add(1, Ordering::SeqCst);
///         u64::from(month) * 7
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), aside::Error> {
/// let reports = Reports { cache: Cache::builder().memory().build().await?, runs: AtomicUsize::new(0) };
/// assert_eq!(reports.total(3).await, 21);
/// assert_eq!(reports.total(3).await, 21);
/// assert_eq!(reports.runs.load(Ordering::SeqCst), 1);
/// assert!(reports.total_key(3).starts_with("aside:computed:Reports::total:v1.1:"));
/// assert!(reports.total_invalidate(3).await?); // `&self`: the cache comes from it
/// # Ok(()) }
/// ```
///
/// # `ttl`
///
/// How long a stored value is fresh: whole seconds (`ttl = 300`) or a duration
/// string (`ttl = "5m"`, `"1h 30m"`, `"90s"`), from 1 s to 24 h — anything else is
/// a compile error. Default: 300 s.
///
/// ```
/// # use aside::cached;
/// #[cached(ttl = "10m")]
/// async fn exchange_rate(currency: &str) -> f64 {
///     if currency == "EUR" { 1.08 } else { 1.0 }
/// }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// assert_eq!(exchange_rate("EUR").await, 1.08);
/// assert_eq!(aside::stats().function("computed:exchange_rate").misses, 1);
/// assert_eq!(exchange_rate("EUR").await, 1.08);
/// assert_eq!(aside::stats().function("computed:exchange_rate").hits, 1);
/// # }
/// ```
///
/// # `prefix`
///
/// The key segment grouping related functions (`reports:...`, `users:...`), so
/// that their entries can be found or dropped together. No white space, braces or
/// glob characters. Default: `"computed"`.
///
/// ```
/// # use aside::cached;
/// #[cached(prefix = "reports")]
/// async fn daily(day: u32) -> u32 {
///     day
/// }
/// # fn main() {
/// assert!(daily_key(1).starts_with("aside:reports:daily:"));
/// # }
/// ```
///
/// # `name`
///
/// The key segment naming the function, and (as `prefix:name`) the name its
/// statistics are kept under. Default: the function's name; `Type::name` for methods.
/// Keep it when renaming a function to keep its entries.
///
/// ```
/// # use aside::cached;
/// #[cached(name = "revenue")]
/// async fn revenue_v2(month: u32) -> u64 {
///     u64::from(month)
/// }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// revenue_v2(1).await;
/// assert!(revenue_v2_key(1).starts_with("aside:computed:revenue:"));
/// assert_eq!(aside::stats().function("computed:revenue").computations, 1);
/// # }
/// ```
///
/// # `version`
///
/// Part of the key (`v{key_version}.{version}`): bump it when the cached type
/// changes shape, and the old entries become unreachable (they expire on their own).
/// Default: 1.
///
/// ```
/// # use aside::cached;
/// #[cached(version = 2)]
/// async fn profile(user: u64) -> (u64, String) {
///     (user, "new shape".to_owned())
/// }
/// # fn main() {
/// assert!(profile_key(7).starts_with("aside:computed:profile:v1.2:"));
/// # }
/// ```
///
/// # `tags`
///
/// Tags recorded with each entry, to invalidate many entries at once (all entries
/// tagged `region:eu`, whatever their function and arguments). `{arg}` and
/// `{arg.field}` insert an argument's value, escaped like a key value; tags may use
/// skipped arguments and `self`. Two placeholders must be separated by something
/// other than letters, digits, `.`, `_` and `-` (write `{a}:{b}`), since values may
/// contain those.
///
/// ```
/// # use aside::cached;
/// #[cached(tags = ["orders", "customer:{customer}"])]
/// async fn orders(customer: u64, page: u32) -> Vec<u64> {
///     vec![customer, u64::from(page)]
/// }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// assert_eq!(orders(42, 1).await, [42, 1]);
/// assert_eq!(orders(42, 1).await, [42, 1]);
/// assert_eq!(aside::stats().function("computed:orders").hits, 1);
/// # }
/// ```
///
/// # `skip`
///
/// Arguments left out of the key: connection pools, clients, `self`. They need not
/// be `Serialize`, and the `_invalidate` and `_key` companions do not take them.
/// A skipped argument must not change the result, or calls differing only in it
/// would share an entry. Arguments are named, so a destructuring pattern in the
/// signature (`(a, b): (u32, u32)`) is a compile error: bind it to a name.
///
/// ```
/// # use std::sync::atomic::{AtomicUsize, Ordering};
/// # use aside::cached;
/// struct Pool {
///     queries: AtomicUsize,
/// }
///
/// #[cached(skip(pool))]
/// async fn user_name(pool: &Pool, id: u64) -> String {
///     pool.queries.fetch_add(1, Ordering::SeqCst);
///     format!("user {id}")
/// }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), aside::Error> {
/// let (a, b) = (Pool { queries: AtomicUsize::new(0) }, Pool { queries: AtomicUsize::new(0) });
/// user_name(&a, 1).await;
/// user_name(&b, 1).await; // another pool, same key: a hit
/// assert_eq!(a.queries.load(Ordering::SeqCst) + b.queries.load(Ordering::SeqCst), 1);
/// assert!(user_name_invalidate(1).await?); // no pool needed
/// # Ok(()) }
/// ```
///
/// # `key`
///
/// A readable key segment from the arguments instead of the digest:
/// `key = "{region}:{month}"`. Each value is escaped (every byte but ASCII letters,
/// digits, `-`, `_` and `.` is percent-encoded), so a value cannot forge `:`, `*`,
/// braces or white space. The template must use every key argument (or they would
/// share entries), may not use skipped ones, and needs a separator such as `:`
/// between two placeholders.
///
/// ```
/// # use aside::cached;
/// #[cached(prefix = "reports", key = "{region}:{month}")]
/// async fn report(region: &str, month: u32) -> String {
///     format!("{region}/{month}")
/// }
/// # fn main() {
/// assert_eq!(report_key("eu west", 11), "aside:reports:report:v1.1:eu%20west:11");
/// # }
/// ```
///
/// # `stale`
///
/// After `ttl`, keep serving the old value for this long while one caller computes
/// the new one; the old value is also served when that computation fails. A
/// duration as for `ttl`, from 0 to 24 h. Default: 0 (no stale window).
///
/// ```
/// # use aside::cached;
/// #[cached(ttl = "1m", stale = "10m")]
/// async fn dashboard(team: u32) -> Vec<u32> {
///     vec![team; 3]
/// }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// assert_eq!(dashboard(1).await, [1, 1, 1]);
/// assert_eq!(dashboard(1).await, [1, 1, 1]);
/// assert_eq!(aside::stats().function("computed:dashboard").computations, 1);
/// # }
/// ```
///
/// # `lock_ttl` and `wait`
///
/// Concurrent calls for a cold key compute once: one caller takes a lock and
/// computes, the others wait for its result. `lock_ttl` is the lock's lease, renewed
/// while the computation runs (so a dead process releases it); `wait` is how long a
/// waiter waits before computing itself. `lock_ttl` from 1 s to 24 h, `wait` from
/// 1 ms to 24 h. Defaults: 3 s (renewed every second, so a holder whose process
/// died is replaced within about 3.5 s) and 10 s. A caller whose computation is
/// cancelled (its future dropped) frees the lock at once.
///
/// ```
/// # use std::sync::atomic::{AtomicUsize, Ordering};
/// # use aside::cached;
/// static RUNS: AtomicUsize = AtomicUsize::new(0);
///
/// #[cached(lock_ttl = "2m", wait = "1m")]
/// async fn nightly_report(day: u32) -> u32 {
///     RUNS.fetch_add(1, Ordering::SeqCst);
///     day
/// }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// assert_eq!(nightly_report(1).await, 1);
/// assert_eq!(nightly_report(1).await, 1);
/// assert_eq!(RUNS.load(Ordering::SeqCst), 1);
/// # }
/// ```
///
/// # `cache_none`
///
/// For functions returning `Option<T>`: also store `None` ("known absent"), so that
/// a lookup that finds nothing is not repeated either. A compile error on other
/// return types. Default: `false`.
///
/// ```
/// # use std::sync::atomic::{AtomicUsize, Ordering};
/// # use aside::cached;
/// static LOOKUPS: AtomicUsize = AtomicUsize::new(0);
///
/// #[cached(cache_none = true)]
/// async fn find_user(email: &str) -> Option<u64> {
///     LOOKUPS.fetch_add(1, Ordering::SeqCst);
///     (email == "ada@example.com").then_some(1)
/// }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// assert_eq!(find_user("nobody@example.com").await, None);
/// assert_eq!(find_user("nobody@example.com").await, None); // the stored `None`
/// assert_eq!(LOOKUPS.load(Ordering::SeqCst), 1);
/// # }
/// ```
///
/// # `unless` and `ttl_from`
///
/// Adaptive caching, judged by the value. Both name a function by its path (a
/// closure is a compile error: write it as a named `fn`), called with the value
/// that would be stored — `T` of `Result<T, E>`, the whole `Option<T>`, else the
/// return value — and never for an `Err` or an uncached `None`.
///
/// - `unless = path` (`fn(&T) -> bool`): `true` returns the value without storing
///   it, so the next call computes again — empty search results, placeholders.
///   Concurrent callers of this process waiting for the same cold key get that
///   value too, without computing again; a stale value, if any, stays for the others.
/// - `ttl_from = path` (`fn(&T) -> Duration`): the value's own fresh lifetime
///   instead of `ttl`, clamped to the ceiling (`CACHE_MAX_TTL`, at most 24 h) and
///   raised to 1 s, the floor of `ttl`; `stale` applies after it.
///
/// By hand, wrap the computation's result in [`aside::Adaptive`](https://docs.rs/aside/latest/aside/struct.Adaptive.html).
///
/// ```
/// # use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::time::Duration;
/// use aside::cached;
///
/// static SEARCHES: AtomicUsize = AtomicUsize::new(0);
///
/// fn no_results(hits: &Vec<String>) -> bool {
///     hits.is_empty()
/// }
///
/// /// Popular queries stay longer: a minute per result.
/// fn by_popularity(hits: &Vec<String>) -> Duration {
///     Duration::from_secs(60 * hits.len() as u64)
/// }
///
/// #[cached(ttl = "10m", unless = no_results, ttl_from = by_popularity)]
/// async fn search(query: &str) -> Result<Vec<String>, std::io::Error> {
///     SEARCHES.fetch_add(1, Ordering::SeqCst);
///     Ok(if query == "rust" { vec!["aside".to_owned(), "tokio".to_owned()] } else { Vec::new() })
/// }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// assert!(search("nothing").await?.is_empty());
/// assert!(search("nothing").await?.is_empty()); // not stored: searched again
/// assert_eq!(SEARCHES.load(Ordering::SeqCst), 2);
/// assert_eq!(search("rust").await?.len(), 2);
/// assert_eq!(search("rust").await?.len(), 2); // stored
/// assert_eq!(SEARCHES.load(Ordering::SeqCst), 3);
/// let key = search_key("rust");
/// let ttl = aside::Cache::global().ttl(key.trim_start_matches("aside:")).await?.unwrap();
/// assert!(ttl <= Duration::from_secs(120) && ttl > Duration::from_secs(110)); // two results: two minutes
/// # Ok(()) }
/// ```
///
/// # `jitter`
///
/// Spreads the expiries of entries written together (a warm-up, a burst of
/// traffic after a deploy), so they are not all recomputed in the same second:
/// each stored TTL is drawn uniformly from `[ttl·(1−jitter), ttl]` — never longer
/// than `ttl`, never above the ceiling — and the `stale` window follows it. It
/// applies to [`ttl_from`](#unless-and-ttl_from) TTLs too. A percentage from
/// `"0%"` to `"50%"` (anything else is a compile error). Default: the cache's
/// `CACHE_TTL_JITTER`, else 0.
///
/// ```
/// use std::time::Duration;
/// use aside::cached;
///
/// #[cached(ttl = "1h", jitter = "10%")]
/// async fn price_list(shop: u32) -> Vec<u32> {
///     vec![shop; 2]
/// }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), aside::Error> {
/// for shop in 0..10 {
///     price_list(shop).await;
///     let key = price_list_key(shop);
///     let ttl = aside::Cache::global().ttl(key.trim_start_matches("aside:")).await?.unwrap();
///     assert!(ttl <= Duration::from_secs(3600) && ttl >= Duration::from_secs(3239)); // 54 to 60 minutes
/// }
/// # Ok(()) }
/// ```
///
/// # `refresh_ahead` and `soft_timeout`
///
/// - `refresh_ahead = 0.8`: a hit in the last 20 % of its entry's fresh life
///   returns the value at once and starts one background refresh of it,
///   cluster-wide (under the entry's lease), so a key that keeps being read
///   never goes cold. The refresh checks the store before computing, and an
///   invalidation during it refuses its store. A fraction strictly between 0 and 1.
/// - `soft_timeout = "200ms"` (with `stale`): the caller that refreshes a stale
///   entry waits this long for the new value, then takes the stale one; the
///   computation finishes and stores in the background. `"0s"`: it takes the
///   stale value at once, like every other caller.
///
/// With either, every caller of a stale entry is served the old value at once
/// while the refresh runs in a task of its own, and a refresh that fails backs
/// off for a second (the callers in between get the old value) instead of each
/// caller trying again. Since the body may then finish after its caller
/// returned, it cannot borrow an argument or `self` (a compile error says
/// which): take pools and clients by value — they are cheap to clone.
///
/// ```
/// use aside::cached;
///
/// #[derive(Clone)]
/// pub struct Pool; // an `Arc` inside, like sqlx's pools
/// # impl Pool { async fn headline(&self, region: &str) -> String { format!("news for {region}") } }
///
/// #[cached(ttl = "1m", stale = "10m", refresh_ahead = 0.8, soft_timeout = "200ms", skip(pool))]
/// async fn headline(pool: Pool, region: String) -> String {
///     pool.headline(&region).await
/// }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), aside::Error> {
/// assert_eq!(headline(Pool, "eu".to_owned()).await, "news for eu");
/// assert!(headline_expire("eu".to_owned()).await?); // stale now: refreshed on the next call
/// assert_eq!(headline(Pool, "eu".to_owned()).await, "news for eu"); // the old value, at once
/// # Ok(()) }
/// ```
///
/// # `batch`
///
/// Batch memoization: `batch = ids` makes a function over many ids cache each id
/// on its own. The function takes the ids as `&[I]`, `Vec<I>` or `&Vec<I>` and
/// returns `Result<HashMap<I, T>, E>` (any paths ending in `Result` and `HashMap`,
/// such as `std::collections::HashMap` or `io::Result`). A call reads every id's
/// entry at once (one `MGET`; on a cluster one per hash slot, in parallel), runs
/// the body with **only the missing ids**, in the parameter's own type (a `&[I]`
/// of the missing ids), and stores each id it returns as an entry of its own.
/// Concurrent calls, in any process, compute each id once: a missing id is
/// leased as a single call's key would be (see
/// [`Cache::get_many_or_compute`](https://docs.rs/aside/latest/aside/struct.Cache.html#method.get_many_or_compute),
/// which this calls).
///
/// - **One entry per id.** The key of an id's entry is the key the function would
///   have with that id in place of the batch parameter: `users(&db, "eu", &[1, 2])`
///   stores what `user(&db, "eu", 1)` and `user(&db, "eu", 2)` would store if
///   `user` were cached with the same `prefix`, `name` and key arguments (`id: u64`
///   where `ids` was). Such a single-id function reads the batch's entries and the
///   other way round. In a [`key`](#key) template, `{ids}` stands for the one id.
/// - **An id absent from the returned map** (a row that does not exist) is neither
///   stored nor in the result, and is asked for again by the next call. An `Err`
///   is returned as is and nothing of it is stored.
/// - **The body may run twice** in one call: a second time for ids another caller
///   was computing when that computation ended without them (or `wait` ran out).
///   Each run gets its own copy of every other argument — a reference is
///   re-borrowed, an owned value is cloned (so it must be `Clone`), and `&mut` is
///   a compile error.
/// - **Companions** take one id where the batch parameter was: `<fn>_invalidate`,
///   `<fn>_expire` and `<fn>_key` (`users_invalidate("eu", 2)` drops id 2's entry
///   only), plus `<fn>_invalidate_many(other key args, ids) -> Result<u64, Error>`
///   (how many of those ids had an entry). There is no `_refresh` (invalidate the
///   ids, then call the function) and no `_with_status` (each id of a batch is
///   answered its own way; `stats()` counts them: a hit, stale hit or miss per id).
/// - **Tags** are recorded alike for every id of a call: they may use the other
///   arguments (`region:{region}`), not the batch parameter (a compile error).
/// - `stale` serves an entry within its window as a hit (not refreshed; so
///   `_expire` of an id makes the next call compute it only without `stale`);
///   `refresh_ahead`, `soft_timeout`, `unless`, `ttl_from` and `cache_none` do
///   not apply to a batch and are compile errors; the batch parameter cannot be
///   skipped.
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::Mutex;
/// use aside::cached;
///
/// # #[derive(Debug)] pub struct DbError;
/// /// The database; records the ids of each query.
/// #[derive(Default)]
/// pub struct Db { queries: Mutex<Vec<Vec<u64>>> }
///
/// #[cached(prefix = "users", ttl = 300, tags = ["region:{region}"], skip(db), batch = ids)]
/// async fn users(db: &Db, region: &str, ids: &[u64]) -> Result<HashMap<u64, String>, DbError> {
///     db.queries.lock().unwrap().push(ids.to_vec());
///     Ok(ids.iter().map(|&id| (id, format!("{region} user {id}"))).collect())
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let db = Db::default();
/// assert_eq!(users(&db, "eu", &[1, 2]).await.unwrap().len(), 2);
/// let three = users(&db, "eu", &[1, 2, 3]).await.unwrap(); // 1 and 2 are hits
/// assert_eq!(three[&3], "eu user 3");
/// assert_eq!(*db.queries.lock().unwrap(), [vec![1, 2], vec![3]]);
///
/// assert!(users_key("eu", 2).starts_with("aside:users:users:v1.1:")); // id 2's entry
/// assert!(users_invalidate("eu", 2).await?); // drops id 2 only
/// users(&db, "eu", &[1, 2, 3]).await.unwrap();
/// assert_eq!(db.queries.lock().unwrap()[2], [2]);
/// assert_eq!(users_invalidate_many("eu", &[1, 2, 3, 4]).await?, 3);
/// # Ok(()) }
/// ```
///
/// # `cache`
///
/// Which cache to use: an expression giving something that dereferences to an
/// `aside::Cache` — a `static` `LazyLock<Cache>`, `self.cache`, a skipped argument
/// (`cache = state.cache`). It is evaluated on every call, and in the companions,
/// which take `&self` or the skipped arguments it names for that. Default: the global
/// cache, `Cache::global()`, built from the environment (`REDIS_URL` ...) on first use.
///
/// ```
/// use std::sync::LazyLock;
/// use aside::{cached, Cache};
///
/// static REPORTS: LazyLock<Cache> =
///     LazyLock::new(|| Cache::builder().memory().namespace("reports").build_lazy().unwrap());
///
/// #[cached(cache = REPORTS)]
/// async fn yearly(year: u16) -> u16 {
///     year
/// }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// assert_eq!(yearly(2026).await, 2026);
/// assert_eq!(REPORTS.stats().function("computed:yearly").computations, 1);
/// assert!(yearly_key(2026).starts_with("reports:computed:yearly:"));
/// # }
/// ```
///
/// # `crate`
///
/// The path of the `aside` crate, when it is not reachable as `::aside` (renamed in
/// `Cargo.toml`, or re-exported by another crate). Default: `::aside`.
///
/// ```
/// extern crate aside as cache;
///
/// #[cache::cached(crate = cache)]
/// async fn square(n: u64) -> u64 {
///     n * n
/// }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// assert_eq!(square(12).await, 144);
/// # }
/// ```
///
/// # Compile errors
///
/// Mistakes are reported at the token that is wrong, all at once, and the function
/// is still emitted unchanged (with its companions) so that the rest of the crate
/// keeps compiling and reports nothing else: a function
/// that is not `async` or returns nothing; an unknown or repeated argument; a
/// duration out of range or not parsable; a `skip`, `key` or tag placeholder naming
/// no argument; a `key` using a skipped argument or missing a key argument; two
/// placeholders without a separator; an unskipped `self` or destructuring pattern;
/// `cache_none` without `Option`; a `jitter` that is not a percentage from 0% to
/// 50%; a `refresh_ahead` not strictly between 0 and 1; a `soft_timeout` without
/// `stale`; with either of those, a body that borrows an argument; a `batch` naming
/// no argument, naming a skipped one or one that is not `&[I]`, `Vec<I>` or `&Vec<I>`,
/// on a function not returning `Result<HashMap<I, T>, E>`, with a tag using the ids,
/// with `refresh_ahead`, `soft_timeout`, `unless`, `ttl_from` or `cache_none`, or
/// with a body using an argument that is `&mut`; an `unless` or `ttl_from` that is not a
/// function's path (or a function of the wrong type, reported at the path); a key argument that is not `Serialize` (the
/// error names the type and says to derive `Serialize` or `skip` the argument), or a
/// stored type that is not `Serialize + DeserializeOwned`.
///
/// The body is not parsed by the attribute: while it is being edited and does not
/// parse yet, the compiler reports that alone, and the function and its companions
/// still exist for the rest of the crate (and for an IDE).
///
/// ```compile_fail
/// # use aside::cached;
/// #[cached(ttl = "25h")] // error: `ttl` must be between 1s and 24h
/// async fn too_long(n: u32) -> u32 {
///     n
/// }
/// # fn main() {}
/// ```
#[proc_macro_attribute]
pub fn cached(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::cached(args.into(), item.into()).into()
}
