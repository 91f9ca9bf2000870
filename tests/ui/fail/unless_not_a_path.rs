use aside::cached;

#[cached(unless = |page: &Vec<u32>| page.is_empty())]
async fn search(query: u32) -> Vec<u32> {
    vec![query]
}

fn main() {}
