use aside::cached;

#[cached(prefix = "monthly reports")]
async fn total(month: u32) -> u64 {
    u64::from(month)
}

fn main() {}
