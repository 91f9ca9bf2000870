//! A real, slow aggregation over a real database, cached — and invalidated by tag
//! when the data changes.
//!
//! ```text
//! cargo run --example aggregation                                  # in-process memory, no set-up
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example aggregation  # shared through Redis
//! ```
//!
//! The first run writes 500,000 orders into an SQLite file in the temporary
//! directory (`aside-example-orders.sqlite3`, a few seconds); later runs reuse it.
//! `revenue_by_month` then sums one region's year month by month — a `GROUP BY`
//! over the whole table, since the only index is on `created_at`. The example
//! shows the miss (the query) and the hit (no query), inserts one new order,
//! shows that the cached figure is now out of date, drops every entry of the
//! region with `invalidate_tag("region:eu")` once the insert's transaction has
//! committed (`Cache::after_commit`), and shows the fresh figure.
//! Each run adds one order to the file; delete the file to start over.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aside::{cached, Cache};
use rusqlite::{params, Connection};
use sqlite::{days_in_month, money, pick_region, Db, DbError, XorShift};

#[path = "support/sqlite.rs"]
mod sqlite;
use serde::{Deserialize, Serialize};

/// Orders written on the first run.
const ORDERS: i64 = 500_000;
/// Regions and how many orders in a hundred each gets.
const REGIONS: [(&str, u64); 8] = [
    ("us", 28),
    ("eu", 24),
    ("apac", 16),
    ("uk", 9),
    ("latam", 8),
    ("ca", 6),
    ("mea", 5),
    ("anz", 4),
];
/// The data covers these years.
const YEARS: [i32; 2] = [2024, 2025];
/// The stats name of the cached function: `"{prefix}:{name}"`.
const FUNCTION: &str = "computed:revenue_by_month";

/// One month of one region's revenue.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct MonthRevenue {
    month: u32,
    orders: i64,
    revenue_cents: i64,
    largest_cents: i64,
}

/// Revenue of `region` in `year`, month by month: one full-table aggregation.
#[cached(prefix = "computed", ttl = 300, tags = ["orders", "region:{region}"], skip(db))]
async fn revenue_by_month(db: &Db, region: &str, year: i32) -> Result<Vec<MonthRevenue>, DbError> {
    let region = region.to_owned();
    db.run(move |conn| {
        let mut statement = conn.prepare_cached(
            "SELECT month, COUNT(*), SUM(amount_cents), MAX(amount_cents)
               FROM orders
              WHERE region = ?1 AND year = ?2
              GROUP BY month
              ORDER BY month",
        )?;
        let months = statement.query_map(params![region, year], |row| {
            Ok(MonthRevenue {
                month: row.get(0)?,
                orders: row.get(1)?,
                revenue_cents: row.get(2)?,
                largest_cents: row.get(3)?,
            })
        })?;
        months.collect()
    })
    .await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();

    // Connect now, so a bad REDIS_URL or password fails here rather than on first use.
    let cache = Cache::from_env().await?;
    println!("backend:     {:?}", cache.settings().backend());
    Cache::set_global(cache.clone())?;

    let path = std::env::temp_dir().join("aside-example-orders.sqlite3");
    let started = Instant::now();
    let (db, rows, generated) = open_or_generate(path.clone()).await?;
    let verb = if generated { "generated" } else { "reused" };
    println!(
        "database:    {} ({verb} {rows} orders in {:.2?})",
        path.display(),
        started.elapsed()
    );

    // A run less than `ttl` ago against the same Redis left its entries there:
    // drop them so that the first call below really is a miss.
    let leftover = aside::invalidate_tag("orders").await?;
    if leftover > 0 {
        println!("cold start:  dropped {leftover} entries left by an earlier run");
    }
    println!("key:         {}", revenue_by_month_key("eu", 2025));
    println!();

    let (before, miss) = call(&cache, "eu 2025, first call", revenue_by_month(&db, "eu", 2025)).await?;
    for month in &before {
        println!(
            "    2025-{:02}  {:>6} orders  {:>15}  (largest {})",
            month.month,
            month.orders,
            money(month.revenue_cents),
            money(month.largest_cents)
        );
    }
    let (_, hit) = call(&cache, "eu 2025, second call", revenue_by_month(&db, "eu", 2025)).await?;
    println!("    speed-up: {:.0}x", miss.as_secs_f64() / hit.as_secs_f64().max(1e-9));
    call(&cache, "eu 2024", revenue_by_month(&db, "eu", 2024)).await?;
    let (us_before, _) = call(&cache, "us 2025", revenue_by_month(&db, "us", 2025)).await?;
    println!();

    // New data arrives, in a transaction. The invalidation it calls for waits
    // for the commit: sent before it, a reader in between would cache the old
    // figure again (see `Cache::after_commit`).
    let mut after = cache.after_commit();
    after.invalidate_tag("region:eu");
    let amount_cents: i64 = 1_234_567;
    let id = db
        .run(move |conn| {
            let tx = conn.transaction()?;
            tx.execute(
                "INSERT INTO orders (region, year, month, amount_cents, created_at)
                 VALUES ('eu', 2025, 11, ?1, '2025-11-30 23:59:00')",
                params![amount_cents],
            )?;
            let id = tx.last_insert_rowid();
            tx.commit()?;
            Ok(id)
        })
        .await?;
    println!(
        "inserted:    order #{id}, eu, 2025-11, {} (committed)",
        money(amount_cents)
    );
    let (cached, _) = call(
        &cache,
        "eu 2025, before invalidating",
        revenue_by_month(&db, "eu", 2025),
    )
    .await?;
    println!(
        "    still the cached total {} — the cache cannot know about the insert",
        money(total(&cached))
    );

    let removed = after.commit().await?;
    println!("after the commit, invalidate_tag(\"region:eu\"): {removed} entries removed (eu 2025 and eu 2024)");
    let (after, _) = call(&cache, "eu 2025, after invalidating", revenue_by_month(&db, "eu", 2025)).await?;
    let (us_after, _) = call(
        &cache,
        "us 2025, not tagged region:eu",
        revenue_by_month(&db, "us", 2025),
    )
    .await?;
    println!();

    let (old, new) = (total(&before), total(&after));
    println!("eu 2025 total before: {:>16}", money(old));
    println!("eu 2025 total after:  {:>16}", money(new));
    println!(
        "difference:           {:>16}  ({})",
        money(new - old),
        if new - old == amount_cents {
            "exactly the new order"
        } else {
            "unexpected!"
        }
    );
    println!(
        "us 2025 total:        {:>16}  ({})",
        money(total(&us_after)),
        if total(&us_before) == total(&us_after) {
            "unchanged, still cached"
        } else {
            "changed?"
        }
    );

    let stats = cache.stats();
    let function = stats.function(FUNCTION);
    println!();
    println!(
        "stats {FUNCTION}: {} hits, {} misses, {} computations, {} backend errors; {} entries invalidated in total",
        function.hits, function.misses, function.computations, function.backend_errors, stats.total.invalidations
    );
    Ok(())
}

/// Awaits one call of the cached function, printing how long it took and
/// whether it computed (a miss) or not (a hit), from the cache's own counters.
async fn call<T>(
    cache: &Cache,
    label: &str,
    future: impl Future<Output = Result<T, DbError>>,
) -> Result<(T, Duration), DbError> {
    let computed_before = cache.stats().function(FUNCTION).computations;
    let started = Instant::now();
    let value = future.await?;
    let elapsed = started.elapsed();
    let computed = cache.stats().function(FUNCTION).computations > computed_before;
    let what = if computed { "miss: ran the query" } else { "hit" };
    println!("{label:<30} {elapsed:>10.2?}  {what}");
    Ok((value, elapsed))
}

fn total(months: &[MonthRevenue]) -> i64 {
    months.iter().map(|month| month.revenue_cents).sum()
}

/// Opens the database at `path`, writing the orders first unless a complete set
/// is there. Returns the handle, the number of orders, and whether it generated them.
async fn open_or_generate(path: PathBuf) -> Result<(Db, i64, bool), DbError> {
    let (conn, rows, generated) = tokio::task::spawn_blocking(move || -> rusqlite::Result<_> {
        let mut conn = Connection::open(&path)?;
        let count = |conn: &Connection| conn.query_row("SELECT COUNT(*) FROM orders", [], |row| row.get::<_, i64>(0));
        let generated = !has_table(&conn)? || count(&conn)? < ORDERS;
        if generated {
            generate(&mut conn, &path)?;
        }
        let rows = count(&conn)?;
        Ok((conn, rows, generated))
    })
    .await
    .map_err(DbError::Task)??;
    Ok((Db::new(conn), rows, generated))
}

fn has_table(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'orders'",
        [],
        |row| row.get::<_, i64>(0).map(|n| n > 0),
    )
}

/// Writes `ORDERS` orders in one transaction through one prepared statement.
fn generate(conn: &mut Connection, path: &Path) -> rusqlite::Result<()> {
    println!("generating:  {ORDERS} orders into {} (first run only)", path.display());
    conn.execute_batch(
        "DROP TABLE IF EXISTS orders;
         CREATE TABLE orders (
             id           INTEGER PRIMARY KEY,
             region       TEXT    NOT NULL,
             year         INTEGER NOT NULL,
             month        INTEGER NOT NULL CHECK (month BETWEEN 1 AND 12),
             amount_cents INTEGER NOT NULL,
             created_at   TEXT    NOT NULL
         );",
    )?;
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let tx = conn.transaction()?;
    {
        let mut insert = tx.prepare(
            "INSERT INTO orders (region, year, month, amount_cents, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for _ in 0..ORDERS {
            let region = pick_region(&REGIONS, rng.below(100));
            let year = YEARS[rng.below(YEARS.len() as u64) as usize];
            let month = 1 + rng.below(12) as u32;
            let day = 1 + rng.below(days_in_month(year, month)) as u32;
            let seconds = rng.below(86_400);
            // Mostly small orders, a few large ones; busier at the end of the year.
            let mut amount = 500 + rng.below(15_000) as i64;
            if rng.below(25) == 0 {
                amount += rng.below(250_000) as i64;
            }
            if month >= 11 {
                amount = amount * 13 / 10;
            }
            let created_at = format!(
                "{year}-{month:02}-{day:02} {:02}:{:02}:{:02}",
                seconds / 3600,
                seconds / 60 % 60,
                seconds % 60
            );
            insert.execute(params![region, year, month, amount, created_at])?;
        }
    }
    // The only index serves "latest orders" pages. It does not help a per-region
    // aggregation, which therefore reads the whole table — like many real reports.
    tx.execute_batch("CREATE INDEX orders_created_at ON orders (created_at);")?;
    tx.commit()
}
