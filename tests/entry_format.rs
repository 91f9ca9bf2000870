//! What an entry is in the store, and what a read does with bytes it cannot use.
//!
//! - The entry format: `EntryFormat::MessagePack` entries are smaller than JSON and
//!   read back; caches of either format read each other's entries (a fleet switching
//!   formats one process at a time); a value whose array form would not read back
//!   is stored as JSON rather than missed for ever.
//! - Guarantee 8, bad data: an entry that does not decode — another type, bytes
//!   that are no entry at all, an entry of a future format — is a counted miss
//!   (`decode_errors`), recomputed and overwritten, so the next call is a hit.
//!
//! Runs on the memory backend and on a `redis-server` started for the test; the
//! stored bytes are read (and corrupted) with plain Redis commands, so those parts
//! run on Redis only. (Arbitrary stored bytes: `tests/properties.rs`.)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aside::{Cache, EntryFormat, Plain, Policy};
use serde::{Deserialize, Serialize};
use support::{report, Fixture, Report, Server};

mod support;

on_backends!(
    [memory, redis]
    entry_of_another_type_is_a_counted_miss_that_heals,
    compact_entries_are_smaller_and_read_back,
);

async fn entry_of_another_type_is_a_counted_miss_that_heals(fx: Fixture) {
    let cache = fx.cache().await;
    cache
        .set_json("shape", &"a string, not a report", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(cache.get_json::<Report>("shape").await.unwrap(), None);
    assert_eq!(cache.stats().total.decode_errors, 1);

    let policy = Policy::new(Duration::from_secs(60));
    let runs = AtomicUsize::new(0);
    for _ in 0..2 {
        let got: Result<Report, ()> = cache
            .get_or_compute("shape", &policy, || async {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok(report())
            })
            .await;
        assert_eq!(got.unwrap(), report());
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the bad entry was overwritten");
    let stats = cache.stats().total;
    assert_eq!((stats.decode_errors, stats.misses, stats.hits), (2, 1, 1));
}

/// A struct that leaves a field out when serializing it: in MessagePack's array
/// form, `total` would land in `note`'s place.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Sparse {
    id: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    note: Option<String>,
    total: u64,
}

async fn compact_entries_are_smaller_and_read_back(fx: Fixture) {
    let packed = fx
        .builder()
        .entry_format(EntryFormat::MessagePack)
        .build()
        .await
        .unwrap();
    let policy = Policy::new(Duration::from_secs(60)).function("compact");
    let runs = AtomicUsize::new(0);
    let call = |cache: &Cache, key: &'static str| {
        let (policy, runs) = (&policy, &runs);
        let cache = cache.clone();
        async move {
            let got: Result<Report, ()> = cache
                .get_or_compute(key, policy, || async {
                    runs.fetch_add(1, Ordering::SeqCst);
                    Ok(report())
                })
                .await;
            got.unwrap()
        }
    };
    assert_eq!(call(&packed, "compact:report").await, report());
    assert_eq!(call(&packed, "compact:report").await, report());
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the second call is a hit");
    assert_eq!(
        packed.get_json::<Report>("compact:report").await.unwrap(),
        Some(report())
    );

    if let Some(bytes) = fx.stored_bytes(&packed.full_key("compact:report").unwrap()) {
        let json = serde_json::to_vec(&report()).unwrap();
        assert_eq!(bytes[..2], [0xA5, 2], "header of a MessagePack entry");
        assert!(
            bytes.len() < json.len(),
            "{} bytes packed, {} as JSON",
            bytes.len(),
            json.len()
        );

        // A fleet switching formats one process at a time: each reads the other's.
        let plain = fx.cache().await;
        assert_eq!(call(&plain, "compact:report").await, report());
        assert_eq!(runs.load(Ordering::SeqCst), 1, "the JSON cache hit the packed entry");
        assert_eq!(call(&plain, "compact:json").await, report());
        assert_eq!(fx.stored_bytes(&plain.full_key("compact:json").unwrap()).unwrap()[1], 1);
        assert_eq!(call(&packed, "compact:json").await, report());
        assert_eq!(runs.load(Ordering::SeqCst), 2, "the packed cache hit the JSON entry");
    }

    // A value whose array form does not read back is stored as JSON: a hit next time.
    let sparse = Sparse {
        id: 7,
        note: None,
        total: 42,
    };
    let sparse_runs = AtomicUsize::new(0);
    for _ in 0..2 {
        let Plain(got) = packed
            .get_or_compute("compact:sparse", &policy, || async {
                sparse_runs.fetch_add(1, Ordering::SeqCst);
                Plain(sparse.clone())
            })
            .await;
        assert_eq!(got, sparse);
    }
    assert_eq!(sparse_runs.load(Ordering::SeqCst), 1, "never a permanent miss");
    if let Some(bytes) = fx.stored_bytes(&packed.full_key("compact:sparse").unwrap()) {
        assert_eq!(bytes[1], 1, "stored as JSON");
    }
    assert_eq!(packed.stats().function("compact").decode_errors, 0);
}

/// Redis only: bytes that are not an entry at all, or an entry of a future format.
/// (The memory store holds only what the cache wrote: there are no foreign bytes to plant.)
#[tokio::test]
async fn redis_corrupt_entries_are_counted_misses() {
    let fx = Fixture::redis();
    let Server::Single(server) = &fx.server else {
        unreachable!()
    };
    let cache = fx.cache().await;
    let mut conn = server.connection();
    let mut future_format = vec![0xA5u8, 9];
    future_format.extend_from_slice(&[0; 8]);
    future_format.extend_from_slice(b"{\"a\":1}");
    let cases: [(&str, &[u8]); 3] = [
        ("garbage", b"\x00\x01not json"),
        ("plain-json", b"{\"region\":\"eu\"}"),
        ("future", &future_format),
    ];
    for (i, (name, bytes)) in cases.iter().enumerate() {
        let _: () = redis::cmd("SET")
            .arg(format!("aside:{name}"))
            .arg(*bytes)
            .query(&mut conn)
            .unwrap();
        let got: Result<Report, ()> = cache
            .get_or_compute(*name, &Policy::default(), || async { Ok(report()) })
            .await;
        assert_eq!(got.unwrap(), report());
        assert_eq!(cache.stats().total.decode_errors, i as u64 + 1);
        // Healed: the next call is a hit.
        assert_eq!(cache.get_json::<Report>(*name).await.unwrap(), Some(report()));
    }
}
