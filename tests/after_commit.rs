//! Invalidation after commit (`Cache::after_commit`): invalidations collected
//! while a real database transaction runs (SQLite, a file, two connections as
//! two requests would have) are sent once it commits and dropped on rollback;
//! and why: invalidating before the commit lets a reader cache the old data.
//!
//! On the memory backend and a single `redis-server`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use aside::{cached, Cache};
use rusqlite::Connection;
use support::Fixture;

mod support;

on_backends!(
    [memory, redis]
    a_committed_transaction_invalidates_its_tags,
    a_rolled_back_transaction_invalidates_nothing,
    invalidating_before_the_commit_caches_the_old_data,
);

/// A database file of its own for each test, with an `orders` table.
struct Orders {
    path: PathBuf,
    reader: Mutex<Connection>,
    queries: AtomicUsize,
}

impl Orders {
    fn new(name: &str) -> Orders {
        let path = std::env::temp_dir().join(format!("aside-after-commit-{name}-{}.sqlite3", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let conn = Connection::open(&path).expect("open");
        conn.execute_batch("CREATE TABLE orders (amount INTEGER NOT NULL); INSERT INTO orders VALUES (10), (20);")
            .expect("schema");
        Orders {
            reader: Mutex::new(Connection::open(&path).expect("reader")),
            path,
            queries: AtomicUsize::new(0),
        }
    }

    /// A connection for a writing request.
    fn writer(&self) -> Connection {
        Connection::open(&self.path).expect("writer")
    }

    fn sum(&self) -> i64 {
        self.queries.fetch_add(1, Ordering::SeqCst);
        let reader = self.reader.lock().unwrap();
        reader
            .query_row("SELECT SUM(amount) FROM orders", [], |row| row.get(0))
            .expect("sum")
    }
}

impl Drop for Orders {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cached(ttl = 300, tags = ["orders"], cache = cache, skip(cache, db))]
async fn total(cache: &Cache, db: &Orders) -> i64 {
    db.sum()
}

async fn a_committed_transaction_invalidates_its_tags(fx: Fixture) {
    let cache = fx.cache().await;
    let db = Orders::new("commit");
    assert_eq!(total(&cache, &db).await, 30);

    let mut writer = db.writer();
    let tx = writer.transaction().unwrap();
    let mut after = cache.after_commit();
    tx.execute("INSERT INTO orders VALUES (5)", []).unwrap();
    after.invalidate_tag("orders");
    assert_eq!(after.len(), 1);
    // Until the commit, readers keep the cached figure (the database agrees).
    assert_eq!(total(&cache, &db).await, 30);
    tx.commit().unwrap();
    assert_eq!(after.commit().await.unwrap(), 1, "the cached total is removed");
    assert_eq!(total(&cache, &db).await, 35);
    assert_eq!(db.queries.load(Ordering::SeqCst), 2);
}

async fn a_rolled_back_transaction_invalidates_nothing(fx: Fixture) {
    let cache = fx.cache().await;
    let db = Orders::new("rollback");
    assert_eq!(total(&cache, &db).await, 30);

    let mut writer = db.writer();
    {
        let tx = writer.transaction().unwrap();
        let mut after = cache.after_commit();
        tx.execute("INSERT INTO orders VALUES (5)", []).unwrap();
        after.invalidate_tag("orders").invalidate_pattern("*");
        tx.rollback().unwrap();
        drop(after);
    }
    assert_eq!(total(&cache, &db).await, 30, "still cached, and still right");
    assert_eq!(db.queries.load(Ordering::SeqCst), 1, "nothing was invalidated");
    assert!(fx.holds(&cache, &total_key(&cache)).await);
}

/// The bug `after_commit` exists for: an invalidation sent inside the
/// transaction lets a reader in between cache what the database still says.
async fn invalidating_before_the_commit_caches_the_old_data(fx: Fixture) {
    let cache = fx.cache().await;
    let db = Orders::new("early");
    assert_eq!(total(&cache, &db).await, 30);

    let mut writer = db.writer();
    let tx = writer.transaction().unwrap();
    tx.execute("INSERT INTO orders VALUES (5)", []).unwrap();
    cache.invalidate_tag("orders").await.unwrap(); // too early
    assert_eq!(
        total(&cache, &db).await,
        30,
        "a reader recomputes from the uncommitted state"
    );
    tx.commit().unwrap();
    assert_eq!(
        total(&cache, &db).await,
        30,
        "and that old figure stays cached after the commit"
    );
}
