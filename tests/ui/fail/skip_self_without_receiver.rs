use aside::cached;

#[cached(skip(self))]
async fn total(month: u32) -> u64 {
    u64::from(month)
}

fn main() {}
