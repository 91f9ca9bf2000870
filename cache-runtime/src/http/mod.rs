//! An HTTP response cache for tower services — axum routes among them (feature
//! `tower`).
//!
//! [`CacheLayer`] wraps a route: a `GET` is answered from the cache when it holds
//! the response, and otherwise the route runs and its response is stored. It goes
//! through [`Cache::get_or_compute`], so everything the runtime guarantees holds
//! for responses too: one computation per cold key across processes (stampede
//! protection), tags and [`Cache::invalidate_tag`], the TTL ceiling, fail-open.
//!
//! - **Key**: `{namespace}:http:{name}:v{key_version}.{version}:{digest}`, the
//!   digest ([`Key::digest`]) of the method, the host (the URI's authority, else
//!   `Host`, lowercased), the path, the query string's pairs sorted by name (the
//!   order of repeated names kept) and the values of the headers chosen with
//!   [`CacheLayer::vary`]. `?b=2&a=1` and `?a=1&b=2` share an entry; `a.example`
//!   and `b.example` do not.
//! - **Passed through untouched** (safe by default): requests other than `GET`,
//!   `Range` requests, and requests carrying a header that identifies a user —
//!   `Authorization`, `Cookie`, and any named with [`CacheLayer::identifying`] —
//!   unless the route keys on it with [`CacheLayer::vary`] (one entry per value:
//!   per session, per credential) or, for `Cookie`, says with
//!   [`CacheLayer::allow_cookies`] that its answer is the same for everyone. A
//!   shared cache never hands one user's answer to another.
//! - **Stored**: only `2xx` responses (not `206`) without `Set-Cookie`, without
//!   `Cache-Control: no-store`, `private` or `no-cache`, and without a `Vary` on a
//!   header outside the key. The status, the headers (less hop-by-hop ones and
//!   `Content-Length`) and the body bytes are kept; bodies count against
//!   `CACHE_MAX_VALUE_SIZE` in base64 (a larger response is served, not stored).
//! - **Validators**: a stored response always has an `ETag` — the route's, or a
//!   strong one made from the body's 128-bit xxh3 when the route gave none. A
//!   request whose `If-None-Match` matches it (weak comparison, `*` included) gets
//!   `304 Not Modified` without a body. The route itself always sees the request
//!   without `If-None-Match` and `If-Modified-Since`: it answers for the cache, in full.
//! - **Headers**: every response of a cached route carries `X-Cache: HIT` (from the
//!   cache, including answers computed by a concurrent request), `X-Cache: STALE`
//!   (a stale response, within `stale`, while one request refreshes it) or
//!   `X-Cache: MISS` (the route ran for this request), from the call's
//!   [`CacheStatus`], and a stored response carries `Age` (whole
//!   seconds since it was stored; `0` on a miss). Responses passed through carry
//!   no `X-Cache`.
//! - **Statistics** are kept under the function `http:{name}`.
//!
//! ```
//! # async fn demo() -> aside::Result<()> {
//! use std::time::Duration;
//! use aside::{http::CacheLayer, Cache};
//!
//! let cache = Cache::builder().memory().build().await?;
//! // For axum: `.route("/api/revenue", get(revenue).layer(revenue_cache))`, and in the
//! // handler that writes orders: `cache.invalidate_tag("orders").await`.
//! let revenue_cache = CacheLayer::new(cache.clone())
//!     .name("revenue")
//!     .ttl(Duration::from_secs(60))
//!     .tags(["orders"])
//!     // The same figures for every signed-in user: cache despite their cookies.
//!     .allow_cookies();
//! # let _ = revenue_cache;
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
//! ```

mod stored;

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use ::http::header::{self, HeaderName, HeaderValue};
use ::http::{request, Method, Request, Response, StatusCode};
use bytes::Bytes;
use http_body::Body;
use http_body_util::{BodyExt as _, Either, Full};
use serde::Serialize;
use tower_layer::Layer;
use tower_service::Service;

use crate::cache::Cache;
use crate::key::Key;
use crate::policy::Policy;
use crate::status::CacheStatus;
use stored::Stored;

/// The header saying whether a response came from the cache.
pub const X_CACHE: &str = "x-cache";

/// The key prefix of cached responses.
pub const PREFIX: &str = "http";

/// The body of a response from a [`CacheService`]: the stored bytes, or the
/// route's own body when the response was not stored.
pub type CachedBody<B> = Either<Full<Bytes>, B>;

type TagsFn = dyn Fn(&request::Parts) -> Vec<String> + Send + Sync;

/// A tower [`Layer`] caching the responses of the routes it wraps; see the
/// [module documentation](self).
///
/// ```
/// # async fn demo() -> aside::Result<()> {
/// use std::time::Duration;
/// use aside::{http::CacheLayer, Cache};
/// use http::header::ACCEPT_LANGUAGE;
///
/// let cache = Cache::builder().memory().build().await?;
/// let layer = CacheLayer::new(cache)
///     .name("catalogue")
///     .ttl(Duration::from_secs(300))
///     .stale(Duration::from_secs(60))
///     .tags(["products"])
///     // One tag per category, from the request: `invalidate_tag("category:books")`.
///     .tags_from(|request| {
///         request.uri.path().strip_prefix("/catalogue/").map(|c| format!("category:{c}")).into_iter().collect()
///     })
///     .vary(ACCEPT_LANGUAGE);
/// # let _ = layer;
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
/// ```
#[derive(Clone)]
pub struct CacheLayer {
    cache: Cache,
    route: Arc<Route>,
}

#[derive(Clone)]
struct Route {
    name: Cow<'static, str>,
    version: u32,
    ttl: Duration,
    stale: Duration,
    tags: Vec<String>,
    tags_from: Option<Arc<TagsFn>>,
    vary: Vec<HeaderName>,
    identifying: Vec<HeaderName>,
    allow_cookies: bool,
}

impl fmt::Debug for CacheLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheLayer")
            .field("name", &self.route.name)
            .field("version", &self.route.version)
            .field("ttl", &self.route.ttl)
            .field("stale", &self.route.stale)
            .field("tags", &self.route.tags)
            .field("vary", &self.route.vary)
            .finish_non_exhaustive()
    }
}

impl CacheLayer {
    /// Caches responses in `cache` under the name `response` for 60 seconds,
    /// without tags.
    pub fn new(cache: Cache) -> CacheLayer {
        CacheLayer {
            cache,
            route: Arc::new(Route {
                name: Cow::Borrowed("response"),
                version: 1,
                ttl: Duration::from_secs(60),
                stale: Duration::ZERO,
                tags: Vec::new(),
                tags_from: None,
                vary: Vec::new(),
                identifying: vec![header::AUTHORIZATION, header::COOKIE],
                allow_cookies: false,
            }),
        }
    }

    fn with(mut self, change: impl FnOnce(&mut Route)) -> CacheLayer {
        change(Arc::make_mut(&mut self.route));
        self
    }

    /// The key segment naming the route (letters, digits, `-`, `_`, `.`), also its
    /// statistics name `http:{name}`. A name the runtime refuses (white space,
    /// braces, glob characters) makes every request compute without the cache,
    /// logged at `warn`.
    pub fn name(self, name: impl Into<Cow<'static, str>>) -> CacheLayer {
        self.with(|route| route.name = name.into())
    }

    /// The key version: bump it when the response's shape changes.
    pub fn version(self, version: u32) -> CacheLayer {
        self.with(|route| route.version = version)
    }

    /// How long a stored response is fresh; clamped to the cache's ceiling (24 h at most).
    pub fn ttl(self, ttl: Duration) -> CacheLayer {
        self.with(|route| route.ttl = ttl)
    }

    /// After the TTL, serve the old response for this long while one request
    /// refreshes it; also served when that refresh fails (a non-2xx answer).
    pub fn stale(self, stale: Duration) -> CacheLayer {
        self.with(|route| route.stale = stale)
    }

    /// Tags of every stored response of the route, for [`Cache::invalidate_tag`].
    /// A tag with `{` or `}` is refused (see [`Policy::tags`]): the route then
    /// answers every request uncached, on every backend alike; build tags holding
    /// values with [`tag!`](crate::tag).
    pub fn tags<T: Into<String>>(self, tags: impl IntoIterator<Item = T>) -> CacheLayer {
        self.with(|route| route.tags = tags.into_iter().map(Into::into).collect())
    }

    /// More tags computed from each request (its method, URI and headers), for
    /// example one per resource id of the path. As for [`tags`](CacheLayer::tags),
    /// a tag with `{` or `}` makes that request pass uncached; escape values from
    /// the request with [`tag!`](crate::tag).
    pub fn tags_from(self, tags: impl Fn(&request::Parts) -> Vec<String> + Send + Sync + 'static) -> CacheLayer {
        self.with(|route| route.tags_from = Some(Arc::new(tags)))
    }

    /// Adds a request header to the key, so responses that depend on it
    /// (`Accept-Language`, `Accept`) are stored once per value. A response with a
    /// `Vary` on a header not added here is not stored.
    pub fn vary(self, header: HeaderName) -> CacheLayer {
        self.with(|route| route.vary.push(header))
    }

    /// Names a request header that identifies a user (an API key, a tenant's
    /// token): requests carrying it pass through uncached, unless the route also
    /// [`vary`](CacheLayer::vary)s on it. `Authorization` and `Cookie` are always
    /// identifying.
    ///
    /// ```
    /// # async fn demo() -> aside::Result<()> {
    /// use std::convert::Infallible;
    /// use std::future::{poll_fn, ready, Ready};
    /// use std::task::{Context, Poll};
    /// use std::time::Duration;
    ///
    /// use bytes::Bytes;
    /// use aside::{http::CacheLayer, Cache};
    /// use http::header::{HeaderName, COOKIE};
    /// use http::{Request, Response};
    /// use http_body_util::{BodyExt as _, Full};
    /// use tower_layer::Layer as _;
    /// use tower_service::Service;
    ///
    /// /// A page naming the session it was made for.
    /// #[derive(Clone)]
    /// struct Page;
    /// impl Service<Request<()>> for Page {
    ///     type Response = Response<Full<Bytes>>;
    ///     type Error = Infallible;
    ///     type Future = Ready<Result<Self::Response, Infallible>>;
    ///     fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
    ///         Poll::Ready(Ok(()))
    ///     }
    ///     fn call(&mut self, request: Request<()>) -> Self::Future {
    ///         let who = request.headers().get(COOKIE).map_or("nobody".into(), |c| format!("{c:?}"));
    ///         ready(Ok(Response::new(Full::from(format!("page of {who}")))))
    ///     }
    /// }
    ///
    /// let cache = Cache::builder().memory().build().await?;
    /// let api_key = HeaderName::from_static("x-api-key");
    /// let layers = [
    ///     CacheLayer::new(cache.clone()).name("me"),
    ///     CacheLayer::new(cache.clone()).name("mine").vary(COOKIE),
    ///     CacheLayer::new(cache.clone()).name("public").allow_cookies(),
    ///     CacheLayer::new(cache).name("keyed").identifying(api_key.clone()),
    /// ];
    /// let mut bodies = Vec::new();
    /// for layer in layers {
    ///     let mut service = layer.layer(Page);
    ///     for (name, value) in [(COOKIE, "id=ada"), (COOKIE, "id=bob"), (api_key.clone(), "k1")] {
    ///         let request = Request::get("/me").header(name, value).body(()).unwrap();
    ///         poll_fn(|cx| service.poll_ready(cx)).await.unwrap();
    ///         let response = service.call(request).await.unwrap();
    ///         let x_cache = response.headers().get("x-cache").map_or("none", |v| v.to_str().unwrap()).to_owned();
    ///         let body = response.into_body().collect().await.unwrap().to_bytes();
    ///         bodies.push(format!("{x_cache} {}", String::from_utf8_lossy(&body)));
    ///     }
    /// }
    /// assert_eq!(bodies, [
    ///     // By default, cookies pass through: each user gets their own page.
    ///     "none page of \"id=ada\"", "none page of \"id=bob\"", "MISS page of nobody",
    ///     // `vary(COOKIE)`: a page per session, cached.
    ///     "MISS page of \"id=ada\"", "MISS page of \"id=bob\"", "MISS page of nobody",
    ///     // `allow_cookies()`: one page for everyone (the route must not read the cookie).
    ///     "MISS page of \"id=ada\"", "HIT page of \"id=ada\"", "HIT page of \"id=ada\"",
    ///     // An identifying header of one's own passes through like a cookie.
    ///     "none page of \"id=ada\"", "none page of \"id=bob\"", "none page of nobody",
    /// ]);
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
    /// ```
    pub fn identifying(self, header: HeaderName) -> CacheLayer {
        self.with(|route| route.identifying.push(header))
    }

    /// Caches requests that carry a `Cookie` as if they had none: one response for
    /// every user. For routes whose answer does not depend on who asks (a public
    /// report behind a site that sets session cookies). Without it, or a
    /// [`vary`](CacheLayer::vary)`(COOKIE)`, requests with cookies pass through
    /// (see the example of [`identifying`](CacheLayer::identifying)).
    pub fn allow_cookies(self) -> CacheLayer {
        self.with(|route| route.allow_cookies = true)
    }
}

impl<S> Layer<S> for CacheLayer {
    type Service = CacheService<S>;

    fn layer(&self, inner: S) -> CacheService<S> {
        CacheService {
            inner,
            cache: self.cache.clone(),
            route: Arc::clone(&self.route),
        }
    }
}

/// The service [`CacheLayer`] wraps a route in.
#[derive(Clone)]
pub struct CacheService<S> {
    inner: S,
    cache: Cache,
    route: Arc<Route>,
}

impl<S: fmt::Debug> fmt::Debug for CacheService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheService")
            .field("inner", &self.inner)
            .field("route", &self.route.name)
            .finish_non_exhaustive()
    }
}

/// Why a response is not served from the stored form.
enum Bypass<B, E> {
    /// The route's response, not storable.
    Response(Response<B>),
    /// The route failed.
    Failed(E),
    /// The route's body failed while being read.
    Body,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for CacheService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<CachedBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // The clone is the one that is not ready yet; the ready one handles this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if self.route.passes_through(&request) {
            return Box::pin(async move { Ok(inner.call(request).await?.map(Either::Right)) });
        }
        let cache = self.cache.clone();
        let route = Arc::clone(&self.route);
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            let key = route.key(&parts);
            let policy = route.policy_for(&parts);
            // The route answers for the cache, so in full: the client's validators
            // are checked here, against the stored response.
            let if_none_match: Vec<HeaderValue> =
                parts.headers.get_all(header::IF_NONE_MATCH).iter().cloned().collect();
            for conditional in [header::IF_NONE_MATCH, header::IF_MODIFIED_SINCE] {
                parts.headers.remove(conditional);
            }
            let request = Request::from_parts(parts, body);
            let ran = AtomicBool::new(false);
            let vary = &route.vary;
            let (result, status): (Result<Stored, Bypass<ResBody, S::Error>>, _) = cache
                .get_or_compute_with_status(key, &policy, || async {
                    let response = inner.call(request).await.map_err(Bypass::Failed)?;
                    let (parts, body) = response.into_parts();
                    if !stored::storable(&parts, vary) {
                        return Err(Bypass::Response(Response::from_parts(parts, body)));
                    }
                    let bytes = match body.collect().await {
                        Ok(collected) => collected.to_bytes(),
                        Err(error) => {
                            let error = error.into();
                            tracing::warn!(target: "aside", %error, "the route's response body failed; answering 500");
                            return Err(Bypass::Body);
                        }
                    };
                    ran.store(true, Ordering::Relaxed);
                    Ok(Stored::capture(&parts, bytes))
                })
                .await;
            match result {
                Ok(stored) => {
                    let x_cache = x_cache(status, ran.load(Ordering::Relaxed));
                    let response = if stored.matches(&if_none_match) {
                        stored.not_modified(x_cache)
                    } else {
                        stored.to_response(x_cache)
                    };
                    Ok(response.map(Either::Left))
                }
                Err(Bypass::Response(mut response)) => {
                    response
                        .headers_mut()
                        .insert(HeaderName::from_static(X_CACHE), HeaderValue::from_static("MISS"));
                    Ok(response.map(Either::Right))
                }
                Err(Bypass::Failed(error)) => Err(error),
                Err(Bypass::Body) => {
                    let mut response = Response::new(Either::Left(Full::default()));
                    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                    Ok(response)
                }
            }
        })
    }
}

/// The `X-Cache` of a stored response: `HIT` when the route did not run for this
/// request (a concurrent request's run included), `STALE` for a stale response
/// served while one request refreshes it, `MISS` when the route ran.
fn x_cache(status: CacheStatus, ran: bool) -> &'static str {
    match status {
        CacheStatus::Stale => "STALE",
        CacheStatus::Hit | CacheStatus::Coalesced => "HIT",
        _ if ran => "MISS",
        // Bypassed without running here: another request's run, shared.
        CacheStatus::Bypassed => "HIT",
        _ => "MISS",
    }
}

/// What a response's key is made of (digested; never stored as such).
#[derive(Serialize)]
struct RequestKey<'a> {
    method: &'a str,
    host: Option<String>,
    path: &'a str,
    query: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    headers: Vec<(&'a str, Vec<&'a [u8]>)>,
}

impl Route {
    /// Whether `request` goes to the route untouched: not a `GET`, a `Range`
    /// request, or one carrying an identifying header the route does not key on.
    fn passes_through<B>(&self, request: &Request<B>) -> bool {
        let headers = request.headers();
        request.method() != Method::GET
            || headers.contains_key(header::RANGE)
            || self.identifying.iter().any(|name| {
                headers.contains_key(name)
                    && !self.vary.contains(name)
                    && !(self.allow_cookies && name == header::COOKIE)
            })
    }

    fn key(&self, parts: &request::Parts) -> Key {
        let mut query: Vec<_> = parts
            .uri
            .query()
            .map(|query| form_urlencoded::parse(query.as_bytes()).collect())
            .unwrap_or_default();
        // Stable: repeated names keep their order (`?id=2&id=1` is a list).
        query.sort_by(|a, b| a.0.cmp(&b.0));
        let headers = self
            .vary
            .iter()
            .map(|name| {
                let values = parts.headers.get_all(name).iter().map(HeaderValue::as_bytes).collect();
                (name.as_str(), values)
            })
            .collect();
        // The authority of an absolute URI (HTTP/2's `:authority`), else `Host`;
        // host names are case-insensitive.
        let host = parts
            .uri
            .authority()
            .map(|authority| authority.as_str().as_bytes())
            .or_else(|| parts.headers.get(header::HOST).map(HeaderValue::as_bytes))
            .map(|host| String::from_utf8_lossy(host).to_ascii_lowercase());
        let key = RequestKey {
            method: parts.method.as_str(),
            host,
            path: parts.uri.path(),
            query,
            headers,
        };
        Key::digest(PREFIX, self.name.clone(), self.version, &key)
    }

    fn policy_for(&self, parts: &request::Parts) -> Policy {
        let extra = self
            .tags_from
            .as_ref()
            .map(|tags_from| tags_from(parts))
            .unwrap_or_default();
        Policy::new(self.ttl)
            .stale(self.stale)
            .function(format!("{PREFIX}:{}", self.name))
            .tags(self.tags.iter().cloned().chain(extra))
    }
}
