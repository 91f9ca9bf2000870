//! The store that stores nothing (`CACHE_BACKEND=off`): every call computes.

use std::time::Duration;

use bytes::Bytes;

use super::{Acquired, Backend, Record};
use crate::error::Result;

#[derive(Debug, Default)]
pub(crate) struct OffStore;

impl Backend for OffStore {
    async fn get(&self, _: &str) -> Result<Option<Bytes>> {
        Ok(None)
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>> {
        Ok(vec![None; keys.len()])
    }

    async fn set(&self, _: &str, _: Bytes, _: Duration) -> Result<()> {
        Ok(())
    }

    async fn exists(&self, _: &str) -> Result<bool> {
        Ok(false)
    }

    async fn ttl(&self, _: &str) -> Result<Option<Duration>> {
        Ok(None)
    }

    async fn ping(&self) -> Result<Duration> {
        Ok(Duration::ZERO)
    }

    async fn register(&self, _: &str, _: Record<'_>) -> Result<()> {
        Ok(())
    }

    /// Every caller may compute: there is nothing to protect.
    async fn acquire_lease(&self, _: &str, _: &str, _: Duration, _: bool, _: Record<'_>) -> Result<Acquired> {
        Ok(Acquired::Taken(None))
    }

    async fn renew_lease(&self, _: &str, _: &str, _: Duration) -> Result<bool> {
        Ok(true)
    }

    async fn release_lease(&self, _: &str, _: &str) -> Result<()> {
        Ok(())
    }

    async fn lease_held(&self, _: &str) -> Result<bool> {
        Ok(false)
    }

    async fn store_leased(&self, _: &str, _: &str, _: Bytes, _: Duration) -> Result<bool> {
        Ok(true)
    }

    async fn invalidate_entry(&self, _: &str) -> Result<bool> {
        Ok(false)
    }

    async fn invalidate_tag(&self, _: &str) -> Result<u64> {
        Ok(0)
    }

    async fn expire_entry(&self, _: &str) -> Result<bool> {
        Ok(false)
    }

    async fn expire_tag(&self, _: &str) -> Result<u64> {
        Ok(0)
    }

    async fn invalidate_pattern(&self, _: &str) -> Result<u64> {
        Ok(0)
    }

    async fn listen(&self, _: Duration) {}
}
