//! aside against what users would write instead, measured in the same run on the
//! same Redis (a `redis-server` this benchmark starts on a free loopback port).
//!
//! ```text
//! cargo bench --bench compare             # full run; writes docs/benchmarks.svg
//! cargo bench --bench compare -- --quick  # a smoke run, well under a minute
//! cargo bench --bench compare -- hit memory  # only these sections (also: miss storm
//!                                            # tags pattern footprint keys tiered batch freshness); no docs chart
//! ```
//!
//! Each comparison prints one line,
//! `<case>: aside <x> <unit>, <baseline> <y> <unit>, ratio <x/y>`, where the unit is
//! `ops/s` for calls, `entries/s` for invalidations and `bytes/entry` for Redis
//! memory (there, lower is better). Lines starting with `#` are context: sizes,
//! counters, per-round details. Throughput rounds alternate between aside and its
//! baselines and the median round counts, so drift on a shared machine hits every
//! side alike.
//!
//! Baselines:
//! - raw redis-rs: `GET` + `serde_json::from_slice` (hit), `GET` + `SET EX` (miss),
//!   a hand-kept Redis set of keys + `DEL` (tags), `SCAN` + `DEL` (patterns);
//! - the `cached` crate 4.x: `#[concurrent_cached]` over its `AsyncRedisCache`
//!   (a `ConnectionManager`, as aside and the raw baseline use), which stores
//!   MessagePack, not JSON; its in-memory `#[cached]`, which stores the value itself
//!   and clones it on a hit (no decoding);
//! - moka: the `moka::sync::Cache` aside's memory backend is built on, holding the
//!   JSON bytes, + the same `serde_json` decode aside's memory backend does.
//!
//! The cold-key storm runs in child processes: this binary re-executes itself with
//! `ASIDE_BENCH_STORM_CHILD` set (see `compare/storm.rs`).

/// `#[aside::cached]` hit functions over the ~1 KB [`Report`], one per cache
/// (the name is in the key, so each has its own entry), each counting its runs
/// in the `COMPUTATIONS` static of the module that invokes it. Defined before
/// the modules so that `keys` and `tiered` share it.
macro_rules! hit_fn {
    ($($name:ident => $cache:ident),* $(,)?) => {$(
        #[aside::cached(prefix = "bench", ttl = 600, cache = $cache)]
        async fn $name(region: &str, month: u32) -> Report {
            COMPUTATIONS.fetch_add(1, Ordering::Relaxed);
            let _ = (region, month);
            report()
        }
    )*};
}

#[path = "compare/batch.rs"]
mod batch;
#[path = "compare/chart.rs"]
mod chart;
#[path = "compare/footprint.rs"]
mod footprint;
#[path = "compare/freshness.rs"]
mod freshness;
#[path = "compare/invalidation.rs"]
mod invalidation;
#[path = "compare/keys.rs"]
mod keys;
#[path = "compare/memory.rs"]
mod memory;
#[path = "compare/redis_paths.rs"]
mod redis_paths;
#[path = "compare/storm.rs"]
mod storm;
#[path = "compare/tiered.rs"]
mod tiered;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::{Duration, Instant};

use aside::Cache;
use aside_testkit::RedisServer;
use serde::{Deserialize, Serialize};

/// A ~1 KB JSON value: one region's monthly figures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    region: String,
    currency: String,
    months: Vec<Month>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Month {
    month: u32,
    orders: u64,
    revenue_cents: i64,
    refunds_cents: i64,
}

pub fn report() -> Report {
    Report {
        region: "eu-west".into(),
        currency: "EUR".into(),
        months: (1..=12)
            .map(|m| Month {
                month: m,
                orders: 1_000 + u64::from(m) * 37,
                revenue_cents: 9_876_543 + i64::from(m) * 1_234,
                refunds_cents: 12_345 + i64::from(m) * 11,
            })
            .collect(),
    }
}

/// The URL of the `redis-server` of this run (or, in a storm child, of its parent's).
static REDIS_URL: OnceLock<String> = OnceLock::new();

pub fn redis_url() -> &'static str {
    REDIS_URL.get().expect("the Redis URL is set before any cache is used")
}

/// A `cached` crate Redis store under `prefix` on this run's server, as every
/// `cached` baseline builds it: a `ConnectionManager`, like aside's, and a 600 s TTL.
pub async fn cached_store<K, V>(prefix: &str) -> cached::AsyncRedisCache<K, V>
where
    K: std::fmt::Display + Clone + Send + Sync,
    V: serde::Serialize + serde::de::DeserializeOwned + Send + Sync,
{
    cached::AsyncRedisCache::builder(prefix)
        .ttl(Duration::from_secs(600))
        .connection_string(redis_url())
        .connection_manager(true)
        .build()
        .await
        .expect("cached: connect to Redis")
}

/// The cache every Redis-backed `#[aside::cached(cache = REDIS)]` function uses.
pub static REDIS: LazyLock<Cache> = LazyLock::new(|| {
    Cache::builder()
        .redis_url(redis_url())
        .build_lazy()
        .expect("aside Redis cache")
});

/// Like [`REDIS`], writing the compact entry format (`CACHE_ENTRY_FORMAT=msgpack`).
pub static REDIS_COMPACT: LazyLock<Cache> = LazyLock::new(|| {
    Cache::builder()
        .redis_url(redis_url())
        .entry_format(aside::EntryFormat::MessagePack)
        .build_lazy()
        .expect("aside Redis cache, compact entries")
});

/// The in-process cache of the memory-backend comparison.
pub static MEMORY: LazyLock<Cache> =
    LazyLock::new(|| Cache::builder().memory().build_lazy().expect("aside memory cache"));

/// A multiplexed redis-rs connection, as aside and `cached` hold one.
pub async fn raw_connection() -> redis::aio::ConnectionManager {
    redis::aio::ConnectionManager::new(redis::Client::open(redis_url()).expect("url"))
        .await
        .expect("connect raw")
}

pub struct Settings {
    pub quick: bool,
    /// Alternating rounds per throughput comparison (the median counts).
    pub rounds: usize,
    /// Redis hits per round.
    pub ops_per_round: usize,
    /// Redis misses per round (every one writes a new ~1 KB entry).
    pub miss_rounds: usize,
    pub miss_ops_per_round: usize,
    /// Memory-backend hits per round.
    pub memory_ops_per_round: usize,
    pub storm_rounds: usize,
    pub storm_processes: usize,
    pub storm_tasks_per_process: usize,
    pub storm_computation: Duration,
    pub tag_sizes: Vec<usize>,
    pub pattern_size: usize,
    /// Unrelated keys beside the pattern's, which `SCAN` walks past.
    pub pattern_background: usize,
    pub invalidation_rounds: usize,
    pub footprint_entries: usize,
    /// Sections named on the command line (`hit miss memory storm tags pattern
    /// footprint keys`); empty: all of them.
    pub only: Vec<String>,
}

fn settings() -> Settings {
    // Many short alternating rounds rather than a few long ones: on a shared
    // machine a burst of someone else's work then spoils a few rounds of every
    // side, and the medians stay put.
    let full = Settings {
        quick: false,
        rounds: 21,
        ops_per_round: 5_000,
        miss_rounds: 11,
        miss_ops_per_round: 2_000,
        memory_ops_per_round: 50_000,
        storm_rounds: 3,
        storm_processes: 8,
        storm_tasks_per_process: 100,
        storm_computation: Duration::from_millis(200),
        tag_sizes: vec![1_000, 10_000, 100_000],
        pattern_size: 100_000,
        pattern_background: 100_000,
        invalidation_rounds: 5,
        footprint_entries: 10_000,
        only: std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect(),
    };
    if std::env::args().any(|a| a == "--quick") {
        Settings {
            quick: true,
            rounds: 5,
            ops_per_round: 2_000,
            miss_rounds: 3,
            miss_ops_per_round: 500,
            memory_ops_per_round: 20_000,
            storm_rounds: 1,
            tag_sizes: vec![1_000, 5_000],
            pattern_size: 5_000,
            pattern_background: 5_000,
            invalidation_rounds: 1,
            footprint_entries: 2_000,
            ..full
        }
    } else {
        full
    }
}

/// The `redis-server` of this run, whose CPU time the comparisons report.
static SERVER_PID: OnceLock<u32> = OnceLock::new();

/// CPU time consumed so far by every thread of process `pid` (`self` for this
/// one), from `/proc/<pid>/task/*/schedstat` (nanoseconds).
fn cpu_ns(pid: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// CPU time of this process and of the Redis server, in nanoseconds.
fn cpu_now() -> (u64, u64) {
    let server = SERVER_PID.get().map_or(0, |pid| cpu_ns(&pid.to_string()));
    (cpu_ns("self"), server)
}

/// Runs `op` `total` times spread over `tasks` concurrent tasks; returns ops/s.
pub async fn throughput<F, Fut>(tasks: usize, total: usize, op: F) -> f64
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let per_task = total / tasks;
    let started = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let op = Arc::clone(&op);
            tokio::spawn(async move {
                for _ in 0..per_task {
                    op().await;
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.expect("benchmark task panicked");
    }
    (per_task * tasks) as f64 / started.elapsed().as_secs_f64()
}

pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// One side of a throughput comparison: a label and the operation it repeats.
/// Rounds are boxed, single operations are not.
pub trait Side: Send + Sync {
    fn label(&self) -> &str;
    fn round(&self, tasks: usize, total: usize) -> Pin<Box<dyn Future<Output = f64> + Send + '_>>;
}

pub struct Contender<F> {
    /// The case as printed for this baseline (`hit vs raw redis-rs`); unused for aside.
    pub case: &'static str,
    pub label: &'static str,
    pub op: F,
}

impl<F, Fut> Side for Contender<F>
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    fn label(&self) -> &str {
        self.label
    }

    fn round(&self, tasks: usize, total: usize) -> Pin<Box<dyn Future<Output = f64> + Send + '_>> {
        Box::pin(throughput(tasks, total, self.op.clone()))
    }
}

/// What a comparison is about, for the chart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    /// Calls per second, Redis backend.
    Redis,
    /// Calls per second, memory backend.
    Memory,
    /// Callers served per second in a cold-key storm.
    Storm,
    /// Entries removed per second.
    Invalidation,
    /// Redis bytes per entry (lower is better).
    Footprint,
    /// Calls per second of aside with signing or encryption keys ÷ without: the
    /// cost of the check, not a comparison with another crate (not charted).
    Keys,
    /// Calls per second of a tiered hit ÷ a Redis hit or a memory hit (not charted).
    Tiered,
    /// Batches of 100 ids per second: `get_many_or_compute` against single
    /// calls and a raw `MGET` (not charted).
    Batch,
}

/// One printed comparison line.
#[derive(Clone, Debug)]
pub struct Line {
    pub group: Group,
    pub case: String,
    pub baseline: String,
    pub aside: f64,
    pub base: f64,
    pub unit: &'static str,
}

impl Line {
    pub fn ratio(&self) -> f64 {
        self.aside / self.base
    }
}

/// Everything measured, for the chart and the summary.
#[derive(Default)]
pub struct Results {
    pub lines: Vec<Line>,
    /// Cold-key storm: (who, computations per storm (each round), median time until all served).
    pub storms: Vec<(String, Vec<u64>, Duration)>,
    pub storm_callers: usize,
}

impl Results {
    /// Prints and keeps one comparison line.
    pub fn line(
        &mut self,
        group: Group,
        case: impl Into<String>,
        baseline: impl Into<String>,
        aside: f64,
        base: f64,
        unit: &'static str,
    ) {
        let line = Line {
            group,
            case: case.into(),
            baseline: baseline.into(),
            aside,
            base,
            unit,
        };
        let precision = if aside < 100.0 && base < 100.0 { 1 } else { 0 };
        println!(
            "{}: aside {:.p$} {unit}, {} {:.p$} {unit}, ratio {:.2}",
            line.case,
            line.aside,
            line.baseline,
            line.base,
            line.ratio(),
            p = precision
        );
        self.lines.push(line);
    }
}

/// Today's date (UTC), `YYYY-MM-DD`.
pub fn today() -> String {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400) as i64;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// The commit measured (`git rev-parse --short HEAD`), marked when the work tree has changes.
pub fn commit() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    match (git(&["rev-parse", "--short", "HEAD"]), git(&["status", "--porcelain"])) {
        (Some(head), Some(status)) if !status.is_empty() => format!("{head}+changes"),
        (Some(head), _) => head,
        _ => "unknown".to_owned(),
    }
}

pub fn tasks_label(tasks: usize) -> String {
    format!("{tasks} task{}", if tasks == 1 { "" } else { "s" })
}

/// CPU time spent per operation by one side over all its rounds.
#[derive(Clone, Copy, Default)]
struct CpuPerOp {
    client_ns: u64,
    server_ns: u64,
    ops: usize,
}

impl CpuPerOp {
    async fn round(&mut self, side: &dyn Side, tasks: usize, total: usize) -> f64 {
        let (c0, s0) = cpu_now();
        let ops_per_s = side.round(tasks, total).await;
        let (c1, s1) = cpu_now();
        self.client_ns += c1.saturating_sub(c0);
        self.server_ns += s1.saturating_sub(s0);
        self.ops += total / tasks * tasks;
        ops_per_s
    }

    fn describe(&self) -> String {
        let per = |ns: u64| ns as f64 / 1e3 / self.ops.max(1) as f64;
        format!(
            "{:.2} µs in this process + {:.2} µs in redis-server",
            per(self.client_ns),
            per(self.server_ns)
        )
    }
}

/// Alternates aside and baseline rounds and prints one line per baseline: the
/// medians and their ratio; then, as context, the CPU time per operation of
/// every side (steadier than throughput on a busy machine).
pub async fn compare(
    results: &mut Results,
    group: Group,
    tasks: usize,
    ops_per_round: usize,
    rounds: usize,
    aside: &dyn Side,
    baselines: &[(&str, &dyn Side)],
) {
    // Warm every path (connections, allocator, branch predictors) before measuring.
    aside.round(tasks, ops_per_round / 4).await;
    for (_, base) in baselines {
        base.round(tasks, ops_per_round / 4).await;
    }
    let mut xs = Vec::new();
    let mut ys = vec![Vec::new(); baselines.len()];
    let mut cpu = vec![CpuPerOp::default(); baselines.len() + 1];
    for _ in 0..rounds {
        xs.push(cpu[0].round(aside, tasks, ops_per_round).await);
        for (i, ((_, base), y)) in baselines.iter().zip(&mut ys).enumerate() {
            y.push(cpu[i + 1].round(*base, tasks, ops_per_round).await);
        }
    }
    let x = median(xs);
    for ((case, base), y) in baselines.iter().zip(ys) {
        results.line(
            group,
            format!("{case} ({})", tasks_label(tasks)),
            base.label(),
            x,
            median(y),
            "ops/s",
        );
    }
    // With one task every call is a wake-up of an idle runtime and server, whose
    // fixed cost would swamp the call's own; the CPU time is telling with many.
    if tasks > 1 {
        let sides = std::iter::once(aside.label()).chain(baselines.iter().map(|(_, b)| b.label()));
        let described: Vec<String> = sides
            .zip(&cpu)
            .map(|(label, cpu)| format!("{label}: {}", cpu.describe()))
            .collect();
        println!(
            "#   CPU time per call ({}): {}",
            tasks_label(tasks),
            described.join("; ")
        );
    }
}

fn server_version() -> String {
    std::process::Command::new(aside_testkit::redis_server_binary())
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| {
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.split_whitespace()
                .find_map(|w| w.strip_prefix("v=").map(str::to_owned))
        })
        .unwrap_or_else(|| "?".to_owned())
}

fn main() {
    if let Ok(kind) = std::env::var(storm::CHILD_ENV) {
        storm::child(&kind);
        return;
    }
    let started = Instant::now();
    let s = settings();
    let server = RedisServer::start();
    REDIS_URL.set(server.url()).expect("set once");
    SERVER_PID.set(server.pid()).expect("set once");
    println!(
        "# aside comparative benchmarks ({} run), {}, commit {}, redis-server {} on {}, {} CPUs",
        if s.quick { "--quick" } else { "full" },
        today(),
        commit(),
        server_version(),
        server.url(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut results = Results::default();
    const SECTIONS: [&str; 11] = [
        "hit",
        "miss",
        "memory",
        "storm",
        "tags",
        "pattern",
        "footprint",
        "keys",
        "tiered",
        "batch",
        "freshness",
    ];
    if let Some(unknown) = s.only.iter().find(|o| !SECTIONS.contains(&o.as_str())) {
        panic!("unknown section {unknown:?}; the sections are {}", SECTIONS.join(", "));
    }
    let run = |section: &str| s.only.is_empty() || s.only.iter().any(|o| o == section);
    runtime.block_on(async {
        REDIS.ping().await.expect("aside reaches the Redis of this run");
        if run("hit") {
            redis_paths::hit_path(&s, &mut results).await;
        }
        if run("miss") {
            redis_paths::miss_path(&s, &mut results).await;
        }
        if run("memory") {
            memory::hit_path(&s, &mut results).await;
        }
        if run("keys") {
            keys::hit_path(&s, &mut results).await;
        }
        if run("tiered") {
            tiered::hit_path(&s, &mut results).await;
        }
        if run("batch") {
            batch::batch(&s, &mut results).await;
        }
        if run("freshness") {
            freshness::freshness().await;
        }
    });
    // The storm's processes are driven synchronously from here.
    if run("storm") {
        storm::run(&s, &mut results);
    }
    runtime.block_on(async {
        if run("tags") {
            invalidation::tags(&s, &mut results).await;
        }
        if run("pattern") {
            invalidation::pattern(&s, &mut results).await;
        }
        if run("footprint") {
            footprint::per_entry(&s, &mut results).await;
        }
    });
    // Only a full run of every case makes the chart of the docs.
    let chart = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(match (s.quick, s.only.is_empty()) {
        (false, true) => "docs/benchmarks.svg",
        (true, true) => "target/benchmarks-quick.svg",
        (_, false) => "target/benchmarks-partial.svg",
    });
    chart::write(&chart, &results, &s).expect("write the chart");
    println!(
        "# chart: {} ({}{} run); done in {:.1} s",
        chart.display(),
        if s.quick { "--quick" } else { "full" },
        if s.only.is_empty() { "" } else { ", partial" },
        started.elapsed().as_secs_f64()
    );
}
