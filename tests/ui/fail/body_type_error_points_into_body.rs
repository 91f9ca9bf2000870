use aside::cached;

#[cached]
async fn total(month: u32) -> Result<u64, std::io::Error> {
    if month == 0 {
        return Ok("none");
    }
    Ok(u64::from(month))
}

fn main() {}
