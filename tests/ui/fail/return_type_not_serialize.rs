use aside::cached;

pub struct Report {
    pub total: u64,
}

#[cached]
async fn report(month: u32) -> Result<Report, std::io::Error> {
    Ok(Report { total: u64::from(month) })
}

fn main() {}
