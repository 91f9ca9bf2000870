use aside::cached;

#[cached(ttl = 60)]
pub struct Report {
    pub total: u64,
}

fn main() {}
