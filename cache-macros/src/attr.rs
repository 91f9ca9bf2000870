//! Parsing `#[cached(...)]`: every argument keeps the span of the tokens that
//! gave it, so the checks in `check.rs` can point at the one that is wrong.
//!
//! Parsing does not stop at the first mistake: a malformed or unknown argument is
//! recorded in [`Args::errors`] and parsing resumes after the next comma, so the
//! user sees every problem at once.

use std::time::Duration;

use proc_macro2::{Span, TokenTree};
use quote::ToTokens;
use syn::ext::IdentExt as _;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned as _;
use syn::{Expr, Ident, LitBool, LitFloat, LitInt, LitStr, Member, Path, Token};

mod kw {
    syn::custom_keyword!(ttl);
    syn::custom_keyword!(prefix);
    syn::custom_keyword!(name);
    syn::custom_keyword!(version);
    syn::custom_keyword!(tags);
    syn::custom_keyword!(skip);
    syn::custom_keyword!(key);
    syn::custom_keyword!(stale);
    syn::custom_keyword!(lock_ttl);
    syn::custom_keyword!(wait);
    syn::custom_keyword!(cache_none);
    syn::custom_keyword!(cache);
    syn::custom_keyword!(unless);
    syn::custom_keyword!(ttl_from);
    syn::custom_keyword!(jitter);
    syn::custom_keyword!(refresh_ahead);
    syn::custom_keyword!(soft_timeout);
    syn::custom_keyword!(batch);
}

/// The arguments `#[cached]` accepts, in the order the docs list them.
const KNOWN: &str = "`ttl`, `prefix`, `name`, `version`, `tags`, `skip`, `key`, `stale`, \
                     `lock_ttl`, `wait`, `cache_none`, `refresh_ahead`, `soft_timeout`, `unless`, `ttl_from`, \
                     `jitter`, `batch`, `cache`, `crate`";

/// One argument: the span of its keyword and its value.
pub(crate) struct Arg<V> {
    /// Where the argument's keyword is.
    pub(crate) span: Span,
    /// What follows the `=` (or the parenthesized list of `skip`).
    pub(crate) value: V,
}

/// The parsed `#[cached(...)]` arguments; `None` for those not given.
#[derive(Default)]
pub(crate) struct Args {
    pub(crate) ttl: Option<Arg<DurationLit>>,
    pub(crate) prefix: Option<Arg<LitStr>>,
    pub(crate) name: Option<Arg<LitStr>>,
    pub(crate) version: Option<Arg<LitInt>>,
    pub(crate) tags: Option<Arg<Vec<LitStr>>>,
    pub(crate) skip: Option<Arg<Vec<Ident>>>,
    pub(crate) key: Option<Arg<LitStr>>,
    pub(crate) stale: Option<Arg<DurationLit>>,
    pub(crate) lock_ttl: Option<Arg<DurationLit>>,
    pub(crate) wait: Option<Arg<DurationLit>>,
    pub(crate) cache_none: Option<Arg<LitBool>>,
    /// An expression, so that `check.rs` can say why it must be a path.
    pub(crate) unless: Option<Arg<Expr>>,
    pub(crate) ttl_from: Option<Arg<Expr>>,
    pub(crate) jitter: Option<Arg<LitStr>>,
    pub(crate) refresh_ahead: Option<Arg<LitFloat>>,
    pub(crate) soft_timeout: Option<Arg<DurationLit>>,
    /// `batch = ids`: the argument holding the ids of a batch function.
    pub(crate) batch: Option<Arg<Ident>>,
    pub(crate) cache: Option<Arg<Expr>>,
    pub(crate) krate: Option<Arg<Path>>,
    /// Mistakes found while parsing (unknown, repeated or malformed arguments).
    pub(crate) errors: Vec<syn::Error>,
}

impl Parse for Args {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut args = Args::default();
        while !input.is_empty() {
            if let Err(error) = args.parse_one(input) {
                args.errors.push(error);
                skip_to_comma(input);
            }
            if input.is_empty() {
                break;
            }
            if let Err(error) = input.parse::<Token![,]>() {
                args.errors.push(error);
                skip_to_comma(input);
                let _: Option<Token![,]> = input.parse()?;
            }
        }
        Ok(args)
    }
}

impl Args {
    /// Parses one argument into its slot.
    fn parse_one(&mut self, input: ParseStream<'_>) -> syn::Result<()> {
        let lookahead = input.lookahead1();
        if lookahead.peek(kw::ttl) {
            let arg = input.parse::<KwValue<kw::ttl, DurationLit>>()?;
            self.set(|a| &mut a.ttl, "ttl", arg.into());
        } else if lookahead.peek(kw::prefix) {
            let arg = input.parse::<KwValue<kw::prefix, LitStr>>()?;
            self.set(|a| &mut a.prefix, "prefix", arg.into());
        } else if lookahead.peek(kw::name) {
            let arg = input.parse::<KwValue<kw::name, LitStr>>()?;
            self.set(|a| &mut a.name, "name", arg.into());
        } else if lookahead.peek(kw::version) {
            let arg = input.parse::<KwValue<kw::version, LitInt>>()?;
            self.set(|a| &mut a.version, "version", arg.into());
        } else if lookahead.peek(kw::tags) {
            let arg = input.parse::<KwValue<kw::tags, TagList>>()?;
            let Arg { span, value } = Arg::from(arg);
            self.set(|a| &mut a.tags, "tags", Arg { span, value: value.0 });
        } else if lookahead.peek(kw::skip) {
            let keyword = input.parse::<kw::skip>()?;
            let content;
            syn::parenthesized!(content in input);
            let names = Punctuated::<Ident, Token![,]>::parse_terminated_with(&content, Ident::parse_any)?;
            let value = names.into_iter().collect();
            self.set(
                |a| &mut a.skip,
                "skip",
                Arg {
                    span: keyword.span,
                    value,
                },
            );
        } else if lookahead.peek(kw::key) {
            let arg = input.parse::<KwValue<kw::key, LitStr>>()?;
            self.set(|a| &mut a.key, "key", arg.into());
        } else if lookahead.peek(kw::stale) {
            let arg = input.parse::<KwValue<kw::stale, DurationLit>>()?;
            self.set(|a| &mut a.stale, "stale", arg.into());
        } else if lookahead.peek(kw::lock_ttl) {
            let arg = input.parse::<KwValue<kw::lock_ttl, DurationLit>>()?;
            self.set(|a| &mut a.lock_ttl, "lock_ttl", arg.into());
        } else if lookahead.peek(kw::wait) {
            let arg = input.parse::<KwValue<kw::wait, DurationLit>>()?;
            self.set(|a| &mut a.wait, "wait", arg.into());
        } else if lookahead.peek(kw::cache_none) {
            let arg = input.parse::<KwValue<kw::cache_none, LitBool>>()?;
            self.set(|a| &mut a.cache_none, "cache_none", arg.into());
        } else if lookahead.peek(kw::unless) {
            let arg = input.parse::<KwValue<kw::unless, Expr>>()?;
            self.set(|a| &mut a.unless, "unless", arg.into());
        } else if lookahead.peek(kw::ttl_from) {
            let arg = input.parse::<KwValue<kw::ttl_from, Expr>>()?;
            self.set(|a| &mut a.ttl_from, "ttl_from", arg.into());
        } else if lookahead.peek(kw::jitter) {
            let arg = input.parse::<KwValue<kw::jitter, LitStr>>()?;
            self.set(|a| &mut a.jitter, "jitter", arg.into());
        } else if lookahead.peek(kw::refresh_ahead) {
            let arg = input.parse::<KwValue<kw::refresh_ahead, LitFloat>>()?;
            self.set(|a| &mut a.refresh_ahead, "refresh_ahead", arg.into());
        } else if lookahead.peek(kw::soft_timeout) {
            let arg = input.parse::<KwValue<kw::soft_timeout, DurationLit>>()?;
            self.set(|a| &mut a.soft_timeout, "soft_timeout", arg.into());
        } else if lookahead.peek(kw::batch) {
            let keyword = input.parse::<kw::batch>()?;
            input.parse::<Token![=]>()?;
            let value = input.call(Ident::parse_any)?;
            self.set(
                |a| &mut a.batch,
                "batch",
                Arg {
                    span: keyword.span,
                    value,
                },
            );
        } else if lookahead.peek(kw::cache) {
            let arg = input.parse::<KwValue<kw::cache, Expr>>()?;
            self.set(|a| &mut a.cache, "cache", arg.into());
        } else if lookahead.peek(Token![crate]) {
            let arg = input.parse::<KwValue<Token![crate], Path>>()?;
            self.set(|a| &mut a.krate, "crate", arg.into());
        } else if input.peek(Ident::peek_any) {
            let unknown = input.call(Ident::parse_any)?;
            return Err(syn::Error::new(
                unknown.span(),
                format!("unknown argument `{unknown}`; `#[cached]` takes {KNOWN}"),
            ));
        } else {
            return Err(lookahead.error());
        }
        Ok(())
    }

    /// Stores `arg` in the slot `field` selects, or records that it was repeated.
    fn set<V>(&mut self, field: impl Fn(&mut Args) -> &mut Option<Arg<V>>, name: &str, arg: Arg<V>) {
        let span = arg.span;
        let slot = field(self);
        if slot.is_some() {
            self.errors.push(syn::Error::new(
                span,
                format!("repeated argument `{name}`: give it once"),
            ));
        } else {
            *slot = Some(arg);
        }
    }
}

/// Skips the tokens of a malformed argument, up to the next top-level comma.
fn skip_to_comma(input: ParseStream<'_>) {
    while !input.is_empty() && !input.peek(Token![,]) {
        if input.parse::<TokenTree>().is_err() {
            break;
        }
    }
}

/// `keyword = value`.
struct KwValue<K, V> {
    keyword: K,
    value: V,
}

impl<K: Parse, V: Parse> Parse for KwValue<K, V> {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let keyword = input.parse()?;
        input.parse::<Token![=]>()?;
        let value = input.parse()?;
        Ok(KwValue { keyword, value })
    }
}

impl<K: ToTokens, V> From<KwValue<K, V>> for Arg<V> {
    fn from(arg: KwValue<K, V>) -> Self {
        Arg {
            span: arg.keyword.span(),
            value: arg.value,
        }
    }
}

/// `["orders", "region:{region}"]`.
struct TagList(Vec<LitStr>);

impl Parse for TagList {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let content;
        syn::bracketed!(content in input);
        let tags = Punctuated::<LitStr, Token![,]>::parse_terminated(&content)?;
        Ok(TagList(tags.into_iter().collect()))
    }
}

/// A duration as written: whole seconds (`300`) or a `humantime` string (`"5m"`).
pub(crate) enum DurationLit {
    Secs(LitInt),
    Text(LitStr),
}

impl Parse for DurationLit {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let lookahead = input.lookahead1();
        if lookahead.peek(LitInt) {
            input.parse().map(DurationLit::Secs)
        } else if lookahead.peek(LitStr) {
            input.parse().map(DurationLit::Text)
        } else {
            Err(lookahead.error())
        }
    }
}

impl DurationLit {
    /// The literal's span.
    pub(crate) fn span(&self) -> Span {
        match self {
            DurationLit::Secs(lit) => lit.span(),
            DurationLit::Text(lit) => lit.span(),
        }
    }

    /// The duration, or an error at the literal saying why it is not one.
    pub(crate) fn value(&self) -> syn::Result<Duration> {
        match self {
            DurationLit::Secs(lit) => {
                if !lit.suffix().is_empty() {
                    return Err(syn::Error::new(
                        lit.span(),
                        format!(
                            "unexpected suffix `{}`: write whole seconds (`{}`) or a duration string (`\"{}\"`)",
                            lit.suffix(),
                            lit.base10_digits(),
                            lit,
                        ),
                    ));
                }
                lit.base10_parse::<u64>().map(Duration::from_secs).map_err(|_| {
                    syn::Error::new(
                        lit.span(),
                        "expected whole seconds (`300`) or a duration string (`\"5m\"`)",
                    )
                })
            }
            DurationLit::Text(lit) => humantime::parse_duration(&lit.value()).map_err(|error| {
                syn::Error::new(
                    lit.span(),
                    format!(
                        "invalid duration {:?}: {error}; write e.g. \"30s\", \"5m\", \"1h 30m\" or \"500ms\"",
                        lit.value()
                    ),
                )
            }),
        }
    }
}

/// A `key = "..."` or tag template: literal text and `{arg}` / `{arg.field}` placeholders.
pub(crate) struct Template {
    /// The literal the template was written as (every error about it points here).
    pub(crate) lit: LitStr,
    /// Its pieces, in order.
    pub(crate) segments: Vec<Segment>,
}

/// One piece of a [`Template`].
pub(crate) enum Segment {
    /// Text written as it is.
    Text(String),
    /// `{arg}` or `{arg.field.0}`: an argument's name (unraw) and the fields after it.
    Value { arg: String, fields: Vec<Member> },
}

impl Template {
    /// Splits `lit` into text and placeholders.
    ///
    /// # Errors
    ///
    /// At `lit`: an unclosed or stray brace, an empty placeholder, or one that is not
    /// `name` or `name.field` with identifier or tuple-index fields.
    pub(crate) fn parse(lit: &LitStr) -> syn::Result<Template> {
        let text = lit.value();
        let mut segments = Vec::new();
        let mut rest = text.as_str();
        while !rest.is_empty() {
            let next = rest.find(['{', '}']).unwrap_or(rest.len());
            if next > 0 {
                segments.push(Segment::Text(rest[..next].to_owned()));
            }
            rest = &rest[next..];
            if rest.starts_with('}') {
                return Err(syn::Error::new(
                    lit.span(),
                    "unmatched `}` in template: braces are reserved for `{argument}` placeholders",
                ));
            }
            let Some(after) = rest.strip_prefix('{') else {
                continue;
            };
            let Some(close) = after.find('}') else {
                return Err(syn::Error::new(
                    lit.span(),
                    "unclosed `{` in template: write `{argument}`",
                ));
            };
            segments.push(placeholder(lit, &after[..close])?);
            rest = &after[close + 1..];
        }
        Ok(Template {
            lit: lit.clone(),
            segments,
        })
    }
}

/// Parses the inside of `{...}`.
fn placeholder(lit: &LitStr, inner: &str) -> syn::Result<Segment> {
    let invalid = |why: &str| {
        syn::Error::new(
            lit.span(),
            format!("invalid placeholder `{{{inner}}}`: {why}; write `{{argument}}` or `{{argument.field}}`"),
        )
    };
    if inner.is_empty() {
        return Err(invalid("it is empty"));
    }
    if inner.contains('{') {
        return Err(invalid("braces cannot nest"));
    }
    let mut parts = inner.split('.');
    // `{type}` and `{r#type}` both name the argument `r#type`.
    let written = parts.next().unwrap_or_default();
    let arg = written.strip_prefix("r#").unwrap_or(written);
    if !is_identifier(arg) {
        return Err(invalid(&format!("`{written}` is not an argument name")));
    }
    let mut fields = Vec::new();
    for field in parts {
        if is_identifier(field) {
            fields.push(Member::Named(Ident::new(field, lit.span())));
        } else if let Ok(index) = field.parse::<u32>() {
            if field != index.to_string() {
                return Err(invalid(&format!("`{field}` is not a field")));
            }
            fields.push(Member::Unnamed(syn::Index {
                index,
                span: lit.span(),
            }));
        } else {
            return Err(invalid(&format!("`{field}` is not a field")));
        }
    }
    Ok(Segment::Value {
        arg: arg.to_owned(),
        fields,
    })
}

/// `[A-Za-z_][A-Za-z0-9_]*`, not a lone `_`.
fn is_identifier(text: &str) -> bool {
    let mut chars = text.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return false,
    }
    text != "_" && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(text: &str) -> syn::Result<Vec<String>> {
        let lit = LitStr::new(text, Span::call_site());
        Template::parse(&lit).map(|template| {
            template
                .segments
                .iter()
                .map(|segment| match segment {
                    Segment::Text(text) => format!("text {text}"),
                    Segment::Value { arg, fields } => {
                        let fields: Vec<String> = fields.iter().map(|f| f.to_token_stream().to_string()).collect();
                        format!("value {arg} {}", fields.join("."))
                    }
                })
                .collect()
        })
    }

    #[test]
    fn templates_split_into_text_and_placeholders() {
        assert_eq!(template("region:{region}").unwrap(), ["text region:", "value region "]);
        assert_eq!(template("{a}:{b.c.0}").unwrap(), ["value a ", "text :", "value b c.0"]);
        assert_eq!(template("{r#type}").unwrap(), ["value type "]);
        assert_eq!(template("orders").unwrap(), ["text orders"]);
        assert!(template("").unwrap().is_empty());
    }

    #[test]
    fn malformed_templates_say_why() {
        for (text, why) in [
            ("{region", "unclosed `{`"),
            ("region}", "unmatched `}`"),
            ("{}", "it is empty"),
            ("{a b}", "not an argument name"),
            ("{1}", "not an argument name"),
            ("{_}", "not an argument name"),
            ("{a.}", "is not a field"),
            ("{a.01}", "is not a field"),
            ("{{a}}", "braces cannot nest"),
        ] {
            let error = template(text).unwrap_err().to_string();
            assert!(error.contains(why), "{text:?}: {error}");
        }
    }

    fn args(tokens: &str) -> Args {
        syn::parse_str(tokens).unwrap()
    }

    #[test]
    fn durations_are_seconds_or_humantime() {
        let ttl = |tokens: &str| args(tokens).ttl.unwrap().value.value().map_err(|e| e.to_string());
        assert_eq!(ttl("ttl = 300"), Ok(Duration::from_secs(300)));
        assert_eq!(ttl("ttl = \"5m\""), Ok(Duration::from_secs(300)));
        assert_eq!(ttl("ttl = \"1h 30m\""), Ok(Duration::from_secs(5400)));
        assert_eq!(ttl("ttl = \"250ms\""), Ok(Duration::from_millis(250)));
        assert!(ttl("ttl = 5m").unwrap_err().contains("unexpected suffix `m`"));
        assert!(ttl("ttl = \"soon\"").unwrap_err().contains("invalid duration"));
    }

    #[test]
    fn every_malformed_argument_is_reported_and_the_rest_parsed() {
        let parsed = args("ttl = , colour = 1, prefix = \"p\", prefix = \"q\", skip(db, self), crate = ::x");
        let errors: Vec<String> = parsed.errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[1].starts_with("unknown argument `colour`"), "{errors:?}");
        assert_eq!(errors[2], "repeated argument `prefix`: give it once");
        assert_eq!(parsed.prefix.unwrap().value.value(), "p");
        let skipped: Vec<String> = parsed.skip.unwrap().value.iter().map(ToString::to_string).collect();
        assert_eq!(skipped, ["db", "self"]);
        assert!(parsed.krate.is_some());
    }
}
