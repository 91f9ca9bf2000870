use aside::cached;

#[cached(batch = ids)]
async fn users(ids: &[u64]) -> Result<Vec<String>, std::io::Error> {
    Ok(ids.iter().map(|id| id.to_string()).collect())
}

fn main() {}
