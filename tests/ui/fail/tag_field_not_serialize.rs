use aside::cached;

pub struct Tenant;

pub struct Db {
    pub tenant: Tenant,
}

#[cached(tags = ["tenant:{db.tenant}"], skip(db))]
async fn total(db: &Db, month: u32) -> u64 {
    let _ = db;
    u64::from(month)
}

fn main() {}
