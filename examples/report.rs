//! A monthly sales report assembled from cached sub-queries, and pre-warmed for
//! the next month with the generated `<fn>_refresh` companions.
//!
//! ```text
//! cargo run --example report                                  # in-process memory, no set-up
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example report  # shared through Redis
//! ```
//!
//! The data is a year of orders (300,000 of them, from 2,000 customers) in an
//! in-memory SQLite database generated at start. Three cached sub-queries —
//! totals per region, top customers, the daily series — each cache for ten
//! minutes; `monthly_report` assembles them and caches the whole report for an
//! hour. The example shows a cold run (every query runs), a warm run (one hit),
//! a rebuild of the report from its still-cached parts, a warm-up of next
//! month's report after which serving it runs no query at all, and customer
//! cards cached one entry per customer by a batch function (`batch = ids`).

use std::collections::HashMap;
use std::fmt;
use std::time::Instant;

use aside::{cached, Cache, Counters};
use rusqlite::{params, Connection};
use sqlite::{days_in_month, money, pick_region, Db, DbError, XorShift};

#[path = "support/sqlite.rs"]
mod sqlite;
use serde::{Deserialize, Serialize};

/// Orders in the generated year.
const ORDERS: u64 = 300_000;
/// Customers placing them.
const CUSTOMERS: u64 = 2_000;
/// The year the data covers.
const YEAR: i32 = 2025;
/// Regions and how many orders in a hundred each gets.
const REGIONS: [(&str, u64); 6] = [
    ("us", 34),
    ("eu", 28),
    ("apac", 18),
    ("uk", 9),
    ("latam", 7),
    ("mea", 4),
];
/// How many customers the report lists.
const TOP: u32 = 5;

/// A calendar month: part of every key, and rendered into the tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Month {
    year: i32,
    month: u32,
}

impl Month {
    fn next(self) -> Month {
        if self.month == 12 {
            Month {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Month {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    /// The days of the month as `[first, first of next)` in `YYYY-MM-DD`.
    fn range(self) -> (String, String) {
        (format!("{self}-01"), format!("{}-01", self.next()))
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{:02}", self.year, self.month)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RegionTotal {
    region: String,
    orders: i64,
    revenue_cents: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CustomerTotal {
    name: String,
    orders: i64,
    revenue_cents: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct DayTotal {
    day: u32,
    orders: i64,
    revenue_cents: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct MonthlyReport {
    month: Month,
    orders: i64,
    revenue_cents: i64,
    regions: Vec<RegionTotal>,
    top_customers: Vec<CustomerTotal>,
    daily: Vec<DayTotal>,
}

/// Orders and revenue per region, largest first.
#[cached(prefix = "report", ttl = "10m", tags = ["sales", "month:{month.year}:{month.month}"], skip(db))]
async fn region_totals(db: &Db, month: Month) -> Result<Vec<RegionTotal>, DbError> {
    let (from, to) = month.range();
    db.run(move |conn| {
        let mut statement = conn.prepare_cached(
            "SELECT region, COUNT(*), SUM(amount_cents) FROM orders
              WHERE day >= ?1 AND day < ?2
              GROUP BY region ORDER BY 3 DESC",
        )?;
        let rows = statement.query_map(params![from, to], |row| {
            Ok(RegionTotal {
                region: row.get(0)?,
                orders: row.get(1)?,
                revenue_cents: row.get(2)?,
            })
        })?;
        rows.collect()
    })
    .await
}

/// The `limit` customers who spent the most.
#[cached(prefix = "report", ttl = "10m", tags = ["sales", "month:{month.year}:{month.month}"], skip(db))]
async fn top_customers(db: &Db, month: Month, limit: u32) -> Result<Vec<CustomerTotal>, DbError> {
    let (from, to) = month.range();
    db.run(move |conn| {
        let mut statement = conn.prepare_cached(
            "SELECT c.name, COUNT(*), SUM(o.amount_cents) FROM orders o JOIN customers c ON c.id = o.customer_id
              WHERE o.day >= ?1 AND o.day < ?2
              GROUP BY o.customer_id ORDER BY 3 DESC LIMIT ?3",
        )?;
        let rows = statement.query_map(params![from, to, limit], |row| {
            Ok(CustomerTotal {
                name: row.get(0)?,
                orders: row.get(1)?,
                revenue_cents: row.get(2)?,
            })
        })?;
        rows.collect()
    })
    .await
}

/// One customer as an account page shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CustomerCard {
    name: String,
    region: String,
    orders: i64,
}

/// The cards of `ids`, one cached entry per customer: a call queries only the
/// customers that are not cached yet, in one `IN (...)` query.
#[cached(prefix = "report", ttl = "10m", tags = ["sales"], skip(db), batch = ids)]
async fn customer_cards(db: &Db, ids: &[u64]) -> Result<HashMap<u64, CustomerCard>, DbError> {
    let ids = ids.to_vec();
    db.run(move |conn| {
        let marks = vec!["?"; ids.len()].join(", ");
        let mut statement = conn.prepare(&format!(
            "SELECT c.id, c.name, c.region, (SELECT COUNT(*) FROM orders o WHERE o.customer_id = c.id)
               FROM customers c WHERE c.id IN ({marks})"
        ))?;
        let rows = statement.query_map(rusqlite::params_from_iter(ids.iter().map(|&id| id as i64)), |row| {
            Ok((
                row.get::<_, i64>(0)? as u64,
                CustomerCard {
                    name: row.get(1)?,
                    region: row.get(2)?,
                    orders: row.get(3)?,
                },
            ))
        })?;
        rows.collect()
    })
    .await
}

/// Orders and revenue per day of the month.
#[cached(prefix = "report", ttl = "10m", tags = ["sales", "month:{month.year}:{month.month}"], skip(db))]
async fn daily_series(db: &Db, month: Month) -> Result<Vec<DayTotal>, DbError> {
    let (from, to) = month.range();
    db.run(move |conn| {
        let mut statement = conn.prepare_cached(
            "SELECT CAST(substr(day, 9, 2) AS INTEGER), COUNT(*), SUM(amount_cents) FROM orders
              WHERE day >= ?1 AND day < ?2
              GROUP BY day ORDER BY day",
        )?;
        let rows = statement.query_map(params![from, to], |row| {
            Ok(DayTotal {
                day: row.get(0)?,
                orders: row.get(1)?,
                revenue_cents: row.get(2)?,
            })
        })?;
        rows.collect()
    })
    .await
}

/// The whole report, from the three cached parts; cached longer than its parts.
#[cached(prefix = "report", ttl = "1h", tags = ["sales", "month:{month.year}:{month.month}"], skip(db))]
async fn monthly_report(db: &Db, month: Month) -> Result<MonthlyReport, DbError> {
    let (regions, top_customers, daily) = tokio::try_join!(
        region_totals(db, month),
        top_customers(db, month, TOP),
        daily_series(db, month)
    )?;
    Ok(MonthlyReport {
        month,
        orders: regions.iter().map(|region| region.orders).sum(),
        revenue_cents: regions.iter().map(|region| region.revenue_cents).sum(),
        regions,
        top_customers,
        daily,
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();

    // Connect now, so a bad REDIS_URL or password fails here rather than on first use.
    let cache = Cache::from_env().await?;
    println!("backend:   {:?}", cache.settings().backend());
    Cache::set_global(cache.clone())?;

    let started = Instant::now();
    let db = generate().await?;
    println!(
        "database:  {ORDERS} orders from {CUSTOMERS} customers, in memory, generated in {:.2?}",
        started.elapsed()
    );

    // A run less than an hour ago against the same Redis left its reports there:
    // drop them so that the cold run below really is cold.
    let leftover = aside::invalidate_tag("sales").await?;
    if leftover > 0 {
        println!("cold start: dropped {leftover} entries left by an earlier run");
    }

    let november = Month { year: YEAR, month: 11 };
    let december = november.next();
    println!("key:       {}", monthly_report_key(november));
    println!();

    let before = cache.stats().total;
    let started = Instant::now();
    let report = monthly_report(&db, november).await?;
    step("cold run", started, before, cache.stats().total);
    print_report(&report);

    let before = cache.stats().total;
    let started = Instant::now();
    monthly_report(&db, november).await?;
    step("warm run", started, before, cache.stats().total);

    // Only the report entry goes: it is rebuilt from its three cached parts.
    let removed = monthly_report_invalidate(november).await?;
    let before = cache.stats().total;
    let started = Instant::now();
    monthly_report(&db, november).await?;
    step("rebuilt from cached parts", started, before, cache.stats().total);
    println!("    (monthly_report_invalidate removed an entry: {removed}; the three parts stayed)");
    println!();

    // What a nightly job runs before anybody opens next month's report: compute
    // every part now and overwrite whatever is cached, then the report from them.
    let before = cache.stats().total;
    let started = Instant::now();
    tokio::try_join!(
        region_totals_refresh(&db, december),
        top_customers_refresh(&db, december, TOP),
        daily_series_refresh(&db, december),
    )?;
    monthly_report_refresh(&db, december).await?;
    step(&format!("warm-up of {december}"), started, before, cache.stats().total);

    // Serving it afterwards — the report, and the daily chart a dashboard shows
    // on its own — runs no query.
    let before = cache.stats().total;
    let started = Instant::now();
    let report = monthly_report(&db, december).await?;
    daily_series(&db, december).await?;
    let after = cache.stats().total;
    step(&format!("serving {december}"), started, before, after);
    println!(
        "    computations before: {}, after: {} — {}",
        before.computations,
        after.computations,
        if after.computations == before.computations {
            "all hits, no query ran"
        } else {
            "something was recomputed!"
        }
    );
    print_report(&report);
    println!();

    // An account page's customer cards, one entry per customer: the second
    // call finds three of its five cached and queries the other two.
    let before = cache.stats().total;
    let started = Instant::now();
    customer_cards(&db, &[1, 2, 3, 4, 5]).await?;
    step("cards of customers 1-5", started, before, cache.stats().total);
    let before = cache.stats().total;
    let started = Instant::now();
    let cards = customer_cards(&db, &[3, 4, 5, 6, 7]).await?;
    step("cards of 3-7 (3-5 cached)", started, before, cache.stats().total);
    if let Some(card) = cards.get(&7) {
        println!(
            "    customer 7: {}, {}, {} orders in {YEAR}",
            card.name, card.region, card.orders
        );
    }

    println!();
    let stats = cache.stats();
    for function in [
        "region_totals",
        "top_customers",
        "daily_series",
        "monthly_report",
        "customer_cards",
    ] {
        let counters = stats.function(&format!("report:{function}"));
        println!(
            "stats report:{function:<15} {:>2} hits, {:>2} misses, {:>2} computations, {} backend errors",
            counters.hits, counters.misses, counters.computations, counters.backend_errors
        );
    }
    Ok(())
}

/// Prints how long a step took and what the cache did meanwhile.
fn step(label: &str, started: Instant, before: Counters, after: Counters) {
    println!(
        "{label:<28} {:>10.2?}  {} hits, {} misses, {} computations",
        started.elapsed(),
        after.hits - before.hits,
        after.misses - before.misses,
        after.computations - before.computations
    );
}

fn print_report(report: &MonthlyReport) {
    println!(
        "    {}: {} orders, {}",
        report.month,
        report.orders,
        money(report.revenue_cents)
    );
    let regions: Vec<String> = report
        .regions
        .iter()
        .map(|region| format!("{} {}", region.region, money(region.revenue_cents)))
        .collect();
    println!("    regions: {}", regions.join(", "));
    for (rank, customer) in report.top_customers.iter().enumerate() {
        println!(
            "    #{} {:<24} {:>4} orders {:>14}",
            rank + 1,
            customer.name,
            customer.orders,
            money(customer.revenue_cents)
        );
    }
    println!("    daily:   {}", sparkline(&report.daily));
}

/// The daily revenue as one line of block characters.
fn sparkline(days: &[DayTotal]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let low = days.iter().map(|day| day.revenue_cents).min().unwrap_or(0);
    let high = days.iter().map(|day| day.revenue_cents).max().unwrap_or(0);
    let span = (high - low).max(1);
    days.iter()
        .map(|day| BARS[((day.revenue_cents - low) * 7 / span) as usize])
        .collect()
}

/// Builds the in-memory database: customers, then a year of orders, in one transaction.
async fn generate() -> Result<Db, DbError> {
    let conn = tokio::task::spawn_blocking(|| -> rusqlite::Result<Connection> {
        let mut conn = Connection::open_in_memory()?;
        conn.execute_batch(
            "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, region TEXT NOT NULL);
             CREATE TABLE orders (
                 id           INTEGER PRIMARY KEY,
                 customer_id  INTEGER NOT NULL REFERENCES customers (id),
                 region       TEXT    NOT NULL,
                 day          TEXT    NOT NULL,
                 amount_cents INTEGER NOT NULL
             );",
        )?;
        const FIRST: [&str; 12] = [
            "Northwind",
            "Blue Harbor",
            "Copperleaf",
            "Granite",
            "Juniper",
            "Lakeside",
            "Meridian",
            "Oakridge",
            "Pioneer",
            "Redwood",
            "Silverline",
            "Summit",
        ];
        const SECOND: [&str; 8] = [
            "Traders",
            "Supply",
            "Logistics",
            "Foods",
            "Outfitters",
            "Labs",
            "Holdings",
            "Works",
        ];
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let tx = conn.transaction()?;
        {
            let mut customer = tx.prepare("INSERT INTO customers (id, name, region) VALUES (?1, ?2, ?3)")?;
            let mut regions = Vec::with_capacity(CUSTOMERS as usize);
            for id in 0..CUSTOMERS {
                let name = format!(
                    "{} {} {}",
                    FIRST[(id % 12) as usize],
                    SECOND[(id / 12 % 8) as usize],
                    id / 96 + 1
                );
                let region = pick_region(&REGIONS, rng.below(100));
                customer.execute(params![id as i64, name, region])?;
                regions.push(region);
            }
            let mut order =
                tx.prepare("INSERT INTO orders (customer_id, region, day, amount_cents) VALUES (?1, ?2, ?3, ?4)")?;
            for _ in 0..ORDERS {
                // A few customers place most orders: the product of two uniform draws.
                let customer_id = rng.below(CUSTOMERS) * rng.below(CUSTOMERS) / CUSTOMERS;
                let month = 1 + rng.below(12) as u32;
                let day = 1 + rng.below(days_in_month(YEAR, month)) as u32;
                // Weekends-ish: every seventh day is slower.
                let mut amount = 800 + rng.below(20_000) as i64;
                if day % 7 == 0 {
                    amount /= 2;
                }
                if rng.below(40) == 0 {
                    amount += rng.below(400_000) as i64;
                }
                let day = format!("{YEAR}-{month:02}-{day:02}");
                order.execute(params![customer_id as i64, regions[customer_id as usize], day, amount])?;
            }
        }
        tx.commit()?;
        Ok(conn)
    })
    .await
    .map_err(DbError::Task)??;
    Ok(Db::new(conn))
}
