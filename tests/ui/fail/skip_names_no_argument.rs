use aside::cached;

#[cached(skip(pool))]
async fn total(db: &str, month: u32) -> u64 {
    let _ = db;
    u64::from(month)
}

fn main() {}
