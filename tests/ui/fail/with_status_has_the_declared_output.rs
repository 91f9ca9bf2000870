use aside::{cached, CacheStatus};

#[cached(ttl = 60)]
async fn stock(sku: u32) -> u32 {
    sku
}

async fn caller() {
    // The first element is the function's output, not the status.
    let (status, _): (CacheStatus, u32) = stock_with_status(1).await;
    let _ = status;
}

fn main() {}
