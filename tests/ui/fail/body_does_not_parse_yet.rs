use aside::cached;

// Mid-edit, the body does not parse yet: only that is reported. The function and
// its companions still exist, so the calls below add no errors of their own.
#[cached]
async fn total(month: u32) -> u64 {
    let half = ;
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
