//! Tag sets: where a tag's members are recorded, and for how long.
//!
//! A member is scored by the latest time its entry can expire (its lifetime
//! plus the lease it is computed under, from its latest record); it is pruned
//! once that has passed, and a set lives as long as its longest-lived member,
//! within the TTL ceiling. A busy tag set thus holds live entries, not history.

/// The key of `tag`'s set under `namespace`: `{namespace}~tag:{tag}`.
///
/// It sits outside `{namespace}:`, so no `invalidate_pattern` glob (always
/// applied under `{namespace}:`) can match, and delete, the bookkeeping itself.
pub(crate) fn tag_key(namespace: &str, tag: &str) -> String {
    format!("{namespace}~tag:{tag}")
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
