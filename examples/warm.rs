//! Warms the cache before traffic arrives: calls `<fn>_refresh` for every argument
//! a deploy will be asked for, eight at a time, with a progress bar and a summary.
//!
//! ```text
//! cargo run --example warm                                        # in-process memory
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example warm -- eu us  # regions to warm
//! ```
//!
//! `monthly_revenue_refresh` computes now and overwrites the entry — even one
//! that is still fresh, and even over a computation in flight — so after a warm-up
//! every listed entry holds a value computed after it started. Run it after a
//! deploy that bumped a `version`, or after a bulk import invalidated `orders`.

use std::time::{Duration, Instant};

use aside::{cached, Cache};
use futures_util::StreamExt as _;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

/// How many refreshes run at once: enough to overlap the waits on the database,
/// few enough not to flood it.
const CONCURRENCY: usize = 8;

#[derive(Debug, Serialize, Deserialize)]
struct Revenue {
    region: String,
    month: u32,
    cents: i64,
}

/// Stands in for a slow aggregation query; refused for unknown regions.
#[cached(prefix = "warm", ttl = "1h", tags = ["orders", "region:{region}"])]
async fn monthly_revenue(region: &str, month: u32) -> Result<Revenue, std::io::Error> {
    tokio::time::sleep(Duration::from_millis(80)).await;
    if !["eu", "us", "apac"].contains(&region) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no region {region:?}"),
        ));
    }
    Ok(Revenue {
        region: region.to_owned(),
        month,
        cents: i64::from(month) * 1_000_000,
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .init();

    let cache = Cache::from_env().await?;
    Cache::set_global(cache.clone())?;
    let mut regions: Vec<String> = std::env::args().skip(1).collect();
    if regions.is_empty() {
        regions = ["eu", "us", "apac"].map(str::to_owned).to_vec();
    }
    let jobs: Vec<(String, u32)> = regions
        .iter()
        .flat_map(|region| (1..=12).map(move |month| (region.clone(), month)))
        .collect();

    println!(
        "warming {} entries of monthly_revenue on {:?}",
        jobs.len(),
        cache.settings().backend()
    );
    let bar = ProgressBar::new(jobs.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed:>4} [{bar:40}] {pos}/{len} {msg}")?.progress_chars("=> "),
    );
    let started = Instant::now();
    let mut warmed = 0_usize;
    let mut failed = Vec::new();
    let mut slowest = (Duration::ZERO, String::new());
    let mut refreshes = futures_util::stream::iter(jobs)
        .map(|(region, month)| async move {
            let began = Instant::now();
            let result = monthly_revenue_refresh(&region, month).await;
            (region, month, result, began.elapsed())
        })
        .buffer_unordered(CONCURRENCY);
    while let Some((region, month, result, took)) = refreshes.next().await {
        let label = format!("{region}/{month:02}");
        match result {
            Ok(_) => warmed += 1,
            Err(error) => failed.push(format!("{label}: {error}")),
        }
        if took > slowest.0 {
            slowest = (took, label.clone());
        }
        bar.set_message(label);
        bar.inc(1);
    }
    bar.finish_and_clear();

    let elapsed = started.elapsed();
    let stats = cache.stats().function("warm:monthly_revenue");
    println!("warmed:      {warmed} entries in {elapsed:.2?} ({CONCURRENCY} at a time)");
    println!(
        "computing:   {:.2?} in total, {:.2?} each on average, slowest {} ({:.2?})",
        stats.computation_time(),
        stats.mean_computation().unwrap_or_default(),
        slowest.1,
        slowest.0,
    );
    println!("backend:     {} errors while storing", stats.backend_errors);
    println!("example key: {}", monthly_revenue_key("eu", 1));
    if !failed.is_empty() {
        println!("not warmed:  {} (errors are never cached)", failed.len());
        for failure in &failed {
            println!("  {failure}");
        }
    }

    // What the warm-up bought: the first real call is a hit.
    let before = cache.stats().function("warm:monthly_revenue").hits;
    let first = Instant::now();
    monthly_revenue(&regions[0], 1).await.ok();
    let after = cache.stats().function("warm:monthly_revenue").hits;
    let outcome = if after > before { "hit" } else { "miss" };
    println!("first call:  {outcome} in {:.2?}", first.elapsed());
    Ok(())
}
