//! Redis memory per entry: `INFO memory` `used_memory` before and after writing N
//! entries of the ~1 KB value, on an emptied server, divided by N. For aside this
//! includes everything it keeps: the entry (10-byte header + JSON, under its
//! namespaced key with a 32-hex-digit digest) and, tagged, the entry's member in
//! the tag's sorted set. The raw baseline is a `SET key json EX 600`; `cached`
//! stores MessagePack under its own key layout.

use std::time::Duration;

use cached::macros::concurrent_cached;
use cached::AsyncRedisCache;
use redis::aio::ConnectionManager;

use crate::invalidation::{fan_out, raw_populate, size_label};
use crate::{raw_connection, report, Group, Report, Results, Settings, REDIS};

#[aside::cached(prefix = "bench", ttl = 600, tags = ["orders"], cache = REDIS)]
async fn aside_footprint_tagged(id: u64) -> Report {
    let _ = id;
    report()
}

#[aside::cached(prefix = "bench", ttl = 600, cache = REDIS)]
async fn aside_footprint(id: u64) -> Report {
    let _ = id;
    report()
}

#[concurrent_cached(
    ty = "AsyncRedisCache<u64, Report>",
    create = r##"{ crate::cached_store("bench_footprint").await }"##,
    key = "u64",
    convert = r##"{ id }"##,
    map_error = r##"|e| format!("{e:?}")"##
)]
async fn cached_footprint(id: u64) -> Result<Report, String> {
    let _ = id;
    Ok(report())
}

async fn used_memory(conn: &mut ConnectionManager) -> i64 {
    // Let Redis settle client buffers between the writes and the reading.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let info: String = redis::cmd("INFO").arg("memory").query_async(conn).await.expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory in INFO memory")
}

async fn flush(conn: &mut ConnectionManager) {
    let _: () = redis::cmd("FLUSHALL")
        .arg("SYNC")
        .query_async(conn)
        .await
        .expect("FLUSHALL");
}

async fn memory_usage(conn: &mut ConnectionManager, key: &str) -> i64 {
    redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(key)
        .arg("SAMPLES")
        .arg(0)
        .query_async::<Option<i64>>(conn)
        .await
        .expect("MEMORY USAGE")
        .unwrap_or_else(|| panic!("{key} exists"))
}

/// Bytes per entry that `populate` adds to an emptied server.
async fn delta_per_entry<F, Fut>(conn: &mut ConnectionManager, n: usize, populate: F) -> f64
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    flush(conn).await;
    let before = used_memory(conn).await;
    populate().await;
    let after = used_memory(conn).await;
    (after - before) as f64 / n as f64
}

pub async fn per_entry(s: &Settings, results: &mut Results) {
    let n = s.footprint_entries;
    let mut conn = raw_connection().await;
    let json = serde_json::to_vec(&report()).expect("json");

    let tagged = delta_per_entry(&mut conn, n, || {
        fan_out(n, |id| async move {
            std::hint::black_box(aside_footprint_tagged(id).await);
        })
    })
    .await;
    let sample = aside_footprint_tagged_key(0);
    let entry_usage = memory_usage(&mut conn, &sample).await;
    let tag_usage = memory_usage(&mut conn, "aside~tag:orders").await;
    let untagged = delta_per_entry(&mut conn, n, || {
        fan_out(n, |id| async move {
            std::hint::black_box(aside_footprint(id).await);
        })
    })
    .await;
    let raw_keys: Vec<String> = (0..n).map(|id| format!("report:{id}")).collect();
    let mut writer = conn.clone();
    let raw = delta_per_entry(&mut conn, n, || raw_populate(&mut writer, &raw_keys, &json, None)).await;
    let raw_usage = memory_usage(&mut conn, &raw_keys[0]).await;
    let cached = delta_per_entry(&mut conn, n, || {
        fan_out(n, |id| async move {
            std::hint::black_box(cached_footprint(id).await.expect("cached miss"));
        })
    })
    .await;
    let cached_keys: Vec<String> = redis::cmd("SCAN")
        .arg(0)
        .arg("MATCH")
        .arg("*bench_footprint*")
        .arg("COUNT")
        .arg(1000)
        .query_async::<(u64, Vec<String>)>(&mut conn)
        .await
        .expect("SCAN")
        .1;
    let cached_sample = cached_keys.first().expect("a cached entry").clone();
    let cached_usage = memory_usage(&mut conn, &cached_sample).await;
    let cached_bytes: Vec<u8> = redis::cmd("GET")
        .arg(&cached_sample)
        .query_async(&mut conn)
        .await
        .expect("GET");
    flush(&mut conn).await;

    println!(
        "# redis memory ({} entries, used_memory deltas): MEMORY USAGE of one aside entry {entry_usage} B \
         (key {} chars, value {} B), of the tag set {tag_usage} B ({:.0} B per member); one raw key {raw_usage} B \
         (key {} chars, value {} B); one cached key {cached_usage} B (key {} chars, MessagePack value {} B)",
        size_label(n),
        sample.len(),
        json.len() + 10,
        tag_usage as f64 / n as f64,
        raw_keys[0].len(),
        json.len(),
        cached_sample.len(),
        cached_bytes.len()
    );
    let case = format!("redis memory per entry ({} entries)", size_label(n));
    results.line(
        Group::Footprint,
        format!("{case}, aside with 1 tag vs raw SET"),
        "raw SET EX",
        tagged,
        raw,
        "bytes/entry",
    );
    results.line(
        Group::Footprint,
        format!("{case}, aside untagged vs raw SET"),
        "raw SET EX",
        untagged,
        raw,
        "bytes/entry",
    );
    results.line(
        Group::Footprint,
        format!("{case}, aside with 1 tag vs cached"),
        "cached AsyncRedisCache (MessagePack)",
        tagged,
        cached,
        "bytes/entry",
    );
}
