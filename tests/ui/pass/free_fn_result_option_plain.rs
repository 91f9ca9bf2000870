//! A free `async fn` for each kind of return type, with `?` and early `return`
//! in the body, and every companion called.
#![deny(warnings)]

use std::sync::atomic::{AtomicUsize, Ordering};

use aside::cached;

static CALLS: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug)]
pub struct NotFound;

impl From<std::num::ParseIntError> for NotFound {
    fn from(_: std::num::ParseIntError) -> Self {
        NotFound
    }
}

/// A `Result`: only `Ok` is cached; `?` converts errors as in any function.
#[cached(ttl = 60)]
pub async fn parse(text: String) -> Result<u64, NotFound> {
    CALLS.fetch_add(1, Ordering::SeqCst);
    if text.is_empty() {
        return Err(NotFound);
    }
    let n: u64 = text.parse()?;
    Ok(n)
}

/// An `Option`.
#[cached(ttl = "1m")]
async fn find(id: u32) -> Option<String> {
    if id == 0 {
        return None;
    }
    Some(format!("user-{id}"))
}

/// Any other value.
#[cached]
async fn double(n: u64) -> u64 {
    n * 2
}

/// No arguments at all.
#[cached]
async fn answer() -> Vec<u8> {
    vec![4, 2]
}

/// A body that is a single call (`{ { f(x) } }` would trip `unused_braces`) and
/// an inner attribute (it stays inside the body).
#[cached]
async fn label(n: u64) -> String {
    #![allow(clippy::needless_return)]
    n.to_string()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    assert_eq!(parse("41".to_owned()).await.unwrap(), 41);
    assert_eq!(parse("41".to_owned()).await.unwrap(), 41);
    assert_eq!(CALLS.load(Ordering::SeqCst), 1);
    assert!(parse(String::new()).await.is_err());
    assert!(parse("x".to_owned()).await.is_err());

    assert_eq!(find(7).await.as_deref(), Some("user-7"));
    assert_eq!(find(0).await, None);
    assert_eq!(double(21).await, 42);
    assert_eq!(answer().await, [4, 2]);
    assert_eq!(label(7).await, "7");
    assert_eq!(label_refresh(7).await, "7");

    let key: String = parse_key("41".to_owned());
    assert!(key.starts_with("aside:computed:parse:v1.1:"), "{key}");
    assert!(parse_invalidate("41".to_owned()).await.unwrap());
    assert!(!parse_invalidate("41".to_owned()).await.unwrap());
    assert_eq!(parse_refresh("41".to_owned()).await.unwrap(), 41);

    let _: Option<String> = find_refresh(1).await;
    let _: bool = find_invalidate(1).await.unwrap();
    assert_eq!(double_refresh(1).await, 2);
    assert!(double_invalidate(1).await.unwrap());
    assert!(answer_key().starts_with("aside:computed:answer:v1.1:"));
    let _: Vec<u8> = answer_refresh().await;
    assert!(answer_invalidate().await.unwrap());
}
