use aside::cached;

#[cached(cache_none = true)]
async fn total(month: u32) -> Result<u64, std::io::Error> {
    Ok(u64::from(month))
}

fn main() {}
