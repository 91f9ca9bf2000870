//! Guarantees 5 and 6 under an adversary: a randomized, seeded, bounded run of
//! several OS processes × many tasks over a small key space, with faults, and a
//! checker over the whole recorded history.
//!
//! # The run
//!
//! [`PROCESSES`] child processes (this test binary re-run through
//! `aside_testkit::Children`, entry test [`adversarial_child`]) each run [`TASKS`]
//! caller tasks and [`INVALIDATORS`] invalidator tasks for [`RUN`], over [`KEYS`]
//! keys, all through `Cache::get_or_compute` with the default `lock_ttl` and
//! `wait` (whatever a user gets) and two tags per key; the last keys
//! ([`EXPIRING_FROM`]..) are never invalidated but expire after [`EXPIRING_TTL`]. Each
//! computation reads the *data generation* when it starts (a counter outside the
//! cache, on a bookkeeping `redis-server` of its own that no fault touches) and
//! returns `{ comp: its unique id, gen: that generation }`. Each invalidator bumps
//! the generation *before* it starts an `invalidate_key` / `invalidate_tag`, or
//! runs a `refresh`.
//!
//! Faults, all drawn from the seed: calls wrapped in a `timeout` that may fire
//! mid-computation (a dropped future), calls spawned as tasks and aborted,
//! invalidations dropped mid-flight, child processes SIGKILLed (a replacement is
//! started), the Redis (a random master of the cluster) frozen with `SIGSTOP`
//! past the operation timeout, and on the cluster reshards: every slot of the
//! keys one master serves moved to another while the children call. A process
//! to kill is picked among those that are computing. The memory backend runs
//! the same callers in one process, with cancellations, aborts and
//! invalidations only.
//!
//! Every call, computation and invalidation is appended (one JSON line, one
//! `write`, so a SIGKILL loses nothing already written) to a per-process log with
//! wall-clock microseconds; the parent adds its kills and freezes.
//!
//! # The checker
//!
//! - **Guarantee 5.** Let an invalidation `I` covering key `k` return `Ok` at
//!   `I.end`, having bumped the generation from `G` to `G + 1` before it began.
//!   Every call on `k` that starts after `I.end` and returns must return a value
//!   with `gen > G`. A value with `gen <= G` read the generation before the bump,
//!   so its computation started before `I` began: a violation (never a false one:
//!   a computation that started after `I` began reads at least `G + 1`).
//! - **Guarantee 6, one computation per cold period.** A key's cold periods are
//!   the gaps between the invalidations that cover it (failed, dropped and killed
//!   ones included). In a period, the computations of `get_or_compute` that
//!   started in it and whose caller returned are counted: more than one is a
//!   stampede. A computation of a call that was already under way when the
//!   period began, starting within [`RACE`] of its start, is not counted: its
//!   lease was taken just before the invalidation revoked it. A cancelled leader or a killed process is no excuse (guarantee 6:
//!   the lease is handed over at once, or taken over by one waiter that stores),
//!   so only periods with a `refresh` of the key, a frozen Redis (plus
//!   [`RECOVERY`]), or a call that saw a backend error or skipped Redis (counters
//!   of its process moved while it ran: fail-open computes by design) are
//!   excluded, and counted as such. The expiring keys are not counted: their
//!   cold periods begin at an expiry the history does not see.
//! - **Guarantee 6, nobody stuck.** Every call that returns does so within
//!   `wait + COMPUTE_MAX + SLACK` ("stuck" otherwise, or when it never returns
//!   within [`HARD`]). And nobody waits out `wait` for a computation that no
//!   longer runs: a cancelled leader hands over at once, a dead one is replaced
//!   within [`TAKEOVER`] (5 s with the defaults), so a call takes at most
//!   `HANDOVERS × COMPUTE_MAX + SLACK`, plus `min(wait, TAKEOVER)` when a process
//!   was killed shortly before or during it, plus the time the node of its key
//!   was frozen during it and [`RECOVERY`]. Every computation here takes at most
//!   [`COMPUTE_MAX`], far below `wait`.
//!
//! A failing run prints the seed and the one command that re-runs it. The seed
//! fixes every random choice (keys, operations, faults, durations, schedule); the
//! interleaving still depends on the machine, so a seed reproduces the schedule
//! that found a violation, not always the exact interleaving.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aside::{BreakerState, Cache, Plain, Policy};
use aside_testkit::{child_env, child_runtime, Children, RedisServer};
use serde::{Deserialize, Serialize};
use support::{Fixture, Server};

mod support;

on_backends!([memory, redis, cluster] adversarial_history);

// ---------------------------------------------------------------------------
// Duration and intensity (per backend; the three backends together stay well
// within 90 s on 2 cores)
// ---------------------------------------------------------------------------

/// How long the callers of a Redis backend run (the drain after it is bounded by [`HARD`]).
const RUN: Duration = Duration::from_secs(14);
/// How long the callers of the memory backend run.
const RUN_MEMORY: Duration = Duration::from_secs(10);
/// Child processes alive at any time (Redis backends).
const PROCESSES: usize = 3;
/// Caller tasks per child process.
const TASKS: usize = 10;
/// Caller tasks of the memory backend's single process.
const TASKS_MEMORY: usize = 24;
/// Invalidator tasks per process (invalidate_key / invalidate_tag / refresh).
const INVALIDATORS: usize = 1;
/// Invalidator tasks of the memory backend.
const INVALIDATORS_MEMORY: usize = 2;
/// The key space: `adv:0` ..= `adv:7`.
const KEYS: u64 = 8;
/// Keys from this one on are never invalidated but expire after [`EXPIRING_TTL`]:
/// they go cold on their own, and a leader killed or cancelled on them is not
/// rescued by an invalidation deleting its lease.
const EXPIRING_FROM: u64 = 6;
/// The fresh lifetime of the expiring keys (the others keep the default 300 s).
const EXPIRING_TTL: Duration = Duration::from_secs(2);
/// A caller pauses up to this long (ms) between calls.
const THINK_MAX_MS: u64 = 25;
/// A computation takes between these (ms).
const COMPUTE_MIN_MS: u64 = 20;
const COMPUTE_MAX_MS: u64 = 250;
/// An invalidator pauses between these (ms) between operations.
const INVALIDATE_PAUSE_MS: (u64, u64) = (100, 1_200);
/// Percent of the invalidators' operations: invalidate_key, invalidate_tag; the rest refresh.
const INVALIDATE_KEY_PERCENT: u64 = 45;
const INVALIDATE_TAG_PERCENT: u64 = 30;
/// Percent of calls wrapped in a `timeout` of 1 ..= COMPUTE_MAX + 50 ms (it may fire mid-computation).
const CANCEL_PERCENT: u64 = 12;
/// Percent of calls spawned as a task that is aborted after 1 ..= COMPUTE_MAX + 50 ms.
const ABORT_PERCENT: u64 = 5;
/// Percent of invalidations and refreshes dropped after 0 ..= 10 ms.
const DROP_INVALIDATION_PERCENT: u64 = 10;
/// The parent SIGKILLs a child (and starts a replacement) every so often (ms).
const KILL_EVERY_MS: (u64, u64) = (3_000, 6_000);
/// The parent freezes the Redis (a random master) every so often (ms), for so long (ms):
/// past the default operation timeout of 250 ms.
const FREEZE_EVERY_MS: (u64, u64) = (3_000, 6_000);
const FREEZE_FOR_MS: (u64, u64) = (400, 1_200);
/// The parent reshards the cluster every so often (ms): the slots of the keys a
/// random master serves move to another master (`MOVED`, `ASK`, `TRYAGAIN`).
const RESHARD_EVERY_MS: (u64, u64) = (1_500, 3_000);

// ---------------------------------------------------------------------------
// Bounds of the checker
// ---------------------------------------------------------------------------

/// The longest computation of this test.
const COMPUTE_MAX: Duration = Duration::from_millis(COMPUTE_MAX_MS);
/// Guarantee 6: a leader whose process dies is replaced within 5 s with the defaults.
const TAKEOVER: Duration = Duration::from_secs(5);
/// Handovers one caller may see in a row (each cancelled leader costs at most one
/// more computation), bounding its wait.
const HANDOVERS: u32 = 4;
/// Scheduling slack on a loaded 2-core machine (several processes and servers).
const SLACK: Duration = Duration::from_secs(3);
/// A call that was already under way when an invalidation returned may have
/// taken its lease just before the invalidation revoked it: the lease's answer
/// was on its way back (one reply, and the scheduling of two processes on a
/// loaded machine), so its computation starts up to this long into the cold
/// period that the invalidation began, on a lease that is gone. That is a race
/// between two calls, not a cold key computed twice; any later start counts.
const RACE: Duration = Duration::from_millis(50);
/// After a thaw, the breaker of a process may still skip Redis; such calls are
/// marked by their process's counters, and this covers the rest.
const RECOVERY: Duration = Duration::from_secs(1);
/// A call or invalidation not answered within this is recorded as stuck and abandoned.
const HARD: Duration = Duration::from_secs(25);

/// The bookkeeping key of the data generation (outside the cache's namespace).
const GENERATION_KEY: &str = "{adversarial}:generation";

/// The bookkeeping key counting the computations in flight in process `proc`.
fn busy_key(proc: u64) -> String {
    format!("{{adversarial}}:busy:{proc}")
}

// ---------------------------------------------------------------------------
// Seeded randomness: splitmix64 (no dependency; the run needs speed and a seed,
// not statistical quality)
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64, stream: u64) -> Rng {
        Rng(seed
            ^ stream
                .wrapping_mul(0xA076_1D64_78BD_642F)
                .wrapping_add(0xE703_7ED1_A0B4_28DB))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in `lo..=hi`.
    fn between(&mut self, (lo, hi): (u64, u64)) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
}

/// `ASIDE_SEED`, or one drawn from the clock.
fn seed() -> u64 {
    match std::env::var("ASIDE_SEED") {
        Ok(seed) => seed.trim().parse().expect("ASIDE_SEED is a u64"),
        Err(_) => u64::try_from(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("clock after 1970")
                .as_nanos()
                % u128::from(u64::MAX),
        )
        .expect("fits"),
    }
}

fn reproduce(seed: u64, backend: &str) -> String {
    format!("ASIDE_SEED={seed} cargo nextest run -p aside --test adversarial adversarial_history::{backend}")
}

/// Wall-clock microseconds: one clock for every process of the run.
fn now_us() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_micros(),
    )
    .expect("fits")
}

fn us(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).expect("fits")
}

// ---------------------------------------------------------------------------
// The history
// ---------------------------------------------------------------------------

/// What a computation returns: who computed it, from which data generation.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct Value {
    comp: u64,
    gen: u64,
}

/// How a call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Ending {
    Returned {
        comp: u64,
        gen: u64,
    },
    /// Its future was dropped by a `timeout`.
    Cancelled,
    /// Its task was aborted.
    Aborted,
    /// Not answered within [`HARD`].
    Stuck,
}

/// What an invalidation targets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Target {
    Key(u64),
    Tag(String),
}

impl Target {
    fn covers(&self, key: u64) -> bool {
        match self {
            Target::Key(k) => *k == key,
            Target::Tag(tag) => tags(key).contains(tag),
        }
    }
}

/// One line of a log.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Record {
    /// A `get_or_compute` (or, with `refresh`, a `refresh`) call ended.
    Call {
        proc: u64,
        call: u64,
        key: u64,
        refresh: bool,
        start: u64,
        end: u64,
        ending: Ending,
        /// Its process counted a backend error or a breaker skip while it ran.
        disturbed: bool,
    },
    /// A computation started (after reading the generation).
    CompStart {
        proc: u64,
        comp: u64,
        call: u64,
        key: u64,
        refresh: bool,
        start: u64,
        gen: u64,
    },
    CompEnd {
        comp: u64,
        end: u64,
    },
    /// An invalidation started; the generation was bumped from `gen_before` first.
    InvalStart {
        proc: u64,
        inval: u64,
        target: Target,
        start: u64,
        gen_before: u64,
    },
    /// An invalidation ended: `ok` when it returned `Ok`.
    InvalEnd {
        inval: u64,
        end: u64,
        ok: bool,
        dropped: bool,
    },
    /// A process's counters when it finished.
    Stats {
        proc: u64,
        lock_waits: u64,
        lock_timeouts: u64,
        computations: u64,
        backend_errors: u64,
        breaker_skips: u64,
    },
    /// The parent SIGKILLed process `proc`.
    Killed {
        proc: u64,
        at: u64,
    },
    /// The parent froze a Redis server, stalling `keys` (every key: `None`).
    Frozen {
        node: usize,
        keys: Option<Vec<u64>>,
        start: u64,
        end: u64,
    },
    /// The parent moved every slot of the keys a master served to another
    /// master (cluster only), while the children kept calling.
    Resharded {
        slots: usize,
        start: u64,
        end: u64,
    },
}

/// An append-only JSON-lines log: one `write` per record, so a SIGKILL loses
/// only what was not written yet.
#[derive(Clone)]
struct Log(Arc<Mutex<File>>);

impl Log {
    fn create(path: &Path) -> Log {
        Log(Arc::new(Mutex::new(File::create(path).expect("create a log"))))
    }

    fn write(&self, record: &Record) {
        let mut line = serde_json::to_vec(record).expect("record JSON");
        line.push(b'\n');
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .write_all(&line)
            .expect("write a log line");
    }
}

fn read_log(path: &Path) -> Vec<Record> {
    let Ok(file) = File::open(path) else {
        return Vec::new();
    };
    BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        // A process killed mid-write may leave half a line: it is not a record.
        .filter_map(|line| serde_json::from_str(&line).ok())
        .collect()
}

// ---------------------------------------------------------------------------
// The callers (in each child process, or in the test's process on memory)
// ---------------------------------------------------------------------------

fn key_name(key: u64) -> String {
    format!("adv:{key}")
}

fn tags(key: u64) -> Vec<String> {
    if key >= EXPIRING_FROM {
        return vec![String::from("expiring")];
    }
    vec![format!("parity:{}", key % 2), format!("trio:{}", key % 3)]
}

/// A key's policy: the defaults (lock_ttl, wait) with the key's tags; a short
/// TTL for the expiring keys.
fn policy(key: u64) -> Policy {
    let policy = if key >= EXPIRING_FROM {
        Policy::new(EXPIRING_TTL)
    } else {
        Policy::default()
    };
    policy.function(format!("adv:{key}")).tags(tags(key))
}

const TAGS: [&str; 5] = ["parity:0", "parity:1", "trio:0", "trio:1", "trio:2"];

/// Where the data generation lives.
#[derive(Clone)]
enum Generation {
    Local(Arc<AtomicU64>),
    Redis(redis::aio::MultiplexedConnection),
}

impl Generation {
    async fn read(&self) -> u64 {
        match self {
            Generation::Local(cell) => cell.load(Ordering::SeqCst),
            Generation::Redis(conn) => {
                let value: Option<u64> = redis::cmd("GET")
                    .arg(GENERATION_KEY)
                    .query_async(&mut conn.clone())
                    .await
                    .expect("read the generation");
                value.unwrap_or(0)
            }
        }
    }

    /// Counts computations in flight in process `proc`, for the parent to pick
    /// its victims among the processes that are computing.
    async fn busy(&self, proc: u64, delta: i64) {
        if let Generation::Redis(conn) = self {
            let _: i64 = redis::cmd("INCRBY")
                .arg(busy_key(proc))
                .arg(delta)
                .query_async(&mut conn.clone())
                .await
                .expect("count a computation in flight");
        }
    }

    /// Bumps the generation; returns the value before.
    async fn bump(&self) -> u64 {
        match self {
            Generation::Local(cell) => cell.fetch_add(1, Ordering::SeqCst),
            Generation::Redis(conn) => {
                let after: u64 = redis::cmd("INCR")
                    .arg(GENERATION_KEY)
                    .query_async(&mut conn.clone())
                    .await
                    .expect("bump the generation");
                after - 1
            }
        }
    }
}

/// One process's callers.
struct Worker {
    proc: u64,
    seed: u64,
    cache: Cache,
    generation: Generation,
    log: Log,
    ids: AtomicU64,
    deadline: Instant,
    policies: Vec<Policy>,
}

impl Worker {
    fn new(proc: u64, seed: u64, cache: Cache, generation: Generation, log: Log, run: Duration) -> Worker {
        let policies = (0..KEYS).map(policy).collect();
        Worker {
            proc,
            seed,
            cache,
            generation,
            log,
            ids: AtomicU64::new(0),
            deadline: Instant::now() + run,
            policies,
        }
    }

    /// An id unique across the run's processes.
    fn id(&self) -> u64 {
        self.proc * 1_000_000_000 + self.ids.fetch_add(1, Ordering::Relaxed)
    }

    /// Backend errors and breaker skips of this process so far, and whether the
    /// breaker is closed.
    fn disturbances(&self) -> (u64, bool) {
        let stats = self.cache.stats();
        (
            stats.total.backend_errors + stats.breaker_skips,
            stats.breaker == BreakerState::Closed,
        )
    }

    async fn compute(&self, key: u64, call: u64, refresh: bool, millis: u64) -> Plain<Value> {
        let comp = self.id();
        let start = now_us();
        let gen = self.generation.read().await;
        self.log.write(&Record::CompStart {
            proc: self.proc,
            comp,
            call,
            key,
            refresh,
            start,
            gen,
        });
        self.generation.busy(self.proc, 1).await;
        tokio::time::sleep(Duration::from_millis(millis)).await;
        self.generation.busy(self.proc, -1).await;
        self.log.write(&Record::CompEnd { comp, end: now_us() });
        Plain(Value { comp, gen })
    }

    async fn call(self: Arc<Self>, key: u64, call: u64, refresh: bool, millis: u64) -> Value {
        let policy = &self.policies[key as usize];
        let compute = || self.compute(key, call, refresh, millis);
        let Plain(value) = if refresh {
            self.cache.refresh(key_name(key).as_str(), policy, compute).await
        } else {
            self.cache.get_or_compute(key_name(key).as_str(), policy, compute).await
        };
        value
    }

    /// One call, maybe dropped or aborted on the way, recorded when it ends.
    async fn one_call(self: &Arc<Self>, rng: &mut Rng, key: u64, refresh: bool) {
        let call = self.id();
        let millis = rng.between((COMPUTE_MIN_MS, COMPUTE_MAX_MS));
        let cut = Duration::from_millis(rng.between((1, COMPUTE_MAX_MS + 50)));
        let roll = rng.below(100);
        let (before, closed) = self.disturbances();
        let start = now_us();
        let returned = |value: Value| Ending::Returned {
            comp: value.comp,
            gen: value.gen,
        };
        let ending = if roll < CANCEL_PERCENT {
            match tokio::time::timeout(cut, Arc::clone(self).call(key, call, refresh, millis)).await {
                Ok(value) => returned(value),
                Err(_) => Ending::Cancelled,
            }
        } else if roll < CANCEL_PERCENT + ABORT_PERCENT {
            let mut task = tokio::spawn(Arc::clone(self).call(key, call, refresh, millis));
            let joined = match tokio::time::timeout(cut, &mut task).await {
                Ok(joined) => joined,
                Err(_) => {
                    task.abort();
                    task.await
                }
            };
            match joined {
                Ok(value) => returned(value),
                Err(error) if error.is_cancelled() => Ending::Aborted,
                Err(error) => std::panic::resume_unwind(error.into_panic()),
            }
        } else {
            match tokio::time::timeout(HARD, Arc::clone(self).call(key, call, refresh, millis)).await {
                Ok(value) => returned(value),
                Err(_) => Ending::Stuck,
            }
        };
        let end = now_us();
        let (after, still_closed) = self.disturbances();
        self.log.write(&Record::Call {
            proc: self.proc,
            call,
            key,
            refresh,
            start,
            end,
            ending,
            disturbed: after != before || !closed || !still_closed,
        });
    }

    async fn caller(self: Arc<Self>, task: u64) {
        let mut rng = Rng::new(self.seed, (self.proc << 16) | task);
        while Instant::now() < self.deadline {
            tokio::time::sleep(Duration::from_millis(rng.below(THINK_MAX_MS + 1))).await;
            let key = rng.below(KEYS);
            self.one_call(&mut rng, key, false).await;
        }
    }

    async fn invalidator(self: Arc<Self>, task: u64) {
        let mut rng = Rng::new(self.seed, (self.proc << 16) | 0x8000 | task);
        while Instant::now() < self.deadline {
            tokio::time::sleep(Duration::from_millis(rng.between(INVALIDATE_PAUSE_MS))).await;
            let roll = rng.below(100);
            let key = rng.below(EXPIRING_FROM);
            let target = if roll < INVALIDATE_KEY_PERCENT {
                Target::Key(key)
            } else if roll < INVALIDATE_KEY_PERCENT + INVALIDATE_TAG_PERCENT {
                Target::Tag(TAGS[rng.below(TAGS.len() as u64) as usize].to_owned())
            } else {
                self.one_call(&mut rng, key, true).await;
                continue;
            };
            let drop_after = rng
                .percent(DROP_INVALIDATION_PERCENT)
                .then(|| Duration::from_millis(rng.below(11)));
            self.invalidate(target, drop_after).await;
        }
    }

    async fn invalidate(&self, target: Target, drop_after: Option<Duration>) {
        let inval = self.id();
        let gen_before = self.generation.bump().await;
        let start = now_us();
        self.log.write(&Record::InvalStart {
            proc: self.proc,
            inval,
            target: target.clone(),
            start,
            gen_before,
        });
        let run = async {
            match &target {
                Target::Key(key) => self.cache.invalidate_key(key_name(*key).as_str()).await.is_ok(),
                Target::Tag(tag) => self.cache.invalidate_tag(tag).await.is_ok(),
            }
        };
        let (ok, dropped) = match tokio::time::timeout(drop_after.unwrap_or(HARD), run).await {
            Ok(ok) => (ok, false),
            Err(_) => (false, drop_after.is_some()),
        };
        self.log.write(&Record::InvalEnd {
            inval,
            end: now_us(),
            ok,
            dropped,
        });
    }

    /// Runs every task of this process until the deadline, then records its counters.
    async fn run(self: Arc<Self>, tasks: usize, invalidators: usize) {
        let mut handles = Vec::new();
        for task in 0..tasks as u64 {
            handles.push(tokio::spawn(Arc::clone(&self).caller(task)));
        }
        for task in 0..invalidators as u64 {
            handles.push(tokio::spawn(Arc::clone(&self).invalidator(task)));
        }
        for handle in handles {
            handle.await.expect("a task of the adversarial run panicked");
        }
        let stats = self.cache.stats();
        self.log.write(&Record::Stats {
            proc: self.proc,
            lock_waits: stats.total.lock_waits,
            lock_timeouts: stats.total.lock_timeouts,
            computations: stats.total.computations,
            backend_errors: stats.total.backend_errors,
            breaker_skips: stats.breaker_skips,
        });
    }
}

/// One process of the run on a Redis backend. Does nothing outside that test.
#[test]
#[ignore = "child process of adversarial_history"]
fn adversarial_child() {
    let Some(env) = child_env(&[
        "ASIDE_ADV_URL",
        "ASIDE_ADV_BOOKKEEPING_URL",
        "ASIDE_ADV_LOG",
        "ASIDE_ADV_SEED",
        "ASIDE_ADV_PROC",
        "ASIDE_ADV_DEADLINE_US",
    ]) else {
        eprintln!("adversarial_child: not started by adversarial_history; nothing to do");
        return;
    };
    let seed: u64 = env["ASIDE_ADV_SEED"].parse().expect("seed");
    let proc: u64 = env["ASIDE_ADV_PROC"].parse().expect("proc");
    let deadline_us: u64 = env["ASIDE_ADV_DEADLINE_US"].parse().expect("deadline");
    child_runtime().block_on(async move {
        let cache = Cache::builder()
            .redis_url(&env["ASIDE_ADV_URL"])
            .build()
            .await
            .expect("child cache");
        let conn = redis::Client::open(env["ASIDE_ADV_BOOKKEEPING_URL"].as_str())
            .expect("bookkeeping url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect for bookkeeping");
        let log = Log::create(Path::new(&env["ASIDE_ADV_LOG"]));
        let run = Duration::from_micros(deadline_us.saturating_sub(now_us()));
        let worker = Worker::new(proc, seed, cache, Generation::Redis(conn), log, run);
        Arc::new(worker).run(TASKS, INVALIDATORS).await;
    });
}

// ---------------------------------------------------------------------------
// The parent
// ---------------------------------------------------------------------------

/// A temp dir for the logs, removed when the run passes.
struct LogDir(PathBuf);

impl LogDir {
    fn new(backend: &str) -> LogDir {
        let dir = std::env::temp_dir().join(format!(
            "aside-adversarial-{backend}-{}-{}",
            std::process::id(),
            now_us()
        ));
        std::fs::create_dir_all(&dir).expect("create the log dir");
        LogDir(dir)
    }

    fn log(&self, proc: u64) -> PathBuf {
        self.0.join(format!("proc-{proc}.jsonl"))
    }

    fn records(&self) -> Vec<Record> {
        let mut records = Vec::new();
        let mut entries: Vec<_> = std::fs::read_dir(&self.0)
            .expect("read the log dir")
            .map(|entry| entry.expect("log dir entry").path())
            .collect();
        entries.sort();
        for path in entries {
            records.extend(read_log(&path));
        }
        records
    }
}

/// Thaws the frozen server even when the parent panics.
struct Frozen<'a>(&'a RedisServer);

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        self.0.thaw();
    }
}

async fn adversarial_history(fx: Fixture) {
    let seed = seed();
    let backend = match fx.server {
        Server::Memory => "memory",
        Server::Single(_) => "redis",
        Server::Cluster(_) => "cluster",
    };
    println!(
        "adversarial ({backend}): seed {seed}; reproduce with: {}",
        reproduce(seed, backend)
    );
    let dir = LogDir::new(backend);
    let started = now_us();
    if fx.is_memory() {
        let cache = fx.cache().await;
        let worker = Worker::new(
            0,
            seed,
            cache,
            Generation::Local(Arc::default()),
            Log::create(&dir.log(0)),
            RUN_MEMORY,
        );
        let ran = tokio::time::timeout(
            RUN_MEMORY + HARD * 2,
            Arc::new(worker).run(TASKS_MEMORY, INVALIDATORS_MEMORY),
        );
        ran.await.expect("the memory run finished");
    } else {
        run_processes(&fx, seed, &dir).await;
    }
    let ended = now_us();
    let records = dir.records();
    let report = check(&History::new(records, started, ended, Policy::default().wait_limit()));
    println!("adversarial ({backend}): {}", report.summary(seed));
    if report.violations.is_empty() {
        // `ASIDE_ADV_KEEP_LOGS=1` keeps the history of a passing run too.
        if std::env::var_os("ASIDE_ADV_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_dir_all(&dir.0);
        }
        return;
    }
    panic!(
        "adversarial ({backend}): {} violation(s) with seed {seed} (logs kept in {}):\n{}\nreproduce with: {}",
        report.violations.len(),
        dir.0.display(),
        report.describe_violations(),
        reproduce(seed, backend)
    );
}

/// Runs the child processes with kills and freezes until [`RUN`] is over, and
/// waits for them; the parent's kills and freezes go to `parent.jsonl`.
async fn run_processes(fx: &Fixture, seed: u64, dir: &LogDir) {
    let parent = Log::create(&dir.0.join("parent.jsonl"));
    let bookkeeping = RedisServer::start();
    let mut book = bookkeeping.connection();
    let url = match &fx.server {
        Server::Single(server) => server.url(),
        Server::Cluster(cluster) => cluster.url(),
        Server::Memory => unreachable!("memory runs in process"),
    };
    let servers: Vec<&RedisServer> = match &fx.server {
        Server::Single(server) => vec![server],
        Server::Cluster(cluster) => cluster.nodes().iter().collect(),
        Server::Memory => Vec::new(),
    };
    // Time to start and connect the first processes.
    let deadline_us = now_us() + 1_500_000 + us(RUN);
    let deadline = Instant::now() + Duration::from_micros(deadline_us - now_us());
    let mut children = Children::default();
    // (index in `children`, proc id) of the live children.
    let mut alive: Vec<(usize, u64)> = Vec::new();
    let mut killed: Vec<usize> = Vec::new();
    let spawn = |children: &mut Children, proc: u64| {
        children.spawn(
            "adversarial_child",
            &[
                ("ASIDE_ADV_URL", url.clone()),
                ("ASIDE_ADV_BOOKKEEPING_URL", bookkeeping.url()),
                ("ASIDE_ADV_LOG", dir.log(proc).display().to_string()),
                ("ASIDE_ADV_SEED", seed.to_string()),
                ("ASIDE_ADV_PROC", proc.to_string()),
                ("ASIDE_ADV_DEADLINE_US", deadline_us.to_string()),
            ],
        )
    };
    for proc in 0..PROCESSES as u64 {
        alive.push((spawn(&mut children, proc), proc));
    }
    let mut next_proc = PROCESSES as u64;
    let mut rng = Rng::new(seed, u64::MAX);
    let mut next_kill = Instant::now() + Duration::from_millis(1_500 + rng.between(KILL_EVERY_MS));
    let mut next_freeze = Instant::now() + Duration::from_millis(1_500 + rng.between(FREEZE_EVERY_MS));
    let mut next_reshard = Instant::now() + Duration::from_millis(1_500 + rng.between(RESHARD_EVERY_MS));
    // The hash slot of each key (entry and lease share it), on a cluster.
    let key_slots: Vec<u16> = match &fx.server {
        Server::Cluster(_) => {
            let cache = fx.cache().await;
            (0..KEYS)
                .map(|key| aside_testkit::key_slot(&cache.full_key(key_name(key).as_str()).expect("full key")))
                .collect()
        }
        _ => Vec::new(),
    };
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = Instant::now();
        if now >= next_kill {
            next_kill = now + Duration::from_millis(rng.between(KILL_EVERY_MS));
            // A process that is computing, when there is one: its leases are the ones to orphan.
            let busy: Vec<usize> = (0..alive.len())
                .filter(|&i| {
                    let count: Option<i64> = redis::cmd("GET")
                        .arg(busy_key(alive[i].1))
                        .query(&mut book)
                        .expect("read the computations in flight");
                    count.unwrap_or(0) > 0
                })
                .collect();
            let victim = if busy.is_empty() {
                rng.below(alive.len() as u64) as usize
            } else {
                busy[rng.below(busy.len() as u64) as usize]
            };
            let (index, proc) = alive.swap_remove(victim);
            children.kill(index);
            killed.push(index);
            parent.write(&Record::Killed { proc, at: now_us() });
            alive.push((spawn(&mut children, next_proc), next_proc));
            next_proc += 1;
        }
        if let Server::Cluster(cluster) = &fx.server {
            if now >= next_reshard {
                let from = rng.below(servers.len() as u64) as usize;
                let to = (from + 1 + rng.below(servers.len() as u64 - 1) as usize) % servers.len();
                let mut slots: Vec<u16> = key_slots
                    .iter()
                    .copied()
                    .filter(|slot| cluster.node_for_slot(*slot) == from)
                    .collect();
                slots.sort_unstable();
                slots.dedup();
                let start = now_us();
                tokio::task::block_in_place(|| cluster.move_slots(&slots, to));
                parent.write(&Record::Resharded {
                    slots: slots.len(),
                    start,
                    end: now_us(),
                });
                next_reshard = Instant::now() + Duration::from_millis(rng.between(RESHARD_EVERY_MS));
            }
        }
        if now >= next_freeze {
            let node = rng.below(servers.len() as u64) as usize;
            let hold = Duration::from_millis(rng.between(FREEZE_FOR_MS));
            // The keys the frozen node serves now (slots move in a reshard).
            let keys = match &fx.server {
                Server::Cluster(cluster) => Some(
                    (0..KEYS)
                        .filter(|key| cluster.node_for_slot(key_slots[*key as usize]) == node)
                        .collect(),
                ),
                _ => None,
            };
            let start = now_us();
            {
                let _frozen = Frozen(servers[node]);
                servers[node].freeze();
                tokio::time::sleep(hold).await;
            }
            parent.write(&Record::Frozen {
                node,
                keys,
                start,
                end: now_us(),
            });
            next_freeze = Instant::now() + Duration::from_millis(rng.between(FREEZE_EVERY_MS));
        }
    }
    let outputs = children.wait(HARD * 2).await;
    for (index, output) in outputs.iter().enumerate() {
        if killed.contains(&index) {
            continue;
        }
        assert!(
            output.status.success(),
            "a child failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
            output.status,
            output.stdout,
            output.stderr
        );
    }
}

// ---------------------------------------------------------------------------
// The checker
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
struct Call {
    proc: u64,
    call: u64,
    key: u64,
    refresh: bool,
    start: u64,
    end: u64,
    ending: Ending,
    disturbed: bool,
}

#[derive(Clone, Copy, Debug)]
struct Comp {
    proc: u64,
    comp: u64,
    call: u64,
    key: u64,
    refresh: bool,
    start: u64,
    gen: u64,
    end: Option<u64>,
}

#[derive(Clone, Debug)]
struct Inval {
    proc: u64,
    inval: u64,
    target: Target,
    start: u64,
    gen_before: u64,
    /// `None`: never ended (its process was killed).
    end: Option<u64>,
    ok: bool,
    dropped: bool,
}

struct History {
    calls: Vec<Call>,
    comps: HashMap<u64, Comp>,
    invals: Vec<Inval>,
    kills: Vec<(u64, u64)>,
    /// (keys stalled, `None` for every key; start, end).
    freezes: Vec<(Option<Vec<u64>>, u64, u64)>,
    reshards: usize,
    stats: Vec<Record>,
    started: u64,
    ended: u64,
    wait: Duration,
}

impl History {
    fn new(records: Vec<Record>, started: u64, ended: u64, wait: Duration) -> History {
        let mut history = History {
            calls: Vec::new(),
            comps: HashMap::new(),
            invals: Vec::new(),
            kills: Vec::new(),
            freezes: Vec::new(),
            reshards: 0,
            stats: Vec::new(),
            started,
            ended,
            wait,
        };
        let mut ends = HashMap::new();
        let mut comp_ends = HashMap::new();
        for record in records {
            match record {
                Record::Call {
                    proc,
                    call,
                    key,
                    refresh,
                    start,
                    end,
                    ending,
                    disturbed,
                } => history.calls.push(Call {
                    proc,
                    call,
                    key,
                    refresh,
                    start,
                    end,
                    ending,
                    disturbed,
                }),
                Record::CompStart {
                    proc,
                    comp,
                    call,
                    key,
                    refresh,
                    start,
                    gen,
                } => {
                    history.comps.insert(
                        comp,
                        Comp {
                            proc,
                            comp,
                            call,
                            key,
                            refresh,
                            start,
                            gen,
                            end: None,
                        },
                    );
                }
                Record::CompEnd { comp, end } => {
                    comp_ends.insert(comp, end);
                }
                Record::InvalStart {
                    proc,
                    inval,
                    target,
                    start,
                    gen_before,
                } => history.invals.push(Inval {
                    proc,
                    inval,
                    target,
                    start,
                    gen_before,
                    end: None,
                    ok: false,
                    dropped: false,
                }),
                Record::InvalEnd {
                    inval,
                    end,
                    ok,
                    dropped,
                } => {
                    ends.insert(inval, (end, ok, dropped));
                }
                Record::Killed { proc, at } => history.kills.push((proc, at)),
                Record::Frozen { keys, start, end, .. } => history.freezes.push((keys, start, end)),
                Record::Resharded { .. } => history.reshards += 1,
                stats @ Record::Stats { .. } => history.stats.push(stats),
            }
        }
        for (comp, end) in comp_ends {
            if let Some(c) = history.comps.get_mut(&comp) {
                c.end = Some(end);
            }
        }
        for inval in &mut history.invals {
            if let Some(&(end, ok, dropped)) = ends.get(&inval.inval) {
                inval.end = Some(end);
                inval.ok = ok;
                inval.dropped = dropped;
            }
        }
        history.calls.sort_by_key(|c| c.start);
        history
    }

    /// When an invalidation may still have acted: its end, else (killed) a
    /// second after its process was killed, else never known.
    fn acting_until(&self, inval: &Inval) -> u64 {
        inval.end.unwrap_or_else(|| {
            self.kills
                .iter()
                .find(|(proc, _)| *proc == inval.proc)
                .map_or(u64::MAX, |(_, at)| at + 1_000_000)
        })
    }
}

#[derive(Debug)]
enum Violation {
    /// Guarantee 5: a call that started after an invalidation returned got a
    /// value computed before the invalidation began.
    StaleAfterInvalidation {
        call: Call,
        inval: Inval,
        value_comp: Option<Comp>,
    },
    /// Guarantee 6: more than one computation returned in one cold period.
    Stampede {
        key: u64,
        period: (u64, u64),
        comps: Vec<Comp>,
        faults: String,
    },
    /// Not answered within `wait + COMPUTE_MAX + SLACK`.
    Stuck { call: Call, bound: Duration },
    /// Answered, but later than a dead or cancelled leader may delay anyone.
    WaitedForNothing { call: Call, bound: Duration },
    /// An invalidation that took longer than `wait + COMPUTE_MAX + SLACK`.
    StuckInvalidation { inval: Inval },
}

#[derive(Default)]
struct Report {
    calls: usize,
    returned: usize,
    cancelled: usize,
    aborted: usize,
    stuck: usize,
    refreshes: usize,
    computations: usize,
    invalidations: usize,
    invalidations_ok: usize,
    invalidations_failed: usize,
    invalidations_dropped: usize,
    invalidations_killed: usize,
    kills: usize,
    freezes: usize,
    reshards: usize,
    disturbed_calls: usize,
    cancelled_leaders: usize,
    /// Durations of the calls that returned: p50, p99, max.
    took: (Duration, Duration, Duration),
    processes: usize,
    periods_checked: usize,
    periods_excluded: usize,
    lock_timeouts: u64,
    lock_waits: u64,
    backend_errors: u64,
    started_at: u64,
    violations: Vec<Violation>,
}

fn rel(history_start: u64, t: u64) -> String {
    if t == u64::MAX {
        return String::from("never");
    }
    format!("{:.3}s", t.saturating_sub(history_start) as f64 / 1e6)
}

impl Report {
    fn summary(&self, seed: u64) -> String {
        let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
        for violation in &self.violations {
            let kind = match violation {
                Violation::StaleAfterInvalidation { .. } => "g5 stale after invalidation",
                Violation::Stampede { .. } => "g6 stampede in a cold period",
                Violation::Stuck { .. } => "g6 stuck caller",
                Violation::WaitedForNothing { .. } => "g6 waited for a computation that no longer runs",
                Violation::StuckInvalidation { .. } => "stuck invalidation",
            };
            *kinds.entry(kind).or_default() += 1;
        }
        format!(
            "seed {seed}; processes {}; calls {} (returned {}, cancelled {}, aborted {}, stuck {}; refreshes {}), computations {}; \
             invalidations {} (ok {}, failed {}, dropped {}, killed {}); faults: cancellations {}, aborts {} \
             ({} of them leaders dropped mid-computation), \
             dropped invalidations {}, kills {}, freezes {}, reshards {}, calls that saw a backend error {}; \
             cold periods checked {} (excluded {}); lock_waits {}, lock_timeouts {}, backend_errors {} \
             (processes that finished); calls took p50 {:?}, p99 {:?}, max {:?}; violations {}: {kinds:?}",
            self.processes,
            self.calls,
            self.returned,
            self.cancelled,
            self.aborted,
            self.stuck,
            self.refreshes,
            self.computations,
            self.invalidations,
            self.invalidations_ok,
            self.invalidations_failed,
            self.invalidations_dropped,
            self.invalidations_killed,
            self.cancelled,
            self.aborted,
            self.cancelled_leaders,
            self.invalidations_dropped,
            self.kills,
            self.freezes,
            self.reshards,
            self.disturbed_calls,
            self.periods_checked,
            self.periods_excluded,
            self.lock_waits,
            self.lock_timeouts,
            self.backend_errors,
            self.took.0,
            self.took.1,
            self.took.2,
            self.violations.len(),
        )
    }

    /// The first few violations of each kind, in words (times from the run's start).
    fn describe_violations(&self) -> String {
        const EACH: usize = 5;
        let mut shown: BTreeMap<u8, usize> = BTreeMap::new();
        let mut out = String::new();
        let t0 = self.t0();
        for violation in &self.violations {
            let kind = match violation {
                Violation::StaleAfterInvalidation { .. } => 0,
                Violation::Stampede { .. } => 1,
                Violation::Stuck { .. } => 2,
                Violation::WaitedForNothing { .. } => 3,
                Violation::StuckInvalidation { .. } => 4,
            };
            let count = shown.entry(kind).or_default();
            *count += 1;
            if *count > EACH {
                continue;
            }
            let line = match violation {
                Violation::StaleAfterInvalidation { call, inval, value_comp } => format!(
                    "g5: call {} (proc {}, key {}) started {} after invalidation {} ({:?}, proc {}, {}..{}, generation {}→{}) \
                     returned and got {:?}, computed {}",
                    call.call,
                    call.proc,
                    call.key,
                    rel(t0, call.start),
                    inval.inval,
                    inval.target,
                    inval.proc,
                    rel(t0, inval.start),
                    rel(t0, inval.end.unwrap_or(u64::MAX)),
                    inval.gen_before,
                    inval.gen_before + 1,
                    call.ending,
                    value_comp.map_or(String::from("by a killed process (no record)"), |c| format!(
                        "by proc {} from {} (generation {})",
                        c.proc,
                        rel(t0, c.start),
                        c.gen
                    )),
                ),
                Violation::Stampede {
                    key,
                    period,
                    comps,
                    faults,
                } => format!(
                    "g6: key {key}, cold period {}..{}: {} computations returned to their callers ({}); faults in it: {faults}",
                    rel(t0, period.0),
                    rel(t0, period.1),
                    comps.len(),
                    comps
                        .iter()
                        .map(|c| format!("proc {} at {}", c.proc, rel(t0, c.start)))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Violation::Stuck { call, bound } | Violation::WaitedForNothing { call, bound } => format!(
                    "g6: call {} (proc {}, key {}{}) started {} took {:.3}s (bound {bound:?}), ended {:?}",
                    call.call,
                    call.proc,
                    call.key,
                    if call.refresh { ", refresh" } else { "" },
                    rel(t0, call.start),
                    (call.end - call.start) as f64 / 1e6,
                    call.ending
                ),
                Violation::StuckInvalidation { inval } => format!(
                    "invalidation {} ({:?}, proc {}) started {} took until {}",
                    inval.inval,
                    inval.target,
                    inval.proc,
                    rel(t0, inval.start),
                    rel(t0, inval.end.unwrap_or(u64::MAX))
                ),
            };
            out.push_str(&line);
            out.push('\n');
        }
        for (kind, count) in shown {
            if count > EACH {
                out.push_str(&format!("(kind {kind}: {} more not shown)\n", count - EACH));
            }
        }
        out
    }

    /// The run's start: times in the descriptions count from it.
    fn t0(&self) -> u64 {
        self.started_at
    }
}

fn check(history: &History) -> Report {
    let mut report = Report {
        started_at: history.started,
        ..Report::default()
    };
    report.calls = history.calls.len();
    for call in &history.calls {
        match call.ending {
            Ending::Returned { .. } => report.returned += 1,
            Ending::Cancelled => report.cancelled += 1,
            Ending::Aborted => report.aborted += 1,
            Ending::Stuck => report.stuck += 1,
        }
        report.refreshes += usize::from(call.refresh);
        report.disturbed_calls += usize::from(call.disturbed);
    }
    report.computations = history.comps.len();
    let mut took: Vec<u64> = history
        .calls
        .iter()
        .filter(|c| matches!(c.ending, Ending::Returned { .. }))
        .map(|c| c.end - c.start)
        .collect();
    took.sort_unstable();
    if !took.is_empty() {
        let at = |q: usize| Duration::from_micros(took[(took.len() - 1) * q / 100]);
        report.took = (at(50), at(99), at(100));
    }
    report.processes = history
        .calls
        .iter()
        .map(|c| c.proc)
        .collect::<std::collections::HashSet<_>>()
        .len();
    let dropped: std::collections::HashSet<u64> = history
        .calls
        .iter()
        .filter(|c| matches!(c.ending, Ending::Cancelled | Ending::Aborted))
        .map(|c| c.call)
        .collect();
    report.cancelled_leaders = history
        .comps
        .values()
        .filter(|c| c.end.is_none() && dropped.contains(&c.call))
        .count();
    report.invalidations = history.invals.len();
    for inval in &history.invals {
        match (inval.end, inval.ok, inval.dropped) {
            (None, ..) => report.invalidations_killed += 1,
            (Some(_), true, _) => report.invalidations_ok += 1,
            (Some(_), false, true) => report.invalidations_dropped += 1,
            (Some(_), false, false) => report.invalidations_failed += 1,
        }
    }
    report.kills = history.kills.len();
    report.freezes = history.freezes.len();
    report.reshards = history.reshards;
    for stats in &history.stats {
        if let Record::Stats {
            lock_waits,
            lock_timeouts,
            backend_errors,
            ..
        } = stats
        {
            report.lock_waits += lock_waits;
            report.lock_timeouts += lock_timeouts;
            report.backend_errors += backend_errors;
        }
    }
    check_no_stale_after_invalidation(history, &mut report);
    check_one_computation_per_cold_period(history, &mut report);
    check_nobody_stuck(history, &mut report);
    report
}

/// Guarantee 5 (see the module docs).
fn check_no_stale_after_invalidation(history: &History, report: &mut Report) {
    for key in 0..KEYS {
        // Returned invalidations covering `key`, by end; with the running maximum
        // of the generation each one left behind.
        let mut invals: Vec<&Inval> = history
            .invals
            .iter()
            .filter(|i| i.ok && i.target.covers(key) && i.end.is_some())
            .collect();
        invals.sort_by_key(|i| i.end);
        let mut strongest: Vec<(u64, &Inval)> = Vec::new(); // (end, invalidation with the highest gen_before so far)
        for inval in invals {
            let best = match strongest.last() {
                Some((_, best)) if best.gen_before >= inval.gen_before => best,
                _ => inval,
            };
            strongest.push((inval.end.unwrap_or(u64::MAX), best));
        }
        for call in history.calls.iter().filter(|c| c.key == key && !c.refresh) {
            let Ending::Returned { comp, gen } = call.ending else {
                continue;
            };
            // The last invalidation that ended before the call started.
            let before = strongest.partition_point(|(end, _)| *end < call.start);
            if before == 0 {
                continue;
            }
            let inval = strongest[before - 1].1;
            if gen <= inval.gen_before {
                report.violations.push(Violation::StaleAfterInvalidation {
                    call: *call,
                    inval: inval.clone(),
                    value_comp: history.comps.get(&comp).copied(),
                });
            }
        }
    }
}

/// Guarantee 6, one computation per cold period (see the module docs).
///
/// The expiring keys are left out: their cold periods begin when an entry
/// expires, which the history does not record.
fn check_one_computation_per_cold_period(history: &History, report: &mut Report) {
    let call_starts: HashMap<u64, u64> = history.calls.iter().map(|c| (c.call, c.start)).collect();
    let returned_own: std::collections::HashSet<(u64, u64)> = history
        .calls
        .iter()
        .filter_map(|c| match c.ending {
            Ending::Returned { comp, .. } => Some((c.call, comp)),
            _ => None,
        })
        .collect();
    for key in 0..EXPIRING_FROM {
        let mut boundaries: Vec<(u64, u64)> = history
            .invals
            .iter()
            .filter(|i| i.target.covers(key))
            .map(|i| (i.start, history.acting_until(i)))
            .collect();
        boundaries.sort_unstable();
        let mut periods = Vec::new();
        let mut from = history.started;
        for (start, end) in boundaries {
            if start > from {
                periods.push((from, start));
            }
            from = from.max(end);
        }
        if from < history.ended {
            periods.push((from, history.ended));
        }
        for (a, b) in periods {
            let overlaps = |start: u64, end: u64| start < b && end > a;
            let comps: Vec<Comp> = history
                .comps
                .values()
                .filter(|c| c.key == key && !c.refresh && c.start > a && c.start < b)
                .filter(|c| returned_own.contains(&(c.call, c.comp)))
                .filter(|c| {
                    // The race of a call already under way (see `RACE`).
                    let raced = call_starts.get(&c.call).is_some_and(|&start| start < a);
                    !(raced && c.start < a + us(RACE))
                })
                .copied()
                .collect();
            let mut excuses = Vec::new();
            let refreshes = history
                .calls
                .iter()
                .filter(|c| c.key == key && c.refresh && overlaps(c.start, c.end))
                .count()
                + history
                    .comps
                    .values()
                    .filter(|c| c.key == key && c.refresh && overlaps(c.start, c.end.unwrap_or(u64::MAX)))
                    .count();
            if refreshes > 0 {
                excuses.push("refresh");
            }
            if history
                .freezes
                .iter()
                .any(|(_, start, end)| overlaps(*start, end + us(RECOVERY)))
            {
                excuses.push("frozen redis");
            }
            if history
                .calls
                .iter()
                .any(|c| c.key == key && c.disturbed && overlaps(c.start, c.end))
            {
                excuses.push("backend error");
            }
            if !excuses.is_empty() {
                report.periods_excluded += 1;
                continue;
            }
            report.periods_checked += 1;
            if comps.len() > 1 {
                let mut faults = Vec::new();
                let cancels = history
                    .calls
                    .iter()
                    .filter(|c| {
                        c.key == key
                            && matches!(c.ending, Ending::Cancelled | Ending::Aborted)
                            && overlaps(c.start, c.end)
                    })
                    .count();
                if cancels > 0 {
                    faults.push(format!("{cancels} cancelled/aborted calls of the key"));
                }
                let kills = history
                    .kills
                    .iter()
                    .filter(|(_, at)| *at < b && *at + 30_000_000 > a)
                    .count();
                if kills > 0 {
                    faults.push(format!("{kills} kills within 30 s before or in it"));
                }
                let mut comps = comps;
                comps.sort_by_key(|c| c.start);
                report.violations.push(Violation::Stampede {
                    key,
                    period: (a, b),
                    comps,
                    faults: if faults.is_empty() {
                        String::from("none")
                    } else {
                        faults.join(", ")
                    },
                });
            }
        }
    }
}

/// Guarantee 6, nobody stuck (see the module docs).
fn check_nobody_stuck(history: &History, report: &mut Report) {
    let stuck = history.wait + COMPUTE_MAX + SLACK;
    for call in &history.calls {
        let took = Duration::from_micros(call.end - call.start);
        let replaced = history.replaced_within(call);
        match call.ending {
            Ending::Stuck => report.violations.push(Violation::Stuck {
                call: *call,
                bound: stuck,
            }),
            Ending::Returned { .. } if took > stuck => report.violations.push(Violation::Stuck {
                call: *call,
                bound: stuck,
            }),
            Ending::Returned { .. } if took > replaced => report.violations.push(Violation::WaitedForNothing {
                call: *call,
                bound: replaced,
            }),
            _ => {}
        }
    }
    for inval in &history.invals {
        if let Some(end) = inval.end {
            if Duration::from_micros(end - inval.start) > stuck {
                report
                    .violations
                    .push(Violation::StuckInvalidation { inval: inval.clone() });
            }
        }
    }
}

impl History {
    /// How long `call` may take when every leader it could have waited for was
    /// replaced as guarantee 6 says: a cancelled one at once (each handover costs
    /// at most one more computation), a killed one within [`TAKEOVER`] of its
    /// death (when a kill came shortly before or during the call), and a frozen
    /// Redis (the node of the call's key, in a cluster) for as long as it was
    /// frozen, plus [`RECOVERY`].
    fn replaced_within(&self, call: &Call) -> Duration {
        let mut bound = COMPUTE_MAX * HANDOVERS + SLACK;
        if self
            .kills
            .iter()
            .any(|(_, at)| *at + us(TAKEOVER) >= call.start && *at <= call.end)
        {
            bound += TAKEOVER.min(self.wait);
        }
        for (stalled, start, end) in &self.freezes {
            if stalled.as_ref().is_none_or(|keys| keys.contains(&call.key))
                && *start <= call.end
                && end + us(RECOVERY) >= call.start
            {
                bound += Duration::from_micros(end - start) + RECOVERY;
            }
        }
        bound
    }
}
