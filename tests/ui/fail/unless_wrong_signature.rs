use aside::cached;

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[cached(unless = is_zero)]
async fn search(query: u32) -> Result<Vec<u32>, std::io::Error> {
    Ok(vec![query])
}

fn main() {}
