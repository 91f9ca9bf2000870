//! The memory backend's hit path: `#[aside::cached]` on aside's in-process store
//! (which keeps the entry's bytes and, once a hit decoded them, the value, and
//! clones that out) against a raw moka `get` of the same JSON bytes + the same
//! `serde_json` decode, a raw moka `get` of the value itself (a clone), and the
//! `cached` crate's in-memory `#[cached]` (which keeps the value and clones it).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;

use crate::{compare, report, Contender, Group, Report, Results, Settings, MEMORY};

static COMPUTATIONS: AtomicUsize = AtomicUsize::new(0);

/// The raw baseline's store, static like aside's `MEMORY` (no handle cloned per call).
static RAW_MOKA: OnceLock<moka::sync::Cache<String, Arc<[u8]>>> = OnceLock::new();

/// The raw baseline that keeps the value itself: a `get` clones it out.
pub static RAW_VALUES: LazyLock<moka::sync::Cache<String, Report>> = LazyLock::new(|| {
    let values = moka::sync::Cache::builder()
        .max_capacity(10_000)
        .time_to_live(Duration::from_secs(600))
        .build();
    values.insert(RAW_VALUE_KEY.to_owned(), report());
    values
});

/// The key of [`RAW_VALUES`]' one value.
pub const RAW_VALUE_KEY: &str = "raw:report:eu-west:11";

/// A raw moka `get` + clone of the value: the floor of an in-process hit.
pub fn raw_value_get() {
    let report = RAW_VALUES.get(std::hint::black_box(RAW_VALUE_KEY)).expect("stored");
    std::hint::black_box(report);
}

#[aside::cached(prefix = "bench", ttl = 600, cache = MEMORY)]
async fn aside_memory_hit(region: &str, month: u32) -> Report {
    COMPUTATIONS.fetch_add(1, Ordering::Relaxed);
    let _ = (region, month);
    report()
}

#[cached::macros::cached(ttl_secs = 600, key = "String", convert = r##"{ format!("{region}:{month}") }"##)]
async fn cached_memory_hit(region: &str, month: u32) -> Report {
    COMPUTATIONS.fetch_add(1, Ordering::Relaxed);
    let _ = (region, month);
    report()
}

pub async fn hit_path(s: &Settings, results: &mut Results) {
    let primed = aside_memory_hit("eu-west", 11).await;
    assert_eq!(cached_memory_hit("eu-west", 11).await, primed);
    let moka = RAW_MOKA.get_or_init(|| {
        moka::sync::Cache::builder()
            .max_capacity(10_000)
            .time_to_live(Duration::from_secs(600))
            .build()
    });
    let raw_key = "raw:report:eu-west:11";
    moka.insert(raw_key.to_owned(), serde_json::to_vec(&report()).expect("json").into());
    COMPUTATIONS.store(0, Ordering::Relaxed);
    println!(
        "# memory backend: aside keeps the entry's bytes (as Redis would) and the value its first hit \
         decoded, and clones that out; the first raw moka baseline decodes ~1 KB of JSON per hit, the second \
         and cached's #[cached] clone the stored value"
    );
    for tasks in [1, 64] {
        let aside = Contender {
            case: "",
            label: "aside",
            op: || async {
                std::hint::black_box(aside_memory_hit(std::hint::black_box("eu-west"), 11).await);
            },
        };
        let raw = Contender {
            case: "memory hit vs raw moka get",
            label: "raw moka get+from_slice",
            op: move || async move {
                let moka = RAW_MOKA.get().expect("initialised above");
                let bytes = moka.get(std::hint::black_box(raw_key)).expect("stored");
                let report: Report = serde_json::from_slice(&bytes).expect("decode");
                std::hint::black_box(report);
            },
        };
        let values = Contender {
            case: "memory hit vs raw moka get+clone",
            label: "raw moka get+clone",
            op: || async { crate::memory::raw_value_get() },
        };
        let cached = Contender {
            case: "memory hit vs cached",
            label: "cached #[cached] in-memory (clone, no decode)",
            op: || async {
                std::hint::black_box(cached_memory_hit(std::hint::black_box("eu-west"), 11).await);
            },
        };
        compare(
            results,
            Group::Memory,
            tasks,
            s.memory_ops_per_round,
            s.rounds,
            &aside,
            &[(raw.case, &raw), (values.case, &values), (cached.case, &cached)],
        )
        .await;
    }
    assert_eq!(COMPUTATIONS.load(Ordering::Relaxed), 0, "a memory hit computed");
}
