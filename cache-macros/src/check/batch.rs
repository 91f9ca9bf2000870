//! The rules of `batch = ids`: a function over many ids whose entries are one
//! per id (`Cache::get_many_or_compute`). Each rule is a named function whose
//! first doc line states it, reporting into the [`Ctxt`].

use proc_macro2::Span;
use syn::ext::IdentExt as _;
use syn::spanned::Spanned as _;
use syn::{GenericArgument, Ident, PathArguments, ReturnType, Signature, Type};

use super::{no_such_argument, ungroup, Param};
use crate::attr::{Arg, Args, Segment, Template};
use crate::ctxt::Ctxt;
use crate::item::MaybeItemFn;

/// How the batch parameter holds its ids (and so how the body gets the missing ones).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shape {
    /// `&[I]`: the body gets a slice of the missing ids.
    Slice,
    /// `Vec<I>`: the body gets a `Vec` of them.
    Vec,
    /// `&Vec<I>`: the body gets a reference to a `Vec` of them.
    VecRef,
}

/// A checked `batch = ids`.
pub(crate) struct Batch {
    /// The batch parameter's index in [`Plan::params`](super::Plan::params).
    pub(crate) index: usize,
    pub(crate) shape: Shape,
    /// `I`, the type of one id.
    pub(crate) id: Type,
    /// The companions' argument for one id: the batch parameter's name in the
    /// singular (`ids` → `id`), or `id`.
    pub(crate) one: Ident,
}

/// The arguments that have no meaning for a batch function, with why.
const EXCLUDED: &[(&str, &str)] = &[
    (
        "refresh_ahead",
        "a batch serves a stale or ageing entry as a hit and never refreshes it in the background",
    ),
    (
        "soft_timeout",
        "a batch serves a stale entry as a hit and never refreshes it in the background",
    ),
    (
        "unless",
        "a batch stores every id its body returns; leave an id out of the map not to store it",
    ),
    (
        "ttl_from",
        "every id of a batch is stored with `ttl`; give the ids that need another lifetime a function of their own",
    ),
    (
        "cache_none",
        "a batch caches the ids present in the returned map; an absent id is asked for again",
    ),
];

/// Checks `batch = ...` against the function; `None` when it is absent or wrong
/// (the errors are then recorded in `cx`).
pub(crate) fn check(cx: &Ctxt, args: &Args, func: &MaybeItemFn, params: &[Param]) -> Option<Batch> {
    let arg = args.batch.as_ref()?;
    let sig = &func.sig;
    excluded_arguments_are_absent(cx, args);
    let index = batch_names_an_argument(cx, arg, params, &sig.ident)?;
    let param = &params[index];
    batch_is_not_skipped(cx, args, param);
    if let Some(tags) = &args.tags {
        for lit in &tags.value {
            if let Ok(tag) = Template::parse(lit) {
                tags_do_not_use_the_batch(cx, &tag, param);
            }
        }
    }
    let (shape, id) = batch_holds_ids(cx, param)?;
    returns_a_map_of_the_ids(cx, sig)?;
    for other in params.iter().filter(|p| p.name != param.name) {
        other_arguments_are_shared(cx, other, &param.name);
    }
    Some(Batch {
        index,
        shape,
        id,
        one: one_id(params, param),
    })
}

/// The stored type's span in a batch function's `Result<HashMap<I, T>, E>`: `T`.
pub(crate) fn value_span(sig: &Signature) -> Option<Span> {
    let map = result_ok(sig)?;
    let [_, value] = map_args(map)?;
    Some(value.span())
}

/// `refresh_ahead`, `soft_timeout`, `unless`, `ttl_from` and `cache_none` are
/// not given: the batch call has no background refresh, stores every id it is
/// given, and with one lifetime.
fn excluded_arguments_are_absent(cx: &Ctxt, args: &Args) {
    let given = [
        args.refresh_ahead.as_ref().map(|arg| arg.span),
        args.soft_timeout.as_ref().map(|arg| arg.span),
        args.unless.as_ref().map(|arg| arg.span),
        args.ttl_from.as_ref().map(|arg| arg.span),
        args.cache_none.as_ref().map(|arg| arg.span),
    ];
    for ((name, why), span) in EXCLUDED.iter().zip(given) {
        if let Some(span) = span {
            cx.error(span, format!("`{name}` does not apply to a `batch` function: {why}"));
        }
    }
}

/// `batch = x` names an argument of the function (not `self`).
fn batch_names_an_argument(cx: &Ctxt, arg: &Arg<Ident>, params: &[Param], fn_name: &Ident) -> Option<usize> {
    let name = arg.value.unraw().to_string();
    match params.iter().position(|p| p.name == name) {
        Some(index) if !params[index].is_receiver() => Some(index),
        Some(_) => {
            cx.error(
                arg.value.span(),
                "`self` cannot hold the ids of a batch: name an argument `ids: &[I]`",
            );
            None
        }
        None => {
            cx.error(
                arg.value.span(),
                format!("`batch = {name}`: {}", no_such_argument(fn_name, params)),
            );
            None
        }
    }
}

/// The batch parameter is not in `skip(...)`: its ids are what the keys tell apart.
fn batch_is_not_skipped(cx: &Ctxt, args: &Args, param: &Param) {
    let Some(skip) = &args.skip else {
        return;
    };
    let name = &param.name;
    for ident in skip.value.iter().filter(|ident| ident.unraw() == *name) {
        cx.error(
            ident.span(),
            format!(
                "`{name}` holds the batch's ids, and each id is part of its entry's key: \
                 it cannot be skipped; remove it from `skip(...)`"
            ),
        );
    }
}

/// Tags do not use the batch parameter: they are recorded alike for every id
/// of a call, so `{ids}` would tag each entry with the whole list.
fn tags_do_not_use_the_batch(cx: &Ctxt, tag: &Template, param: &Param) {
    let uses = tag
        .segments
        .iter()
        .any(|segment| matches!(segment, Segment::Value { arg, .. } if *arg == param.name));
    if uses {
        let name = &param.name;
        cx.error(
            tag.lit.span(),
            format!(
                "a tag of a `batch` function cannot use `{{{name}}}`: tags are recorded alike for every id \
                 of a call, so each entry would carry the whole list; tag by the other arguments, or \
                 invalidate one id with the `_invalidate` companion"
            ),
        );
    }
}

/// The batch parameter is `&[I]`, `Vec<I>` or `&Vec<I>`.
fn batch_holds_ids(cx: &Ctxt, param: &Param) -> Option<(Shape, Type)> {
    let ty = param.ty.as_ref()?;
    let shape = match ungroup(ty) {
        Type::Reference(reference) if reference.mutability.is_none() => match ungroup(&reference.elem) {
            Type::Slice(slice) => Some((Shape::Slice, (*slice.elem).clone())),
            inner => vec_of(inner).map(|id| (Shape::VecRef, id)),
        },
        Type::Reference(_) => None,
        owned => vec_of(owned).map(|id| (Shape::Vec, id)),
    };
    if shape.is_none() {
        cx.error(
            ty.span(),
            format!(
                "`{}` holds the batch's ids, so it must be `&[I]`, `Vec<I>` or `&Vec<I>` \
                 (the body is then given the missing ids the same way)",
                param.name
            ),
        );
    }
    shape
}

/// `I` of `Vec<I>` (any path ending in `Vec`).
fn vec_of(ty: &Type) -> Option<Type> {
    let [id] = type_args(ty, "Vec")?;
    Some(id.clone())
}

/// The return type is `Result<HashMap<I, T>, E>` (any paths ending in `Result`
/// and `HashMap`): the values of the ids the body found.
fn returns_a_map_of_the_ids(cx: &Ctxt, sig: &Signature) -> Option<()> {
    if result_ok(sig).and_then(map_args).is_some() {
        return Some(());
    }
    let span = match &sig.output {
        ReturnType::Type(_, ty) => ty.span(),
        ReturnType::Default => sig.ident.span(),
    };
    cx.error(
        span,
        "a `batch` function returns `Result<HashMap<I, T>, E>`: the value of each id it found, \
         `I` being the type of one id",
    );
    None
}

/// `HashMap<I, T>` of `Result<HashMap<I, T>, E>`.
fn result_ok(sig: &Signature) -> Option<&Type> {
    let ReturnType::Type(_, ty) = &sig.output else {
        return None;
    };
    let Type::Path(path) = ungroup(ty) else {
        return None;
    };
    let last = path.path.segments.last().filter(|last| last.ident == "Result")?;
    let PathArguments::AngleBracketed(generic) = &last.arguments else {
        return None;
    };
    match generic.args.first()? {
        GenericArgument::Type(ok) => Some(ok),
        _ => None,
    }
}

/// `[I, T]` of `HashMap<I, T>`.
fn map_args(ty: &Type) -> Option<[&Type; 2]> {
    type_args(ty, "HashMap")
}

/// The `N` type arguments of a path type ending in `name`, when it has exactly those.
fn type_args<'t, const N: usize>(ty: &'t Type, name: &str) -> Option<[&'t Type; N]> {
    let Type::Path(path) = ungroup(ty) else {
        return None;
    };
    if path.qself.is_some() {
        return None;
    }
    let last = path.path.segments.last().filter(|last| last.ident == name)?;
    let PathArguments::AngleBracketed(generic) = &last.arguments else {
        return None;
    };
    let types: Vec<&Type> = generic
        .args
        .iter()
        .map(|arg| match arg {
            GenericArgument::Type(ty) => Some(ty),
            _ => None,
        })
        .collect::<Option<_>>()?;
    types.try_into().ok()
}

/// The other arguments are not `&mut`: the body may run twice (for ids another
/// caller was computing), each run with its own copy of every argument.
fn other_arguments_are_shared(cx: &Ctxt, param: &Param, batch: &str) {
    if let Some(Type::Reference(reference)) = param.ty.as_ref().map(ungroup) {
        if let Some(mutability) = reference.mutability {
            cx.error(
                mutability.span,
                format!(
                    "the body of a `batch` function may run twice (the second time for the ids of \
                     `{batch}` another caller was computing), so it cannot take `{}` as `&mut`: take it \
                     by `&`, or by value (it is cloned for each run)",
                    param.name
                ),
            );
        }
    }
}

/// The companions' argument for one id: `ids` → `id`, `user_ids` → `user_id`,
/// else `id`, avoiding the names of the other arguments.
fn one_id(params: &[Param], batch: &Param) -> Ident {
    let taken = |name: &str| params.iter().any(|p| p.name == name);
    let singular = batch
        .name
        .strip_suffix('s')
        .filter(|s| !s.is_empty() && !s.ends_with('_'));
    let name = [singular, Some("id"), Some("batch_id")]
        .into_iter()
        .flatten()
        .find(|name| !taken(name) && syn::parse_str::<Ident>(name).is_ok())
        .unwrap_or("__aside_id");
    Ident::new(name, batch.span)
}

#[cfg(test)]
mod tests {
    use quote::ToTokens;

    use super::*;

    /// The batch `check` settles for `#[cached(attr)] item`: shape, id type and
    /// the companions' name for one id; and every error.
    fn batch(attr: &str, item: &str) -> (Option<(Shape, String, String)>, Vec<String>) {
        let args: Args = syn::parse_str(attr).unwrap();
        let func: MaybeItemFn = syn::parse_str(item).unwrap();
        let cx = Ctxt::new();
        let plan = super::super::check(&cx, args, &func);
        let errors = match cx.check() {
            Ok(()) => Vec::new(),
            Err(errors) => errors.into_iter().map(|e| e.to_string()).collect(),
        };
        let batch = plan
            .batch
            .map(|b| (b.shape, b.id.to_token_stream().to_string(), b.one.to_string()));
        (batch, errors)
    }

    const MAP: &str = "Result<HashMap<u64, String>, E>";

    #[test]
    fn the_ids_are_a_slice_a_vec_or_a_vec_reference() {
        let ok = |ids: &str, ret: &str| batch("batch = ids", &format!("async fn f(ids: {ids}) -> {ret} {{}}"));
        assert_eq!(
            ok("&[u64]", MAP),
            (Some((Shape::Slice, "u64".into(), "id".into())), vec![])
        );
        assert_eq!(ok("Vec<u64>", MAP).0.unwrap().0, Shape::Vec);
        assert_eq!(ok("&'a std::vec::Vec<u64>", MAP).0.unwrap().0, Shape::VecRef);
        let full = "io::Result<std::collections::HashMap<u64, String>>";
        assert_eq!(ok("&[u64]", full).1, Vec::<String>::new());
        for wrong in ["HashSet<u64>", "&mut [u64]", "[u64; 3]", "u64"] {
            let (plan, errors) = ok(wrong, MAP);
            assert!(plan.is_none(), "{wrong}");
            assert!(
                errors[0].contains("must be `&[I]`, `Vec<I>` or `&Vec<I>`"),
                "{wrong}: {errors:?}"
            );
        }
        for wrong in [
            "Result<Vec<String>, E>",
            "HashMap<u64, String>",
            "Result<HashMap<u64>, E>",
        ] {
            let (_, errors) = ok("&[u64]", wrong);
            assert!(
                errors[0].contains("returns `Result<HashMap<I, T>, E>`"),
                "{wrong}: {errors:?}"
            );
        }
    }

    #[test]
    fn one_id_is_named_after_the_ids() {
        let one = |item: &str| batch("batch = user_ids", item).0.map(|b| b.2);
        assert_eq!(
            one(&format!("async fn f(user_ids: &[u64]) -> {MAP} {{}}")).unwrap(),
            "user_id"
        );
        // Taken by another argument: `id`, then `batch_id`.
        assert_eq!(
            one(&format!("async fn f(user_id: u8, user_ids: &[u64]) -> {MAP} {{}}")).unwrap(),
            "id"
        );
        let item = format!("async fn f(user_id: u8, id: u8, user_ids: &[u64]) -> {MAP} {{}}");
        assert_eq!(one(&item).unwrap(), "batch_id");
    }

    #[test]
    fn arguments_without_meaning_for_a_batch_are_refused() {
        let item = format!("async fn f(ids: &[u64]) -> {MAP} {{}}");
        let (_, errors) = batch(
            "batch = ids, refresh_ahead = 0.5, unless = f, ttl_from = g, cache_none = true",
            &item,
        );
        let names: Vec<&str> = errors.iter().map(|e| e.split('`').nth(1).unwrap_or("")).collect();
        assert_eq!(
            names,
            ["refresh_ahead", "unless", "ttl_from", "cache_none"],
            "{errors:?}"
        );
        let (_, errors) = batch("batch = ids, tags = [\"user:{ids}\"]", &item);
        assert!(errors[0].contains("cannot use `{ids}`"), "{errors:?}");
        let (_, errors) = batch("batch = ids, skip(ids)", &item);
        assert!(errors[0].contains("it cannot be skipped"), "{errors:?}");
        let (_, errors) = batch("batch = idz", &item);
        assert!(
            errors[0].starts_with("`batch = idz`: `f` has no such argument"),
            "{errors:?}"
        );
    }
}
