//! Guarantee 6, cancellation: a caller computing a cold key that is dropped
//! mid-way — its task aborted, a `timeout` around the call, an HTTP client that
//! disconnects — hands over at once. Exactly one of the callers waiting for it
//! computes and stores; nobody waits out `wait` for a computation that no longer
//! runs. With the settings a user gets (only `wait` is raised, to 20 s, so a
//! waiter that waited it out could not pass for one that was handed over).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aside::{Cache, Plain, Policy};
use support::Fixture;
use tokio::sync::mpsc;

mod support;

on_backends!(
    [memory, redis, cluster]
    an_aborted_leader_hands_over_at_once,
    a_leader_cut_by_a_timeout_hands_over_at_once,
    a_cancelled_refresh_frees_the_lease,
);

on_backends!(
    [memory, redis]
    a_request_whose_client_disconnects_hands_over_at_once,
);

/// Far below `wait` (20 s): a waiter that waited it out fails the test.
const HANDOVER_BOUND: Duration = Duration::from_secs(10);
const COMPUTATION: Duration = Duration::from_millis(1500);

fn policy(function: &'static str) -> Policy {
    Policy::new(Duration::from_secs(60))
        .wait(Duration::from_secs(20))
        .function(function)
}

/// Starts `callers` tasks on `key`; each computation reports its caller's index
/// on `started` and takes [`COMPUTATION`].
fn callers(
    cache: &Cache,
    key: &'static str,
    policy: &Policy,
    callers: usize,
    runs: &Arc<AtomicUsize>,
) -> (Vec<tokio::task::JoinHandle<String>>, mpsc::UnboundedReceiver<usize>) {
    let (started, starts) = mpsc::unbounded_channel();
    let tasks = (0..callers)
        .map(|index| {
            let (cache, policy, runs, started) = (cache.clone(), policy.clone(), Arc::clone(runs), started.clone());
            tokio::spawn(async move {
                let Plain(value) = cache
                    .get_or_compute(key, &policy, || async move {
                        let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
                        let _ = started.send(index);
                        tokio::time::sleep(COMPUTATION).await;
                        Plain(format!("run {run}"))
                    })
                    .await;
                value
            })
        })
        .collect();
    (tasks, starts)
}

async fn an_aborted_leader_hands_over_at_once(fx: Fixture) {
    let cache = fx.cache().await;
    let policy = policy("cancel:abort");
    let runs = Arc::new(AtomicUsize::new(0));
    let (mut tasks, mut starts) = callers(&cache, "cancel:abort", &policy, 5, &runs);
    let leader = starts.recv().await.expect("a caller computes");
    tokio::time::sleep(Duration::from_millis(150)).await;
    let aborted = Instant::now();
    tasks[leader].abort();
    let leader_task = tasks.remove(leader);
    assert!(leader_task.await.expect_err("aborted").is_cancelled());

    let served = tokio::time::timeout(HANDOVER_BOUND, futures_util::future::join_all(tasks))
        .await
        .expect("the waiters were handed over, not left to wait out `wait`");
    let values: Vec<String> = served.into_iter().map(|v| v.expect("waiter task")).collect();
    assert_eq!(
        values,
        vec!["run 2".to_owned(); 4],
        "every waiter gets the one takeover's value"
    );
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "the aborted computation and one takeover"
    );
    let stats = cache.stats().function("cancel:abort");
    assert_eq!(stats.lock_timeouts, 0, "nobody waited out `wait`: {stats:?}");
    // The takeover stored: the next call is a hit.
    let Plain(again) = cache
        .get_or_compute("cancel:abort", &policy, || async { Plain(String::from("again")) })
        .await;
    assert_eq!(again, "run 2");
    println!(
        "abort: waiters served {:?} after the leader was aborted",
        aborted.elapsed()
    );
}

async fn a_leader_cut_by_a_timeout_hands_over_at_once(fx: Fixture) {
    let cache = fx.cache().await;
    let policy = policy("cancel:timeout");
    let runs = Arc::new(AtomicUsize::new(0));
    // The leader: a caller with a 150 ms budget around the cached call.
    let cut = {
        let (cache, policy, runs) = (cache.clone(), policy.clone(), Arc::clone(&runs));
        async move {
            tokio::time::timeout(
                Duration::from_millis(150),
                cache.get_or_compute("cancel:timeout", &policy, move || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(COMPUTATION).await;
                    Plain(String::from("cut"))
                }),
            )
            .await
        }
    };
    let (tasks, _starts) = {
        // Waiters join while the leader computes.
        let leader = tokio::spawn(cut);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let waiters = callers(&cache, "cancel:timeout", &policy, 4, &runs);
        assert!(leader.await.expect("leader task").is_err(), "the timeout fired");
        waiters
    };
    let served = tokio::time::timeout(HANDOVER_BOUND, futures_util::future::join_all(tasks))
        .await
        .expect("the waiters were handed over, not left to wait out `wait`");
    let values: Vec<String> = served.into_iter().map(|v| v.expect("waiter task")).collect();
    assert_eq!(values, vec!["run 2".to_owned(); 4]);
    assert_eq!(runs.load(Ordering::SeqCst), 2, "the cut computation and one takeover");
    assert_eq!(cache.stats().function("cancel:timeout").lock_timeouts, 0);
    assert!(
        cache.exists("cancel:timeout").await.expect("exists"),
        "the takeover stored"
    );
}

/// A `refresh` dropped mid-way leaves no lease behind: the next miss computes
/// at once instead of waiting for it.
async fn a_cancelled_refresh_frees_the_lease(fx: Fixture) {
    let cache = fx.cache().await;
    let policy = policy("cancel:refresh");
    let refresh = cache.refresh("cancel:refresh", &policy, || async {
        tokio::time::sleep(COMPUTATION).await;
        Plain(1)
    });
    assert!(tokio::time::timeout(Duration::from_millis(150), refresh).await.is_err());
    let runs = Arc::new(AtomicUsize::new(0));
    let (tasks, _starts) = callers(&cache, "cancel:refresh", &policy, 3, &runs);
    let served = tokio::time::timeout(HANDOVER_BOUND, futures_util::future::join_all(tasks))
        .await
        .expect("no caller waits for the dropped refresh's lease");
    let values: Vec<String> = served.into_iter().map(|v| v.expect("caller task")).collect();
    assert_eq!(
        values,
        vec!["run 1".to_owned(); 3],
        "one computation for the three callers"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(cache.stats().function("cancel:refresh").lock_timeouts, 0);
}

/// An axum handler calling a cached function; the first client gives up after
/// 150 ms (hyper drops the handler's future), the others are served by one
/// takeover computation.
async fn a_request_whose_client_disconnects_hands_over_at_once(fx: Fixture) {
    use axum::extract::State;
    use axum::routing::get;

    #[derive(Clone)]
    struct App {
        cache: Cache,
        runs: Arc<AtomicUsize>,
    }

    async fn report(State(app): State<App>) -> String {
        let policy = policy("cancel:http");
        let runs = Arc::clone(&app.runs);
        let Plain(body) = app
            .cache
            .get_or_compute("cancel:http", &policy, || async move {
                let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(COMPUTATION).await;
                Plain(format!("report {run}"))
            })
            .await;
        body
    }

    let app = App {
        cache: fx.cache().await,
        runs: Arc::new(AtomicUsize::new(0)),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/report", listener.local_addr().expect("addr"));
    let router = axum::Router::new()
        .route("/report", get(report))
        .with_state(app.clone());
    let server = tokio::spawn(async move { axum::serve(listener, router).await });

    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(150))
        .build()
        .expect("client");
    let first = impatient.get(&url).send();
    let patient = reqwest::Client::new();
    let (gave_up, others) = tokio::join!(first, async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let requests = (0..3).map(|_| {
            let (patient, url) = (patient.clone(), url.clone());
            async move { patient.get(&url).send().await?.text().await }
        });
        tokio::time::timeout(HANDOVER_BOUND, futures_util::future::join_all(requests)).await
    });
    assert!(gave_up.is_err(), "the impatient client gave up");
    let bodies: Vec<String> = others
        .expect("the other requests were served, not left to wait out `wait`")
        .into_iter()
        .map(|body| body.expect("response"))
        .collect();
    assert_eq!(bodies, vec!["report 2".to_owned(); 3]);
    assert_eq!(
        app.runs.load(Ordering::SeqCst),
        2,
        "the dropped handler's computation and one takeover"
    );
    assert_eq!(app.cache.stats().function("cancel:http").lock_timeouts, 0);
    server.abort();
}

on_backends!(
    [redis, cluster]
    an_aborted_leader_in_another_process_hands_over_at_once,
);

on_backends!(
    [redis]
    a_lease_is_freed_when_its_store_fails,
    a_waiter_fails_open_at_once_when_redis_stalls,
);

/// The leader and its waiters use different caches (different processes, as
/// far as the protocol goes): the dropped leader's lease is freed and announced,
/// and one waiter of the other cache takes over.
async fn an_aborted_leader_in_another_process_hands_over_at_once(fx: Fixture) {
    let leader_cache = fx.cache().await;
    let cache = fx.cache().await;
    let policy = policy("cancel:remote");
    let runs = Arc::new(AtomicUsize::new(0));
    let (mut leader, mut starts) = callers(&leader_cache, "cancel:remote", &policy, 1, &runs);
    starts.recv().await.expect("the leader computes");
    let (waiters, _starts) = callers(&cache, "cancel:remote", &policy, 3, &runs);
    aside_testkit::until("the waiters wait for the leader's lease", || {
        cache.stats().function("cancel:remote").lock_waits >= 1
    })
    .await;
    let leader = leader.remove(0);
    leader.abort();
    assert!(leader.await.expect_err("aborted").is_cancelled());
    let served = tokio::time::timeout(HANDOVER_BOUND, futures_util::future::join_all(waiters))
        .await
        .expect("the waiters were handed over, not left to wait out `wait`");
    let values: Vec<String> = served.into_iter().map(|v| v.expect("waiter task")).collect();
    assert_eq!(values, vec!["run 2".to_owned(); 3]);
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "the aborted computation and one takeover"
    );
    assert_eq!(cache.stats().function("cancel:remote").lock_timeouts, 0);
}

/// The store step fails (the server holds writes back past the operation
/// timeout while the entry is recorded in its tag set): the lease is freed
/// anyway, so the next caller computes and stores instead of waiting for it.
async fn a_lease_is_freed_when_its_store_fails(fx: Fixture) {
    let support::Server::Single(server) = &fx.server else {
        panic!("single node only")
    };
    let cache = fx.cache().await;
    let policy = policy("cancel:store-fails").tags(["reports"]);
    let mut admin = server.connection();
    let first = cache.get_or_compute("cancel:store-fails", &policy, || async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _: () = redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(600)
            .arg("WRITE")
            .query(&mut admin)
            .expect("CLIENT PAUSE");
        Plain(String::from("first"))
    });
    let Plain(first) = first.await;
    assert_eq!(first, "first", "the caller still gets its value");
    assert!(cache.stats().function("cancel:store-fails").backend_errors >= 1);
    // Past the pause: the server takes writes again.
    tokio::time::sleep(Duration::from_millis(700)).await;

    let next = cache.get_or_compute("cancel:store-fails", &policy, || async { Plain(String::from("next")) });
    let Plain(next) = tokio::time::timeout(HANDOVER_BOUND, next)
        .await
        .expect("the failed store's lease was freed: nobody waits it out");
    let stats = cache.stats().function("cancel:store-fails");
    assert_eq!(stats.lock_timeouts, 0, "{stats:?}");
    assert_eq!(next, "next", "the next caller took the freed lease and computed");
    assert!(cache.exists("cancel:store-fails").await.expect("exists"), "and stored");
}

/// A caller waiting for another's computation when Redis stalls does not keep
/// polling until `wait`: it fails open and computes at once.
async fn a_waiter_fails_open_at_once_when_redis_stalls(fx: Fixture) {
    let support::Server::Single(server) = &fx.server else {
        panic!("single node only")
    };
    let holder_cache = fx.cache().await;
    let cache = fx.cache().await;
    let policy = policy("cancel:stall");
    let (computing, mut holding) = mpsc::unbounded_channel();
    let holder = {
        let policy = policy.clone();
        tokio::spawn(async move {
            holder_cache
                .get_or_compute("cancel:stall", &policy, || async move {
                    let _ = computing.send(());
                    std::future::pending::<Plain<String>>().await
                })
                .await
        })
    };
    holding.recv().await.expect("the holder computes");
    let waiter = {
        let (cache, policy) = (cache.clone(), policy.clone());
        tokio::spawn(async move {
            let Plain(value) = cache
                .get_or_compute("cancel:stall", &policy, || async { Plain(String::from("own")) })
                .await;
            value
        })
    };
    aside_testkit::until("the waiter waits", || {
        cache.stats().function("cancel:stall").lock_waits == 1
    })
    .await;
    server.freeze();
    let value = tokio::time::timeout(HANDOVER_BOUND, waiter).await;
    server.thaw();
    holder.abort();
    assert_eq!(
        value
            .expect("failed open, not left to wait out `wait`")
            .expect("waiter task"),
        "own"
    );
    let stats = cache.stats().function("cancel:stall");
    assert_eq!((stats.lock_timeouts, stats.computations), (0, 1), "{stats:?}");
    assert!(stats.backend_errors >= 1, "{stats:?}");
}
