//! Batch memoization: 100 ids, 90 of them cached, read and completed by
//! `Cache::get_many_or_compute`, against 100 `get_or_compute` calls at once
//! (`join_all`, pipelined on the multiplexed connection) and against a raw
//! `MGET` + decode + one pipelined `SET EX` per missing id (no stampede
//! protection, no tags, no invalidation safety).
//!
//! Every batch asks for 90 ids of a warm pool and 10 ids never asked before,
//! so each batch computes and stores 10 values, whichever side runs it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aside::{Plain, Policy};
use futures_util::future::join_all;
use serde::{Deserialize, Serialize};

use crate::{compare, raw_connection, Contender, Group, Results, Settings, REDIS};

/// Ids per batch, and how many of them are cached.
const BATCH: u64 = 100;
const WARM: u64 = 90;
/// The warm ids every side cycles through.
const POOL: u64 = 900;

/// A small row, as a user lookup returns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
    plan: String,
}

fn user(id: u64) -> User {
    User {
        id,
        name: format!("user {id}"),
        plan: "pro".into(),
    }
}

/// Fresh (never asked) ids, shared by every side.
static NEXT_COLD: AtomicU64 = AtomicU64::new(1_000_000);
/// Where each batch's window into the warm pool starts.
static NEXT_WARM: AtomicU64 = AtomicU64::new(0);

/// The ids of the next batch: 90 from the warm pool, 10 cold.
fn batch_ids() -> Vec<u64> {
    let start = NEXT_WARM.fetch_add(WARM, Ordering::Relaxed);
    let cold = NEXT_COLD.fetch_add(BATCH - WARM, Ordering::Relaxed);
    (0..WARM)
        .map(|i| (start + i) % POOL)
        .chain(cold..cold + (BATCH - WARM))
        .collect()
}

fn policy() -> Policy {
    Policy::new(Duration::from_secs(600))
}

fn key(side: &str, id: u64) -> String {
    format!("bench:batch:{side}:{id}")
}

async fn aside_batch(ids: Vec<u64>) -> HashMap<u64, User> {
    let keys = ids.into_iter().map(|id| (id, key("many", id)));
    REDIS
        .get_many_or_compute(keys, &policy(), |ids: Vec<u64>| async move {
            Ok::<_, std::convert::Infallible>(ids.into_iter().map(|id| (id, user(id))).collect())
        })
        .await
        .unwrap_or_default()
}

async fn aside_singles(ids: Vec<u64>) -> HashMap<u64, User> {
    let policy = policy();
    let calls = ids.into_iter().map(|id| {
        let policy = &policy;
        async move {
            let Plain(found) = REDIS
                .get_or_compute(key("single", id), policy, || async move { Plain(user(id)) })
                .await;
            (id, found)
        }
    });
    join_all(calls).await.into_iter().collect()
}

async fn raw_batch(mut conn: redis::aio::ConnectionManager, ids: Vec<u64>) -> HashMap<u64, User> {
    let keys: Vec<String> = ids.iter().map(|&id| key("raw", id)).collect();
    let found: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
        .arg(&keys)
        .query_async(&mut conn)
        .await
        .expect("MGET");
    let mut users = HashMap::with_capacity(ids.len());
    let mut store = redis::pipe();
    for ((id, key), bytes) in ids.into_iter().zip(keys).zip(found) {
        match bytes.and_then(|bytes| serde_json::from_slice::<User>(&bytes).ok()) {
            Some(found) => {
                users.insert(id, found);
            }
            None => {
                let computed = user(id);
                store
                    .cmd("SET")
                    .arg(key)
                    .arg(serde_json::to_vec(&computed).expect("json"))
                    .arg("EX")
                    .arg(600)
                    .ignore();
                users.insert(id, computed);
            }
        }
    }
    let () = store.query_async(&mut conn).await.expect("SET EX");
    users
}

pub async fn batch(s: &Settings, results: &mut Results) {
    // Warm every side's pool.
    let pool: Vec<u64> = (0..POOL).collect();
    let raw = raw_connection().await;
    assert_eq!(aside_batch(pool.clone()).await.len(), POOL as usize);
    assert_eq!(aside_singles(pool.clone()).await.len(), POOL as usize);
    assert_eq!(raw_batch(raw.clone(), pool).await.len(), POOL as usize);
    println!(
        "# batch: {BATCH} ids a call, {WARM} cached (a ~40-byte JSON row each), {} computed and stored",
        BATCH - WARM
    );

    let ops_per_round = if s.quick { 40 } else { 200 };
    for tasks in [1, 8] {
        let aside = Contender {
            case: "",
            label: "aside get_many_or_compute",
            op: || async {
                let got = aside_batch(batch_ids()).await;
                assert_eq!(got.len(), BATCH as usize);
            },
        };
        let singles = Contender {
            case: "batch of 100 (90% hits) vs 100 get_or_compute",
            label: "aside 100 get_or_compute (join_all)",
            op: || async {
                let got = aside_singles(batch_ids()).await;
                assert_eq!(got.len(), BATCH as usize);
            },
        };
        let raw_mget = Contender {
            case: "batch of 100 (90% hits) vs raw MGET",
            label: "raw redis-rs MGET+from_slice, pipelined SET EX",
            op: {
                let raw = raw.clone();
                move || {
                    let raw = raw.clone();
                    async move {
                        let got = raw_batch(raw, batch_ids()).await;
                        assert_eq!(got.len(), BATCH as usize);
                    }
                }
            },
        };
        compare(
            results,
            Group::Batch,
            tasks,
            ops_per_round,
            s.rounds,
            &aside,
            &[(singles.case, &singles), (raw_mget.case, &raw_mget)],
        )
        .await;
    }
}
