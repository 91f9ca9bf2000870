use aside::cached;

pub struct Reports;

impl Reports {
    #[cached]
    pub async fn total(&self, month: u32) -> u64 {
        u64::from(month)
    }
}

fn main() {}
