use aside::cached;

// The mistake is reported; the function and its companions still exist, so the
// calls below add no errors of their own.
#[cached(ttl = 0)]
async fn total(month: u32) -> u64 {
    u64::from(month)
}

async fn uses() {
    let _: u64 = total(1).await;
    let _: u64 = total_refresh(1).await;
    let _: bool = total_invalidate(1).await.unwrap();
    let _: String = total_key(1);
}

fn main() {
    let _ = uses();
}
