use aside::cached;

#[cached(key = "{region}:{moth}")]
async fn total(region: String, month: u32) -> u64 {
    region.len() as u64 + u64::from(month)
}

fn main() {}
