use aside::cached;

#[cached(lock_ttl = "500ms")]
async fn total(month: u32) -> u64 {
    u64::from(month)
}

fn main() {}
