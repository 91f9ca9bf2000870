//! Reference arguments, `impl Trait` arguments, `mut` bindings and raw identifiers.
#![deny(warnings)]

use std::borrow::Cow;
use std::collections::BTreeMap;

use aside::cached;
use serde::Serialize;

#[cached]
async fn describe(name: &str, bytes: &[u8], map: &BTreeMap<String, u32>, cow: Cow<'_, str>) -> String {
    format!("{name}:{}:{}:{cow}", bytes.len(), map.len())
}

#[cached]
async fn width(value: impl Serialize + Send + Sync, mut scale: u32) -> u32 {
    let _ = serde_json::to_string(&value);
    scale *= 2;
    scale
}

#[cached(key = "{type}:{len}", tags = ["kind:{r#type}"])]
async fn kind(r#type: &str, len: usize) -> String {
    format!("{type}/{len}", type = r#type)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let map = BTreeMap::from([("a".to_owned(), 1)]);
    assert_eq!(describe("n", b"xyz", &map, Cow::Borrowed("c")).await, "n:3:1:c");
    assert!(describe_invalidate("n", b"xyz", &map, Cow::Borrowed("c"))
        .await
        .unwrap());
    assert_eq!(width([1, 2], 3).await, 6);
    assert!(width_key([1, 2], 3).starts_with("aside:computed:width:v1.1:"));
    assert_eq!(kind("pdf", 2).await, "pdf/2");
    assert_eq!(kind_key("pdf", 2), "aside:computed:kind:v1.1:pdf:2");
}
