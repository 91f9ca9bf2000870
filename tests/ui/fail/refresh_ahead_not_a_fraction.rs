use aside::cached;

#[cached(ttl = 60, refresh_ahead = 1.5)]
async fn total(month: u32) -> u64 {
    u64::from(month)
}

fn main() {}
