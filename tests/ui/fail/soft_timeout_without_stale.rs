use aside::cached;

#[cached(ttl = 60, soft_timeout = "200ms")]
async fn total(month: u32) -> u64 {
    u64::from(month)
}

fn main() {}
