use std::collections::HashMap;

use aside::cached;

#[cached(tags = ["users", "user:{ids}"], batch = ids)]
async fn users(ids: &[u64]) -> Result<HashMap<u64, String>, std::io::Error> {
    Ok(ids.iter().map(|&id| (id, id.to_string())).collect())
}

fn main() {}
