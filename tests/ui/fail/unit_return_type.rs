use aside::cached;

#[cached]
async fn warm_up(month: u32) -> () {
    let _ = month;
}

fn main() {}
