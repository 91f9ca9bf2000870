use std::collections::{HashMap, HashSet};

use aside::cached;

#[cached(batch = ids)]
async fn users(ids: HashSet<u64>) -> Result<HashMap<u64, String>, std::io::Error> {
    Ok(ids.into_iter().map(|id| (id, id.to_string())).collect())
}

fn main() {}
