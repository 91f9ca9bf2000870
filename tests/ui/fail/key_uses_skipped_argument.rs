use aside::cached;

pub struct Db {
    pub tenant: String,
}

#[cached(key = "{db.tenant}:{month}", skip(db))]
async fn total(db: &Db, month: u32) -> u64 {
    db.tenant.len() as u64 + u64::from(month)
}

fn main() {}
