use aside::cached;

#[cached(stale = "5 fortnights")]
async fn total(month: u32) -> u64 {
    u64::from(month)
}

fn main() {}
