//! A response as the cache holds it: status, the headers worth keeping, the body
//! bytes and when it was stored.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use ::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ::http::{response, Response, StatusCode};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use serde::{Deserialize, Serialize};

/// Headers never stored: hop-by-hop ones, ones the cache sets itself, and the
/// length (recomputed from the body).
const NOT_KEPT: [HeaderName; 11] = [
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::CONTENT_LENGTH,
    header::AGE,
    header::SET_COOKIE,
    HeaderName::from_static("keep-alive"),
];

/// A stored response. In the cache it is JSON: the status, the headers as text
/// pairs, the body in base64 and the Unix millisecond it was stored at. An entry
/// that does not decode back into a valid response is a miss like any other.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(try_from = "Wire", into = "Wire")]
pub(crate) struct Stored {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    stored_at_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    stored_at: u64,
}

/// Why a stored entry is not a valid response.
#[derive(Debug)]
pub(crate) struct Invalid(&'static str);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stored response has an invalid {}", self.0)
    }
}

impl TryFrom<Wire> for Stored {
    type Error = Invalid;

    fn try_from(wire: Wire) -> Result<Stored, Invalid> {
        let status = StatusCode::from_u16(wire.status).map_err(|_| Invalid("status"))?;
        let mut headers = HeaderMap::with_capacity(wire.headers.len());
        for (name, value) in wire.headers {
            let name = HeaderName::try_from(name).map_err(|_| Invalid("header name"))?;
            let value = HeaderValue::try_from(value).map_err(|_| Invalid("header value"))?;
            headers.append(name, value);
        }
        let body = STANDARD.decode(wire.body).map_err(|_| Invalid("body"))?;
        Ok(Stored {
            status,
            headers,
            body: Bytes::from(body),
            stored_at_ms: wire.stored_at,
        })
    }
}

impl From<Stored> for Wire {
    fn from(stored: Stored) -> Wire {
        let headers = stored
            .headers
            .iter()
            .filter_map(|(name, value)| Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned())))
            .collect();
        Wire {
            status: stored.status.as_u16(),
            headers,
            body: STANDARD.encode(&stored.body),
            stored_at: stored.stored_at_ms,
        }
    }
}

impl Stored {
    /// Keeps `parts` and `body` for storing; the caller checked [`storable`].
    pub(crate) fn capture(parts: &response::Parts, body: Bytes) -> Stored {
        let mut headers = HeaderMap::with_capacity(parts.headers.len());
        for (name, value) in &parts.headers {
            if !NOT_KEPT.contains(name) && !name.as_str().eq_ignore_ascii_case(super::X_CACHE) {
                headers.append(name.clone(), value.clone());
            }
        }
        if !headers.contains_key(header::ETAG) {
            headers.insert(header::ETAG, body_etag(&body));
        }
        Stored {
            status: parts.status,
            headers,
            body,
            stored_at_ms: now_ms(),
        }
    }

    /// Whether the `If-None-Match` values of a request match the stored `ETag`
    /// (the weak comparison RFC 9110 prescribes for `If-None-Match`; `*` matches).
    pub(crate) fn matches(&self, if_none_match: &[HeaderValue]) -> bool {
        let Some(etag) = self.headers.get(header::ETAG).and_then(|etag| etag.to_str().ok()) else {
            return false;
        };
        let etag = opaque(etag.trim());
        if_none_match
            .iter()
            .filter_map(|value| value.to_str().ok())
            .any(|value| value.trim() == "*" || entity_tags(value).any(|tag| tag == etag))
    }

    /// `304 Not Modified` for a request whose validator matched: no body, and of
    /// the stored headers those RFC 9110 asks a 304 to repeat.
    pub(crate) fn not_modified(&self, x_cache: &'static str) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::default());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        for name in [
            header::ETAG,
            header::CACHE_CONTROL,
            header::EXPIRES,
            header::VARY,
            header::CONTENT_LOCATION,
            header::DATE,
        ] {
            for value in self.headers.get_all(&name) {
                response.headers_mut().append(name.clone(), value.clone());
            }
        }
        self.stamp(&mut response, x_cache);
        response
    }

    /// The response to send, with `X-Cache` and `Age` set.
    pub(crate) fn to_response(&self, x_cache: &'static str) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(self.body.clone()));
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers.clone();
        self.stamp(&mut response, x_cache);
        response
    }

    /// Sets `Age` and `X-Cache`.
    fn stamp(&self, response: &mut Response<Full<Bytes>>, x_cache: &'static str) {
        let age = now_ms().saturating_sub(self.stored_at_ms) / 1000;
        response.headers_mut().insert(header::AGE, HeaderValue::from(age));
        response.headers_mut().insert(
            HeaderName::from_static(super::X_CACHE),
            HeaderValue::from_static(x_cache),
        );
    }
}

/// A strong `ETag` for a response the route gave none: the xxh3-128 of its body.
fn body_etag(body: &[u8]) -> HeaderValue {
    let digest = xxhash_rust::xxh3::xxh3_128(body);
    HeaderValue::from_str(&format!("\"{digest:032x}\"")).unwrap_or_else(|_| HeaderValue::from_static("\"\""))
}

/// An entity tag without its weakness marker: `W/"x"` and `"x"` are `"x"`.
fn opaque(tag: &str) -> &str {
    tag.strip_prefix("W/").unwrap_or(tag)
}

/// The entity tags of an `If-None-Match` value (`"a", W/"b"`), each with its
/// quotes and without `W/`; commas inside quotes do not split.
fn entity_tags(value: &str) -> impl Iterator<Item = &str> {
    let mut rest = value;
    std::iter::from_fn(move || {
        rest = rest.trim_start_matches(|c: char| c == ',' || c.is_ascii_whitespace());
        let tag = opaque(rest);
        let after_quote = tag.strip_prefix('"')?;
        let end = after_quote.find('"')? + 2;
        let (found, tail) = tag.split_at(end);
        rest = tail;
        Some(found)
    })
}

/// Whether a response may be stored: a 2xx status other than `206`, no `Set-Cookie`, no
/// `Cache-Control` `no-store`, `private` or `no-cache`, no `Vary` beyond the
/// headers in the key (`vary`), and header values that are text.
pub(crate) fn storable(parts: &response::Parts, vary: &[HeaderName]) -> bool {
    if !parts.status.is_success()
        || parts.status == StatusCode::PARTIAL_CONTENT
        || parts.headers.contains_key(header::SET_COOKIE)
    {
        return false;
    }
    let forbids = parts.headers.get_all(header::CACHE_CONTROL).iter().any(|value| {
        tokens(value).any(|directive| {
            let name = directive.split('=').next().unwrap_or(directive).trim();
            ["no-store", "private", "no-cache"]
                .iter()
                .any(|no| name.eq_ignore_ascii_case(no))
        })
    });
    if forbids {
        return false;
    }
    let varies_elsewhere = parts.headers.get_all(header::VARY).iter().any(|value| {
        tokens(value).any(|name| name == "*" || !vary.iter().any(|kept| name.eq_ignore_ascii_case(kept.as_str())))
    });
    if varies_elsewhere {
        return false;
    }
    parts.headers.values().all(|value| value.to_str().is_ok())
}

/// The comma-separated tokens of a header value; a value that is not text has none
/// it can be matched by, so it counts as one unmatchable token.
fn tokens(value: &HeaderValue) -> impl Iterator<Item = &str> {
    value
        .to_str()
        .unwrap_or("\u{0}")
        .split(',')
        .map(str::trim)
        .filter(|token| !token.is_empty())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(build: impl FnOnce(::http::response::Builder) -> ::http::response::Builder) -> response::Parts {
        build(Response::builder()).body(()).unwrap().into_parts().0
    }

    #[test]
    fn only_plain_successes_are_storable() {
        assert!(storable(&parts(|b| b.status(200)), &[]));
        assert!(storable(
            &parts(|b| b.status(204).header("cache-control", "public, max-age=60")),
            &[]
        ));
        assert!(!storable(&parts(|b| b.status(404)), &[]));
        assert!(!storable(
            &parts(|b| b.status(200).header("cache-control", "No-Store")),
            &[]
        ));
        assert!(!storable(
            &parts(|b| b.status(200).header("cache-control", "max-age=5, private")),
            &[]
        ));
        assert!(!storable(
            &parts(|b| b.status(200).header("cache-control", "no-cache=\"x\"")),
            &[]
        ));
        assert!(!storable(&parts(|b| b.status(200).header("set-cookie", "a=b")), &[]));
        assert!(!storable(&parts(|b| b.status(200).header("vary", "*")), &[]));
        assert!(!storable(
            &parts(|b| b.status(200).header("vary", "accept-language")),
            &[]
        ));
        let language = [header::ACCEPT_LANGUAGE];
        assert!(storable(
            &parts(|b| b.status(200).header("vary", "Accept-Language")),
            &language
        ));
    }

    #[test]
    fn if_none_match_uses_the_weak_comparison() {
        let stored = Stored::capture(&parts(|b| b.header("etag", "W/\"v,1\"")), Bytes::from_static(b"x"));
        let matches = |value: &'static str| stored.matches(&[HeaderValue::from_static(value)]);
        assert!(matches("\"v,1\""));
        assert!(matches("W/\"v,1\""));
        assert!(matches("\"a\", W/\"v,1\""));
        assert!(matches(" * "));
        assert!(!matches("\"v\""));
        assert!(!matches("\"v,1"));
        assert!(!matches(""));
        assert!(!stored.matches(&[]));
        let not_modified = stored.not_modified("HIT");
        assert_eq!(not_modified.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(not_modified.headers()["etag"], "W/\"v,1\"");
        assert!(!not_modified.headers().contains_key("content-type"));
    }

    #[test]
    fn responses_without_an_etag_get_one_of_their_body() {
        let etag = |body: &'static [u8]| {
            Stored::capture(&parts(|b| b.status(200)), Bytes::from_static(body)).headers[header::ETAG].clone()
        };
        assert_eq!(etag(b"a"), etag(b"a"));
        assert_ne!(etag(b"a"), etag(b"b"));
        assert_eq!(etag(b"a").len(), 34);
        assert!(!storable(&parts(|b| b.status(206)), &[]));
    }

    #[test]
    fn round_trips_through_json_and_refuses_garbage() {
        let head = parts(|b| {
            b.status(201)
                .header("content-type", "application/json")
                .header("content-length", "2")
                .header("x-cache", "MISS")
                .header("etag", "\"v1\"")
        });
        let stored = Stored::capture(&head, Bytes::from_static(b"\x00\xffok"));
        let json = serde_json::to_string(&stored).unwrap();
        let back: Stored = serde_json::from_str(&json).unwrap();
        let response = back.to_response("HIT");
        assert_eq!(response.status(), 201);
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(response.headers()["etag"], "\"v1\"");
        assert_eq!(response.headers()["x-cache"], "HIT");
        assert_eq!(response.headers()["age"], "0");
        assert!(!response.headers().contains_key("content-length"));
        assert_eq!(back.body, Bytes::from_static(b"\x00\xffok"));

        for bad in [
            r#"{"status":99,"headers":[],"body":"","stored_at":0}"#,
            r#"{"status":200,"headers":[["bad name","x"]],"body":"","stored_at":0}"#,
            r#"{"status":200,"headers":[],"body":"!!!","stored_at":0}"#,
        ] {
            assert!(serde_json::from_str::<Stored>(bad).is_err(), "{bad}");
        }
    }
}
