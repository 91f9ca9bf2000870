//! Tag sets: where a tag's members are recorded, and for how long.
//!
//! A member is scored by the latest time its entry can expire (its lifetime
//! plus the lease it is computed under, from its latest record); it is pruned
//! once that has passed, and a set lives as long as its longest-lived member,
//! within the TTL ceiling. A busy tag set thus holds live entries, not history.

use crate::error::Error;
use crate::key::{check_braces, Piece};

/// The key of `tag`'s set under `namespace`: `{namespace}~tag:{tag}`.
///
/// It sits outside `{namespace}:`, so no `invalidate_pattern` glob (always
/// applied under `{namespace}:`) can match, and delete, the bookkeeping itself.
pub(crate) fn tag_key(namespace: &str, tag: &str) -> String {
    format!("{namespace}~tag:{tag}")
}

/// Checks a [`tag!`](crate::tag) template at compile time: `{}` once per value,
/// no other braces.
#[doc(hidden)]
pub const fn check_template(template: &str, values: usize) {
    let bytes = template.as_bytes();
    let mut at = 0;
    let mut holes = 0;
    while at < bytes.len() {
        if bytes[at] == b'{' && at + 1 < bytes.len() && bytes[at + 1] == b'}' {
            holes += 1;
            at += 2;
            continue;
        }
        if bytes[at] == b'{' || bytes[at] == b'}' {
            panic!("aside::tag!: braces are reserved for `{{}}` placeholders (and hash slots)");
        }
        at += 1;
    }
    if holes != values {
        panic!("aside::tag!: the template needs one `{{}}` per value");
    }
}

/// Renders a [`tag!`](crate::tag): the template's text with each `{}` replaced by
/// the next value.
#[doc(hidden)]
pub fn render(template: &str, values: &[Piece]) -> Result<String, Error> {
    let mut values = values.iter();
    let mut tag = String::with_capacity(template.len() + 16);
    let mut parts = template.split("{}");
    if let Some(first) = parts.next() {
        tag.push_str(first);
    }
    for part in parts {
        match values.next() {
            Some(Piece::Value(Ok(value))) => tag.push_str(value),
            Some(Piece::Value(Err(problem))) => return Err(Error::Key(problem.clone())),
            Some(Piece::Lit(lit)) => tag.push_str(lit),
            None => return Err(Error::Key("aside::tag!: fewer values than `{}`".to_owned())),
        }
        tag.push_str(part);
    }
    check_braces("a tag", &tag).map_err(Error::Key)?;
    Ok(tag)
}

/// A tag from a template and values, each value rendered and escaped exactly as
/// `#[cached(tags = ["region:{region}"])]` renders `{region}` (see
/// [`Piece::value`](crate::key::Piece::value)): strings as themselves, numbers as
/// JSON, `None` as `~`, and every byte other than ASCII letters, digits, `-`, `_`
/// and `.` percent-encoded. The template's own text is kept as written; it may
/// not contain braces other than one `{}` per value (checked at compile time).
///
/// Evaluates to `Result<String, Error>`: [`Error::Key`] when a value does not
/// serialize (strings, numbers, booleans and options always do).
///
/// ```
/// # async fn demo() -> aside::Result<()> {
/// use aside::{Cache, Plain, Policy};
///
/// let cache = Cache::builder().memory().build().await?;
/// let region = "eu west";
/// // The tag `#[cached(tags = ["region:{region}"])]` gives a call with this region:
/// let tag = aside::tag!("region:{}", region)?;
/// assert_eq!(tag, "region:eu%20west");
///
/// let policy = Policy::default().tags([tag.clone()]);
/// let Plain(_) = cache.get_or_compute("report", &policy, || async { Plain(1) }).await;
/// assert_eq!(cache.invalidate_tag(&tag).await?, 1);
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
/// ```
///
/// A template with a stray brace, or with more or fewer `{}` than values, does not
/// compile:
///
/// ```compile_fail,E0080
/// let tag = aside::tag!("region:{eu}:{}", 1);
/// ```
///
/// ```compile_fail,E0080
/// let tag = aside::tag!("region:{}:{}", "eu");
/// ```
#[macro_export]
macro_rules! tag {
    ($template:literal $(, $value:expr)* $(,)?) => {{
        const _: () = $crate::__private::check_tag_template($template, <[&str]>::len(&[$(stringify!($value)),*]));
        $crate::__private::render_tag($template, &[$($crate::key::Piece::value(&$value)),*])
    }};
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

    #[test]
    fn tags_with_braces_are_refused() {
        assert!(check_braces("a tag", "region:eu").is_ok());
        for bad in ["{eu}", "region:{", "}"] {
            assert!(check_braces("a tag", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_tag_macro_renders_as_pieces_do() {
        assert_eq!(crate::tag!("orders").unwrap(), "orders");
        assert_eq!(crate::tag!("region:{}", "a:b{c}").unwrap(), "region:a%3Ab%7Bc%7D");
        assert_eq!(crate::tag!("{}-{}", 1, true,).unwrap(), "1-true");
        assert_eq!(
            crate::tag!("t:{}", ["x"]).unwrap(),
            crate::key::concat([Piece::Lit("t:"), Piece::value(&["x"])]).unwrap()
        );
        let mut unserializable = std::collections::HashMap::new();
        unserializable.insert((1, 2), 3);
        assert!(matches!(crate::tag!("t:{}", unserializable), Err(Error::Key(_))));
    }
}
