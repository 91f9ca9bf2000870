//! The HTTP response cache: a real axum router with `aside::http::CacheLayer` on
//! its routes, on the memory backend and on a real `redis-server`.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aside::http::CacheLayer;
use aside::Cache;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use http_body_util::BodyExt as _;
use serde::Deserialize;
use support::Fixture;
use tower::ServiceExt as _;

/// A router whose handlers count their runs; `/revenue` is cached and tagged `orders`.
#[derive(Clone)]
struct App {
    cache: Cache,
    runs: Arc<AtomicUsize>,
    revenue: Arc<std::sync::Mutex<i64>>,
}

#[derive(Deserialize)]
struct Month {
    month: u32,
}

impl App {
    async fn new(fixture: &Fixture) -> App {
        App {
            cache: fixture.cache().await,
            runs: Arc::default(),
            revenue: Arc::new(std::sync::Mutex::new(100)),
        }
    }

    fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }

    fn router(&self) -> Router {
        let layer = |name: &'static str| {
            CacheLayer::new(self.cache.clone())
                .name(name)
                .ttl(Duration::from_secs(60))
                .tags(["orders"])
        };
        Router::new()
            .route("/revenue", get(revenue).post(add_order).layer(layer("revenue")))
            .route("/echo", get(echo).layer(layer("echo")))
            .route("/status/{code}", get(status).layer(layer("status")))
            .route("/no-store", get(no_store).layer(layer("no-store")))
            .route("/private", get(private).layer(layer("private")))
            .route("/cookie", get(cookie).layer(layer("cookie")))
            .route(
                "/language",
                get(language).layer(layer("language").vary(header::ACCEPT_LANGUAGE)),
            )
            .route("/slow", get(slow).layer(layer("slow")))
            .with_state(self.clone())
    }

    async fn get(&self, uri: &str) -> Reply {
        self.send(Request::get(uri).body(Body::empty()).unwrap()).await
    }

    async fn send(&self, request: Request<Body>) -> Reply {
        let response = self.router().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            headers,
            body: String::from_utf8(body.to_vec()).unwrap(),
        }
    }
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    fn x_cache(&self) -> &str {
        self.headers.get("x-cache").map_or("none", |v| v.to_str().unwrap())
    }

    fn age(&self) -> Option<u64> {
        self.headers.get("age").map(|v| v.to_str().unwrap().parse().unwrap())
    }
}

async fn revenue(State(app): State<App>, Query(Month { month }): Query<Month>) -> impl IntoResponse {
    app.runs.fetch_add(1, Ordering::SeqCst);
    let cents = *app.revenue.lock().unwrap();
    (
        [(header::CONTENT_TYPE, "application/json"), (header::ETAG, "\"r1\"")],
        format!(r#"{{"month":{month},"cents":{cents}}}"#),
    )
}

async fn add_order(State(app): State<App>) -> StatusCode {
    *app.revenue.lock().unwrap() += 50;
    app.cache.invalidate_tag("orders").await.unwrap();
    StatusCode::CREATED
}

async fn echo(State(app): State<App>, uri: axum::http::Uri) -> String {
    app.runs.fetch_add(1, Ordering::SeqCst);
    format!("{} #{}", uri.query().unwrap_or(""), app.runs())
}

async fn status(State(app): State<App>, axum::extract::Path(code): axum::extract::Path<u16>) -> StatusCode {
    app.runs.fetch_add(1, Ordering::SeqCst);
    StatusCode::from_u16(code).unwrap()
}

async fn no_store(State(app): State<App>) -> Response {
    app.runs.fetch_add(1, Ordering::SeqCst);
    ([(header::CACHE_CONTROL, "no-store")], "secret").into_response()
}

async fn private(State(app): State<App>) -> Response {
    app.runs.fetch_add(1, Ordering::SeqCst);
    ([(header::CACHE_CONTROL, "private, max-age=60")], "mine").into_response()
}

async fn cookie(State(app): State<App>) -> Response {
    app.runs.fetch_add(1, Ordering::SeqCst);
    ([(header::SET_COOKIE, "id=1")], "hello").into_response()
}

async fn language(State(app): State<App>, headers: HeaderMap) -> Response {
    app.runs.fetch_add(1, Ordering::SeqCst);
    let language = headers
        .get(header::ACCEPT_LANGUAGE)
        .map_or("en", |v| v.to_str().unwrap())
        .to_owned();
    ([(header::VARY, "Accept-Language")], language).into_response()
}

async fn slow(State(app): State<App>) -> String {
    app.runs.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(200)).await;
    "slow".to_owned()
}

async fn miss_then_hit_with_age(fixture: Fixture) {
    let app = App::new(&fixture).await;
    let first = app.get("/revenue?month=11").await;
    assert_eq!(
        (first.status, first.x_cache(), first.age()),
        (StatusCode::OK, "MISS", Some(0))
    );
    assert_eq!(first.body, r#"{"month":11,"cents":100}"#);

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = app.get("/revenue?month=11").await;
    assert_eq!((second.status, second.x_cache()), (StatusCode::OK, "HIT"));
    assert!(second.age().unwrap() >= 1, "Age counts from the store");
    assert_eq!(second.body, first.body);
    assert_eq!(second.headers["content-type"], "application/json");
    assert_eq!(second.headers["etag"], "\"r1\"");
    assert_eq!(app.runs(), 1, "the hit ran no handler");

    let stats = app.cache.stats().function("http:revenue");
    assert_eq!((stats.hits, stats.misses, stats.computations), (1, 1, 1));

    // The entry sits under the runtime's key layout, with the route's TTL.
    let keys: Vec<String> = fixture
        .all_keys()
        .into_iter()
        .filter(|k| k.starts_with("aside:http:"))
        .collect();
    if !fixture.is_memory() {
        assert_eq!(keys.len(), 1, "{keys:?}");
        assert!(keys[0].starts_with("aside:http:revenue:v1.1:"), "{keys:?}");
        let pttl = fixture.pttl(&keys[0]).unwrap();
        assert!(pttl > 0 && pttl <= 60_000, "PTTL {pttl}");
    }
}

async fn query_order_does_not_matter(fixture: Fixture) {
    let app = App::new(&fixture).await;
    assert_eq!(app.get("/echo?a=1&b=2").await.x_cache(), "MISS");
    let swapped = app.get("/echo?b=2&a=1").await;
    assert_eq!(swapped.x_cache(), "HIT");
    assert_eq!(swapped.body, "a=1&b=2 #1", "the stored response, not a new one");
    assert_eq!(
        app.get("/echo?b=2&a=%31").await.x_cache(),
        "HIT",
        "percent-encoding decoded"
    );
    assert_eq!(app.get("/echo?a=1&b=3").await.x_cache(), "MISS", "another value");
    assert_eq!(app.get("/echo?a=1&a=2").await.x_cache(), "MISS");
    assert_eq!(
        app.get("/echo?a=2&a=1").await.x_cache(),
        "MISS",
        "repeated names keep their order"
    );
    assert_eq!(app.get("/echo").await.x_cache(), "MISS", "another path");
    assert_eq!(app.runs(), 5);
}

async fn only_successes_are_stored(fixture: Fixture) {
    let app = App::new(&fixture).await;
    for code in [404, 500, 503] {
        for _ in 0..2 {
            let reply = app.get(&format!("/status/{code}")).await;
            assert_eq!((reply.status.as_u16(), reply.x_cache()), (code, "MISS"));
        }
    }
    assert_eq!(app.runs(), 6, "every error response ran the handler");
    assert_eq!(app.get("/status/204").await.x_cache(), "MISS");
    assert_eq!(app.get("/status/204").await.x_cache(), "HIT");
    assert_eq!(app.runs(), 7);
}

async fn handler_cache_control_is_respected(fixture: Fixture) {
    let app = App::new(&fixture).await;
    for uri in ["/no-store", "/private", "/cookie"] {
        for _ in 0..2 {
            let reply = app.get(uri).await;
            assert_eq!((reply.status, reply.x_cache()), (StatusCode::OK, "MISS"), "{uri}");
        }
    }
    assert_eq!(app.runs(), 6, "nothing was stored");
    assert!(fixture.all_keys().iter().all(|k| !k.starts_with("aside:http:")));
    let cookie = app.get("/cookie").await;
    assert_eq!(cookie.headers["set-cookie"], "id=1", "passed through untouched");
}

async fn writes_invalidate_by_tag(fixture: Fixture) {
    let app = App::new(&fixture).await;
    assert_eq!(app.get("/revenue?month=11").await.x_cache(), "MISS");
    assert_eq!(app.get("/revenue?month=12").await.x_cache(), "MISS");
    assert_eq!(app.get("/revenue?month=11").await.x_cache(), "HIT");

    let post = app.send(Request::post("/revenue").body(Body::empty()).unwrap()).await;
    assert_eq!(
        (post.status, post.x_cache()),
        (StatusCode::CREATED, "none"),
        "writes pass through"
    );

    let after = app.get("/revenue?month=11").await;
    assert_eq!(after.x_cache(), "MISS");
    assert_eq!(after.body, r#"{"month":11,"cents":150}"#, "the order is reflected");
    assert_eq!(app.get("/revenue?month=12").await.x_cache(), "MISS");
    assert_eq!(app.get("/revenue?month=11").await.x_cache(), "HIT");
    assert_eq!(app.cache.stats().total.invalidations, 2);
}

async fn requests_with_credentials_bypass(fixture: Fixture) {
    let app = App::new(&fixture).await;
    for _ in 0..2 {
        let request = Request::get("/echo?x=1")
            .header(header::AUTHORIZATION, "Bearer t")
            .body(Body::empty())
            .unwrap();
        assert_eq!(app.send(request).await.x_cache(), "none");
    }
    assert_eq!(app.runs(), 2);
}

async fn chosen_headers_are_in_the_key(fixture: Fixture) {
    let app = App::new(&fixture).await;
    let ask = |language: &'static str| {
        Request::get("/language")
            .header(header::ACCEPT_LANGUAGE, language)
            .body(Body::empty())
            .unwrap()
    };
    assert_eq!(app.send(ask("de")).await.x_cache(), "MISS");
    assert_eq!(app.send(ask("fr")).await.x_cache(), "MISS");
    let de = app.send(ask("de")).await;
    assert_eq!((de.x_cache(), de.body.as_str()), ("HIT", "de"));
    assert_eq!(app.runs(), 2);
}

async fn concurrent_requests_run_the_handler_once(fixture: Fixture) {
    let app = App::new(&fixture).await;
    let replies = futures_util::future::join_all((0..20).map(|_| app.get("/slow"))).await;
    assert!(replies.iter().all(|r| r.status == StatusCode::OK && r.body == "slow"));
    assert_eq!(app.runs(), 1, "one computation for 20 concurrent requests");
    let misses = replies.iter().filter(|r| r.x_cache() == "MISS").count();
    assert_eq!(misses, 1, "the one that ran the handler");
}

on_backends!([memory, redis, cluster]
    miss_then_hit_with_age,
    writes_invalidate_by_tag,
);

on_backends!([memory, redis]
    query_order_does_not_matter,
    only_successes_are_stored,
    handler_cache_control_is_respected,
    requests_with_credentials_bypass,
    chosen_headers_are_in_the_key,
    concurrent_requests_run_the_handler_once,
);
