//! Methods in an impl block: `&self` skipped, the cache taken from `self`, an
//! associated function without receiver, and `self` used in a tag.
#![deny(warnings)]

use aside::{cached, Cache};

pub struct Reports {
    cache: Cache,
    tenant: String,
}

impl Reports {
    /// The companions keep `&self`, since `cache = self.cache` needs it.
    #[cached(skip(self), cache = self.cache, tags = ["tenant:{self.tenant}"])]
    pub async fn total(&self, month: u32) -> Result<u64, std::io::Error> {
        Ok(u64::from(month) + self.tenant.len() as u64)
    }

    /// The global cache: the companions are associated functions without `self`.
    #[cached(skip(self))]
    pub async fn label(&self, month: u32) -> String {
        format!("{}-{month}", self.tenant)
    }

    /// Without a receiver.
    #[cached(name = "Reports::months")]
    pub async fn months(year: u16) -> Vec<u32> {
        let _ = year;
        (1..=12).collect()
    }

    /// `self` by value.
    #[cached(skip(self))]
    pub async fn into_len(self, extra: u8) -> usize {
        self.tenant.len() + usize::from(extra)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let reports = Reports {
        cache: Cache::builder().memory().build().await.unwrap(),
        tenant: "acme".to_owned(),
    };
    assert_eq!(reports.total(11).await.unwrap(), 15);
    assert!(reports.total_key(11).starts_with("aside:computed:Reports::total:v1.1:"));
    assert!(reports.total_invalidate(11).await.unwrap());
    assert_eq!(reports.total_refresh(11).await.unwrap(), 15);
    assert_eq!(
        reports.cache.stats().function("computed:Reports::total").computations,
        2
    );

    assert_eq!(reports.label(3).await, "acme-3");
    assert!(Reports::label_key(3).starts_with("aside:computed:Reports::label:v1.1:"));
    assert!(Reports::label_invalidate(3).await.unwrap());
    assert_eq!(reports.label_refresh(3).await, "acme-3");

    assert_eq!(Reports::months(2026).await.len(), 12);
    assert!(Reports::months_key(2026).starts_with("aside:computed:Reports::months:v1.1:"));
    assert!(Reports::months_invalidate(2026).await.unwrap());
    assert_eq!(Reports::months_refresh(2026).await.len(), 12);

    assert_eq!(reports.into_len(1).await, 5);
    assert!(Reports::into_len_invalidate(1).await.unwrap());
}
