//! The check step: every rule `#[cached]` enforces, each a named function whose
//! first doc line states it (serde_derive's `internals/check.rs`), all reporting
//! into one [`Ctxt`] so that every mistake is shown at once, at its token.
//!
//! [`check`] also settles what the expansion needs — the [`Plan`] — which is
//! complete even with errors, for the companions' signatures.

use std::collections::BTreeSet;
use std::time::Duration;

use proc_macro2::{Span, TokenStream};
use quote::{quote, ToTokens};
use syn::ext::IdentExt as _;
use syn::spanned::Spanned as _;
use syn::{
    Expr, FnArg, GenericArgument, GenericParam, Ident, LitBool, LitFloat, LitInt, LitStr, Pat, PathArguments,
    ReturnType, Signature, Type,
};

use crate::attr::{Arg, Args, DurationLit, Segment, Template};
use crate::ctxt::Ctxt;
use crate::generics;
use crate::item::MaybeItemFn;

pub(crate) mod batch;

/// The longest TTL, stale window, lock lease or wait the attribute accepts.
const DAY: Duration = Duration::from_secs(86_400);

/// Characters a key segment may not contain besides white space: the runtime's
/// `aside::key::SEGMENT_RESERVED` (a test on each side pins both).
const SEGMENT_RESERVED: &str = "{}*?[]";

/// The largest `jitter`, the runtime's `config::MAX_TTL_JITTER` (pinned by
/// `tests/policy_edges.rs`).
const MAX_JITTER_PERCENT: f64 = 50.0;

/// The shortest lock lease, as the runtime's `policy::MIN_LOCK_TTL`: a lease is
/// renewed every third of its length, so a shorter one could expire between
/// renewals and nothing would be stored. (`tests/policy_edges.rs` pins the two
/// against each other.)
const MIN_LOCK_TTL: Duration = Duration::from_secs(1);

/// The default `ttl`: the runtime's `policy::DEFAULT_TTL` (pinned by
/// `tests/policy_edges.rs`).
const DEFAULT_TTL: Duration = Duration::from_secs(300);

/// How the return value is cached, chosen by the syntax of the return type.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `Result<T, E>`: only `Ok` is stored.
    Result,
    /// `Option<T>`: `None` only with `cache_none`.
    Option,
    /// Anything else: wrapped in `Plain`, always stored.
    Plain,
}

/// The key's name segment.
pub(crate) enum Name {
    /// Given with `name = "..."`, or the name of a function without receiver.
    Fixed(String),
    /// A method's name, to be joined with its type's at run time: `Type::name`.
    Method(String),
}

/// Something that tells one instantiation of a generic function (or one `Self`
/// type) from another, made part of the key at run time.
pub(crate) enum Distinct {
    /// `type_name::<Self>()`: a method's type, with its module path and generic arguments.
    SelfType,
    /// `type_name::<T>()` of a type parameter.
    Type(Ident),
    /// The value of a const parameter.
    Const(Ident),
    /// `type_name_of_val(&arg)` of a key argument written `impl Trait`.
    ValueOf(Ident),
}

/// One argument of the function.
pub(crate) struct Param {
    /// The name with any `r#` removed; `self` for the receiver.
    pub(crate) name: String,
    /// The name as written (used to refer to the argument in generated code).
    pub(crate) ident: Ident,
    /// `None` for the receiver.
    pub(crate) ty: Option<Type>,
    /// Listed in `skip(...)`.
    pub(crate) skipped: bool,
    /// The argument's name (or `self`), for errors about the argument.
    pub(crate) span: Span,
    /// The end of the argument's type, so an error about it can cover `name: Type`.
    pub(crate) end: Span,
    /// Bound with `mut` (`mut ids: Vec<u64>`).
    pub(crate) mutable: bool,
}

impl Param {
    pub(crate) fn is_receiver(&self) -> bool {
        self.ty.is_none()
    }

    /// Part of the key: neither skipped nor the receiver.
    pub(crate) fn in_key(&self) -> bool {
        !self.skipped && !self.is_receiver()
    }
}

/// Everything the expansion needs, checked.
pub(crate) struct Plan {
    /// `<crate>::__private`.
    pub(crate) private: TokenStream,
    pub(crate) cache: Option<Expr>,
    /// Names (unraw) of the arguments the `cache` expression mentions.
    pub(crate) cache_mentions: BTreeSet<String>,
    pub(crate) ttl: Duration,
    pub(crate) stale: Option<Duration>,
    pub(crate) lock_ttl: Option<Duration>,
    pub(crate) wait: Option<Duration>,
    pub(crate) cache_none: bool,
    /// `unless = path`: the value is returned but not stored when it says `true`.
    pub(crate) unless: Option<syn::ExprPath>,
    /// `ttl_from = path`: the value's own fresh lifetime.
    pub(crate) ttl_from: Option<syn::ExprPath>,
    /// `jitter = "10%"`, as a fraction of the TTL.
    pub(crate) jitter: Option<f64>,
    /// `refresh_ahead = 0.8`: the share of the fresh life after which a hit refreshes.
    pub(crate) refresh_ahead: Option<f64>,
    pub(crate) soft_timeout: Option<Duration>,
    /// The body may run in a task of its own (`refresh_ahead`, `soft_timeout`):
    /// the call goes through `get_or_compute_detached`.
    pub(crate) detached: bool,
    pub(crate) prefix: String,
    /// The key's name segment.
    pub(crate) name: Name,
    pub(crate) version: u32,
    pub(crate) key: Option<Template>,
    pub(crate) tags: Vec<Template>,
    pub(crate) params: Vec<Param>,
    /// What tells instantiations apart in the key, in order.
    pub(crate) distinct: Vec<Distinct>,
    /// The generic parameters that are part of the key (every companion has them).
    pub(crate) key_generics: Vec<GenericParam>,
    /// The function is an associated function (a receiver or `Self` in its signature).
    pub(crate) in_impl: bool,
    pub(crate) kind: Kind,
    /// The part of the return type that is stored, for errors about it.
    pub(crate) value_span: Span,
    /// The declared return type.
    pub(crate) ret: TokenStream,
    /// `batch = ids`: one entry per id, through `get_many_or_compute`.
    pub(crate) batch: Option<batch::Batch>,
    /// The stored type, when hits may clone its kept decoded value out (see
    /// [`generics::may_share`]).
    pub(crate) shared: Option<Type>,
}

/// Checks the arguments against the function, recording every mistake in `cx`.
pub(crate) fn check(cx: &Ctxt, mut args: Args, func: &MaybeItemFn) -> Plan {
    for error in std::mem::take(&mut args.errors) {
        cx.syn_error(error);
    }
    let sig = &func.sig;

    is_async(cx, sig);
    let (kind, value_span, stored) = returns_a_value(cx, sig);
    let shared = stored.filter(|stored| generics::may_share(sig, stored));
    let mut params = arguments_are_named(cx, sig);
    skip_names_arguments(cx, args.skip.as_ref(), &mut params, &sig.ident);
    self_is_skipped(cx, &params);
    let batch = batch::check(cx, &args, func, &params);
    let is_batch = args.batch.is_some();

    let ttl = duration_in_range(cx, "ttl", args.ttl.as_ref(), Duration::from_secs(1)).unwrap_or(DEFAULT_TTL);
    let stale = duration_in_range(cx, "stale", args.stale.as_ref(), Duration::ZERO);
    let lock_ttl = duration_in_range(cx, "lock_ttl", args.lock_ttl.as_ref(), MIN_LOCK_TTL);
    let wait = duration_in_range(cx, "wait", args.wait.as_ref(), Duration::from_millis(1));
    let jitter = args
        .jitter
        .as_ref()
        .and_then(|arg| jitter_is_a_share_of_the_ttl(cx, &arg.value));
    let refresh_ahead = args
        .refresh_ahead
        .as_ref()
        .and_then(|arg| refresh_ahead_is_a_fraction(cx, &arg.value));
    let soft_timeout = duration_in_range(cx, "soft_timeout", args.soft_timeout.as_ref(), Duration::ZERO);
    soft_timeout_needs_stale(cx, args.soft_timeout.as_ref(), args.stale.as_ref());
    // A batch function reports these as arguments it does not take.
    let detached = !is_batch && (args.refresh_ahead.is_some() || args.soft_timeout.is_some());
    if detached {
        let what = if args.refresh_ahead.is_some() {
            "refresh_ahead"
        } else {
            "soft_timeout"
        };
        detached_body_borrows_nothing(cx, what, func);
    }

    let prefix = match &args.prefix {
        Some(arg) => is_key_segment(cx, "prefix", &arg.value),
        None => "computed".to_owned(),
    };
    let name = match &args.name {
        Some(arg) => Name::Fixed(is_key_segment(cx, "name", &arg.value)),
        None if params.first().is_some_and(Param::is_receiver) => Name::Method(sig.ident.unraw().to_string()),
        None => Name::Fixed(sig.ident.unraw().to_string()),
    };
    let version = args.version.as_ref().map_or(1, |arg| version_fits(cx, &arg.value));
    let cache_none = if is_batch {
        false
    } else {
        cache_none_needs_option(cx, args.cache_none.as_ref(), kind, &sig.ident)
    };
    let unless = args
        .unless
        .as_ref()
        .and_then(|arg| is_a_function_path(cx, "unless", &arg.value, "fn(&T) -> bool"));
    let ttl_from = args
        .ttl_from
        .as_ref()
        .and_then(|arg| is_a_function_path(cx, "ttl_from", &arg.value, "fn(&T) -> Duration"));

    let key = args.key.as_ref().and_then(|arg| cx.ok(Template::parse(&arg.value)));
    if let Some(key) = &key {
        template_fits_arguments(cx, key, &params, &sig.ident, Use::Key);
    }
    let mut tags = Vec::new();
    for lit in args.tags.iter().flat_map(|tags| &tags.value) {
        if let Some(tag) = cx.ok(Template::parse(lit)) {
            template_fits_arguments(cx, &tag, &params, &sig.ident, Use::Tag);
            tags.push(tag);
        }
    }

    let cache = args.cache.map(|arg| arg.value);
    let mut cache_mentions = BTreeSet::new();
    if let Some(cache) = &cache {
        generics::variables(cache.to_token_stream(), &mut cache_mentions);
    }
    cache_mentions.retain(|name| params.iter().any(|p| &p.name == name));

    let in_impl = params.first().is_some_and(Param::is_receiver) || generics::mentions_self(sig);
    let (distinct, key_generics) = distinct(sig, &params, in_impl);

    let krate = match args.krate {
        Some(arg) => arg.value.into_token_stream(),
        None => quote!(::aside),
    };
    Plan {
        private: quote!(#krate::__private),
        cache,
        cache_mentions,
        ttl,
        stale,
        lock_ttl,
        wait,
        cache_none,
        unless,
        ttl_from,
        jitter,
        refresh_ahead,
        soft_timeout,
        detached,
        prefix,
        name,
        version,
        key,
        tags,
        params,
        distinct,
        key_generics,
        in_impl,
        kind,
        value_span: match &batch {
            Some(_) => batch::value_span(sig).unwrap_or(value_span),
            None => value_span,
        },
        batch,
        ret: match &sig.output {
            ReturnType::Type(_, ty) => ty.to_token_stream(),
            ReturnType::Default => quote!(()),
        },
        shared,
    }
}

/// What tells instantiations apart: `Self` for an associated function, the type
/// and const parameters but those of skipped arguments only, and the type of each
/// `impl Trait` key argument.
fn distinct(sig: &Signature, params: &[Param], in_impl: bool) -> (Vec<Distinct>, Vec<GenericParam>) {
    let (mut key_types, mut skipped_types) = (TokenStream::new(), TokenStream::new());
    for param in params {
        if let Some(ty) = &param.ty {
            ty.to_tokens(if param.skipped {
                &mut skipped_types
            } else {
                &mut key_types
            });
        }
    }
    // The return type is the result's: its parameters are part of the key.
    if let ReturnType::Type(_, ty) = &sig.output {
        ty.to_tokens(&mut key_types);
    }
    let key_generics = generics::key_params(&sig.generics, key_types, skipped_types);
    let mut distinct = Vec::new();
    if in_impl {
        distinct.push(Distinct::SelfType);
    }
    for param in &key_generics {
        match param {
            GenericParam::Type(ty) => distinct.push(Distinct::Type(ty.ident.clone())),
            GenericParam::Const(c) => distinct.push(Distinct::Const(c.ident.clone())),
            GenericParam::Lifetime(_) => {}
        }
    }
    for param in params.iter().filter(|p| p.in_key()) {
        if param.ty.as_ref().is_some_and(generics::is_impl_trait) {
            distinct.push(Distinct::ValueOf(param.ident.clone()));
        }
    }
    (distinct, key_generics)
}

/// The function is `async`.
fn is_async(cx: &Ctxt, sig: &Signature) {
    if sig.asyncness.is_none() {
        cx.error(
            sig.fn_token.span,
            "the `async` keyword is missing: `#[cached]` applies to `async fn`",
        );
    }
}

/// The function returns a value; the return type's syntax says what is stored.
///
/// Gives the [`Kind`] and the span of the stored part (`T` in `Result<T, E>` and
/// `Option<T>`, else the whole type).
fn returns_a_value(cx: &Ctxt, sig: &Signature) -> (Kind, Span, Option<Type>) {
    let ty = match &sig.output {
        ReturnType::Type(_, ty) => ungroup(ty),
        ReturnType::Default => {
            cx.error(
                sig.ident.span(),
                format!(
                    "a cached function must return a value: `{}` returns `()`; add `-> T`",
                    sig.ident
                ),
            );
            return (Kind::Plain, sig.ident.span(), None);
        }
    };
    match ty {
        Type::Tuple(tuple) if tuple.elems.is_empty() => {
            cx.error(
                ty.span(),
                "a cached function must return a value: `()` has nothing to cache",
            );
        }
        Type::Never(_) => {
            cx.error(
                ty.span(),
                "a cached function must return a value: `!` has nothing to cache",
            );
        }
        Type::Path(path) if path.qself.is_none() => {
            if let Some(last) = path.path.segments.last() {
                let kind = match last.ident.to_string().as_str() {
                    "Result" => Kind::Result,
                    "Option" => Kind::Option,
                    _ => Kind::Plain,
                };
                if kind != Kind::Plain {
                    if let PathArguments::AngleBracketed(generic) = &last.arguments {
                        if let Some(GenericArgument::Type(value)) = generic.args.first() {
                            // `Option<T>` stores the option, `Result<T, E>` the `T`.
                            let stored = if kind == Kind::Result { value } else { ty };
                            return (kind, value.span(), Some(stored.clone()));
                        }
                    }
                }
            }
        }
        _ => {}
    }
    (Kind::Plain, ty.span(), Some(ty.clone()))
}

fn ungroup(mut ty: &Type) -> &Type {
    loop {
        match ty {
            Type::Group(group) => ty = &group.elem,
            Type::Paren(paren) => ty = &paren.elem,
            _ => return ty,
        }
    }
}

/// Every argument is bound to a name: a destructuring pattern has no name to put
/// in the key or in `skip`.
fn arguments_are_named(cx: &Ctxt, sig: &Signature) -> Vec<Param> {
    let mut params = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(receiver) => params.push(Param {
                name: "self".to_owned(),
                ident: Ident::new("self", receiver.self_token.span),
                ty: None,
                skipped: false,
                span: receiver.self_token.span,
                end: receiver.self_token.span,
                mutable: receiver.mutability.is_some(),
            }),
            FnArg::Typed(typed) => match &*typed.pat {
                Pat::Ident(pat) if pat.subpat.is_none() => params.push(Param {
                    name: pat.ident.unraw().to_string(),
                    ident: pat.ident.clone(),
                    ty: Some((*typed.ty).clone()),
                    skipped: false,
                    span: pat.ident.span(),
                    end: typed
                        .ty
                        .to_token_stream()
                        .into_iter()
                        .last()
                        .map_or(pat.ident.span(), |token| token.span()),
                    mutable: pat.mutability.is_some(),
                }),
                pat => cx.error(
                    pat.span(),
                    "bind this argument to a name (`arg: Type`) and destructure it in the body: \
                     `#[cached]` puts arguments in the key by name, and names the ones to leave out in `skip(...)`",
                ),
            },
        }
    }
    params
}

/// Each name in `skip(...)` is an argument of the function (or its receiver), given once.
fn skip_names_arguments(cx: &Ctxt, skip: Option<&Arg<Vec<Ident>>>, params: &mut [Param], fn_name: &Ident) {
    let mut skipped = BTreeSet::new();
    for ident in skip.iter().flat_map(|skip| &skip.value) {
        let name = ident.unraw().to_string();
        if !skipped.insert(name.clone()) {
            cx.error(ident.span(), format!("`{name}` is skipped twice"));
        } else if let Some(param) = params.iter_mut().find(|p| p.name == name) {
            param.skipped = true;
        } else if name == "self" {
            cx.error(
                ident.span(),
                format!("there is no `self` to skip: `{fn_name}` has no receiver"),
            );
        } else {
            cx.error(
                ident.span(),
                format!("cannot skip `{name}`: {}", no_such_argument(fn_name, params)),
            );
        }
    }
}

/// The receiver is never part of the key: `self` must be skipped.
fn self_is_skipped(cx: &Ctxt, params: &[Param]) {
    for param in params {
        if param.is_receiver() && !param.skipped {
            cx.error(
                param.span,
                "`self` cannot be part of the key: add `skip(self)` and pass what identifies \
                 the entry as arguments (or use it in `tags`)",
            );
        }
    }
}

/// A duration parses, and lies within `min ..= 24 h`.
fn duration_in_range(cx: &Ctxt, what: &str, arg: Option<&Arg<DurationLit>>, min: Duration) -> Option<Duration> {
    let arg = arg?;
    let value = cx.ok(arg.value.value())?;
    if value < min || value > DAY {
        let show = |d: Duration| {
            if d.is_zero() {
                "0".to_owned()
            } else {
                humantime::format_duration(d).to_string()
            }
        };
        cx.error(
            arg.value.span(),
            format!(
                "`{what}` must be between {} and 24h; this is {}",
                show(min),
                show(value)
            ),
        );
        return None;
    }
    Some(value)
}

/// `jitter` is a percentage of the TTL, `"0%"` to `"50%"`.
fn jitter_is_a_share_of_the_ttl(cx: &Ctxt, lit: &LitStr) -> Option<f64> {
    let text = lit.value();
    let percent = text.trim().strip_suffix('%').and_then(|p| p.trim().parse::<f64>().ok());
    match percent {
        Some(p) if (0.0..=MAX_JITTER_PERCENT).contains(&p) => Some(p / 100.0),
        Some(_) => {
            cx.error(
                lit.span(),
                format!("`jitter` must be between 0% and 50% of the TTL; this is {text}"),
            );
            None
        }
        None => {
            cx.error(
                lit.span(),
                format!("`jitter` is a percentage of the TTL, such as \"10%\"; {text:?} is not one"),
            );
            None
        }
    }
}

/// `refresh_ahead` is a share of the fresh life strictly between 0 and 1.
fn refresh_ahead_is_a_fraction(cx: &Ctxt, lit: &LitFloat) -> Option<f64> {
    match lit.base10_parse::<f64>() {
        Ok(fraction) if fraction > 0.0 && fraction < 1.0 && lit.suffix().is_empty() => Some(fraction),
        _ => {
            cx.error(
                lit.span(),
                format!(
                    "`refresh_ahead` is the share of the fresh life after which a hit refreshes the entry, \
                     strictly between 0 and 1 (such as `0.8`); `{lit}` is not one"
                ),
            );
            None
        }
    }
}

/// `soft_timeout` needs a `stale` window: it bounds a wait only when a stale value is at hand.
fn soft_timeout_needs_stale(cx: &Ctxt, soft_timeout: Option<&Arg<DurationLit>>, stale: Option<&Arg<DurationLit>>) {
    if let (Some(soft_timeout), None) = (soft_timeout, stale) {
        cx.error(
            soft_timeout.span,
            "`soft_timeout` serves the stale value when the computation is slow, so it needs one: \
             add `stale = \"...\"` (how long after `ttl` an old value may be served)",
        );
    }
}

/// With `refresh_ahead` or `soft_timeout` the body may finish in a task of its
/// own, after the call returned: it cannot borrow an argument (or `self`).
fn detached_body_borrows_nothing(cx: &Ctxt, what: &str, func: &MaybeItemFn) {
    let mut used = BTreeSet::new();
    generics::variables(func.body.clone(), &mut used);
    let fn_name = &func.sig.ident;
    for input in &func.sig.inputs {
        let (name, span, borrows) = match input {
            FnArg::Receiver(receiver) => (
                "self".to_owned(),
                receiver.self_token.span,
                receiver.reference.is_some(),
            ),
            FnArg::Typed(typed) => {
                // Other patterns are reported by `arguments_are_named`.
                let Pat::Ident(pat) = &*typed.pat else {
                    continue;
                };
                (pat.ident.unraw().to_string(), pat.ident.span(), borrows(&typed.ty))
            }
        };
        if borrows && used.contains(&name) {
            cx.error(
                span,
                format!(
                    "`{what}` lets `{fn_name}` finish in the background, after its caller returned, \
                     so its body cannot borrow `{name}`: take it by value (an `Arc`, or a pool or client \
                     that is cheap to clone), or drop `{what}`"
                ),
            );
        }
    }
}

/// Whether a type borrows: a reference, or a lifetime anywhere in it.
fn borrows(ty: &Type) -> bool {
    let mut names = BTreeSet::new();
    generics::idents(ty.to_token_stream(), &mut names);
    names.iter().any(|name| name.starts_with('\''))
        || ty.to_token_stream().into_iter().any(|token| is_ampersand(&token))
}

/// `&` at any depth of a token.
fn is_ampersand(token: &proc_macro2::TokenTree) -> bool {
    match token {
        proc_macro2::TokenTree::Punct(punct) => punct.as_char() == '&',
        proc_macro2::TokenTree::Group(group) => group.stream().into_iter().any(|t| is_ampersand(&t)),
        _ => false,
    }
}

/// `prefix` and `name` are non-empty key segments without white space, braces or glob characters.
fn is_key_segment(cx: &Ctxt, what: &str, lit: &LitStr) -> String {
    let value = lit.value();
    if value.is_empty() {
        cx.error(lit.span(), format!("`{what}` must not be empty"));
    } else if let Some(bad) = value
        .chars()
        .find(|c| c.is_whitespace() || SEGMENT_RESERVED.contains(*c))
    {
        cx.error(
            lit.span(),
            format!(
                "`{what}` cannot contain {bad:?}: key segments have no white space, braces or glob characters (`*?[]`)"
            ),
        );
    }
    value
}

/// `version` is a whole number that fits in a `u32`.
fn version_fits(cx: &Ctxt, lit: &LitInt) -> u32 {
    cx.ok(lit
        .base10_parse::<u32>()
        .map_err(|_| syn::Error::new(lit.span(), "`version` must be a whole number that fits in a `u32`")))
        .unwrap_or(1)
}

/// `cache_none = true` needs a function returning `Option<T>`.
fn cache_none_needs_option(cx: &Ctxt, arg: Option<&Arg<LitBool>>, kind: Kind, fn_name: &Ident) -> bool {
    let Some(Arg { span, value }) = arg else {
        return false;
    };
    if value.value && kind != Kind::Option {
        cx.error(
            *span,
            format!("`cache_none` applies to functions returning `Option<T>`; `{fn_name}` does not return an `Option`"),
        );
    }
    value.value
}

/// `unless` and `ttl_from` name a function by its path (`is_empty_page`,
/// `Vec::is_empty`, `rules::ttl_of`): a closure or call would be evaluated once
/// per call of the attribute's own choosing, and the docs promise a function.
fn is_a_function_path(cx: &Ctxt, what: &str, expr: &Expr, signature: &str) -> Option<syn::ExprPath> {
    match expr {
        Expr::Path(path) if path.attrs.is_empty() => Some(path.clone()),
        other => {
            cx.error(
                other.span(),
                format!(
                    "`{what}` takes the path of a function `{signature}`, where `T` is the stored value \
                     (e.g. `{what} = my_module::{what}_rule`); write a closure as a named `fn`"
                ),
            );
            None
        }
    }
}

/// Where a template is used.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Use {
    Key,
    Tag,
}

impl Use {
    fn what(self) -> &'static str {
        match self {
            Use::Key => "`key`",
            Use::Tag => "a tag",
        }
    }
}

/// A template fits the function: the rules below, segment by segment, in order.
fn template_fits_arguments(cx: &Ctxt, template: &Template, params: &[Param], fn_name: &Ident, usage: Use) {
    let span = template.lit.span();
    if !template_is_not_empty(cx, template, usage) {
        return;
    }
    let mut used = BTreeSet::new();
    let mut unknown = false;
    let mut previous: Option<&str> = None;
    let mut separated = true;
    for segment in &template.segments {
        match segment {
            Segment::Text(text) => {
                if usage == Use::Key {
                    key_text_is_plain(cx, span, text);
                }
                separated |= separates(text);
            }
            Segment::Value { arg, .. } => {
                match placeholder_names_argument(cx, span, arg, params, fn_name, usage) {
                    None => unknown = true,
                    Some(param) => {
                        if usage == Use::Key {
                            key_uses_no_skipped_argument(cx, span, param);
                        }
                        if !(usage == Use::Key && param.skipped) {
                            used.insert(arg.as_str());
                        }
                    }
                }
                if let (Some(before), false) = (previous, separated) {
                    placeholders_are_separated(cx, span, before, arg);
                }
                previous = Some(arg);
                separated = false;
            }
        }
    }
    // After a misspelt placeholder, "does not use `x`" would only repeat that mistake.
    if usage == Use::Key && !unknown {
        key_uses_every_key_argument(cx, span, params, &used);
    }
}

/// A key or tag template is not empty.
fn template_is_not_empty(cx: &Ctxt, template: &Template, usage: Use) -> bool {
    if template.segments.is_empty() {
        cx.error(template.lit.span(), format!("{} cannot be empty", usage.what()));
        return false;
    }
    true
}

/// The text of a `key` template has no white space or glob characters.
fn key_text_is_plain(cx: &Ctxt, span: Span, text: &str) {
    if let Some(bad) = text.chars().find(|c| c.is_whitespace() || "*?[]".contains(*c)) {
        cx.error(
            span,
            format!("`key` cannot contain {bad:?}: keys have no white space or glob characters (`*?[]`)"),
        );
    }
}

/// Whether `text` between two placeholders tells where one value ends: rendered
/// values are made of `[A-Za-z0-9._-]`, `%XX` escapes and `~`, so only another
/// character does.
fn separates(text: &str) -> bool {
    text.chars()
        .any(|c| !(c.is_ascii_alphanumeric() || "._-%~".contains(c)))
}

/// A placeholder names an argument of the function.
fn placeholder_names_argument<'p>(
    cx: &Ctxt,
    span: Span,
    arg: &str,
    params: &'p [Param],
    fn_name: &Ident,
    usage: Use,
) -> Option<&'p Param> {
    let param = params.iter().find(|p| p.name == arg);
    if param.is_none() {
        cx.error(
            span,
            format!(
                "{} uses `{{{arg}}}`, but {}",
                usage.what(),
                no_such_argument(fn_name, params)
            ),
        );
    }
    param
}

/// The `key` uses no skipped argument (tags may).
fn key_uses_no_skipped_argument(cx: &Ctxt, span: Span, param: &Param) {
    if param.skipped {
        let arg = &param.name;
        cx.error(
            span,
            format!(
                "`key` cannot use `{{{arg}}}`: `{arg}` is in `skip(...)` (tags may use skipped arguments, \
                 the key may not)"
            ),
        );
    }
}

/// Two placeholders are separated by something a value cannot contain.
fn placeholders_are_separated(cx: &Ctxt, span: Span, before: &str, arg: &str) {
    cx.error(
        span,
        format!(
            "`{{{before}}}` and `{{{arg}}}` need a separator: values may contain letters, digits, \
             `.`, `_` and `-`, so two different pairs of values could render the same; \
             put a `:` between them (`{{{before}}}:{{{arg}}}`)"
        ),
    );
}

/// The `key` uses every key argument, or calls differing in one would share an entry.
fn key_uses_every_key_argument(cx: &Ctxt, span: Span, params: &[Param], used: &BTreeSet<&str>) {
    for param in params.iter().filter(|p| p.in_key()) {
        if !used.contains(param.name.as_str()) {
            let name = &param.name;
            cx.error(
                span,
                format!(
                    "`key` does not use the argument `{name}`: calls that differ only in `{name}` would share \
                     one entry; add `{{{name}}}` to the key or `{name}` to `skip(...)`"
                ),
            );
        }
    }
}

fn no_such_argument(fn_name: &Ident, params: &[Param]) -> String {
    let names: Vec<String> = params.iter().map(|p| format!("`{}`", p.name)).collect();
    if names.is_empty() {
        format!("`{fn_name}` has no arguments")
    } else {
        format!("`{fn_name}` has no such argument (it has {})", names.join(", "))
    }
}

#[cfg(test)]
mod shared_facts {
    use super::*;

    /// The same literals are pinned on the runtime's side (`key.rs`, `policy.rs`).
    #[test]
    fn agree_with_the_runtime() {
        assert_eq!(SEGMENT_RESERVED, "{}*?[]");
        assert_eq!(MAX_JITTER_PERCENT, 50.0);
        assert_eq!(
            (MIN_LOCK_TTL, DEFAULT_TTL, DAY),
            (
                Duration::from_secs(1),
                Duration::from_secs(300),
                Duration::from_secs(86_400)
            )
        );
    }
}
