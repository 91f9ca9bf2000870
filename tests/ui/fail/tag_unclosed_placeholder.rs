use aside::cached;

#[cached(tags = ["region:{region"])]
async fn total(region: String, month: u32) -> u64 {
    region.len() as u64 + u64::from(month)
}

fn main() {}
