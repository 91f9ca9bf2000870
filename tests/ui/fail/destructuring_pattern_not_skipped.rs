use aside::cached;

#[cached]
async fn area((width, height): (u32, u32)) -> u64 {
    u64::from(width) * u64::from(height)
}

fn main() {}
