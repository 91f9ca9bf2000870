//! What signing and sealing cost a hit: `#[aside::cached]` on a cache with
//! `CACHE_SIGNING_KEY` (an HMAC-SHA256 over the ~1 KB entry) and on one with
//! `CACHE_ENCRYPTION_KEY` (XChaCha20-Poly1305 opened on every hit), each against
//! the same function on a cache without keys, on Redis and on the memory backend
//! (where no round trip hides the cost).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::LazyLock;

use aside::Cache;

use crate::{compare, redis_url, report, Contender, Group, Report, Results, Settings, Side};

/// Computations run by the functions below: zero once primed.
static COMPUTATIONS: AtomicUsize = AtomicUsize::new(0);

/// Fixed keys: a benchmark, not a secret.
const SIGNING_KEY: &str = "5151515151515151515151515151515151515151515151515151515151515151";
const ENCRYPTION_KEY: &str = "e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1";

fn redis() -> aside::CacheBuilder {
    Cache::builder().redis_url(redis_url()).namespace("bench-keys")
}

fn memory() -> aside::CacheBuilder {
    Cache::builder().memory().namespace("bench-keys")
}

static REDIS_PLAIN: LazyLock<Cache> = LazyLock::new(|| redis().build_lazy().expect("plain"));
static REDIS_SIGNED: LazyLock<Cache> = LazyLock::new(|| redis().signing_key(SIGNING_KEY).build_lazy().expect("signed"));
static REDIS_SEALED: LazyLock<Cache> =
    LazyLock::new(|| redis().encryption_key(ENCRYPTION_KEY).build_lazy().expect("sealed"));
static MEMORY_PLAIN: LazyLock<Cache> = LazyLock::new(|| memory().build_lazy().expect("plain"));
static MEMORY_SIGNED: LazyLock<Cache> =
    LazyLock::new(|| memory().signing_key(SIGNING_KEY).build_lazy().expect("signed"));
static MEMORY_SEALED: LazyLock<Cache> =
    LazyLock::new(|| memory().encryption_key(ENCRYPTION_KEY).build_lazy().expect("sealed"));

hit_fn!(
    redis_plain => REDIS_PLAIN,
    redis_signed => REDIS_SIGNED,
    redis_sealed => REDIS_SEALED,
    memory_plain => MEMORY_PLAIN,
    memory_signed => MEMORY_SIGNED,
    memory_sealed => MEMORY_SEALED,
);

/// The cost of a hit with each key, against the plain hit of the same backend.
pub async fn hit_path(s: &Settings, results: &mut Results) {
    let primed = redis_plain("eu-west", 11).await;
    for other in [
        redis_signed("eu-west", 11).await,
        redis_sealed("eu-west", 11).await,
        memory_plain("eu-west", 11).await,
        memory_signed("eu-west", 11).await,
        memory_sealed("eu-west", 11).await,
    ] {
        assert_eq!(other, primed);
    }
    COMPUTATIONS.store(0, Ordering::Relaxed);
    println!(
        "# keys: a hit on a cache with CACHE_SIGNING_KEY (verifies an HMAC-SHA256) or CACHE_ENCRYPTION_KEY \
         (opens XChaCha20-Poly1305), against the same ~1 KB hit without keys"
    );
    macro_rules! side {
        ($case:literal, $label:literal, $f:ident) => {
            Contender {
                case: $case,
                label: $label,
                op: || async {
                    std::hint::black_box($f(std::hint::black_box("eu-west"), 11).await);
                },
            }
        };
    }
    for tasks in [1, 64] {
        let plain = side!("", "aside without keys", redis_plain);
        let signed = side!("hit, signed entries, vs plain entries", "aside (signed)", redis_signed);
        let sealed = side!("hit, sealed entries, vs plain entries", "aside (sealed)", redis_sealed);
        for (case, keyed) in [(signed.case, &signed as &dyn Side), (sealed.case, &sealed)] {
            compare(
                results,
                Group::Keys,
                tasks,
                s.ops_per_round,
                s.rounds,
                keyed,
                &[(case, &plain)],
            )
            .await;
        }
        let plain = side!("", "aside without keys", memory_plain);
        let signed = side!(
            "memory hit, signed entries, vs plain entries",
            "aside (signed)",
            memory_signed
        );
        let sealed = side!(
            "memory hit, sealed entries, vs plain entries",
            "aside (sealed)",
            memory_sealed
        );
        for (case, keyed) in [(signed.case, &signed as &dyn Side), (sealed.case, &sealed)] {
            let ops = s.memory_ops_per_round;
            compare(results, Group::Keys, tasks, ops, s.rounds, keyed, &[(case, &plain)]).await;
        }
    }
    let computed = COMPUTATIONS.load(Ordering::Relaxed);
    let unverified: u64 = [&REDIS_SIGNED, &REDIS_SEALED, &MEMORY_SIGNED, &MEMORY_SEALED]
        .iter()
        .map(|cache| cache.stats().total.unverified)
        .sum();
    println!("# keys: {computed} computations after priming, {unverified} entries refused");
    assert_eq!(
        (computed, unverified),
        (0, 0),
        "a keyed hit computed or refused its entry"
    );
}
