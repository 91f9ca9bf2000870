//! End to end: the `server` example's application, served on a loopback port
//! against a real `redis-server`, driven over HTTP by a real client.
//!
//! The example's source is compiled into this test (`#[path]`), so the test runs
//! exactly the routes, layers and handlers of `examples/server.rs` without
//! depending on a binary that `cargo test --examples` builds as a test harness
//! rather than as the program.

#[path = "../examples/server.rs"]
#[allow(dead_code)]
mod server;

use std::time::{Duration, Instant};

use aside::Cache;
use aside_testkit::RedisServer;
use reqwest::header::{HeaderMap, COOKIE, SET_COOKIE};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

struct Http {
    client: Client,
    base: String,
}

impl Http {
    async fn get(&self, path: &str) -> (StatusCode, HeaderMap, String) {
        let response = self.client.get(format!("{}{path}", self.base)).send().await.unwrap();
        let (status, headers) = (response.status(), response.headers().clone());
        (status, headers, response.text().await.unwrap())
    }

    async fn post(&self, path: &str, body: Value, cookie: Option<&str>) -> (StatusCode, HeaderMap, Value) {
        let mut request = self.client.post(format!("{}{path}", self.base)).json(&body);
        if let Some(cookie) = cookie {
            request = request.header(COOKIE, cookie);
        }
        let response = request.send().await.unwrap();
        let (status, headers) = (response.status(), response.headers().clone());
        (status, headers, response.json().await.unwrap())
    }

    async fn revenue(&self, month: u32) -> (String, Value) {
        let (status, headers, body) = self.get(&format!("/api/revenue?month={month}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let x_cache = headers["x-cache"].to_str().unwrap().to_owned();
        assert!(headers.contains_key("age"));
        (x_cache, serde_json::from_str(&body).unwrap())
    }

    async fn health(&self) -> (StatusCode, Value) {
        let (status, _, body) = self.get("/health").await;
        (status, serde_json::from_str(&body).unwrap())
    }
}

/// The value of a Prometheus sample line `name{labels} value`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn port_defaults_to_3000() {
    assert_eq!(server::port(None), Ok(3000));
    assert_eq!(server::port(Some("8080")), Ok(8080));
    assert!(server::port(Some("eighty")).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revenue_orders_health_metrics_and_sessions() {
    let mut redis = RedisServer::start();
    let cache = Cache::builder().redis_url(&redis.url()).build().await.unwrap();
    let metrics = server::install_metrics().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(server::serve(listener, cache, metrics));
    let http = Http {
        client: Client::builder().timeout(Duration::from_secs(10)).build().unwrap(),
        base,
    };

    // A cached read: computed once, then served from Redis.
    let (first, before) = http.revenue(11).await;
    assert_eq!(first, "MISS");
    assert_eq!(before, json!({ "month": 11, "orders": 2, "total": 223_000 }));
    let (second, again) = http.revenue(11).await;
    assert_eq!((second.as_str(), &again), ("HIT", &before));
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("aside:http:revenue:*")
        .query(&mut redis.connection())
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");

    // A write invalidates the tag; the next read reflects it.
    let order = json!({ "region": "eu", "month": 11, "amount": 1250 });
    let (status, _, body) = http.post("/api/orders", order, None).await;
    assert_eq!((status, &body), (StatusCode::CREATED, &json!({ "invalidated": 1 })));
    let (third, after) = http.revenue(11).await;
    assert_eq!(third, "MISS");
    assert_eq!(after, json!({ "month": 11, "orders": 3, "total": 224_250 }));
    assert_eq!(http.revenue(11).await.0, "HIT");
    let (status, _, _) = http
        .post("/api/orders", json!({ "region": "eu", "month": 13, "amount": 1 }), None)
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    // Sessions live in Redis; logging out everywhere ends them.
    let (status, headers, _) = http.post("/api/login", json!({ "user": 42 }), None).await;
    assert_eq!(status, StatusCode::OK);
    let cookie = headers[SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let session_keys: Vec<String> = redis::cmd("KEYS")
        .arg("aside:session:*")
        .query(&mut redis.connection())
        .unwrap();
    assert_eq!(session_keys.len(), 1, "{session_keys:?}");
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&session_keys[0])
        .query(&mut redis.connection())
        .unwrap();
    assert!(pttl > 86_000_000 && pttl <= 86_400_000, "24 h: {pttl}");
    let (_, _, ended) = http.post("/api/logout-everywhere", json!({}), Some(&cookie)).await;
    assert_eq!(ended, json!({ "user": 42, "ended": 1 }));

    // Health: Redis answers.
    let (status, health) = http.health().await;
    assert_eq!(status, StatusCode::OK, "{health}");
    assert_eq!(health["redis"], "ok");
    assert!(health["latency_ms"].as_f64().unwrap() >= 0.0);

    // Metrics: the hits and misses of the cached route, in Prometheus text.
    let (status, headers, text) = http.get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"].to_str().unwrap().starts_with("text/plain"));
    assert_eq!(
        sample(&text, r#"aside_cache_hits_total{function="http:revenue"}"#),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"aside_cache_misses_total{function="http:revenue"}"#),
        Some(2.0),
        "{text}"
    );
    assert_eq!(sample(&text, "aside_cache_breaker_state"), Some(0.0), "{text}");

    // Redis goes away: health turns 503, and reads still answer (fail-open).
    redis.stop();
    let deadline = Instant::now() + Duration::from_secs(10);
    let (status, health) = loop {
        let (status, health) = http.health().await;
        if status == StatusCode::SERVICE_UNAVAILABLE || Instant::now() > deadline {
            break (status, health);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{health}");
    assert_eq!(health["redis"], "degraded");
    let (down, value) = http.revenue(11).await;
    assert_eq!((down.as_str(), &value), ("MISS", &after), "computed without the cache");
}
