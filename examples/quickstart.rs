//! The smallest useful aside program: a slow function, cached.
//!
//! ```text
//! cargo run --example quickstart                                  # in-process memory, no set-up
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example quickstart  # shared through Redis
//! ```
//!
//! It calls a slow function twice (a miss, then a hit), invalidates the entry,
//! calls it again, and prints the timings and the cache's counters.

use std::time::{Duration, Instant};

use aside::{cached, Cache};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Summary {
    region: String,
    month: u32,
    orders: u64,
    revenue_cents: i64,
}

/// Stands in for a slow aggregation query.
#[cached(prefix = "quickstart", ttl = 60, tags = ["orders", "region:{region}"])]
async fn monthly_summary(region: &str, month: u32) -> Result<Summary, std::io::Error> {
    tokio::time::sleep(Duration::from_millis(400)).await;
    Ok(Summary {
        region: region.to_owned(),
        month,
        orders: 1_204,
        revenue_cents: 9_876_500,
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();

    // Connect now, so a bad REDIS_URL or password fails here rather than on first use.
    let cache = Cache::from_env().await?;
    println!("backend: {:?}", cache.settings().backend());
    Cache::set_global(cache.clone())?;
    println!("key:     {}", monthly_summary_key("eu", 11));

    for label in ["first call (miss)", "second call (hit)"] {
        let started = Instant::now();
        let summary = monthly_summary("eu", 11).await?;
        println!("{label:<20} {:>9.2?}  {} orders", started.elapsed(), summary.orders);
    }

    let removed = monthly_summary_invalidate("eu", 11).await?;
    println!("invalidated:         {removed}");
    let started = Instant::now();
    monthly_summary("eu", 11).await?;
    println!("{:<20} {:>9.2?}", "after invalidation", started.elapsed());

    let stats = cache.stats().function("quickstart:monthly_summary");
    println!(
        "stats:               {} hits, {} misses, {} computations, {} backend errors",
        stats.hits, stats.misses, stats.computations, stats.backend_errors
    );
    Ok(())
}
