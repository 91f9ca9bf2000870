//! The futures of cached functions and their companions are `Send` whenever the
//! arguments are, so they can be spawned and used in web handlers.
#![deny(warnings)]

use aside::{cached, Cache};

fn assert_send<T: Send>(value: T) -> T {
    value
}

#[cached(tags = ["region:{region}"])]
async fn revenue(region: &str, month: u32) -> Result<u64, std::io::Error> {
    tokio::task::yield_now().await;
    Ok(u64::from(month) + region.len() as u64)
}

pub struct Service {
    cache: Cache,
}

impl Service {
    #[cached(skip(self), cache = self.cache)]
    pub async fn lookup(&self, id: u64) -> Option<String> {
        tokio::task::yield_now().await;
        Some(id.to_string())
    }
}

#[tokio::main]
async fn main() {
    let total = tokio::spawn(async { revenue("eu", 1).await.unwrap() }).await.unwrap();
    assert_eq!(total, 3);
    let _ = assert_send(revenue_refresh("eu", 1));
    let _ = assert_send(revenue_invalidate("eu", 1));

    let service = std::sync::Arc::new(Service { cache: Cache::builder().memory().build().await.unwrap() });
    let spawned = service.clone();
    let found = tokio::spawn(async move { spawned.lookup(7).await }).await.unwrap();
    assert_eq!(found.as_deref(), Some("7"));
    let _ = assert_send(service.lookup_refresh(7));
    let _ = assert_send(service.lookup_invalidate(7));
}
