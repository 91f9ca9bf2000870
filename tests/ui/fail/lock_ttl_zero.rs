use aside::cached;

#[cached(lock_ttl = 0)]
async fn total(month: u32) -> u64 {
    u64::from(month)
}

fn main() {}
