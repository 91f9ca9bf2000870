use aside::cached;

#[cached(version = -1)]
async fn total(month: u32) -> u64 {
    u64::from(month)
}

fn main() {}
