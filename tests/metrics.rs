//! Metrics and traces: the cache's counters reach the `metrics` recorder the
//! application installs, labelled by function, and every call has a debug span
//! naming its function, key and outcome.
//!
//! Each test installs its own recorder for its own thread (`with_local_recorder`)
//! and runs the cache on a current-thread runtime, so tests never see each
//! other's counts.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aside::metrics as names;
use aside::{BreakerState, Cache, Plain, Policy};
use aside_testkit::RedisServer;
use metrics_exporter_prometheus::PrometheusBuilder;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::MetricKind;

/// What a recorder saw, by metric name and `function` label.
struct Seen(HashMap<(MetricKind, String, Option<String>), DebugValue>);

impl Seen {
    fn get(&self, kind: MetricKind, name: &str, function: Option<&str>) -> Option<&DebugValue> {
        self.0.get(&(kind, name.to_owned(), function.map(str::to_owned)))
    }

    fn counter(&self, name: &str, function: Option<&str>) -> u64 {
        match self.get(MetricKind::Counter, name, function) {
            Some(DebugValue::Counter(value)) => *value,
            None => 0,
            other => panic!("{name} is not a counter: {other:?}"),
        }
    }

    fn gauge(&self, name: &str) -> Option<f64> {
        match self.get(MetricKind::Gauge, name, None) {
            Some(DebugValue::Gauge(value)) => Some(value.into_inner()),
            _ => None,
        }
    }

    fn histogram(&self, name: &str, function: Option<&str>) -> Vec<f64> {
        match self.get(MetricKind::Histogram, name, function) {
            Some(DebugValue::Histogram(values)) => values.iter().map(|v| v.into_inner()).collect(),
            _ => Vec::new(),
        }
    }
}

/// Runs `test` on a current-thread runtime with a fresh debugging recorder.
fn recorded<F: Future>(test: impl FnOnce() -> F) -> (F::Output, Seen) {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let output = metrics::with_local_recorder(&recorder, || runtime.block_on(test()));
    let seen = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let (kind, key) = key.into_parts();
            let function = key
                .labels()
                .find(|label| label.key() == names::FUNCTION_LABEL)
                .map(|label| label.value().to_owned());
            ((kind, key.name().to_owned(), function), value)
        })
        .collect();
    (output, Seen(seen))
}

async fn memory() -> Cache {
    Cache::builder().memory().build().await.unwrap()
}

/// One cache, its function's counters heard by one recorder and then by
/// another: each event goes to the recorder in force when it happens, as a
/// `counter!` would, also after the cache built its metric keys.
#[test]
fn each_count_goes_to_the_recorder_in_force_when_it_happens() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cache = runtime.block_on(memory());
    let policy = Policy::default().function("reports:weekly");
    let call = || {
        runtime.block_on(async {
            let Plain(n) = cache.get_or_compute("weekly", &policy, || async { Plain(7) }).await;
            n
        })
    };
    // Counted with no recorder at all: the keys are built, the counts go nowhere.
    assert_eq!(call(), 7);
    let (first, second) = (DebuggingRecorder::new(), DebuggingRecorder::new());
    let (first_seen, second_seen) = (first.snapshotter(), second.snapshotter());
    metrics::with_local_recorder(&first, || {
        for _ in 0..2 {
            assert_eq!(call(), 7);
        }
    });
    metrics::with_local_recorder(&second, || {
        for _ in 0..3 {
            assert_eq!(call(), 7);
        }
    });
    let hits = |snapshotter: metrics_util::debugging::Snapshotter| {
        snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter_map(|(key, _, _, value)| {
                let key = key.key().clone();
                let weekly = key.labels().any(|label| label.value() == "reports:weekly");
                match value {
                    DebugValue::Counter(n) if key.name() == names::HITS && weekly => Some(n),
                    _ => None,
                }
            })
            .sum::<u64>()
    };
    assert_eq!(hits(first_seen), 2, "the first recorder heard its two hits");
    assert_eq!(
        hits(second_seen),
        3,
        "the second recorder heard its three, not the first's"
    );
}

#[test]
fn hits_misses_and_computation_time_per_function() {
    for server in [None, Some(RedisServer::start())] {
        let (stats, seen) = recorded(|| async {
            let cache = match &server {
                None => memory().await,
                Some(server) => Cache::builder().redis_url(&server.url()).build().await.unwrap(),
            };
            let policy = Policy::default().function("reports:daily");
            for _ in 0..3 {
                let Plain(_) = cache
                    .get_or_compute("daily", &policy, || async {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        Plain(7)
                    })
                    .await;
            }
            let Plain(_) = cache
                .get_or_compute("unnamed", &Policy::default(), || async { Plain(1) })
                .await;
            cache.stats()
        });
        let daily = Some("reports:daily");
        assert_eq!(seen.counter(names::MISSES, daily), 1);
        assert_eq!(seen.counter(names::HITS, daily), 2);
        assert_eq!(seen.counter(names::COMPUTATIONS, daily), 1);
        assert_eq!(seen.counter(names::MISSES, Some(names::UNNAMED)), 1);
        assert_eq!(seen.counter(names::BACKEND_ERRORS, daily), 0);
        let times = seen.histogram(names::COMPUTATION_SECONDS, daily);
        assert_eq!(times.len(), 1);
        assert!(times[0] >= 0.02, "{times:?}");

        // The same in `Cache::stats()`, with the computation time.
        let counters = stats.function("reports:daily");
        assert_eq!((counters.hits, counters.misses, counters.computations), (2, 1, 1));
        assert!(counters.mean_computation().unwrap() >= Duration::from_millis(20));
        assert!(counters.computation_time() >= Duration::from_millis(20));
        assert!(stats.total.computation_time() >= counters.computation_time());
    }
}

#[test]
fn lock_waits_and_invalidations() {
    let (runs, seen) = recorded(|| async {
        let cache = memory().await;
        let runs = AtomicUsize::new(0);
        let policy = Policy::default().function("reports:cold").tags(["orders"]);
        let call = || {
            cache.get_or_compute("cold", &policy, || async {
                runs.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                Plain(1)
            })
        };
        futures_util::future::join_all((0..5).map(|_| call())).await;
        for month in 1..=2 {
            let Plain(_) = cache
                .get_or_compute(format!("month:{month}"), &policy, || async { Plain(month) })
                .await;
        }
        assert_eq!(cache.invalidate_tag("orders").await.unwrap(), 3);
        runs.load(Ordering::SeqCst)
    });
    let cold = Some("reports:cold");
    assert_eq!(runs, 1, "one computation for five concurrent callers");
    assert_eq!(seen.counter(names::MISSES, cold), 7);
    assert_eq!(seen.counter(names::COMPUTATIONS, cold), 3);
    assert_eq!(seen.counter(names::LOCK_WAITS, cold), 4);
    assert_eq!(seen.counter(names::INVALIDATIONS, None), 3);
}

#[test]
fn decode_errors_and_backend_errors_and_the_breaker() {
    let mut server = RedisServer::start();
    let url = server.url();
    let mut connection = server.connection();
    let (breaker, seen) = recorded(|| async move {
        let cache = Cache::builder().redis_url(&url).build().await.unwrap();
        let policy = Policy::default().function("reports:fragile");
        let _: () = redis::cmd("SET")
            .arg("aside:corrupt")
            .arg("not an entry")
            .query(&mut connection)
            .unwrap();
        let Plain(_) = cache.get_or_compute("corrupt", &policy, || async { Plain(1) }).await;

        server.stop();
        for _ in 0..8 {
            let Plain(value) = cache.get_or_compute("down", &policy, || async { Plain(2) }).await;
            assert_eq!(value, 2, "fail-open");
        }
        aside::metrics::sample(&cache);
        cache.stats().breaker
    });
    let fragile = Some("reports:fragile");
    assert_eq!(seen.counter(names::DECODE_ERRORS, fragile), 1);
    assert!(seen.counter(names::BACKEND_ERRORS, fragile) >= 5);
    assert_eq!(seen.counter(names::COMPUTATIONS, fragile), 9);
    assert_eq!(breaker, BreakerState::Open);
    assert_eq!(seen.gauge(names::BREAKER_STATE), Some(1.0));
    assert_eq!(seen.counter(names::BREAKER_OPENED, None), 1);
    assert!(seen.counter(names::BREAKER_SKIPS, None) >= 1);
}

#[test]
fn prometheus_text_has_hit_and_miss_counters() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let cache = memory().await;
            let policy = Policy::default().function("reports:weekly");
            for _ in 0..3 {
                let Plain(_) = cache.get_or_compute("weekly", &policy, || async { Plain(1) }).await;
            }
            aside::metrics::sample(&cache);
        });
    });
    let text = handle.render();
    assert!(
        text.contains("aside_cache_hits_total{function=\"reports:weekly\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("aside_cache_misses_total{function=\"reports:weekly\"} 1"),
        "{text}"
    );
    assert!(text.contains("# HELP aside_cache_hits_total"), "{text}");
    assert!(
        text.contains("aside_cache_computation_seconds_count{function=\"reports:weekly\"} 1"),
        "{text}"
    );
    assert!(text.contains("aside_cache_breaker_state 0"), "{text}");
}

#[test]
fn every_metric_has_its_help_text_and_the_histogram_its_unit() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let cache = memory().await;
            let policy = Policy::default().function("reports:described").tags(["described"]);
            for _ in 0..2 {
                let Plain(_) = cache.get_or_compute("described", &policy, || async { Plain(1) }).await;
            }
            assert_eq!(cache.invalidate_tag("described").await.unwrap(), 1);
            let Plain(_) = cache
                .get_or_compute("kept", &Policy::default(), || async { Plain(2) })
                .await;
            // Describes every metric on this recorder (the first event describes them
            // once per process, on whichever recorder is current).
            aside::metrics::sample(&cache);
        });
    });
    let snapshot = snapshotter.snapshot().into_vec();
    let gauge = |name: &str| {
        snapshot.iter().find_map(|(key, _, _, value)| match value {
            metrics_util::debugging::DebugValue::Gauge(value) if key.key().name() == name => Some(value.into_inner()),
            _ => None,
        })
    };
    // One entry was invalidated, the other is held: its key and bytes weigh.
    assert_eq!(gauge(names::IN_PROCESS_ENTRIES), Some(1.0));
    assert!(gauge(names::IN_PROCESS_WEIGHT).is_some_and(|bytes| bytes > 10.0));
    let described: HashMap<String, (Option<metrics::Unit>, String)> = snapshot
        .into_iter()
        .map(|(key, unit, description, _)| {
            let name = key.key().name().to_owned();
            (name, (unit, description.map(|d| d.to_string()).unwrap_or_default()))
        })
        .collect();
    for name in [
        names::HITS,
        names::MISSES,
        names::COMPUTATIONS,
        names::COMPUTATION_SECONDS,
        names::INVALIDATIONS,
        names::BREAKER_STATE,
        names::IN_PROCESS_ENTRIES,
        names::IN_PROCESS_WEIGHT,
    ] {
        let (_, help) = &described[name];
        assert!(!help.is_empty(), "{name} has no help text");
    }
    assert_eq!(described[names::HITS].1, "Calls answered from the cache.");
    assert_eq!(described[names::COMPUTATION_SECONDS].0, Some(metrics::Unit::Seconds));
}

/// A `MakeWriter` collecting what the subscriber prints.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn every_call_has_a_debug_span_with_function_key_hash_and_outcome() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let key = tracing::subscriber::with_default(subscriber, || {
        runtime.block_on(async {
            let cache = memory().await;
            let policy = Policy::default().function("reports:traced");
            for _ in 0..2 {
                let Plain(_) = cache.get_or_compute("traced", &policy, || async { Plain(1) }).await;
            }
            let Plain(_) = cache.refresh("traced", &policy, || async { Plain(2) }).await;
            cache.full_key("traced").unwrap()
        })
    });
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(!text.contains(&key), "the full key is never logged: {text}");
    let closes: Vec<&str> = text.lines().filter(|line| line.contains("close")).collect();
    assert_eq!(closes.len(), 3, "{text}");
    for (line, (name, outcome)) in closes.iter().zip([
        ("get_or_compute", "computed"),
        ("get_or_compute", "hit"),
        ("refresh", "computed"),
    ]) {
        assert!(line.contains("DEBUG"), "{line}");
        assert!(line.contains(&format!("{name}{{")), "{line}");
        assert!(line.contains("function=\"reports:traced\""), "{line}");
        // The key itself may hold a secret: the span shows a stable hash of it.
        let shown = line
            .split("key=#")
            .nth(1)
            .map(|rest| &rest[..16])
            .unwrap_or_else(|| panic!("a key hash in {line}"));
        assert!(shown.chars().all(|c| c.is_ascii_hexdigit()), "{line}");
        assert!(
            closes[0].contains(&format!("key=#{shown}")),
            "the same key, the same hash: {line}"
        );
        assert!(
            line.contains(&format!("outcome=\"{outcome}\"")) || line.contains(&format!("outcome={outcome}")),
            "{line}"
        );
    }
}
