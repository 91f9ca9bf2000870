//! Keys: the stable layout every entry is stored under.
//!
//! A function's entry lives at
//! `{namespace}:{prefix}:{name}:v{key_version}.{version}:{args}`, where `{args}` is
//! either a readable rendering of the arguments (`key = "{region}:{month}"`) with
//! every value escaped, or the 128-bit xxh3 digest of the canonical JSON of the key
//! arguments, as 32 hex digits. Hand-written keys ([`Key::raw`]) live at
//! `{namespace}:{key}`.
//!
//! Escaping keeps values from forging structure: every byte of a rendered value
//! other than ASCII letters, digits, `-`, `_` and `.` is percent-encoded, so a
//! value can never produce `:`, `*`, `?`, `[`, `{`, `}`, `%` or white space of its
//! own. `null` renders as `~`, which no escaped string can produce.
//!
//! Floats JSON cannot write get values of their own at every depth: `NaN`, `inf`
//! and `-inf` digest as the objects `{"$aside:float":"nan"}` (`"inf"`, `"-inf"`)
//! and render as `~nan`, `~inf` and `~-inf`, so `f(f64::NAN)`, `f(f64::INFINITY)`
//! and `f(None)` never share an entry. `-0.0` is written `-0.0`, apart from `0.0`.
//! Every other value is written exactly as `serde_json` writes it.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};

mod floats;

/// What every tag and key template literal must not contain: a `{` or `}` would
/// make Redis Cluster hash only part of the key, putting a tag set and its detached
/// copy, or an entry and its lease, in different slots (`CROSSSLOT`).
const RESERVED: [char; 2] = ['{', '}'];

/// Characters a `prefix` or `name` segment may not contain, besides white
/// space: hash-slot braces and glob characters. The macro checks the same set
/// at compile time (its `SEGMENT_RESERVED`; a test on each side pins both to
/// this text).
pub const SEGMENT_RESERVED: &str = "{}*?[]";

/// `true` if `segment` can be a `prefix` or `name` key segment: non-empty, no
/// white space, nothing of [`SEGMENT_RESERVED`].
///
/// ```
/// assert!(aside::key::is_key_segment("computed"));
/// assert!(!aside::key::is_key_segment("a*b"));
/// ```
pub fn is_key_segment(segment: &str) -> bool {
    // On every call of a cached function: one table lookup per byte while the
    // text is ASCII, the character rules for the rest.
    for byte in segment.bytes() {
        if !byte.is_ascii() {
            return !segment.contains(|c: char| c.is_whitespace() || SEGMENT_RESERVED.contains(c));
        }
        if REFUSED_ASCII[usize::from(byte)] {
            return false;
        }
    }
    !segment.is_empty()
}

/// The ASCII bytes [`is_key_segment`] refuses: white space and [`SEGMENT_RESERVED`].
const REFUSED_ASCII: [bool; 128] = {
    let mut refused = [false; 128];
    let mut byte = 0;
    while byte < 128 {
        // `char::is_whitespace` for ASCII: space, \t, \n, vertical tab, form feed, \r.
        refused[byte] = matches!(byte, 0x09..=0x0d | 0x20);
        byte += 1;
    }
    let reserved = SEGMENT_RESERVED.as_bytes();
    let mut at = 0;
    while at < reserved.len() {
        refused[reserved[at] as usize] = true;
        at += 1;
    }
    refused
};

/// Refuses a tag (or a rendered template) that contains hash-slot braces.
///
/// The text itself is left out of the problem: tags may carry user ids.
pub(crate) fn check_braces(what: &str, text: &str) -> Result<(), String> {
    if text.contains(RESERVED) {
        return Err(format!(
            "{what} contains `{{` or `}}`, which are reserved for hash slots; \
             build tags with `aside::tag!`, which escapes values"
        ));
    }
    Ok(())
}

use floats::Tagged;

/// Bytes of a rendered value left as they are; everything else is percent-encoded.
const ESCAPED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.');

/// Whether a function key's `prefix` and `name` are known to be key segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Segments {
    /// Text from anywhere: checked with [`is_key_segment`] when the key is built.
    Unchecked,
    /// Literals `#[cached]` checked at compile time by the same rule (its
    /// `SEGMENT_RESERVED`, pinned to this module's): not checked again on every call.
    Checked,
}

/// Where an entry lives, before the cache adds its namespace and key version.
///
/// Built by `#[cached]` for each call, or by hand:
///
/// ```
/// use aside::Key;
/// // A hand-written key: stored at "{namespace}:user:42".
/// let user = Key::raw("user:42");
/// // A function key with the arguments digested.
/// let revenue = Key::digest("computed", "revenue", 1, &("eu", 11));
/// // A function key with the arguments rendered readably.
/// use aside::key::Piece;
/// let readable = Key::template("computed", "revenue", 1, [Piece::value(&"eu"), Piece::Lit(":"), Piece::value(&11)]);
/// # let _ = (user, revenue, readable);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key(Repr);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Repr {
    Raw(String),
    Function {
        prefix: Cow<'static, str>,
        name: Cow<'static, str>,
        version: u32,
        args: Args,
    },
    Invalid(String),
}

/// The argument segment of a function's key.
#[derive(Clone, PartialEq, Eq)]
enum Args {
    /// The digest of the arguments' canonical JSON, written as 32 hex digits
    /// straight into the full key.
    Digest(u128),
    /// A rendered `key = "..."` template.
    Text(String),
}

impl std::fmt::Debug for Args {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // As the key shows it.
            Args::Digest(digest) => write!(f, "Digest({digest:032x})"),
            Args::Text(text) => f.debug_tuple("Text").field(text).finish(),
        }
    }
}

/// One piece of a `key = "..."` template: literal text, or an argument's rendered value.
#[derive(Clone, Debug)]
pub enum Piece {
    /// Text written as it is.
    Lit(&'static str),
    /// A value rendered by [`Piece::value`], or why it could not be.
    Value(std::result::Result<String, String>),
}

impl Piece {
    /// Renders `value` for a key or tag: strings as themselves, numbers and booleans
    /// as their JSON text, `null` as `~`, arrays and objects as canonical JSON; then escaped.
    pub fn value<T: Serialize + ?Sized>(value: &T) -> Piece {
        Piece::Value(render_value(value).map_err(|e| e.to_string()))
    }
}

impl Key {
    /// A hand-written key, stored at `{namespace}:{key}`.
    ///
    /// Hash-slot braces are reserved for the runtime: a key containing `{` or `}`
    /// is rejected when used.
    pub fn raw(key: impl Into<String>) -> Key {
        let key = key.into();
        if key.contains(['{', '}']) {
            return Key(Repr::Invalid(format!(
                "key `{key}` contains `{{` or `}}`, which are reserved for hash slots"
            )));
        }
        if key.is_empty() {
            return Key(Repr::Invalid("empty key".to_owned()));
        }
        Key(Repr::Raw(key))
    }

    /// A function's key whose argument segment is the 128-bit xxh3 digest of the
    /// canonical JSON of `args` (object keys sorted at every depth), as 32 hex digits.
    pub fn digest<A: Serialize + ?Sized>(
        prefix: impl Into<Cow<'static, str>>,
        name: impl Into<Cow<'static, str>>,
        version: u32,
        args: &A,
    ) -> Key {
        Key::digest_of(Segments::Unchecked, prefix.into(), name.into(), version, args)
    }

    /// [`Key::digest`], its `prefix` and `name` checked as `segments` says.
    pub(crate) fn digest_of<A: Serialize + ?Sized>(
        segments: Segments,
        prefix: Cow<'static, str>,
        name: Cow<'static, str>,
        version: u32,
        args: &A,
    ) -> Key {
        match canonical_digest(args) {
            Ok(digest) => Key::function(segments, prefix, name, version, Args::Digest(digest)),
            Err(e) => Key(Repr::Invalid(e.to_string())),
        }
    }

    /// A function's key whose argument segment is the concatenation of `pieces`.
    ///
    /// `{` and `}` are reserved for hash slots: a literal piece containing one
    /// makes the key fail with [`Error::Key`] when used (values are escaped, so
    /// they never bring one).
    pub fn template(
        prefix: impl Into<Cow<'static, str>>,
        name: impl Into<Cow<'static, str>>,
        version: u32,
        pieces: impl IntoIterator<Item = Piece>,
    ) -> Key {
        Key::template_of(Segments::Unchecked, prefix.into(), name.into(), version, pieces)
    }

    /// [`Key::template`], its `prefix` and `name` checked as `segments` says.
    pub(crate) fn template_of(
        segments: Segments,
        prefix: Cow<'static, str>,
        name: Cow<'static, str>,
        version: u32,
        pieces: impl IntoIterator<Item = Piece>,
    ) -> Key {
        match concat(pieces) {
            Ok(args) => Key::function(segments, prefix, name, version, Args::Text(args)),
            Err(problem) => Key(Repr::Invalid(problem)),
        }
    }

    fn function(
        segments: Segments,
        prefix: Cow<'static, str>,
        name: Cow<'static, str>,
        version: u32,
        args: Args,
    ) -> Key {
        if segments == Segments::Unchecked {
            for (what, segment) in [("prefix", &prefix), ("name", &name)] {
                if !is_key_segment(segment) {
                    return Key(Repr::Invalid(format!(
                        "{what} `{segment}` must be non-empty, without white space, braces or glob characters"
                    )));
                }
            }
        }
        Key(Repr::Function {
            prefix,
            name,
            version,
            args,
        })
    }

    /// `prefix:name` for a function's key — the name its statistics are kept
    /// under — `None` for a hand-written key.
    pub fn function_name(&self) -> Option<String> {
        match &self.0 {
            Repr::Function { prefix, name, .. } => Some(format!("{prefix}:{name}")),
            _ => None,
        }
    }

    /// The full key under `namespace` and the namespace-wide `key_version`.
    ///
    /// # Errors
    ///
    /// [`Error::Key`] when the key could not be built (an argument failed to
    /// serialize, or a raw key used reserved characters).
    pub(crate) fn render(&self, namespace: &str, key_version: u32) -> Result<String> {
        // One allocation of the right size.
        let mut full = String::with_capacity(self.rendered_len(namespace));
        self.render_into(namespace, key_version, &mut full)?;
        Ok(full)
    }

    /// Runs `then` on the full key ([`render`](Key::render)) written into a
    /// buffer this thread reuses: a call answered from this process's memory
    /// needs the key only to look it up, and allocates nothing for it.
    pub(crate) fn with_rendered<R>(
        &self,
        namespace: &str,
        key_version: u32,
        then: impl FnOnce(&str) -> R,
    ) -> Result<R> {
        /// A buffer this large after a call is dropped rather than kept for the thread's life.
        const KEPT: usize = 1024;
        thread_local! {
            static FULL: Cell<String> = const { Cell::new(String::new()) };
        }
        // Taken out while in use: a `then` that renders a key itself (a value's
        // `Clone` calling back) finds the cell empty and fills one of its own.
        let mut full = FULL.try_with(Cell::take).unwrap_or_default();
        self.render_into(namespace, key_version, &mut full)?;
        let answer = then(&full);
        if full.capacity() <= KEPT {
            let _ = FULL.try_with(|cell| cell.set(full));
        }
        Ok(answer)
    }

    /// The length of the full key under `namespace`, give or take the versions' digits.
    fn rendered_len(&self, namespace: &str) -> usize {
        match &self.0 {
            Repr::Raw(key) => namespace.len() + 1 + key.len(),
            Repr::Function { prefix, name, args, .. } => {
                let args_len = match args {
                    Args::Digest(_) => 32,
                    Args::Text(text) => text.len(),
                };
                namespace.len() + prefix.len() + name.len() + args_len + 26
            }
            Repr::Invalid(_) => 0,
        }
    }

    /// [`render`](Key::render), into `full` (emptied first).
    fn render_into(&self, namespace: &str, key_version: u32, full: &mut String) -> Result<()> {
        // On every call's path: no formatting machinery.
        full.clear();
        match &self.0 {
            Repr::Raw(key) => {
                full.push_str(namespace);
                full.push(':');
                full.push_str(key);
            }
            Repr::Function {
                prefix,
                name,
                version,
                args,
            } => {
                for segment in [namespace, prefix, name] {
                    full.push_str(segment);
                    full.push(':');
                }
                full.push('v');
                push_decimal(full, key_version);
                full.push('.');
                push_decimal(full, *version);
                full.push(':');
                match args {
                    Args::Digest(digest) => push_hex(full, *digest),
                    Args::Text(text) => full.push_str(text),
                }
            }
            Repr::Invalid(problem) => return Err(Error::Key(problem.clone())),
        }
        Ok(())
    }
}

fn push_decimal(out: &mut String, mut n: u32) {
    // Versions are small: most are one digit.
    if n < 10 {
        out.push(char::from(b'0' + n as u8));
        return;
    }
    let mut digits = [0u8; 10];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &digit in &digits[at..] {
        out.push(char::from(digit));
    }
}

impl From<&str> for Key {
    fn from(key: &str) -> Key {
        Key::raw(key)
    }
}

impl From<String> for Key {
    fn from(key: String) -> Key {
        Key::raw(key)
    }
}

impl From<&String> for Key {
    fn from(key: &String) -> Key {
        Key::raw(key.as_str())
    }
}

impl From<&Key> for Key {
    fn from(key: &Key) -> Key {
        key.clone()
    }
}

/// Joins template pieces, or says which value failed to render, or that the text
/// has hash-slot braces (only a literal can bring them: values are escaped).
pub(crate) fn concat(pieces: impl IntoIterator<Item = Piece>) -> std::result::Result<String, String> {
    let mut text = String::new();
    for piece in pieces {
        match piece {
            Piece::Lit(lit) => text.push_str(lit),
            Piece::Value(Ok(value)) => text.push_str(&value),
            Piece::Value(Err(problem)) => return Err(problem),
        }
    }
    check_braces("a key template or tag", &text)?;
    Ok(text)
}

/// The name of type `T` without its module path or generic arguments:
/// `my_app::reports::Report<u32>` gives `Report`. Names methods' keys (`Report::total`).
pub fn short_type_name<T: ?Sized>() -> &'static str {
    let full = std::any::type_name::<T>();
    let base = full.split('<').next().unwrap_or(full);
    base.rsplit("::").next().unwrap_or(base)
}

/// Renders one value for a key template or a tag (see [`Piece::value`]).
///
/// # Errors
///
/// [`Error::Key`] when the value does not serialize to JSON.
pub fn render_value<T: Serialize + ?Sized>(value: &T) -> Result<String> {
    let tagged = serde_json::to_value(Tagged(value)).map_err(|e| Error::Key(e.to_string()))?;
    Ok(match tagged {
        Value::Null => "~".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => escape(&n.to_string()),
        Value::String(s) => escape(&s),
        other => match non_finite(&other, value) {
            Some(name) => format!("~{name}"),
            None => escape(&canonical_text(other)),
        },
    })
}

/// The name of the float `value` is, when it is one JSON cannot write (`tagged`
/// is then its tagged object, and untagged it is `null`; a map that merely looks
/// like the tag stays a map).
fn non_finite<T: Serialize + ?Sized>(tagged: &Value, value: &T) -> Option<&'static str> {
    let Value::Object(map) = tagged else {
        return None;
    };
    let Some(Value::String(name)) = map.get(floats::FIELD) else {
        return None;
    };
    if map.len() != 1 || !matches!(serde_json::to_value(value), Ok(Value::Null)) {
        return None;
    }
    ["nan", "inf", "-inf"].into_iter().find(|known| known == name)
}

/// Percent-encodes everything but ASCII letters, digits, `-`, `_` and `.`.
pub fn escape(text: &str) -> String {
    utf8_percent_encode(text, ESCAPED).to_string()
}

/// The xxh3-128 digest of the canonical JSON of `value` (see [`write_canonical`]).
///
/// Serialized into a buffer of the thread's, reused by every call: a key is
/// built on every call of a cached function.
pub(crate) fn canonical_digest<T: Serialize + ?Sized>(value: &T) -> Result<u128> {
    /// A buffer this large after a call is dropped rather than kept for the thread's life.
    const KEPT: usize = 16 * 1024;
    thread_local! {
        static BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }
    let digest = |buffer: &mut Vec<u8>| {
        write_canonical(buffer, value)?;
        let digest = xxhash_rust::xxh3::xxh3_128(buffer);
        if buffer.capacity() > KEPT {
            *buffer = Vec::new();
        }
        Ok(digest)
    };
    BUFFER
        .try_with(|buffer| match buffer.try_borrow_mut() {
            Ok(mut buffer) => Some(digest(&mut buffer)),
            // A key argument whose `Serialize` builds a key itself.
            Err(_) => None,
        })
        .ok()
        .flatten()
        .unwrap_or_else(|| digest(&mut Vec::new()))
}

/// Writes the canonical JSON of `value` into `buffer` (emptied first): object
/// keys sorted at every depth, no white space.
fn write_canonical<T: Serialize + ?Sized>(buffer: &mut Vec<u8>, value: &T) -> Result<()> {
    buffer.clear();
    // JSON without a map or a struct has no object whose keys could be out of
    // order: it is canonical as written, which spares building a `Value` on
    // every call (and looking through the text for a `{`).
    let (written, objects) = floats::objects_in(|| serde_json::to_writer(&mut *buffer, &Tagged(value)));
    written.map_err(|e| Error::Key(e.to_string()))?;
    if objects {
        let value = serde_json::to_value(Tagged(value)).map_err(|e| Error::Key(e.to_string()))?;
        buffer.clear();
        buffer.extend_from_slice(canonical_text(value).as_bytes());
    }
    Ok(())
}

/// The canonical JSON of `value`, as text.
#[cfg(test)]
pub(crate) fn canonical_json<T: Serialize + ?Sized>(value: &T) -> Result<String> {
    let mut buffer = Vec::new();
    write_canonical(&mut buffer, value)?;
    String::from_utf8(buffer).map_err(|e| Error::Key(e.to_string()))
}

fn canonical_text(value: Value) -> String {
    // `serde_json::Map` is sorted unless a crate enables `preserve_order`; sort
    // explicitly so the digest never depends on the feature set of the build.
    fn sort(value: Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut entries: Vec<(String, Value)> = map.into_iter().collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                Value::Object(entries.into_iter().map(|(k, v)| (k, sort(v))).collect())
            }
            Value::Array(items) => Value::Array(items.into_iter().map(sort).collect()),
            scalar => scalar,
        }
    }
    sort(value).to_string()
}

/// 32 lowercase hex digits of the xxh3-128 of `text`.
pub(crate) fn digest_hex(text: &str) -> String {
    let mut hex = String::with_capacity(32);
    push_hex(&mut hex, xxhash_rust::xxh3::xxh3_128(text.as_bytes()));
    hex
}

/// Appends `digest` as 32 lowercase hex digits.
fn push_hex(text: &mut String, digest: u128) {
    let mut hex = [0u8; 32];
    // On every call's path: two digits per lookup.
    for (pair, byte) in hex.chunks_exact_mut(2).zip(digest.to_be_bytes()) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(byte)]);
    }
    // Hex digits are ASCII: this is all of them.
    text.push_str(std::str::from_utf8(&hex).unwrap_or_default());
}

/// Each byte's two lowercase hex digits.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0; 2]; 256];
    let mut byte = 0;
    while byte < 256 {
        pairs[byte] = [HEX[byte >> 4], HEX[byte & 0xf]];
        byte += 1;
    }
    pairs
};

/// The key of something that must share a hash slot with `entry` (its lease, its
/// metadata): `{entry}:suffix`. Entry keys never contain braces, so the whole entry
/// key is the hash tag and both keys land in the entry's slot.
pub(crate) fn companion_key(entry: &str, suffix: &str) -> String {
    format!("{{{entry}}}:{suffix}")
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_segment_rule_is_the_one_the_macro_checks() {
        // The same literal is pinned in cache-macros' check.rs tests.
        assert_eq!(SEGMENT_RESERVED, "{}*?[]");
        assert!(!is_key_segment("a b") && !is_key_segment("") && is_key_segment("a.b-c_d"));
        for reserved in SEGMENT_RESERVED
            .chars()
            .chain([' ', '\t', '\n', '\u{b}', '\u{c}', '\r', '\u{a0}', '\u{2003}'])
        {
            assert!(!is_key_segment(&format!("a{reserved}b")), "{reserved:?} accepted");
            assert!(
                !is_key_segment(&format!("é{reserved}")),
                "{reserved:?} accepted beside non-ASCII"
            );
        }
        assert!(is_key_segment("rapport-été"));
        for byte in 0..128u8 {
            let c = char::from(byte);
            let alone = is_key_segment(&format!("a{c}b"));
            assert_eq!(alone, !(c.is_whitespace() || SEGMENT_RESERVED.contains(c)), "{c:?}");
        }
    }
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn golden_layout() {
        // The digest is xxh3-128 of the canonical JSON `["eu",11]`, checked
        // independently: python3 -c 'import xxhash; print(xxhash.xxh3_128_hexdigest(b"[\"eu\",11]"))'
        let key = Key::digest("computed", "revenue_by_region", 1, &("eu", 11));
        assert_eq!(
            key.render("aside", 1).unwrap(),
            "aside:computed:revenue_by_region:v1.1:6a8dd4d7e92c904ce2661629e20e6d38"
        );
        assert!(
            format!("{key:?}").contains("Digest(6a8dd4d7e92c904ce2661629e20e6d38)"),
            "{key:?}"
        );
    }

    #[test]
    fn digests_are_written_as_32_lowercase_hex_digits() {
        let mut digests = vec![
            0,
            1,
            9,
            10,
            15,
            16,
            0xabcdef,
            u128::MAX,
            u128::MAX - 1,
            1 << 127,
            u128::from(u64::MAX),
        ];
        // Every nibble value at every position, and a spread of mixed ones.
        for position in 0..32 {
            for nibble in 0..16u128 {
                digests.push(nibble << (4 * position));
            }
        }
        let mut x = 0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c834_u128;
        for _ in 0..1000 {
            x = x.wrapping_mul(0x2545_f491_4f6c_dd1d).rotate_left(17) ^ 0x1234_5678;
            digests.push(x);
        }
        for digest in digests {
            let mut text = String::new();
            push_hex(&mut text, digest);
            assert_eq!(text, format!("{digest:032x}"));
        }
    }

    #[test]
    fn a_key_rendered_in_the_reused_buffer_is_the_rendered_key() {
        let keys = [
            Key::digest("computed", "revenue_by_region", 1, &("eu", 11)),
            Key::raw("user:42"),
            Key::template("p", "n", 3, [Piece::Lit("a"), Piece::value(&"b c")]),
            // Longer than the buffer keeps between calls.
            Key::raw("k".repeat(5000)),
            Key::raw("short again"),
        ];
        for key in &keys {
            let rendered = key.render("ns", 2).unwrap();
            assert_eq!(key.with_rendered("ns", 2, str::to_owned).unwrap(), rendered);
            // A key rendered while another is being used (a value's `Clone`
            // calling back) renders on its own, and both stay right.
            let nested = key
                .with_rendered("ns", 2, |outer| {
                    let inner = keys[1].with_rendered("other", 7, str::to_owned).unwrap();
                    (outer.to_owned(), inner)
                })
                .unwrap();
            assert_eq!(nested, (rendered, "other:user:42".to_owned()));
        }
        let invalid = Key::raw("{braces}");
        assert!(matches!(invalid.with_rendered("ns", 1, str::len), Err(Error::Key(_))));
        assert_eq!(keys[1].with_rendered("ns", 1, str::to_owned).unwrap(), "ns:user:42");
    }

    #[test]
    fn rendering_matches_the_layout_for_every_version() {
        for (kv, v) in [(1, 1), (0, 0), (10, 7), (u32::MAX, 4_000_000_000)] {
            let key = Key::template("p", "n", v, [Piece::Lit("a")]);
            assert_eq!(key.render("ns", kv).unwrap(), format!("ns:p:n:v{kv}.{v}:a"));
        }
    }

    #[test]
    fn canonical_json_sorts_objects_and_keeps_scalars_as_written() {
        assert_eq!(
            canonical_json(&("eu", 11, -1.5, "{not an object}")).unwrap(),
            r#"["eu",11,-1.5,"{not an object}"]"#
        );
        let mut map = std::collections::BTreeMap::new();
        map.insert("b", 1);
        map.insert("a", 2);
        #[derive(serde::Serialize)]
        struct Unsorted {
            z: u8,
            a: u8,
        }
        assert_eq!(
            canonical_json(&(map, Unsorted { z: 1, a: 2 })).unwrap(),
            r#"[{"a":2,"b":1},{"a":2,"z":1}]"#
        );
    }

    #[test]
    fn objects_are_sorted_wherever_they_are_and_whoever_digests_meanwhile() {
        #[derive(serde::Serialize)]
        struct Unsorted {
            z: u8,
            a: u8,
        }
        #[derive(serde::Serialize)]
        enum E {
            New(Unsorted),
            Struct { y: u8, b: u8 },
            One(u8),
        }
        /// Digests a key of its own while it is serialized, as a key argument may.
        struct Digesting;
        impl serde::Serialize for Digesting {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
                let _ = canonical_digest(&("no objects here", 1));
                serializer.serialize_unit()
            }
        }
        assert_eq!(
            canonical_json(&(Some(Unsorted { z: 1, a: 2 }), E::New(Unsorted { z: 3, a: 4 }))).unwrap(),
            r#"[{"a":2,"z":1},{"New":{"a":4,"z":3}}]"#
        );
        assert_eq!(
            canonical_json(&[E::Struct { y: 1, b: 2 }]).unwrap(),
            r#"[{"Struct":{"b":2,"y":1}}]"#
        );
        // The object came before the inner digest, which saw none: still sorted.
        assert_eq!(
            canonical_json(&(Unsorted { z: 1, a: 2 }, Digesting)).unwrap(),
            r#"[{"a":2,"z":1},null]"#
        );
        // No map or struct: written as is, braces in strings and variants included.
        assert_eq!(
            canonical_json(&("{", E::One(5), f64::NAN)).unwrap(),
            r#"["{",{"One":5},{"$aside:float":"nan"}]"#
        );
    }

    #[test]
    fn digest_ignores_map_order() {
        let mut a = HashMap::new();
        let mut b = HashMap::new();
        for i in 0..50 {
            a.insert(format!("k{i}"), i);
        }
        for i in (0..50).rev() {
            b.insert(format!("k{i}"), i);
        }
        assert_eq!(Key::digest("p", "n", 1, &a), Key::digest("p", "n", 1, &b));
    }

    #[test]
    fn rendered_values_cannot_forge_structure() {
        for (input, expected) in [
            ("eu", "eu"),
            ("a:b", "a%3Ab"),
            ("*", "%2A"),
            ("{x}", "%7Bx%7D"),
            ("a b\n", "a%20b%0A"),
            ("é", "%C3%A9"),
            ("~", "%7E"),
            ("50%", "50%25"),
            ("2026-11_a.b", "2026-11_a.b"),
        ] {
            assert_eq!(render_value(input).unwrap(), expected, "{input:?}");
        }
        assert_eq!(render_value(&Option::<u8>::None).unwrap(), "~");
        assert_eq!(render_value(&Some("~")).unwrap(), "%7E");
        assert_eq!(render_value(&11).unwrap(), "11");
        assert_eq!(render_value(&-1.5).unwrap(), "-1.5");
        assert_eq!(render_value(&true).unwrap(), "true");
    }

    #[test]
    fn non_finite_floats_have_values_of_their_own() {
        assert_eq!(
            canonical_json(&(
                f64::NAN,
                f64::INFINITY,
                f32::NEG_INFINITY,
                Option::<f64>::None,
                -0.0,
                0.0
            ))
            .unwrap(),
            r#"[{"$aside:float":"nan"},{"$aside:float":"inf"},{"$aside:float":"-inf"},null,-0.0,0.0]"#
        );
        assert_eq!(render_value(&f64::NAN).unwrap(), "~nan");
        assert_eq!(render_value(&Some(f64::INFINITY)).unwrap(), "~inf");
        assert_eq!(render_value(&f32::NEG_INFINITY).unwrap(), "~-inf");
        assert_eq!(render_value(&-0.0).unwrap(), "-0.0");
        assert_eq!(render_value(&0.0).unwrap(), "0.0");
        // Nested: the tagged object inside canonical JSON, escaped.
        assert_eq!(
            render_value(&[f64::NAN]).unwrap(),
            escape(r#"[{"$aside:float":"nan"}]"#)
        );
        // A map that merely looks like the tag is a map.
        let mut lookalike = std::collections::BTreeMap::new();
        lookalike.insert("$aside:float", "nan");
        assert_eq!(render_value(&lookalike).unwrap(), escape(r#"{"$aside:float":"nan"}"#));
    }

    #[test]
    fn finite_values_are_written_as_serde_json_writes_them() {
        #[derive(serde::Serialize)]
        struct S {
            b: Vec<Option<f32>>,
            a: (u64, i8, char, &'static str),
        }
        #[derive(serde::Serialize)]
        enum E {
            Unit,
            New(f64),
            Tuple(u8, f64),
            Struct { x: f64 },
        }
        let value = (
            S {
                b: vec![Some(1.5), None, Some(-0.0)],
                a: (u64::MAX, -3, '"', "a\\b\n"),
            },
            [E::Unit, E::New(2.5), E::Tuple(1, 1e300), E::Struct { x: -1e-300 }],
            serde_json::json!({"z": [1.0, {"y": null}], "a": "\u{0}"}),
        );
        let plain = canonical_text(serde_json::to_value(&value).unwrap());
        assert_eq!(canonical_json(&value).unwrap(), plain);
        assert_eq!(
            canonical_json(&(1.5, "x", u128::MAX)).unwrap(),
            serde_json::to_string(&(1.5, "x", u128::MAX)).unwrap()
        );
    }

    #[test]
    fn raw_keys_reject_braces() {
        assert!(Key::raw("user:{42}").render("aside", 1).is_err());
        assert_eq!(Key::raw("user:42").render("app", 3).unwrap(), "app:user:42");
    }

    #[test]
    fn companion_shares_the_slot_of_the_entry() {
        assert_eq!(companion_key("aside:p:n:v1.1:x", "lease"), "{aside:p:n:v1.1:x}:lease");
    }
}
