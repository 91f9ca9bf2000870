//! The Redis hit and miss paths: `#[aside::cached]` against raw redis-rs and
//! against the `cached` crate's `#[concurrent_cached]` over `AsyncRedisCache`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use cached::macros::concurrent_cached;
use cached::AsyncRedisCache;

use crate::{compare, raw_connection, report, Contender, Group, Report, Results, Settings, REDIS, REDIS_COMPACT};

/// Computations run by the hit-path functions: zero once primed.
static HIT_COMPUTATIONS: AtomicUsize = AtomicUsize::new(0);

#[aside::cached(prefix = "bench", ttl = 600, cache = REDIS)]
async fn aside_hit(region: &str, month: u32) -> Report {
    HIT_COMPUTATIONS.fetch_add(1, Ordering::Relaxed);
    let _ = (region, month);
    report()
}

/// `aside_hit` on a cache writing MessagePack entries, as `cached` does.
#[aside::cached(prefix = "bench", ttl = 600, cache = REDIS_COMPACT)]
async fn aside_hit_compact(region: &str, month: u32) -> Report {
    HIT_COMPUTATIONS.fetch_add(1, Ordering::Relaxed);
    let _ = (region, month);
    report()
}

#[concurrent_cached(
    ty = "AsyncRedisCache<String, Report>",
    create = r##"{ crate::cached_store("bench_hit").await }"##,
    key = "String",
    convert = r##"{ format!("{region}:{month}") }"##,
    map_error = r##"|e| format!("{e:?}")"##
)]
async fn cached_hit(region: &str, month: u32) -> Result<Report, String> {
    HIT_COMPUTATIONS.fetch_add(1, Ordering::Relaxed);
    let _ = (region, month);
    Ok(report())
}

/// Fresh keys for the miss path: every call of every side uses a new one.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn fresh_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

#[aside::cached(prefix = "bench", ttl = 600, cache = REDIS)]
async fn aside_miss(id: u64) -> Report {
    let _ = id;
    report()
}

#[concurrent_cached(
    ty = "AsyncRedisCache<u64, Report>",
    create = r##"{ crate::cached_store("bench_miss").await }"##,
    key = "u64",
    convert = r##"{ id }"##,
    map_error = r##"|e| format!("{e:?}")"##
)]
async fn cached_miss(id: u64) -> Result<Report, String> {
    let _ = id;
    Ok(report())
}

pub async fn hit_path(s: &Settings, results: &mut Results) {
    // Prime every side's entry; from here on every call hits.
    let primed = aside_hit("eu-west", 11).await;
    assert_eq!(aside_hit_compact("eu-west", 11).await, primed);
    assert_eq!(cached_hit("eu-west", 11).await.expect("cached primes"), primed);
    let raw = raw_connection().await;
    let raw_key = "raw:report:eu-west:11";
    let json = serde_json::to_vec(&report()).expect("json");
    let _: () = redis::cmd("SET")
        .arg(raw_key)
        .arg(&json)
        .arg("EX")
        .arg(600)
        .query_async(&mut raw.clone())
        .await
        .expect("SET");
    HIT_COMPUTATIONS.store(0, Ordering::Relaxed);
    let (_, cached_keys): (u64, Vec<String>) = redis::cmd("SCAN")
        .arg(0)
        .arg("MATCH")
        .arg("*bench_hit*")
        .arg("COUNT")
        .arg(1000)
        .query_async(&mut raw.clone())
        .await
        .expect("SCAN");
    let cached_key = cached_keys.first().expect("cached's entry").clone();
    let size_of = |key: String| {
        let mut raw = raw.clone();
        async move {
            let bytes: Vec<u8> = redis::cmd("GET").arg(&key).query_async(&mut raw).await.expect("GET");
            bytes.len()
        }
    };
    println!(
        "# hit path: a {}-byte JSON value. aside: {} bytes (header + JSON) at {}, {} bytes (header + \
         MessagePack, CACHE_ENTRY_FORMAT=msgpack) at {}; raw: the JSON at {raw_key}; cached: {} bytes of \
         MessagePack (its format) at {cached_key}",
        json.len(),
        size_of(aside_hit_key("eu-west", 11).to_string()).await,
        aside_hit_key("eu-west", 11),
        size_of(aside_hit_compact_key("eu-west", 11).to_string()).await,
        aside_hit_compact_key("eu-west", 11),
        size_of(cached_key.clone()).await,
    );

    // aside's default JSON entries, then its compact ones, each against the
    // same two baselines in alternating rounds.
    for (compact, tasks) in [(false, 1), (false, 64), (true, 1), (true, 64)] {
        let aside = Contender {
            case: "",
            label: if compact { "aside (msgpack entries)" } else { "aside" },
            op: move || async move {
                let region = std::hint::black_box("eu-west");
                let report = if compact {
                    aside_hit_compact(region, 11).await
                } else {
                    aside_hit(region, 11).await
                };
                std::hint::black_box(report);
            },
        };
        let raw = Contender {
            case: if compact {
                "hit, msgpack entries, vs raw redis-rs"
            } else {
                "hit vs raw redis-rs"
            },
            label: "raw redis-rs GET+from_slice",
            op: {
                let raw = raw.clone();
                move || {
                    let mut raw = raw.clone();
                    async move {
                        let bytes: Vec<u8> = redis::cmd("GET").arg(raw_key).query_async(&mut raw).await.expect("GET");
                        let report: Report = serde_json::from_slice(&bytes).expect("decode");
                        std::hint::black_box(report);
                    }
                }
            },
        };
        let cached = Contender {
            case: if compact {
                "hit, msgpack entries, vs cached"
            } else {
                "hit vs cached"
            },
            label: "cached #[concurrent_cached] AsyncRedisCache",
            op: || async {
                let report = cached_hit(std::hint::black_box("eu-west"), 11)
                    .await
                    .expect("cached hit");
                std::hint::black_box(report);
            },
        };
        compare(
            results,
            Group::Redis,
            tasks,
            s.ops_per_round,
            s.rounds,
            &aside,
            &[(raw.case, &raw), (cached.case, &cached)],
        )
        .await;
    }
    let stats = REDIS.stats().function("bench:aside_hit");
    println!(
        "# hit path: aside counted {} hits, {} misses, {} backend errors; {} computations after priming (all sides)",
        stats.hits,
        stats.misses,
        stats.backend_errors,
        HIT_COMPUTATIONS.load(Ordering::Relaxed)
    );
    assert_eq!(HIT_COMPUTATIONS.load(Ordering::Relaxed), 0, "a hit-path call computed");
}

pub async fn miss_path(s: &Settings, results: &mut Results) {
    let raw = raw_connection().await;
    println!(
        "# miss path: every call uses a fresh key and computes (≈ 0 s) and stores a ~1 KB value; \
         aside: GET, lease script (which also reads the entry), store script; raw: GET, SET EX; cached: GET, then GET+PSETEX pipelined"
    );
    for tasks in [1, 64] {
        let aside = Contender {
            case: "",
            label: "aside",
            op: || async {
                std::hint::black_box(aside_miss(fresh_id()).await);
            },
        };
        let raw = Contender {
            case: "miss vs raw redis-rs",
            label: "raw redis-rs GET+SET EX",
            op: {
                let raw = raw.clone();
                move || {
                    let mut raw = raw.clone();
                    async move {
                        let key = format!("raw:miss:{}", fresh_id());
                        let found: Option<Vec<u8>> =
                            redis::cmd("GET").arg(&key).query_async(&mut raw).await.expect("GET");
                        assert!(found.is_none());
                        let report = report();
                        let json = serde_json::to_vec(&report).expect("json");
                        let _: () = redis::cmd("SET")
                            .arg(&key)
                            .arg(json)
                            .arg("EX")
                            .arg(600)
                            .query_async(&mut raw)
                            .await
                            .expect("SET");
                        std::hint::black_box(report);
                    }
                }
            },
        };
        let cached = Contender {
            case: "miss vs cached",
            label: "cached #[concurrent_cached] AsyncRedisCache",
            op: || async {
                std::hint::black_box(cached_miss(fresh_id()).await.expect("cached miss"));
            },
        };
        compare(
            results,
            Group::Redis,
            tasks,
            s.miss_ops_per_round,
            s.miss_rounds,
            &aside,
            &[(raw.case, &raw), (cached.case, &cached)],
        )
        .await;
    }
    let stats = REDIS.stats().function("bench:aside_miss");
    println!(
        "# miss path: aside counted {} misses, {} computations, {} hits, {} backend errors",
        stats.misses, stats.computations, stats.hits, stats.backend_errors
    );
    // Drop the ~1 KB entries every miss left, so later cases start from an empty Redis.
    let _: () = redis::cmd("FLUSHALL")
        .arg("SYNC")
        .query_async(&mut raw.clone())
        .await
        .expect("FLUSHALL");
}
