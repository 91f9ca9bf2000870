use std::collections::HashMap;

use aside::cached;

#[cached(skip(db, ids), batch = ids)]
async fn users(db: &str, ids: &[u64]) -> Result<HashMap<u64, String>, std::io::Error> {
    Ok(ids.iter().map(|&id| (id, format!("{db}{id}"))).collect())
}

fn main() {}
