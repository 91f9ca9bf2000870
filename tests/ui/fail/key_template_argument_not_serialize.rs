use aside::cached;

pub struct Region(String);

#[cached(key = "{region}:{month}")]
async fn total(region: Region, month: u32) -> u64 {
    region.0.len() as u64 + u64::from(month)
}

fn main() {}
