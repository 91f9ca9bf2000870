//! Every argument of `#[cached]` at least once.
#![deny(warnings)]

use std::sync::LazyLock;

use aside::{cached, Cache};
use serde::Serialize;

static CACHE: LazyLock<Cache> = LazyLock::new(|| Cache::builder().memory().namespace("app").build_lazy().unwrap());

pub struct Db;

#[derive(Serialize)]
pub struct Filter {
    pub region: String,
    pub month: u32,
}

#[cached(
    ttl = 300,
    prefix = "reports",
    name = "monthly",
    version = 3,
    tags = ["reports", "region:{filter.region}", "db:{db_name}"],
    skip(db, db_name),
    key = "{filter.region}:{filter.month}:{page}",
    stale = "1m",
    lock_ttl = "30s",
    wait = "10s",
    cache = CACHE,
    crate = ::aside,
)]
async fn monthly(db: &Db, db_name: &str, filter: Filter, page: u32) -> Result<Vec<u32>, std::io::Error> {
    let _ = (db, db_name);
    Ok(vec![filter.month, page])
}

#[cached(ttl = "5m", cache_none = true, cache = &*CACHE)]
async fn lookup(id: u64) -> Option<String> {
    (id % 2 == 0).then(|| id.to_string())
}

fn is_blank(name: &Option<String>) -> bool {
    name.as_deref() == Some("")
}

fn ttl_of(name: &Option<String>) -> std::time::Duration {
    std::time::Duration::from_secs(if name.is_some() { 3600 } else { 10 })
}

#[cached(cache_none = true, unless = is_blank, ttl_from = ttl_of, cache = CACHE)]
async fn nickname(id: u64) -> Option<String> {
    (id != 0).then(|| if id == 1 { String::new() } else { id.to_string() })
}

#[cached(ttl = 60, stale = "5m", refresh_ahead = 0.8, soft_timeout = "200ms", jitter = "10%", cache = CACHE)]
async fn headline(region: String) -> String {
    format!("news for {region}")
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let filter = || Filter {
        region: "eu west".to_owned(),
        month: 11,
    };
    assert_eq!(monthly(&Db, "main", filter(), 2).await.unwrap(), [11, 2]);
    assert_eq!(monthly_key(filter(), 2), "app:reports:monthly:v1.3:eu%20west:11:2");
    assert!(monthly_invalidate(filter(), 2).await.unwrap());
    assert_eq!(monthly_refresh(&Db, "main", filter(), 2).await.unwrap(), [11, 2]);
    assert_eq!(CACHE.stats().function("reports:monthly").computations, 2);

    assert_eq!(lookup(3).await, None);
    assert!(lookup_invalidate(3).await.unwrap(), "None is cached with cache_none");

    assert_eq!(nickname(1).await.as_deref(), Some(""));
    assert!(!nickname_invalidate(1).await.unwrap(), "a blank nickname is not stored");
    assert_eq!(nickname(2).await.as_deref(), Some("2"));

    assert_eq!(headline("eu".to_owned()).await, "news for eu");
    assert!(headline_expire("eu".to_owned()).await.unwrap(), "the entry turns stale");
    assert!(CACHE.exists(headline_key("eu".to_owned()).trim_start_matches("app:")).await.unwrap());
    assert!(CACHE.ttl(nickname_key(2).trim_start_matches("app:")).await.unwrap().unwrap().as_secs() > 3500);
}
