//! The forms a batch function takes: ids as `&[I]`, `Vec<I>` and `&Vec<I>`, the
//! map under its full path, an `io::Result`, owned and borrowed other arguments,
//! a method, `key`, `stale` and `lock_ttl`; the futures are `Send`.
#![deny(warnings)]
use std::collections::HashMap;

use aside::{cached, Cache};

#[cached(ttl = 60, stale = "1m", lock_ttl = "5s", tags = ["users", "region:{region}"], batch = ids)]
pub async fn slice(region: &str, ids: &[u64]) -> Result<HashMap<u64, String>, std::io::Error> {
    Ok(ids.iter().map(|&id| (id, format!("{region}{id}"))).collect())
}

#[cached(key = "{region}:{ids}", batch = ids)]
pub async fn owned(region: String, mut ids: Vec<String>) -> std::io::Result<std::collections::HashMap<String, usize>> {
    ids.sort();
    Ok(ids.into_iter().map(|id| (id.clone(), id.len() + region.len())).collect())
}

#[cached(batch = ids)]
pub async fn by_ref(ids: &Vec<(u32, u32)>) -> Result<HashMap<(u32, u32), u64>, String> {
    Ok(ids.iter().map(|&(a, b)| ((a, b), u64::from(a) * u64::from(b))).collect())
}

pub struct Users {
    cache: Cache,
}

impl Users {
    #[cached(skip(self), cache = self.cache, batch = ids)]
    pub async fn names(&self, ids: &[u64]) -> Result<HashMap<u64, String>, std::io::Error> {
        let _ = &self.cache;
        Ok(ids.iter().map(|&id| (id, id.to_string())).collect())
    }
}

fn is_send<F: Send>(_: F) {}

fn main() {
    is_send(slice("eu", &[1]));
    is_send(owned("eu".to_owned(), vec![]));
    is_send(by_ref(&vec![]));
    let _ = slice_key("eu", 1);
    let _ = owned_key("eu".to_owned(), "a".to_owned());
    let _ = by_ref_key((1, 2));
    let _ = async {
        let _ = slice_invalidate("eu", 1).await;
        let _ = slice_invalidate_many("eu", &[1, 2]).await;
        let _ = slice_expire("eu", 1).await;
        let _ = owned_invalidate_many("eu".to_owned(), vec!["a".to_owned()]).await;
        let _ = by_ref_invalidate_many(&vec![(1, 2)]).await;
        let users = Users { cache: Cache::builder().memory().build_lazy().unwrap() };
        let _ = users.names(&[1]).await;
        let _ = users.names_key(1);
        let _ = users.names_invalidate(1).await;
    };
}
