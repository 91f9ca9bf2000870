use std::collections::HashMap;

use aside::cached;

fn is_empty(name: &String) -> bool {
    name.is_empty()
}

#[cached(batch = ids, unless = is_empty)]
async fn users(ids: &[u64]) -> Result<HashMap<u64, String>, std::io::Error> {
    Ok(ids.iter().map(|&id| (id, id.to_string())).collect())
}

fn main() {}
