//! What the SQLite examples (`aggregation`, `report`) share: the database handle
//! they pass to cached functions as a skipped argument, its error type, and the
//! small deterministic generator and formatting their data and output use.

use std::fmt;
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

/// What can go wrong in the examples (the cache's own errors never reach a cached function).
#[derive(Debug)]
pub enum DbError {
    Sql(rusqlite::Error),
    Task(tokio::task::JoinError),
    Poisoned,
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DbError::Sql(error) => write!(f, "database error: {error}"),
            DbError::Task(error) => write!(f, "database task failed: {error}"),
            DbError::Poisoned => f.write_str("database connection poisoned by an earlier panic"),
        }
    }
}

impl std::error::Error for DbError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DbError::Sql(error) => Some(error),
            DbError::Task(error) => Some(error),
            DbError::Poisoned => None,
        }
    }
}

impl From<rusqlite::Error> for DbError {
    fn from(error: rusqlite::Error) -> Self {
        DbError::Sql(error)
    }
}

/// The database handle: one SQLite connection, used from blocking threads.
/// Passed to cached functions as a skipped argument — it is not part of the key.
#[derive(Clone)]
pub struct Db {
    conn: Arc<Mutex<Connection>>,
}

impl Db {
    pub fn new(conn: Connection) -> Db {
        Db {
            conn: Arc::new(Mutex::new(conn)),
        }
    }

    /// Runs `query` on a blocking thread: rusqlite is synchronous.
    pub async fn run<T, F>(&self, query: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().map_err(|_| DbError::Poisoned)?;
            query(&mut conn).map_err(DbError::from)
        })
        .await
        .map_err(DbError::Task)?
    }
}

/// `1234567` cents as `12,345.67`.
pub fn money(cents: i64) -> String {
    let units = (cents / 100).abs().to_string();
    let mut grouped = String::new();
    for (i, digit) in units.chars().enumerate() {
        if i > 0 && (units.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    let sign = if cents < 0 { "-" } else { "" };
    format!("{sign}{grouped}.{:02}", (cents % 100).abs())
}

/// The region a `roll` in `0..sum of weights` falls on.
pub fn pick_region(regions: &[(&'static str, u64)], mut roll: u64) -> &'static str {
    for &(region, weight) in regions {
        if roll < weight {
            return region;
        }
        roll -= weight;
    }
    regions[0].0
}

pub fn days_in_month(year: i32, month: u32) -> u64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// xorshift64: a small deterministic generator, so every run writes the same data.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
