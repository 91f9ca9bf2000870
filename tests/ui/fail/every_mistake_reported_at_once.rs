use aside::cached;

// Three independent mistakes: all three are reported, and the function still exists.
#[cached(ttl = 0, colour = "red", skip(pool))]
async fn total(month: u32) -> u64 {
    u64::from(month)
}

fn main() {
    let _ = total(1);
}
