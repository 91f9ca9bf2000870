//! `crate = path` when the facade is not reachable as `::aside`.
#![deny(warnings)]

extern crate aside as renamed;

mod reports {
    use renamed::cached;

    #[cached(crate = renamed)]
    pub async fn total(month: u32) -> u64 {
        u64::from(month) * 10
    }
}

mod other {
    use ::aside as facade;

    #[facade::cached(crate = facade, ttl = 5)]
    pub async fn count(n: u8) -> u8 {
        n + 1
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    assert_eq!(reports::total(2).await, 20);
    assert!(reports::total_invalidate(2).await.unwrap());
    assert_eq!(other::count(1).await, 2);
    assert!(other::count_key(1).starts_with("aside:computed:count:v1.1:"));
}
