use aside::cached;

pub struct Db;

impl Db {
    fn total(&self, month: u32) -> u64 {
        u64::from(month)
    }
}

#[cached(ttl = 60, refresh_ahead = 0.8, skip(db))]
async fn total(db: &Db, month: u32) -> u64 {
    db.total(month)
}

fn main() {}
