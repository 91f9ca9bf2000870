//! Invalidation: `invalidate_tag` over 1k / 10k / 100k tagged entries against a
//! hand-kept Redis set of keys (`SMEMBERS` + `DEL` in batches of 1000), and
//! `invalidate_pattern` over 100k entries (among as many unrelated keys) against
//! `SCAN MATCH` + `DEL` and the `cached` crate's `async_cache_clear` (the same, its
//! own way). Entries are written untimed through each contender's own API; only
//! the invalidation is timed.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cached::{AsyncRedisCache, ConcurrentCachedAsync};
use redis::aio::ConnectionManager;

use crate::{median, raw_connection, report, Group, Report, Results, Settings, REDIS};

#[aside::cached(prefix = "bench", ttl = 600, tags = ["group:{group}"], cache = REDIS)]
async fn aside_tagged(group: u64, id: u64) -> Report {
    let _ = (group, id);
    report()
}

#[aside::cached(prefix = "patterned", ttl = 600, cache = REDIS)]
async fn aside_patterned(id: u64) -> Report {
    let _ = id;
    report()
}

/// Runs `op(i)` for every `i` in `0..n` over 64 concurrent tasks.
pub async fn fan_out<F, Fut>(n: usize, op: F)
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    const TASKS: usize = 64;
    let op = Arc::new(op);
    let handles: Vec<_> = (0..TASKS)
        .map(|t| {
            let op = Arc::clone(&op);
            tokio::spawn(async move {
                for i in (t..n).step_by(TASKS) {
                    op(i as u64).await;
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.expect("populating task panicked");
    }
}

/// Writes `keys` with `value` (EX 600) in pipelines of 1000, adding each to `set` if given.
pub async fn raw_populate(conn: &mut ConnectionManager, keys: &[String], value: &[u8], set: Option<&str>) {
    for chunk in keys.chunks(1000) {
        let mut pipe = redis::pipe();
        for key in chunk {
            pipe.cmd("SET").arg(key).arg(value).arg("EX").arg(600).ignore();
        }
        if let Some(set) = set {
            pipe.cmd("SADD").arg(set).arg(chunk).ignore();
            pipe.cmd("EXPIRE").arg(set).arg(600).ignore();
        }
        let _: () = pipe.query_async(conn).await.expect("populate");
    }
}

pub fn size_label(n: usize) -> String {
    if n >= 1000 && n % 1000 == 0 {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

fn timed<T>(started: Instant, value: T) -> (Duration, T) {
    (started.elapsed(), value)
}

/// What Redis spent on one of aside's invalidations, by command (`INFO
/// commandstats`: calls, µs) and the slowest single command (`SLOWLOG`), read
/// around the invalidation alone.
#[derive(Default)]
pub struct ServerCost {
    by_command: std::collections::BTreeMap<String, (u64, u64)>,
    slowest_us: u64,
    slowest: String,
}

impl ServerCost {
    /// Clears Redis's statistics and slow log before a timed invalidation.
    pub async fn reset(conn: &mut ConnectionManager) {
        let _: () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async(conn)
            .await
            .expect("RESETSTAT");
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("slowlog-log-slower-than")
            .arg(200)
            .arg("slowlog-max-len")
            .arg(4096)
            .query_async(conn)
            .await
            .expect("slowlog settings");
        let _: () = redis::cmd("SLOWLOG")
            .arg("RESET")
            .query_async(conn)
            .await
            .expect("SLOWLOG RESET");
    }

    /// Adds what Redis recorded since [`ServerCost::reset`].
    pub async fn add(&mut self, conn: &mut ConnectionManager) {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(conn)
            .await
            .expect("INFO commandstats");
        for line in info.lines() {
            let Some((name, fields)) = line.strip_prefix("cmdstat_").and_then(|l| l.split_once(':')) else {
                continue;
            };
            if matches!(name, "config|resetstat" | "config|set" | "slowlog|reset" | "info") {
                continue;
            }
            let field = |key: &str| -> u64 {
                fields
                    .split(',')
                    .find_map(|f| f.strip_prefix(key)?.strip_prefix('='))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            };
            let sum = self.by_command.entry(name.to_owned()).or_default();
            sum.0 += field("calls");
            sum.1 += field("usec");
        }
        let log: Vec<(u64, u64, u64, Vec<redis::Value>)> = redis::cmd("SLOWLOG")
            .arg("GET")
            .arg(-1)
            .query_async::<Vec<redis::Value>>(conn)
            .await
            .expect("SLOWLOG GET")
            .into_iter()
            .filter_map(|entry| {
                let redis::Value::Array(parts) = entry else { return None };
                let number = |i: usize| match parts.get(i) {
                    Some(redis::Value::Int(n)) => u64::try_from(*n).ok(),
                    _ => None,
                };
                let args = match parts.get(3) {
                    Some(redis::Value::Array(args)) => args.clone(),
                    _ => Vec::new(),
                };
                Some((number(0)?, number(1)?, number(2)?, args))
            })
            .collect();
        for (_, _, us, args) in log {
            if us > self.slowest_us {
                let text = |v: &redis::Value| match v {
                    redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                    _ => String::new(),
                };
                let name = args.first().map(text).unwrap_or_default();
                // EVALSHA <sha> <numkeys>: the script's key count says which one.
                let detail = if name.eq_ignore_ascii_case("evalsha") {
                    format!("EVALSHA with {} keys", args.get(2).map(text).unwrap_or_default())
                } else if name.eq_ignore_ascii_case("del") || name.eq_ignore_ascii_case("unlink") {
                    // SLOWLOG keeps 32 arguments, the last saying how many more there were.
                    let more = args
                        .last()
                        .map(text)
                        .and_then(|last| last.strip_prefix("... (")?.split(' ').next()?.parse::<usize>().ok());
                    let keys = match more {
                        Some(more) => args.len() - 2 + more,
                        None => args.len() - 1,
                    };
                    format!("{name} of {keys} keys")
                } else {
                    name
                };
                self.slowest_us = us;
                self.slowest = detail;
            }
        }
    }

    /// One line: per command, calls and mean µs; and the slowest single one.
    pub fn line(&self) -> String {
        let parts: Vec<String> = self
            .by_command
            .iter()
            .filter(|(_, (calls, _))| *calls > 0)
            .map(|(name, (calls, us))| format!("{name} {calls} calls {:.0} us each", *us as f64 / *calls as f64))
            .collect();
        format!(
            "{}; slowest single command {} us ({})",
            parts.join(", "),
            self.slowest_us,
            if self.slowest.is_empty() {
                "none over 200 us"
            } else {
                &self.slowest
            }
        )
    }
}

pub async fn tags(s: &Settings, results: &mut Results) {
    let mut conn = raw_connection().await;
    let _: () = redis::cmd("FLUSHALL")
        .arg("SYNC")
        .query_async(&mut conn)
        .await
        .expect("FLUSHALL");
    let json = serde_json::to_vec(&report()).expect("json");
    println!(
        "# invalidate_tag: aside entries written by a #[cached(tags = [\"group:{{group}}\"])] function; \
         raw: SET EX + SADD to a set per tag, invalidated by SMEMBERS + DEL (1000 keys per DEL) + DEL of the set"
    );
    let mut group = 0u64;
    for &n in &s.tag_sizes {
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        let mut cost = ServerCost::default();
        for _ in 0..s.invalidation_rounds {
            group += 1;
            let g = group;
            fan_out(n, move |id| async move {
                std::hint::black_box(aside_tagged(g, id).await);
            })
            .await;
            let set = format!("raw:tagset:{g}");
            let keys: Vec<String> = (0..n).map(|id| format!("raw:tagged:{g}:{id}")).collect();
            raw_populate(&mut conn, &keys, &json, Some(&set)).await;

            ServerCost::reset(&mut conn).await;
            let (t, removed) = timed(
                Instant::now(),
                REDIS
                    .invalidate_tag(&format!("group:{g}"))
                    .await
                    .expect("invalidate_tag"),
            );
            cost.add(&mut conn).await;
            assert_eq!(removed, n as u64, "aside removed every tagged entry");
            xs.push(t.as_secs_f64());

            let started = Instant::now();
            let members: Vec<String> = redis::cmd("SMEMBERS")
                .arg(&set)
                .query_async(&mut conn)
                .await
                .expect("SMEMBERS");
            let mut removed = 0u64;
            for chunk in members.chunks(1000) {
                removed += redis::cmd("DEL")
                    .arg(chunk)
                    .query_async::<u64>(&mut conn)
                    .await
                    .expect("DEL");
            }
            let _: u64 = redis::cmd("DEL")
                .arg(&set)
                .query_async(&mut conn)
                .await
                .expect("DEL set");
            let (t, removed) = timed(started, removed);
            assert_eq!(removed, n as u64, "raw removed every tagged entry");
            ys.push(t.as_secs_f64());
        }
        let (x, y) = (median(xs), median(ys));
        println!(
            "# invalidate_tag ({} entries): aside {:.1} ms per invalidation, raw {:.1} ms",
            size_label(n),
            x * 1e3,
            y * 1e3
        );
        println!(
            "# invalidate_tag ({} entries), Redis's work over {} invalidations: {}",
            size_label(n),
            s.invalidation_rounds,
            cost.line()
        );
        results.line(
            Group::Invalidation,
            format!("invalidate_tag ({} entries) vs raw redis-rs", size_label(n)),
            "raw SMEMBERS+DEL",
            n as f64 / x,
            n as f64 / y,
            "entries/s",
        );
    }
}

pub async fn pattern(s: &Settings, results: &mut Results) {
    let mut conn = raw_connection().await;
    let _: () = redis::cmd("FLUSHALL")
        .arg("SYNC")
        .query_async(&mut conn)
        .await
        .expect("FLUSHALL");
    let n = s.pattern_size;
    let json = serde_json::to_vec(&report()).expect("json");
    // Keys the pattern does not match, which every SCAN walks past.
    let background: Vec<String> = (0..s.pattern_background).map(|i| format!("other:{i}")).collect();
    raw_populate(&mut conn, &background, b"x", None).await;
    let cached: AsyncRedisCache<u64, Report> = crate::cached_store("bench_patterned").await;
    let cached = Arc::new(cached);
    let raw_keys: Vec<String> = (0..n).map(|id| format!("raw:patterned:{id}")).collect();
    println!(
        "# invalidate_pattern: {} matching entries among {} unrelated keys; aside: SCAN of leases then of entries, \
         on each master side by side; a batch per <= 500 leased entries (entry + lease), one per <= 1000 stored ones (MULTI/EXEC on one node, a script on a cluster), removed while the scan goes on; raw: SCAN MATCH COUNT 1000 + DEL per batch; cached: async_cache_clear (SCAN COUNT 100 + DEL)",
        size_label(n),
        size_label(s.pattern_background)
    );
    let (mut xs, mut ys, mut zs) = (Vec::new(), Vec::new(), Vec::new());
    let mut cost = ServerCost::default();
    for _ in 0..s.invalidation_rounds {
        fan_out(n, |id| async move {
            std::hint::black_box(aside_patterned(id).await);
        })
        .await;
        ServerCost::reset(&mut conn).await;
        let (t, removed) = timed(
            Instant::now(),
            REDIS
                .invalidate_pattern("patterned:*")
                .await
                .expect("invalidate_pattern"),
        );
        cost.add(&mut conn).await;
        assert_eq!(removed, n as u64, "aside removed every matching entry");
        xs.push(t.as_secs_f64());

        raw_populate(&mut conn, &raw_keys, &json, None).await;
        let started = Instant::now();
        let mut cursor = 0u64;
        let mut removed = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg("raw:patterned:*")
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .expect("SCAN");
            if !keys.is_empty() {
                removed += redis::cmd("DEL")
                    .arg(&keys)
                    .query_async::<u64>(&mut conn)
                    .await
                    .expect("DEL");
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        let (t, removed) = timed(started, removed);
        assert_eq!(removed, n as u64, "raw removed every matching entry");
        ys.push(t.as_secs_f64());

        let store = Arc::clone(&cached);
        fan_out(n, move |id| {
            let store = Arc::clone(&store);
            async move {
                store.async_cache_set(id, report()).await.expect("cached set");
            }
        })
        .await;
        let started = Instant::now();
        cached.async_cache_clear().await.expect("cached clear");
        let t = started.elapsed();
        let left: u64 = redis::cmd("DBSIZE").query_async(&mut conn).await.expect("DBSIZE");
        assert_eq!(
            left, s.pattern_background as u64,
            "every contender removed all its entries, nothing else"
        );
        zs.push(t.as_secs_f64());
    }
    let (x, y, z) = (median(xs), median(ys), median(zs));
    println!(
        "# invalidate_pattern ({} entries): aside {:.0} ms per invalidation, raw {:.0} ms, cached {:.0} ms",
        size_label(n),
        x * 1e3,
        y * 1e3,
        z * 1e3
    );
    println!(
        "# invalidate_pattern, Redis's work over {} invalidations: {}",
        s.invalidation_rounds,
        cost.line()
    );
    let case = format!(
        "invalidate_pattern ({} of {} keys)",
        size_label(n),
        size_label(n + s.pattern_background)
    );
    results.line(
        Group::Invalidation,
        format!("{case} vs raw redis-rs"),
        "raw SCAN+DEL",
        n as f64 / x,
        n as f64 / y,
        "entries/s",
    );
    results.line(
        Group::Invalidation,
        format!("{case} vs cached"),
        "cached AsyncRedisCache async_cache_clear",
        n as f64 / x,
        n as f64 / z,
        "entries/s",
    );
}
