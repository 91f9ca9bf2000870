//! The cold-key storm: `processes` OS processes x `tasks` tasks call one function
//! on one cold key at the same instant; the computation takes 200 ms. Measured:
//! how many computations ran (over all processes) and the time until every caller
//! had its value, for aside, a plain GET / compute / SET, and the `cached` crate's
//! `#[concurrent_cached]` over `AsyncRedisCache`, in the same run.
//!
//! The parent re-executes this benchmark binary once per process with
//! [`CHILD_ENV`] set to the contender. A child connects, warms up on a key of its
//! own (so that connections exist before the clock starts), prints `ready`, waits
//! for `go` on its stdin, runs its tasks, prints `done <computations>` and exits.
//! The clock runs from the first `go` to the last `done`.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cached::macros::concurrent_cached;
use cached::AsyncRedisCache;

use crate::{median, raw_connection, redis_url, report, Group, Report, Results, Settings, REDIS, REDIS_URL};

/// Set in a child process: which contender it runs.
pub const CHILD_ENV: &str = "ASIDE_BENCH_STORM_CHILD";
const URL_ENV: &str = "ASIDE_BENCH_REDIS_URL";
const STORM_ENV: &str = "ASIDE_BENCH_STORM_ID";
const TASKS_ENV: &str = "ASIDE_BENCH_STORM_TASKS";
const COMPUTE_ENV: &str = "ASIDE_BENCH_STORM_COMPUTE_MS";

/// The contenders: (name passed to the child, label).
const KINDS: [(&str, &str); 3] = [
    ("aside", "aside"),
    ("plain", "plain GET/compute/SET"),
    ("cached", "cached #[concurrent_cached] AsyncRedisCache"),
];

/// Computations run in this process.
static RUNS: AtomicU64 = AtomicU64::new(0);
static COMPUTE: OnceLock<Duration> = OnceLock::new();

/// The expensive computation every contender caches.
async fn computation() -> Report {
    RUNS.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(*COMPUTE.get().expect("set at child start")).await;
    report()
}

#[aside::cached(prefix = "bench", ttl = 600, cache = REDIS)]
async fn aside_storm(storm: u64) -> Report {
    let _ = storm;
    computation().await
}

#[concurrent_cached(
    ty = "AsyncRedisCache<u64, Report>",
    create = r##"{ crate::cached_store("bench_storm").await }"##,
    key = "u64",
    convert = r##"{ storm }"##,
    map_error = r##"|e| format!("{e:?}")"##
)]
async fn cached_storm(storm: u64) -> Result<Report, String> {
    let _ = storm;
    Ok(computation().await)
}

/// What one would write by hand: GET, on a miss compute and SET EX.
async fn plain_storm(mut conn: redis::aio::ConnectionManager, storm: u64) -> Report {
    let key = format!("plain:storm:{storm}");
    let found: Option<Vec<u8>> = redis::cmd("GET").arg(&key).query_async(&mut conn).await.expect("GET");
    if let Some(bytes) = found {
        return serde_json::from_slice(&bytes).expect("decode");
    }
    let report = computation().await;
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(serde_json::to_vec(&report).expect("json"))
        .arg("EX")
        .arg(600)
        .query_async(&mut conn)
        .await
        .expect("SET");
    report
}

async fn call(kind: &str, conn: &redis::aio::ConnectionManager, storm: u64) -> Report {
    match kind {
        "aside" => aside_storm(storm).await,
        "plain" => plain_storm(conn.clone(), storm).await,
        "cached" => cached_storm(storm).await.expect("cached storm call"),
        other => panic!("unknown storm contender {other:?}"),
    }
}

fn env<T: std::str::FromStr>(name: &str) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("storm child: {name} missing or invalid"))
}

/// A child process: one contender's share of the storm.
pub fn child(kind: &str) {
    REDIS_URL.set(env(URL_ENV)).expect("set once");
    COMPUTE.set(Duration::from_millis(env(COMPUTE_ENV))).expect("set once");
    let storm: u64 = env(STORM_ENV);
    let tasks: usize = env(TASKS_ENV);
    let kind = kind.to_owned();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let conn = raw_connection().await;
        // Warm up on a key of this storm's own, all processes at once, so that every
        // contender's connections (and aside's subscriber) exist before the clock starts.
        let warm = call(&kind, &conn, storm + 1_000_000).await;
        assert_eq!(warm, report());
        let before = RUNS.load(Ordering::SeqCst);
        println!("ready");
        let mut go = String::new();
        std::io::stdin().read_line(&mut go).expect("read go");
        assert_eq!(go.trim(), "go", "storm child: expected `go`");
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let (kind, conn) = (kind.clone(), conn.clone());
                tokio::spawn(async move { call(&kind, &conn, storm).await })
            })
            .collect();
        for handle in handles {
            assert_eq!(handle.await.expect("storm task panicked"), report());
        }
        println!("done {}", RUNS.load(Ordering::SeqCst) - before);
    });
}

/// Children killed on drop, so a failing storm leaves no process behind.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn expect_line(out: &mut BufReader<ChildStdout>, prefix: &str) -> String {
    let mut line = String::new();
    out.read_line(&mut line).expect("read a storm child's stdout");
    assert!(
        line.starts_with(prefix),
        "storm child: expected `{prefix}`, got {line:?} (it failed; see its stderr above)"
    );
    line.trim_end().to_owned()
}

/// One storm of one contender: (computations over all processes, time until all served).
fn storm_once(kind: &str, storm: u64, s: &Settings) -> (u64, Duration) {
    let exe = std::env::current_exe().expect("the benchmark binary's path");
    let mut children = Children(
        (0..s.storm_processes)
            .map(|_| {
                Command::new(&exe)
                    .env(CHILD_ENV, kind)
                    .env(URL_ENV, redis_url())
                    .env(STORM_ENV, storm.to_string())
                    .env(TASKS_ENV, s.storm_tasks_per_process.to_string())
                    .env(COMPUTE_ENV, s.storm_computation.as_millis().to_string())
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .expect("start a storm child")
            })
            .collect(),
    );
    let mut outs: Vec<_> = children
        .0
        .iter_mut()
        .map(|c| BufReader::new(c.stdout.take().expect("piped")))
        .collect();
    for out in &mut outs {
        expect_line(out, "ready");
    }
    let started = Instant::now();
    for child in &mut children.0 {
        let stdin = child.stdin.as_mut().expect("piped");
        stdin.write_all(b"go\n").and_then(|()| stdin.flush()).expect("send go");
    }
    let mut computations = 0;
    for out in &mut outs {
        let line = expect_line(out, "done ");
        computations += line["done ".len()..].parse::<u64>().expect("a count");
    }
    let elapsed = started.elapsed();
    for child in &mut children.0 {
        assert!(
            child.wait().expect("wait for a storm child").success(),
            "a storm child failed"
        );
    }
    (computations, elapsed)
}

pub fn run(s: &Settings, results: &mut Results) {
    let callers = s.storm_processes * s.storm_tasks_per_process;
    println!(
        "# cold-key storm: {} processes x {} tasks = {callers} concurrent callers of one cold key, \
         {} ms computation, {} round(s)",
        s.storm_processes,
        s.storm_tasks_per_process,
        s.storm_computation.as_millis(),
        s.storm_rounds
    );
    let mut times = vec![Vec::new(); KINDS.len()];
    let mut counts = vec![Vec::new(); KINDS.len()];
    for round in 0..s.storm_rounds {
        for (i, (kind, _)) in KINDS.iter().enumerate() {
            let storm = (round * KINDS.len() + i) as u64 + 1;
            let (computations, elapsed) = storm_once(kind, storm, s);
            times[i].push(elapsed);
            counts[i].push(computations);
        }
    }
    let medians: Vec<Duration> = times
        .iter()
        .map(|t| Duration::from_secs_f64(median(t.iter().map(Duration::as_secs_f64).collect())))
        .collect();
    let served = |d: Duration| callers as f64 / d.as_secs_f64();
    let case = format!(
        "cold-key storm ({} processes x {} tasks, {} ms computation)",
        s.storm_processes,
        s.storm_tasks_per_process,
        s.storm_computation.as_millis()
    );
    for i in 1..KINDS.len() {
        results.line(
            Group::Storm,
            format!("{case} vs {}", KINDS[i].0),
            format!("{} (callers served/s)", KINDS[i].1),
            served(medians[0]),
            served(medians[i]),
            "ops/s",
        );
    }
    let median_count = |c: &[u64]| median(c.iter().map(|&n| n as f64).collect());
    for i in 1..KINDS.len() {
        results.line(
            Group::Storm,
            format!("computations per cold-key storm ({callers} callers) vs {}", KINDS[i].0),
            KINDS[i].1,
            median_count(&counts[0]),
            median_count(&counts[i]),
            "computations",
        );
    }
    for (i, (_, label)) in KINDS.iter().enumerate() {
        println!(
            "# cold-key storm, {label}: computations per round {:?}, time until all {callers} callers served \
             (median) {:.0} ms",
            counts[i],
            medians[i].as_secs_f64() * 1e3
        );
        results.storms.push((label.to_string(), counts[i].clone(), medians[i]));
    }
    results.storm_callers = callers;
}
