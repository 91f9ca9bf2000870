use aside::cached;

static NOT_A_CACHE: &str = "redis://localhost";

#[cached(cache = NOT_A_CACHE)]
async fn total(month: u32) -> u64 {
    u64::from(month)
}

fn main() {}
