//! Resharding is routine: while slots move between the masters of a cluster
//! (clients meet `MOVED`, `ASK`, `TRYAGAIN`, and scripts the new owner never
//! loaded), cached calls and invalidations follow the cluster and succeed, and
//! once a reshard ends caching resumes at once — every time.
//!
//! One cluster, one cache with the defaults a user gets, a few tasks calling a
//! cached function over a small key space, one task invalidating keys and the
//! tag, and twenty reshards (`RedisCluster::move_slots`, what `redis-cli
//! --cluster reshard` does) from master to master in a ring, each moving every
//! slot of the function's keys that the source master serves, with ballast keys
//! in them so that each move takes a while. After each reshard a probe function
//! must cache again at once.
//!
//! Every value carries the data generation of its key read when its computation
//! started; the invalidator bumps the generation before each invalidation and
//! records it as the key's floor once the invalidation returned. A call that
//! starts after that must see a value of at least that generation (guarantee 5).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aside::{cached, Cache};
use aside_testkit::{key_slot, RedisCluster};

/// Keys of the cached function under load.
const KEYS: usize = 200;
/// Keys of the probe function that checks caching resumed.
const PROBE_KEYS: u64 = 50;
/// Reshards in the run.
const RUNS: usize = 20;
/// Ballast keys put in each slot that holds a key of the cached function, so
/// that moving the slot takes a while (several `MIGRATE` batches) and calls
/// meet it half-moved.
const BALLAST: usize = 40;
/// Tasks calling the cached function.
const CALLERS: usize = 4;
/// A call that takes longer than this is stuck: nothing here computes for more
/// than a millisecond and the operation timeout is 250 ms.
const STUCK: Duration = Duration::from_secs(3);
/// How long after a reshard caching may take to resume: at once, give or take
/// the breaker's first probe (500 ms) should a request time out at its end.
const RESUME_WITHIN: Duration = Duration::from_secs(2);

/// The shared state of the run: generations, floors, and what went wrong.
struct World {
    /// The data generation of each key, bumped before each invalidation.
    generations: Vec<AtomicU64>,
    /// Per key, the generation of the latest invalidation that returned.
    floors: Vec<AtomicU64>,
    computations: AtomicU64,
    calls: AtomicU64,
    invalidations: AtomicU64,
    stop: AtomicBool,
    /// Calls slower than [`STUCK`], with their duration.
    stuck: Mutex<Vec<(u64, Duration)>>,
    /// Values older than a completed invalidation: (key, generation seen, floor).
    stale: Mutex<Vec<(usize, u64, u64)>>,
    /// Invalidations that failed, and whether a retry served them.
    failed_invalidations: Mutex<Vec<String>>,
}

impl World {
    fn new() -> World {
        World {
            generations: (0..KEYS).map(|_| AtomicU64::new(0)).collect(),
            floors: (0..KEYS).map(|_| AtomicU64::new(0)).collect(),
            computations: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            stuck: Mutex::default(),
            stale: Mutex::default(),
            failed_invalidations: Mutex::default(),
        }
    }
}

/// The value of `key`: the key and its generation when the computation started.
#[cached(prefix = "reshard", ttl = 300, tags = ["reshard"], skip(cache, world), cache = cache)]
async fn value(cache: &Cache, world: &World, key: usize) -> (usize, u64) {
    let generation = world.generations[key].load(Ordering::SeqCst);
    world.computations.fetch_add(1, Ordering::SeqCst);
    (key, generation)
}

/// What the probe after each reshard calls; counted on its own.
#[cached(prefix = "reshard", ttl = 300, skip(cache), cache = cache)]
async fn probe(cache: &Cache, run: usize, n: u64) -> u64 {
    run as u64 * 1_000_000 + n
}

/// A small deterministic generator (xorshift64*): the run is the same every time.
struct Dice(u64);

impl Dice {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
    }
}

async fn call_in_a_loop(cache: Cache, world: Arc<World>, seed: u64) {
    let mut dice = Dice(seed);
    while !world.stop.load(Ordering::SeqCst) {
        let key = dice.below(KEYS);
        let floor = world.floors[key].load(Ordering::SeqCst);
        let started = Instant::now();
        let (seen_key, generation) = value(&cache, &world, key).await;
        let took = started.elapsed();
        let call = world.calls.fetch_add(1, Ordering::SeqCst);
        assert_eq!(seen_key, key);
        if took > STUCK {
            world.stuck.lock().unwrap().push((call, took));
        }
        if generation < floor {
            world.stale.lock().unwrap().push((key, generation, floor));
        }
    }
}

async fn invalidate_in_a_loop(cache: Cache, world: Arc<World>) {
    let mut dice = Dice(0x5eed);
    while !world.stop.load(Ordering::SeqCst) {
        if dice.below(20) == 0 {
            let bumped: Vec<u64> = world
                .generations
                .iter()
                .map(|generation| generation.fetch_add(1, Ordering::SeqCst) + 1)
                .collect();
            if served(&world, "invalidate_tag", || cache.invalidate_tag("reshard")).await {
                for (floor, generation) in world.floors.iter().zip(bumped) {
                    floor.fetch_max(generation, Ordering::SeqCst);
                }
            }
        } else {
            let key = dice.below(KEYS);
            let generation = world.generations[key].fetch_add(1, Ordering::SeqCst) + 1;
            if served(&world, "invalidate_key", || value_invalidate(&cache, key)).await {
                world.floors[key].fetch_max(generation, Ordering::SeqCst);
            }
        }
        world.invalidations.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs an invalidation; a failure is recorded (the cluster never goes down
/// here, so a retry serves it: it is retried for up to 5 s to tell whether it
/// would). `true` once one attempt succeeded.
async fn served<T, F, Fut>(world: &World, what: &str, invalidate: F) -> bool
where
    T: std::fmt::Debug,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = aside::Result<T>>,
{
    let first = invalidate().await;
    let Err(error) = first else {
        return true;
    };
    let failed = Instant::now();
    let mut retries = 0;
    let served = loop {
        retries += 1;
        if invalidate().await.is_ok() {
            break true;
        }
        if failed.elapsed() > Duration::from_secs(5) {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    world.failed_invalidations.lock().unwrap().push(format!(
        "{what}: {error}; {} after {retries} retries in {:?}",
        if served { "served" } else { "still failing" },
        failed.elapsed()
    ));
    served
}

/// After a reshard: how long until a pass over the probe keys, after a pass
/// that fills them, is all hits with no backend error; `None` if not within
/// [`RESUME_WITHIN`].
async fn caching_resumes(cache: &Cache, run: usize) -> Option<Duration> {
    let counters = || cache.stats().function("reshard:probe");
    let started = Instant::now();
    while started.elapsed() < RESUME_WITHIN {
        for n in 0..PROBE_KEYS {
            probe(cache, run, n).await;
        }
        let before = counters();
        for n in 0..PROBE_KEYS {
            assert_eq!(probe(cache, run, n).await, run as u64 * 1_000_000 + n);
        }
        let after = counters();
        if after.hits - before.hits == PROBE_KEYS && after.backend_errors == before.backend_errors {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Writes [`BALLAST`] keys of about 1 kB into each of `slots`, on the node that
/// serves it (hash tags found by trying names until one lands in each slot).
fn add_ballast(cluster: &RedisCluster, slots: &[u16]) {
    let mut tags = std::collections::BTreeMap::new();
    let mut n = 0u64;
    while tags.len() < slots.len() {
        let tag = format!("ballast{n}");
        let slot = key_slot(&tag);
        if slots.binary_search(&slot).is_ok() {
            tags.entry(slot).or_insert(tag);
        }
        n += 1;
    }
    let filler = "x".repeat(1000);
    for (slot, tag) in tags {
        let mut con = cluster.nodes()[cluster.node_for_slot(slot)].connection();
        let mut pipe = redis::pipe();
        for i in 0..BALLAST {
            pipe.cmd("SET").arg(format!("{{{tag}}}:{i}")).arg(&filler).ignore();
        }
        pipe.query::<()>(&mut con).expect("ballast");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reshards_under_load_lose_no_call_no_invalidation_and_no_caching() {
    // `RUST_LOG=aside=debug` shows what each failed operation met.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let cluster = Arc::new(RedisCluster::start());
    let cache = Cache::builder()
        .redis_url(&cluster.url())
        .namespace("reshard")
        .build()
        .await
        .expect("the cache connects to the cluster");
    let world = Arc::new(World::new());
    let mut slots: Vec<u16> = (0..KEYS).map(|key| key_slot(&value_key(&cache, key))).collect();
    slots.sort_unstable();
    slots.dedup();
    add_ballast(&cluster, &slots);
    let mut load = Vec::new();
    for seed in 0..CALLERS as u64 {
        load.push(tokio::spawn(call_in_a_loop(
            cache.clone(),
            Arc::clone(&world),
            seed + 1,
        )));
    }
    load.push(tokio::spawn(invalidate_in_a_loop(cache.clone(), Arc::clone(&world))));

    let mut resumed = Vec::new();
    let mut not_resumed = Vec::new();
    let started = Instant::now();
    for run in 0..RUNS {
        let from = run % 3;
        let to = (run + 1) % 3;
        let resharding = Arc::clone(&cluster);
        let reshard_started = Instant::now();
        let moving: Vec<u16> = slots
            .iter()
            .copied()
            .filter(|slot| cluster.node_for_slot(*slot) == from)
            .collect();
        let count = moving.len();
        tokio::task::spawn_blocking(move || resharding.move_slots(&moving, to))
            .await
            .expect("the reshard");
        let took = reshard_started.elapsed();
        let outcome = caching_resumes(&cache, run).await;
        eprintln!("reshard {run}: {count} slots {from} -> {to} in {took:?}; caching resumed after {outcome:?}");
        match outcome {
            Some(after) => resumed.push(after),
            None => not_resumed.push(run),
        }
    }
    let resharding = started.elapsed();
    world.stop.store(true, Ordering::SeqCst);
    for task in load {
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("the load tasks end")
            .expect("a load task");
    }

    let stats = cache.stats();
    let counters = stats.function("reshard:value");
    eprintln!(
        "{RUNS} reshards of {} slots in {resharding:?}: {} calls, {} computations, {} hits, \
         {} backend errors, {} invalidations; probe backend errors {}; breaker opened {} times; \
         caching resumed after {:?} at most",
        slots.len(),
        world.calls.load(Ordering::SeqCst),
        world.computations.load(Ordering::SeqCst),
        counters.hits,
        counters.backend_errors,
        world.invalidations.load(Ordering::SeqCst),
        stats.function("reshard:probe").backend_errors,
        stats.breaker_opened,
        resumed.iter().max(),
    );
    let stuck = world.stuck.lock().unwrap();
    let stale = world.stale.lock().unwrap();
    let failed = world.failed_invalidations.lock().unwrap();
    assert!(
        not_resumed.is_empty(),
        "caching did not resume after reshards {not_resumed:?}"
    );
    assert!(
        stuck.is_empty(),
        "{} stuck calls: {:?}",
        stuck.len(),
        &stuck[..stuck.len().min(10)]
    );
    // Every failure is the cluster turning a request away while a slot moves,
    // or the redis-rs cluster driver stalling after a `MOVED` until the store
    // replaces its connection: the store follows the first and retries the
    // invalidation through the second, so none may surface.
    eprintln!("failed invalidations: {failed:?}");
    assert!(failed.is_empty(), "{} invalidations failed: {failed:?}", failed.len());
    assert!(
        stale.is_empty(),
        "{} values older than a completed invalidation (key, generation, floor): {:?}",
        stale.len(),
        &stale[..stale.len().min(10)]
    );
    assert!(counters.hits > 0, "the load saw no hit at all");
}
