//! What the generic parameters and `Self` of a signature mean for the key and the
//! companions: which parameters tell instantiations apart, which a companion needs.

use std::collections::BTreeSet;

use proc_macro2::{TokenStream, TokenTree};
use quote::ToTokens;
use syn::ext::IdentExt as _;
use syn::{GenericParam, Generics, Signature, WherePredicate};

/// Collects the identifiers (unraw) and lifetimes (`'a`) in `tokens`.
pub(crate) fn idents(tokens: TokenStream, names: &mut BTreeSet<String>) {
    let mut lifetime = false;
    for token in tokens {
        match token {
            TokenTree::Ident(ident) => {
                let name = ident.unraw().to_string();
                names.insert(if lifetime { format!("'{name}") } else { name });
                lifetime = false;
            }
            TokenTree::Punct(punct) => lifetime = punct.as_char() == '\'',
            TokenTree::Group(group) => {
                idents(group.stream(), names);
                lifetime = false;
            }
            TokenTree::Literal(_) => lifetime = false,
        }
    }
}

/// The identifiers in an expression that can be variables: not field or method
/// names (after `.`) nor later path segments (after `::`).
pub(crate) fn variables(tokens: TokenStream, names: &mut BTreeSet<String>) {
    let mut after_dot_or_path = false;
    for token in tokens {
        match token {
            TokenTree::Ident(ident) => {
                if !after_dot_or_path {
                    names.insert(ident.unraw().to_string());
                }
                after_dot_or_path = false;
            }
            TokenTree::Punct(punct) => after_dot_or_path = matches!(punct.as_char(), '.' | ':'),
            TokenTree::Group(group) => {
                variables(group.stream(), names);
                after_dot_or_path = false;
            }
            TokenTree::Literal(_) => after_dot_or_path = false,
        }
    }
}

/// Whether the arguments or the return type name `Self` (then the function is an
/// associated function: `Self` exists, and the companions' doc links go through `Self::`).
pub(crate) fn mentions_self(sig: &Signature) -> bool {
    let mut names = BTreeSet::new();
    idents(sig.inputs.to_token_stream(), &mut names);
    idents(sig.output.to_token_stream(), &mut names);
    names.contains("Self")
}

/// Whether a type is written with `impl Trait` (an anonymous type parameter).
pub(crate) fn is_impl_trait(ty: &syn::Type) -> bool {
    let mut names = BTreeSet::new();
    idents(ty.to_token_stream(), &mut names);
    names.contains("impl")
}

/// Whether the hits of a function storing `value` may clone a kept decoded
/// value out, chosen at compile time by the runtime's sharing probe: only for a
/// type written without anything the probe could take for `'static` when it is
/// not — a lifetime, `Self`, `impl`/`dyn`, a qualified path (`<X as Y>::Z`), a
/// type parameter of the function, a name written like one (`T`, `K2`: the
/// function may sit in a generic `impl`, whose parameters the attribute cannot
/// see), or an associated type of a capitalised name (`Db::Row`: of such a
/// parameter, most likely; modules are lower case). Trait selection ignores
/// lifetimes, so the probe would pick cloning for such a type, and the
/// `'static` its cell needs would then fail to compile.
pub(crate) fn may_share(sig: &Signature, value: &syn::Type) -> bool {
    let tokens = value.to_token_stream();
    let mut names = BTreeSet::new();
    idents(tokens.clone(), &mut names);
    let params: BTreeSet<String> = sig.generics.params.iter().map(param_name).collect();
    !names.iter().any(|name| {
        name.starts_with('\'')
            || matches!(name.as_str(), "Self" | "impl" | "dyn" | "as")
            || params.contains(name)
            || looks_like_a_type_parameter(name)
    }) && !names_an_associated_type(tokens)
}

/// Whether `tokens` write a capitalised name followed by `::` (`Db::Row`).
fn names_an_associated_type(tokens: TokenStream) -> bool {
    let mut capitalised = false;
    for token in tokens {
        match token {
            TokenTree::Ident(ident) => {
                capitalised = ident.unraw().to_string().starts_with(|c: char| c.is_ascii_uppercase());
            }
            TokenTree::Punct(punct) if punct.as_char() == ':' && capitalised => return true,
            TokenTree::Group(group) => {
                if names_an_associated_type(group.stream()) {
                    return true;
                }
                capitalised = false;
            }
            _ => capitalised = false,
        }
    }
    false
}

/// `T`, `U2`, `KV`: at most two capitals, then digits.
fn looks_like_a_type_parameter(name: &str) -> bool {
    let capitals = name.chars().take_while(char::is_ascii_uppercase).count();
    (1..=2).contains(&capitals) && name.chars().skip(capitals).all(|c| c.is_ascii_digit())
}

/// A parameter's name as [`idents`] collects it: `T`, `'a`, `N`.
fn param_name(param: &GenericParam) -> String {
    match param {
        GenericParam::Type(ty) => ty.ident.unraw().to_string(),
        GenericParam::Lifetime(lt) => format!("'{}", lt.lifetime.ident),
        GenericParam::Const(c) => c.ident.unraw().to_string(),
    }
}

/// The names `tokens` mention, and those the bounds of the mentioned parameters
/// mention in turn (`T: Into<U>` brings `U`), until nothing is added.
fn reachable(generics: &Generics, tokens: TokenStream) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    idents(tokens, &mut used);
    let predicates: Vec<&WherePredicate> = generics.where_clause.iter().flat_map(|w| &w.predicates).collect();
    loop {
        let before = used.len();
        for param in &generics.params {
            if used.contains(&param_name(param)) {
                idents(param.to_token_stream(), &mut used);
            }
        }
        for predicate in &predicates {
            let mut bounded = BTreeSet::new();
            match predicate {
                WherePredicate::Type(ty) => idents(ty.bounded_ty.to_token_stream(), &mut bounded),
                WherePredicate::Lifetime(lt) => {
                    bounded.insert(format!("'{}", lt.lifetime.ident));
                }
                _ => {}
            }
            if bounded.iter().any(|name| used.contains(name)) {
                idents(predicate.to_token_stream(), &mut used);
            }
        }
        if used.len() == before {
            return used;
        }
    }
}

/// The type and const parameters that are part of the key, in declaration order:
/// all of them but those only the skipped arguments' types need (a skipped argument
/// must not change the result, and neither does its type).
pub(crate) fn key_params(generics: &Generics, key_types: TokenStream, skipped_types: TokenStream) -> Vec<GenericParam> {
    let in_key = reachable(generics, key_types);
    let in_skipped = reachable(generics, skipped_types);
    generics
        .params
        .iter()
        .filter(|param| !matches!(param, GenericParam::Lifetime(_)))
        .filter(|param| {
            let name = param_name(param);
            in_key.contains(&name) || !in_skipped.contains(&name)
        })
        .cloned()
        .collect()
}

/// The generic parameters a companion needs: those `used` mentions (its argument
/// types, and the parameters that are part of the key), those their bounds mention
/// in turn, and the where-predicates among them only. (A parameter used only by a
/// skipped argument would otherwise be impossible to infer.)
pub(crate) fn companion_generics(generics: &Generics, used: TokenStream) -> Generics {
    let used = reachable(generics, used);
    let declared: BTreeSet<String> = generics.params.iter().map(param_name).collect();
    let mut kept = generics.clone();
    kept.params = generics
        .params
        .iter()
        .filter(|p| used.contains(&param_name(p)))
        .cloned()
        .collect();
    if let Some(where_clause) = &mut kept.where_clause {
        where_clause.predicates = where_clause
            .predicates
            .iter()
            .filter(|predicate| {
                let mut names = BTreeSet::new();
                idents(predicate.to_token_stream(), &mut names);
                names.intersection(&declared).all(|name| used.contains(name))
            })
            .cloned()
            .collect();
    }
    if kept.params.is_empty() {
        kept.lt_token = None;
        kept.gt_token = None;
    }
    kept
}

#[cfg(test)]
mod tests {
    use quote::quote;

    use super::*;

    fn generics(generics: &str, where_clause: &str) -> Generics {
        let mut generics: Generics = syn::parse_str(generics).unwrap();
        generics.where_clause = (!where_clause.is_empty()).then(|| syn::parse_str(where_clause).unwrap());
        generics
    }

    fn kept(params: &str, where_clause: &str, used: &str) -> String {
        let kept = companion_generics(&generics(params, where_clause), used.parse().unwrap());
        let (params, _, where_clause) = kept.split_for_impl();
        quote!(#params #where_clause).to_string()
    }

    fn shares(sig: &str, value: &str) -> bool {
        let sig: Signature = syn::parse_str(sig).unwrap();
        may_share(&sig, &syn::parse_str(value).unwrap())
    }

    #[test]
    fn only_types_that_cannot_hide_a_lifetime_are_probed_for_cloning() {
        let plain = "async fn f(id: u32) -> Report";
        assert!(shares(plain, "Report"));
        assert!(shares(plain, "Vec<std::collections::HashMap<String, u64>>"));
        assert!(shares(plain, "Option<Vec<Row>>"));
        assert!(!shares("async fn f<'a>(x: &'a str) -> Cow<'a, str>", "Cow<'a, str>"));
        assert!(!shares("async fn f() -> Cow<'static, str>", "Cow<'static, str>"));
        assert!(!shares("async fn f(&self) -> Self", "Self"));
        assert!(!shares("async fn f<Row: Clone>() -> Vec<Row>", "Vec<Row>"));
        // Names written like a type parameter of an enclosing `impl`.
        assert!(!shares(plain, "Vec<T>"));
        assert!(!shares(plain, "HashMap<K2, V>"));
        assert!(shares(plain, "Vec<Tx>"));
        // Associated types of what may be an `impl`'s parameter, and qualified paths.
        assert!(!shares(plain, "Vec<Db::Row>"));
        assert!(!shares(plain, "<Db as Database>::Row"));
        assert!(shares(plain, "std::collections::BTreeMap<String, serde_json::Value>"));
    }

    #[test]
    fn companions_keep_only_the_generics_their_arguments_need() {
        // `D` only types a skipped argument: dropped, with its where-predicate.
        assert_eq!(
            kept("<D: Db, K>", "where K: Serialize, D: Send", "K"),
            "< K > where K : Serialize"
        );
        // Bounds pull in what they mention.
        assert_eq!(kept("<'a, T: Into<U>, U>", "", "& 'a T"), "< 'a , T : Into < U > , U >");
        // No generics left: no angle brackets.
        assert_eq!(kept("<D>", "", "u32"), "");
    }

    #[test]
    fn the_key_has_every_type_parameter_but_those_of_skipped_arguments() {
        let names = |params: &str, where_clause: &str, key: &str, skipped: &str| -> Vec<String> {
            key_params(
                &generics(params, where_clause),
                key.parse().unwrap(),
                skipped.parse().unwrap(),
            )
            .iter()
            .map(param_name)
            .collect()
        };
        // `T` only in the return type, `K` a key argument's, `N` a const: all in.
        assert_eq!(names("<'a, T, K, const N: usize>", "", "& 'a K", ""), ["T", "K", "N"]);
        // `D` (and `E`, which its bound brings) only type a skipped argument.
        assert_eq!(names("<D: Db<E>, E, K>", "", "K", "& D"), ["K"]);
        // A parameter of both a skipped and a key argument is in.
        assert_eq!(names("<T>", "", "Vec<T>", "& T"), ["T"]);
    }

    #[test]
    fn only_variables_of_the_cache_expression_count() {
        let mut names = BTreeSet::new();
        variables(quote!(&self.cache), &mut names);
        variables(quote!(state.caches.get(region)), &mut names);
        variables(quote!(crate::CACHES::get()), &mut names);
        assert_eq!(
            names.into_iter().collect::<Vec<_>>(),
            ["crate", "region", "self", "state"]
        );
    }
}
