use aside::cached;

#[cached(wait = "2days")]
async fn total(month: u32) -> u64 {
    u64::from(month)
}

fn main() {}
