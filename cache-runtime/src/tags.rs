//! Tag sets: where a tag's members are recorded, and for how long.

use std::time::Duration;

/// The key of `tag`'s set under `namespace`: `{namespace}~tag:{tag}`.
///
/// It sits outside `{namespace}:`, so no `invalidate_pattern` glob (always
/// applied under `{namespace}:`) can match, and delete, the bookkeeping itself.
pub(crate) fn tag_key(namespace: &str, tag: &str) -> String {
    format!("{namespace}~tag:{tag}")
}

/// Members last registered longer ago than this are pruned: their entries have
/// expired (an entry lives at most the ceiling from its store), unless one
/// computation ran for longer than the ceiling itself.
pub(crate) fn prune_horizon(ceiling: Duration) -> Duration {
    ceiling.saturating_mul(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_keys_are_exact_and_outside_the_entry_namespace() {
        assert_eq!(tag_key("aside", "region:eu"), "aside~tag:region:eu");
        assert_ne!(tag_key("aside", "region:x"), tag_key("aside", "region:x:1"));
        assert!(!tag_key("aside", "orders").starts_with("aside:"));
    }
}
