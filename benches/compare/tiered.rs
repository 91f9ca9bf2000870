//! The tiered backend (`CACHE_BACKEND=tiered`): a hit on the in-process copy
//! against a plain Redis hit and against the memory backend's hit, and how long
//! an invalidation made by one process takes to reach the tier of another that
//! is serving 64 tasks of hits.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use aside::{Cache, MemoryCapacity, Policy};

use crate::{compare, redis_url, report, Contender, Group, Report, Results, Settings, Side};

/// Computations run by the functions below: only the priming ones.
static COMPUTATIONS: AtomicUsize = AtomicUsize::new(0);

static TIERED: LazyLock<Cache> = LazyLock::new(|| {
    Cache::builder()
        .redis_url(redis_url())
        .namespace("bench-tiered")
        .tiered()
        .build_lazy()
        .expect("tiered")
});
static PLAIN: LazyLock<Cache> = LazyLock::new(|| {
    Cache::builder()
        .redis_url(redis_url())
        .namespace("bench-tiered")
        .build_lazy()
        .expect("plain")
});
static MEMORY: LazyLock<Cache> = LazyLock::new(|| {
    Cache::builder()
        .memory()
        .namespace("bench-tiered")
        .build_lazy()
        .expect("memory")
});

hit_fn!(tiered_hit => TIERED, plain_hit => PLAIN, memory_hit => MEMORY);

/// A tiered hit against a Redis hit and a memory hit; then the propagation of
/// invalidations between two tiered processes.
pub async fn hit_path(s: &Settings, results: &mut Results) {
    let primed = plain_hit("eu-west", 11).await;
    assert_eq!(memory_hit("eu-west", 11).await, primed);
    // The tier keeps copies once its channel is confirmed (a few heartbeats).
    assert_eq!(tiered_hit("eu-west", 11).await, primed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(tiered_hit("eu-west", 11).await, primed);
    COMPUTATIONS.store(0, Ordering::Relaxed);
    println!(
        "# tiered: a hit on the in-process copy (no round trip; the value the first hit on it decoded, cloned out) \
         against the same ~1 KB hit on Redis, on the memory backend, and a raw moka get + clone of the value"
    );
    macro_rules! side {
        ($label:literal, $f:ident) => {
            Contender {
                case: "",
                label: $label,
                op: || async {
                    std::hint::black_box($f(std::hint::black_box("eu-west"), 11).await);
                },
            }
        };
    }
    for tasks in [1, 64] {
        let tiered = side!("aside tiered", tiered_hit);
        let plain = side!("aside on Redis", plain_hit);
        let memory = side!("aside memory", memory_hit);
        let raw = Contender {
            case: "",
            label: "raw moka get+clone",
            op: || async { crate::memory::raw_value_get() },
        };
        compare(
            results,
            Group::Tiered,
            tasks,
            s.memory_ops_per_round,
            s.rounds,
            &tiered as &dyn Side,
            &[
                ("tiered hit vs a Redis hit", &plain as &dyn Side),
                ("tiered hit vs a memory hit", &memory),
                ("tiered hit vs raw moka get+clone", &raw),
            ],
        )
        .await;
    }
    assert_eq!(COMPUTATIONS.load(Ordering::Relaxed), 0, "a hit computed");
    propagation(if s.quick { 50 } else { 300 }).await;
    bound(if s.quick { 2_000 } else { 10_000 }).await;
}

/// `keys` entries of ~1 KB read twice through a tier with room for a tenth of
/// them, and through one with room for all: what each tier holds then (as
/// `Cache::stats` reports it, against its bound), and how many reads of the
/// second pass it answered.
async fn bound(keys: usize) {
    let policy = Policy::new(Duration::from_secs(600));
    let entry = 925 + 40; // the entry's bytes and its key, as the tier weighs them
    let mut lines = Vec::new();
    for (room, capacity) in [
        ("a tenth of them", (keys / 10 * entry) as u64),
        ("all of them", (keys * entry * 2) as u64),
    ] {
        let cache = Cache::builder()
            .redis_url(redis_url())
            .namespace(format!("bench-tiered-bound-{}", capacity))
            .tiered()
            .memory_capacity(MemoryCapacity::Bytes(capacity))
            .build()
            .await
            .expect("tiered");
        let pass = |cache: Cache| {
            let policy = policy.clone();
            async move {
                let tasks: Vec<_> = (0..64)
                    .map(|task| {
                        let (cache, policy) = (cache.clone(), policy.clone());
                        tokio::spawn(async move {
                            for n in (task..keys).step_by(64) {
                                let aside::Plain(value) = cache
                                    .get_or_compute(format!("entry-{n}"), &policy, || async { aside::Plain(report()) })
                                    .await;
                                std::hint::black_box(value);
                            }
                        })
                    })
                    .collect();
                for task in tasks {
                    task.await.expect("a pass");
                }
            }
        };
        // Stored, then (their announcements heard) read into the tier, then read again.
        pass(cache.clone()).await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        pass(cache.clone()).await;
        let l1_before = cache.stats().total.l1_hits;
        pass(cache.clone()).await;
        let stats = cache.stats();
        let answered = stats.total.l1_hits - l1_before;
        let held = stats.in_process;
        assert!(held.weight <= capacity, "the tier outgrew its bound: {held:?}");
        lines.push(format!(
            "room for {room} (bound {:.2} MB): holds {} entries, {:.2} MB; answered {answered} of the {keys} reads \
             of the second pass",
            capacity as f64 / 1e6,
            held.entries,
            held.weight as f64 / 1e6
        ));
    }
    println!(
        "# tiered: {keys} entries of ~1 KB read through a tier, twice: {}",
        lines.join("; ")
    );
}

/// Process A (64 tasks of hits on a tiered cache) and process B (another tiered
/// cache on the same Redis): B writes the key (`refresh`, announced as an
/// invalidation is), and the time until A's calls answer the new value instead
/// of A's copy of the old one is measured; `rounds` times.
async fn propagation(rounds: usize) {
    let policy = Policy::new(Duration::from_secs(600));
    let one = Cache::builder()
        .redis_url(redis_url())
        .namespace("bench-tiered-propagation")
        .tiered()
        .build()
        .await
        .expect("tiered A");
    let other = Cache::builder()
        .redis_url(redis_url())
        .namespace("bench-tiered-propagation")
        .tiered()
        .build()
        .await
        .expect("tiered B");
    let call = |cache: Cache, n: u64| {
        let policy = policy.clone();
        async move {
            cache
                .get_or_compute_with_status("hot", &policy, move || async move { aside::Plain(n) })
                .await
        }
    };
    call(one.clone(), 0).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let background: Vec<_> = (0..64)
        .map(|_| {
            let (one, stop, policy) = (one.clone(), Arc::clone(&stop), policy.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let _ = one
                        .get_or_compute("hot", &policy, || async { aside::Plain(0u64) })
                        .await;
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    let mut seen = Vec::with_capacity(rounds);
    for round in 1..=rounds as u64 {
        // B writes a new value (its store is announced like an invalidation);
        // A's background tasks keep hitting, so a miss is refilled at once:
        // what A's copy answers is told by the value, not the status.
        let aside::Plain(written) = other
            .refresh("hot", &policy, move || async move { aside::Plain(round) })
            .await;
        assert_eq!(written, round);
        let written_at = Instant::now();
        loop {
            let (aside::Plain(value), _) = call(one.clone(), 0).await;
            if value == round || written_at.elapsed() > Duration::from_secs(5) {
                break;
            }
        }
        seen.push(written_at.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in background {
        let _ = task.await;
    }
    seen.sort_unstable();
    let at = |q: f64| seen[((seen.len() - 1) as f64 * q).round() as usize];
    println!(
        "# tiered: a write by another process replaces the copy of a tier serving 64 tasks of hits in \
         p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({rounds} writes, loopback)",
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        at(1.0).as_secs_f64() * 1e3,
    );
}
