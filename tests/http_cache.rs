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
use axum::http::{header, HeaderMap, HeaderName, Request, StatusCode};
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
            .route("/me", get(me).layer(layer("me")))
            .route("/me-varied", get(me).layer(layer("me-varied").vary(header::COOKIE)))
            .route("/news", get(echo).layer(layer("news").allow_cookies()))
            .route(
                "/keyed",
                get(echo).layer(layer("keyed").identifying(HeaderName::from_static("x-api-key"))),
            )
            .route("/site", get(site).layer(layer("site")))
            .route(
                "/catalogue/{category}",
                get(echo).layer(layer("catalogue").tags_from(|request| {
                    let category = request.uri.path().trim_start_matches("/catalogue/");
                    let raw = percent_decode(category);
                    vec![aside::tag!("category:{}", raw).unwrap(), format!("raw:{raw}")]
                })),
            )
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

/// The page of the user whose session cookie came with the request.
async fn me(State(app): State<App>, headers: HeaderMap) -> String {
    app.runs.fetch_add(1, Ordering::SeqCst);
    let cookie = headers.get(header::COOKIE).map_or("", |v| v.to_str().unwrap());
    let user = cookie.strip_prefix("session=").unwrap_or("nobody");
    format!("the page of {user}")
}

/// The host the request was for.
async fn site(State(app): State<App>, headers: HeaderMap) -> String {
    app.runs.fetch_add(1, Ordering::SeqCst);
    format!(
        "site {}",
        headers.get(header::HOST).map_or("?", |v| v.to_str().unwrap())
    )
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

/// The path segment as sent, braces decoded.
fn percent_decode(text: &str) -> String {
    text.replace("%7B", "{").replace("%7D", "}")
}

/// A tag from the request with a brace: the route answers uncached, on one node
/// as on a cluster; values escaped with `aside::tag!` are fine.
async fn braced_tags_from_requests_pass_uncached(fixture: Fixture) {
    let app = App::new(&fixture).await;
    for _ in 0..2 {
        assert_eq!(app.get("/catalogue/%7Bbooks%7D").await.x_cache(), "MISS");
    }
    assert_eq!(app.runs(), 2, "not stored");
    assert_eq!(app.get("/catalogue/books").await.x_cache(), "MISS");
    assert_eq!(app.get("/catalogue/books").await.x_cache(), "HIT");
    let tag = aside::tag!("category:{}", "books").unwrap();
    assert_eq!(app.cache.invalidate_tag(&tag).await.unwrap(), 1);
    assert_eq!(app.runs(), 3);
}

fn with_header(uri: &str, name: HeaderName, value: &str) -> Request<Body> {
    Request::get(uri).header(name, value).body(Body::empty()).unwrap()
}

async fn session_cookies_get_their_own_pages(fixture: Fixture) {
    let app = App::new(&fixture).await;
    // The route did not opt in: requests with a cookie pass through, uncached.
    for _ in 0..2 {
        for user in ["ada", "bob"] {
            let reply = app
                .send(with_header("/me", header::COOKIE, &format!("session={user}")))
                .await;
            assert_eq!(reply.body, format!("the page of {user}"));
            assert_eq!(reply.x_cache(), "none", "passed through");
        }
    }
    assert_eq!(app.runs(), 4);
    assert!(fixture.all_keys().iter().all(|k| !k.starts_with("aside:http:")));
    // Without a cookie the route is cached as before.
    assert_eq!(app.get("/me").await.x_cache(), "MISS");
    assert_eq!(app.get("/me").await.body, "the page of nobody");
    assert_eq!(app.runs(), 5);
}

async fn routes_varying_on_cookies_keep_a_page_per_session(fixture: Fixture) {
    let app = App::new(&fixture).await;
    for (round, x_cache) in [(0, "MISS"), (1, "HIT")] {
        for user in ["ada", "bob"] {
            let reply = app
                .send(with_header("/me-varied", header::COOKIE, &format!("session={user}")))
                .await;
            assert_eq!(
                (reply.body.as_str(), reply.x_cache()),
                (format!("the page of {user}").as_str(), x_cache),
                "round {round}"
            );
        }
    }
    assert_eq!(app.runs(), 2, "one page per session");
}

async fn routes_allowing_cookies_share_one_page(fixture: Fixture) {
    let app = App::new(&fixture).await;
    let ada = app.send(with_header("/news", header::COOKIE, "session=ada")).await;
    let bob = app.send(with_header("/news", header::COOKIE, "session=bob")).await;
    assert_eq!((ada.x_cache(), bob.x_cache()), ("MISS", "HIT"));
    assert_eq!(ada.body, bob.body);
    assert_eq!(app.runs(), 1);
}

async fn identifying_headers_pass_through(fixture: Fixture) {
    let app = App::new(&fixture).await;
    for key in ["k1", "k2"] {
        let reply = app
            .send(with_header("/keyed", HeaderName::from_static("x-api-key"), key))
            .await;
        assert_eq!(reply.x_cache(), "none");
    }
    assert_eq!(app.get("/keyed").await.x_cache(), "MISS");
    assert_eq!(app.get("/keyed").await.x_cache(), "HIT");
    assert_eq!(app.runs(), 3);
}

async fn hosts_get_their_own_pages(fixture: Fixture) {
    let app = App::new(&fixture).await;
    let a = app.send(with_header("/site", header::HOST, "a.example")).await;
    let b = app.send(with_header("/site", header::HOST, "b.example")).await;
    assert_eq!((a.x_cache(), a.body.as_str()), ("MISS", "site a.example"));
    assert_eq!((b.x_cache(), b.body.as_str()), ("MISS", "site b.example"));
    let again = app.send(with_header("/site", header::HOST, "A.Example")).await;
    assert_eq!(
        (again.x_cache(), again.body.as_str()),
        ("HIT", "site a.example"),
        "host names are case-insensitive"
    );
    let absolute = app
        .send(Request::get("http://b.example/site").body(Body::empty()).unwrap())
        .await;
    assert_eq!((absolute.x_cache(), absolute.body.as_str()), ("HIT", "site b.example"));
    assert_eq!(app.runs(), 2);
}

async fn stored_etags_answer_if_none_match(fixture: Fixture) {
    let app = App::new(&fixture).await;
    // Cold, with a validator: the route runs for the cache, the entry is whole.
    let cold = app
        .send(with_header("/revenue?month=11", header::IF_NONE_MATCH, "\"r1\""))
        .await;
    assert_eq!((cold.status, cold.x_cache()), (StatusCode::NOT_MODIFIED, "MISS"));
    assert_eq!(
        (cold.body.as_str(), cold.headers["etag"].to_str().unwrap()),
        ("", "\"r1\"")
    );
    let full = app.get("/revenue?month=11").await;
    assert_eq!((full.status, full.x_cache()), (StatusCode::OK, "HIT"));
    assert_eq!(full.body, r#"{"month":11,"cents":100}"#);
    for (validator, status) in [
        ("\"r1\"", StatusCode::NOT_MODIFIED),
        ("W/\"r1\"", StatusCode::NOT_MODIFIED),
        ("\"r0\", \"r1\"", StatusCode::NOT_MODIFIED),
        ("*", StatusCode::NOT_MODIFIED),
        ("\"r2\"", StatusCode::OK),
    ] {
        let reply = app
            .send(with_header("/revenue?month=11", header::IF_NONE_MATCH, validator))
            .await;
        assert_eq!((reply.status, reply.x_cache()), (status, "HIT"), "{validator}");
        assert_eq!(reply.body.is_empty(), status == StatusCode::NOT_MODIFIED, "{validator}");
    }
    assert_eq!(app.runs(), 1);

    // A route without an ETag gets a strong one of its body.
    let first = app.get("/echo?x=1").await;
    let etag = first.headers["etag"].to_str().unwrap().to_owned();
    assert!(
        etag.starts_with('"') && etag.ends_with('"') && etag.len() > 10,
        "{etag}"
    );
    let unchanged = app.send(with_header("/echo?x=1", header::IF_NONE_MATCH, &etag)).await;
    assert_eq!(unchanged.status, StatusCode::NOT_MODIFIED);
    assert_eq!(unchanged.headers["etag"], etag.as_str());
    // Its body changes after an invalidation, and so does its ETag.
    app.cache.invalidate_tag("orders").await.unwrap();
    let changed = app.send(with_header("/echo?x=1", header::IF_NONE_MATCH, &etag)).await;
    assert_eq!((changed.status, changed.x_cache()), (StatusCode::OK, "MISS"));
    assert_ne!(changed.body, first.body);
    assert_ne!(changed.headers["etag"], etag.as_str());
}

on_backends!([memory, redis, cluster]
    miss_then_hit_with_age,
    session_cookies_get_their_own_pages,
    hosts_get_their_own_pages,
    braced_tags_from_requests_pass_uncached,
    writes_invalidate_by_tag,
);

on_backends!([memory, redis]
    query_order_does_not_matter,
    only_successes_are_stored,
    handler_cache_control_is_respected,
    requests_with_credentials_bypass,
    chosen_headers_are_in_the_key,
    concurrent_requests_run_the_handler_once,
    routes_varying_on_cookies_keep_a_page_per_session,
    routes_allowing_cookies_share_one_page,
    identifying_headers_pass_through,
    stored_etags_answer_if_none_match,
);
