use std::collections::HashMap;

use aside::cached;

#[cached(batch = ids, refresh_ahead = 0.8)]
async fn users(ids: Vec<u64>) -> Result<HashMap<u64, String>, std::io::Error> {
    Ok(ids.into_iter().map(|id| (id, id.to_string())).collect())
}

fn main() {}
