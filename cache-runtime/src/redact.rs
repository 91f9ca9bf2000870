//! How keys appear in logs: never in full. A key can hold a secret (a session
//! id, an access token used as an argument), so logs and spans carry a short
//! stable hash of it instead — the same key always shows the same hash, so one
//! entry's events can still be followed, and `<fn>_key(..)` hashed the same way
//! tells which entry it was.

use std::fmt;

/// Displays a key as `#` and the 16 hex digits of its XXH3 hash.
///
/// ```ignore
/// assert_eq!(Redacted("aside:session:s3cr3t").to_string().len(), 17);
/// ```
#[derive(Clone, Copy)]
pub(crate) struct Redacted<'a>(pub(crate) &'a str);

impl fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{:016x}", xxhash_rust::xxh3::xxh3_64(self.0.as_bytes()))
    }
}

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hides_the_key_and_is_stable() {
        let shown = Redacted("aside:session:s3cr3t").to_string();
        assert!(!shown.contains("s3cr3t"));
        assert_eq!(shown.len(), 17);
        assert_eq!(shown, Redacted("aside:session:s3cr3t").to_string());
        assert_ne!(shown, Redacted("aside:session:other").to_string());
    }
}
