//! Generic functions: a generic key argument, a generic return type, and a generic
//! skipped argument (its type parameter is left out of `_invalidate` and `_key`,
//! which would otherwise not be callable without naming it).
#![deny(warnings)]

use std::fmt::Display;

use aside::cached;
use serde::de::DeserializeOwned;
use serde::Serialize;

pub trait Source {
    fn load(&self, id: u32) -> String;
}

pub struct Memory;

impl Source for Memory {
    fn load(&self, id: u32) -> String {
        format!("row-{id}")
    }
}

#[cached(skip(source))]
async fn load<S, K>(source: &S, id: u32, tag: K) -> String
where
    S: Source + Sync,
    K: Serialize + Display + Send,
{
    format!("{}:{tag}", source.load(id))
}

#[cached(name = "parse_as")]
async fn parse_as<T: Serialize + DeserializeOwned + std::str::FromStr + Send>(text: &str) -> Option<T> {
    text.parse().ok()
}

#[cached]
async fn first<'a, T: Serialize + Sync>(items: &'a [T]) -> usize {
    items.len()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    assert_eq!(load(&Memory, 7, "x").await, "row-7:x");
    assert!(load_invalidate(7, "x").await.unwrap());
    assert!(load_key(7, 'y').starts_with("aside:computed:load:v1.1:"));
    assert_eq!(load_refresh(&Memory, 7, 1u8).await, "row-7:1");

    assert_eq!(parse_as::<u32>("12").await, Some(12));
    // The type parameter is part of the key: the companions are told it too.
    assert!(parse_as_invalidate::<u32>("12").await.unwrap());
    assert!(!parse_as_invalidate::<u64>("12").await.unwrap());
    assert_eq!(first(&[1, 2, 3]).await, 3);
    assert!(first_key(&["a"]).starts_with("aside:computed:first:v1.1:"));
}
