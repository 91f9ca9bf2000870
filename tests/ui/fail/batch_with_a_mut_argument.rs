use std::collections::HashMap;

use aside::cached;

#[cached(skip(log), batch = ids)]
async fn users(log: &mut Vec<u64>, ids: &[u64]) -> Result<HashMap<u64, String>, std::io::Error> {
    log.extend_from_slice(ids);
    Ok(ids.iter().map(|&id| (id, id.to_string())).collect())
}

fn main() {}
