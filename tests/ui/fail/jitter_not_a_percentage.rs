use aside::cached;

#[cached(ttl = 60, jitter = "a bit")]
async fn total(month: u32) -> u64 {
    u64::from(month)
}

fn main() {}
