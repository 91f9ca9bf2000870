//! An HTTP service on aside: a cached read, a write that invalidates it, a health
//! check, Prometheus metrics and sessions.
//!
//! ```text
//! cargo run --example server                                            # memory, port 3000
//! REDIS_URL=redis://127.0.0.1:6379 PORT=8080 cargo run --example server  # shared through Redis
//!
//! curl -i 'localhost:3000/api/revenue?month=11'     # X-Cache: MISS, then HIT (Age: seconds stored)
//! curl -i localhost:3000/api/orders -H 'content-type: application/json' \
//!      -d '{"region":"eu","month":11,"amount":1250}'  # stores the order, invalidates tag `orders`
//! curl -i 'localhost:3000/api/revenue?month=11'     # MISS: recomputed with the new order
//! curl -i localhost:3000/health                      # {"redis":"ok","latency_ms":0.2}, or 503
//! curl localhost:3000/metrics                        # aside_cache_hits_total{function="http:revenue"} ...
//! curl -i -c jar localhost:3000/api/login -H 'content-type: application/json' -d '{"user":42}'
//! curl -b jar localhost:3000/api/me                  # {"user":42,"visits":1}
//! curl -b jar -X POST localhost:3000/api/logout-everywhere   # ends every session of user 42
//! ```
//!
//! | route | cache |
//! | --- | --- |
//! | `GET /api/revenue?month=N` | response cached 5 min under `aside:http:revenue:…`, tagged `orders` |
//! | `POST /api/orders` | writes, then `invalidate_tag("orders")`: every cached revenue goes |
//! | `GET /health` | `Cache::ping` and the circuit breaker: 200, or 503 when Redis is down |
//! | `GET /metrics` | the Prometheus text of every counter (`aside::metrics`) |
//! | `POST /api/login`, `GET /api/me`, `POST /api/logout-everywhere` | sessions in the cache (`aside::session`) |

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aside::http::CacheLayer;
use aside::session::SessionStore;
use aside::{BackendKind, BreakerState, Cache};
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tower_sessions::{Expiry, Session, SessionManagerLayer};

/// The tag of everything computed from the orders.
const ORDERS: &str = "orders";

/// One order, as posted to `/api/orders`.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Order {
    pub region: String,
    pub month: u32,
    pub amount: i64,
}

/// The revenue of one month, as `/api/revenue` answers it.
#[derive(Debug, Deserialize, Serialize)]
pub struct Revenue {
    pub month: u32,
    pub orders: usize,
    pub total: i64,
}

/// What the handlers share: the cache, the orders (an in-memory table standing
/// in for a database) and the metrics handle.
#[derive(Clone)]
struct AppState {
    cache: Cache,
    orders: Arc<Mutex<Vec<Order>>>,
    metrics: PrometheusHandle,
    sessions: SessionStore,
}

/// Errors of the handlers, as HTTP answers.
#[derive(Debug)]
enum AppError {
    BadRequest(&'static str),
    Unauthorized,
    Session(tower_sessions::session::Error),
    Cache(aside::Error),
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            AppError::BadRequest(why) => (StatusCode::UNPROCESSABLE_ENTITY, why.to_owned()),
            AppError::Unauthorized => (StatusCode::UNAUTHORIZED, "log in first".to_owned()),
            AppError::Session(error) => {
                tracing::error!(%error, "session store failed");
                (StatusCode::SERVICE_UNAVAILABLE, "sessions are unavailable".to_owned())
            }
            AppError::Cache(error) => {
                tracing::error!(%error, "cache failed");
                (StatusCode::SERVICE_UNAVAILABLE, "the cache is unavailable".to_owned())
            }
        };
        (status, Json(json!({ "error": message }))).into_response()
    }
}

impl From<tower_sessions::session::Error> for AppError {
    fn from(error: tower_sessions::session::Error) -> AppError {
        AppError::Session(error)
    }
}

/// The port to listen on: `PORT`, else 3000.
pub fn port(value: Option<&str>) -> Result<u16, String> {
    match value {
        None => Ok(3000),
        Some(text) => text
            .trim()
            .parse()
            .map_err(|_| format!("PORT={text:?} is not a port number")),
    }
}

/// Installs the Prometheus recorder as the process's `metrics` recorder, and runs
/// its upkeep (summaries of the computation times) every five seconds.
///
/// # Errors
///
/// When a recorder is already installed.
pub fn install_metrics() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    let handle = PrometheusBuilder::new().install_recorder()?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// The application: its routes, the response cache on `/api/revenue`, sessions.
pub fn app(cache: Cache, metrics: PrometheusHandle) -> Router {
    let sessions = SessionStore::new(cache.clone());
    let state = AppState {
        cache: cache.clone(),
        orders: Arc::new(Mutex::new(seed_orders())),
        metrics,
        sessions: sessions.clone(),
    };
    // Revenue is the same for every user: cached despite the session cookie.
    let revenue_cache = CacheLayer::new(cache)
        .name("revenue")
        .ttl(Duration::from_secs(300))
        .tags([ORDERS])
        .allow_cookies();
    Router::new()
        .route("/api/revenue", get(revenue).layer(revenue_cache))
        .route("/api/orders", post(add_order))
        .route("/api/login", post(login))
        .route("/api/me", get(me))
        .route("/api/logout-everywhere", post(logout_everywhere))
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .with_state(state)
        .layer(
            SessionManagerLayer::new(sessions)
                .with_secure(false)
                .with_expiry(Expiry::OnInactivity(time::Duration::hours(24))),
        )
}

/// Serves the application on `listener` until the process is interrupted.
///
/// # Errors
///
/// When accepting connections fails.
pub async fn serve(listener: tokio::net::TcpListener, cache: Cache, metrics: PrometheusHandle) -> std::io::Result<()> {
    axum::serve(listener, app(cache, metrics))
        .with_graceful_shutdown(async {
            if let Err(error) = tokio::signal::ctrl_c().await {
                tracing::error!(%error, "cannot listen for ctrl-c; serving until killed");
                std::future::pending::<()>().await;
            }
        })
        .await
}

fn seed_orders() -> Vec<Order> {
    [("eu", 11, 125_000), ("us", 11, 98_000), ("eu", 12, 143_000)]
        .into_iter()
        .map(|(region, month, amount)| Order {
            region: region.to_owned(),
            month,
            amount,
        })
        .collect()
}

#[derive(Deserialize)]
struct Month {
    month: u32,
}

/// The slow aggregation the response cache saves: runs only on a miss.
async fn revenue(State(state): State<AppState>, Query(Month { month }): Query<Month>) -> Json<Revenue> {
    tokio::time::sleep(Duration::from_millis(50)).await; // a real query takes a while
    let orders = state.orders.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let of_month: Vec<&Order> = orders.iter().filter(|order| order.month == month).collect();
    Json(Revenue {
        month,
        orders: of_month.len(),
        total: of_month.iter().map(|order| order.amount).sum(),
    })
}

/// Stores an order, then drops every cached answer computed from the orders.
async fn add_order(State(state): State<AppState>, Json(order): Json<Order>) -> Result<Response, AppError> {
    if !(1..=12).contains(&order.month) {
        return Err(AppError::BadRequest("month must be 1 to 12"));
    }
    state
        .orders
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push(order);
    // After the write, never before: a read between the two would cache the old data.
    let invalidated = state.cache.invalidate_tag(ORDERS).await.map_err(AppError::Cache)?;
    Ok((StatusCode::CREATED, Json(json!({ "invalidated": invalidated }))).into_response())
}

/// 200 with Redis's latency when it answers; 503 when it does not or the circuit
/// breaker is not closed. Without Redis (memory backend) the service is healthy.
async fn health(State(state): State<AppState>) -> Response {
    match state.cache.settings().backend() {
        BackendKind::Redis(_) => {}
        _ => return Json(json!({ "redis": "not configured", "backend": "memory" })).into_response(),
    }
    let breaker = state.cache.stats().breaker;
    match state.cache.ping().await {
        Ok(latency) if breaker == BreakerState::Closed => {
            let latency_ms = (latency.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0;
            Json(json!({ "redis": "ok", "latency_ms": latency_ms })).into_response()
        }
        outcome => {
            let error = outcome.err().map(|error| error.to_string());
            let body = json!({ "redis": "degraded", "breaker": format!("{breaker:?}"), "error": error });
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}

/// The Prometheus text exposition of every metric.
async fn metrics_text(State(state): State<AppState>) -> Response {
    aside::metrics::sample(&state.cache);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

#[derive(Deserialize)]
struct Login {
    user: u64,
}

/// Logs `user` in: a new session id (against fixation) holding the user id under
/// `user_id`, which indexes the session by user.
async fn login(session: Session, Json(Login { user }): Json<Login>) -> Result<Json<serde_json::Value>, AppError> {
    session.cycle_id().await?;
    session.insert(aside::session::USER_ID_KEY, user).await?;
    Ok(Json(json!({ "user": user })))
}

/// Who is logged in, and how many times this session asked.
async fn me(session: Session) -> Result<Json<serde_json::Value>, AppError> {
    let user: Option<u64> = session.get(aside::session::USER_ID_KEY).await?;
    let visits = session.get::<u64>("visits").await?.unwrap_or(0) + 1;
    session.insert("visits", visits).await?;
    Ok(Json(json!({ "user": user, "visits": visits })))
}

/// Ends every session of the logged-in user, on every device.
async fn logout_everywhere(
    State(state): State<AppState>,
    session: Session,
) -> Result<Json<serde_json::Value>, AppError> {
    let user: u64 = session
        .get(aside::session::USER_ID_KEY)
        .await?
        .ok_or(AppError::Unauthorized)?;
    let ended = state
        .sessions
        .delete_user_sessions(&user)
        .await
        .map_err(AppError::Cache)?;
    Ok(Json(json!({ "user": user, "ended": ended })))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();

    let port = port(std::env::var("PORT").ok().as_deref())?;
    // REDIS_URL, or the in-process memory backend without it; a bad URL fails here.
    let cache = Cache::from_env().await?;
    let metrics = install_metrics()?;
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))).await?;
    println!("listening on http://{}", listener.local_addr()?);
    serve(listener, cache, metrics).await?;
    Ok(())
}
