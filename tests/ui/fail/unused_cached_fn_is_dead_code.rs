#![deny(dead_code)]

use aside::cached;

// Only the cached function itself is reported: its companions are allowed to be unused.
#[cached(ttl = 60)]
async fn total(month: u32) -> u64 {
    u64::from(month)
}

fn main() {}
