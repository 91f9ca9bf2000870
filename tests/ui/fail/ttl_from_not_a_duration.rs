use aside::cached;

fn seconds(page: &Vec<u32>) -> u64 {
    page.len() as u64
}

#[cached(ttl_from = seconds)]
async fn search(query: u32) -> Vec<u32> {
    vec![query]
}

fn main() {}
