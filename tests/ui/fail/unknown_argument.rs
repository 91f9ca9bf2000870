use aside::cached;

#[cached(ttl = 60, expiry = 30)]
async fn total(month: u32) -> u64 {
    u64::from(month)
}

fn main() {}
