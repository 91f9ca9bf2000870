//! Code generation for `batch = ids`: the function's body becomes one call of
//! `Cache::get_many_or_compute`, one entry per id:
//!
//! ```text
//! let __aside_cache: &Cache = ...;
//! let __aside_policy = Policy::new(ttl).function("computed:users").tag(...);
//! let __aside_keys: Vec<_> = ids.iter().map(|id| (id.clone(), digest_2("computed", "users", 1u32, &[], &region, id))).collect();
//! __aside_cache.get_many_or_compute(__aside_keys, &__aside_policy, |__aside_missing: Vec<u64>| {
//!     let region = Clone::clone(&region);     // each other argument, for each run
//!     async move {
//!         if false { let __aside_fake_return: <return type> = loop {}; return __aside_fake_return; }
//!         let ids = &__aside_missing[..];       // the missing ids, as the parameter's type holds them
//!         <body>
//!     }
//! }).await
//! ```
//!
//! The key of one id is the key the function would have with the id in place
//! of the batch parameter, so the companions `_invalidate`, `_expire` and
//! `_key`, which take one id there, address its entry.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::{Attribute, FnArg, Ident, Pat, Signature};

use super::{doc, Bodies, OneId};
use crate::check::batch::{Batch, Shape};
use crate::check::Plan;
use crate::generics::companion_generics;
use crate::item::MaybeItemFn;

impl Plan {
    /// The body of a batch function.
    pub(super) fn batch_body(&self, func: &MaybeItemFn, batch: &Batch) -> TokenStream {
        let binding = self.cache_binding();
        let policy = self.policy_expr();
        let param = &self.params[batch.index];
        let ids = &param.ident;
        let one = &batch.one;
        let id = &batch.id;
        let key = self.key_expr_for(OneId::Ref);
        let slice = batch.shape.slice(ids);
        let span = func.brace_token.span.join();

        // Each run of the body gets its own copy of every other argument (a
        // reference is copied: a re-borrow), since it may run twice. (Which ones
        // the body uses cannot be told from its tokens: `format!("{region}")`.)
        let others = self.params.iter().enumerate();
        let rebound = others
            .filter(|(at, p)| *at != batch.index && !p.is_receiver())
            .map(|(_, p)| {
                let ident = &p.ident;
                let mutable = p.mutable.then(|| quote!(mut));
                quote_spanned! {p.span=>
                    #[allow(unused_variables, unused_mut, clippy::clone_on_copy, clippy::redundant_clone)]
                    let #mutable #ident = ::core::clone::Clone::clone(&#ident);
                }
            });
        let missing = match batch.shape {
            Shape::Slice => quote!(&__aside_missing[..]),
            Shape::Vec => quote!(__aside_missing),
            Shape::VecRef => quote!(&__aside_missing),
        };
        let mutable = param.mutable.then(|| quote!(mut));
        let prelude = quote! {
            #[allow(unused_variables, unused_mut)]
            let #mutable #ids = #missing;
        };
        let body = self.async_body(func, prelude);
        let compute = quote_spanned! {span=>
            |__aside_missing: ::std::vec::Vec<#id>| {
                #(#rebound)*
                #body
            }
        };
        // Spanned at the stored type: "not Serialize/DeserializeOwned" points there.
        quote_spanned! {self.value_span=>
            #binding
            let __aside_policy = #policy;
            let __aside_keys: ::std::vec::Vec<_> = ::core::iter::Iterator::collect(::core::iter::Iterator::map(
                <[_]>::iter(#slice),
                |#one| (::core::clone::Clone::clone(#one), #key),
            ));
            __aside_cache.get_many_or_compute(__aside_keys, &__aside_policy, #compute).await
        }
    }

    /// `<fn>_invalidate_many(other key args, ids)`: the entries of every id given.
    ///
    /// A batch function has no `_refresh` (the runtime has no call that
    /// overwrites many entries under their leases: invalidate, then call) and no
    /// `_with_status` (a batch answers each id its own way; the statistics count
    /// them).
    pub(super) fn batch_invalidate_many(
        &self,
        func: &MaybeItemFn,
        batch: &Batch,
        bodies: Bodies,
        lints: &TokenStream,
        inherited: &[&Attribute],
        link: &str,
    ) -> TokenStream {
        let MaybeItemFn { vis, sig, .. } = func;
        let private = &self.private;
        let fn_name = &sig.ident;
        let param = &self.params[batch.index];
        let ids = &param.ident;
        let one = &batch.one;

        let (inputs, mut used) = self.companion_inputs(false);
        for param in &self.key_generics {
            used.extend(quote!(#param));
        }
        let generics = companion_generics(&sig.generics, used);
        let (impl_generics, _, where_clause) = generics.split_for_impl();
        let binding = self.cache_binding();
        let key = self.key_expr_for(OneId::Ref);
        let slice = batch.shape.slice(ids);
        let body = match bodies {
            Bodies::Real => quote! {
                #binding
                #private::invalidate_many(
                    __aside_cache,
                    ::core::iter::Iterator::map(<[_]>::iter(#slice), |#one| #key),
                )
                .await
            },
            Bodies::Stub => quote!(::core::unreachable!("`#[cached]` reported errors")),
        };
        let name = format_ident!("{}_invalidate_many", fn_name, span = fn_name.span());
        let lines = [
            format!(
                " Invalidates the entries of [`{link}`] of every id in `{}` (with these other arguments): \
                 how many there were.",
                param.name
            ),
            String::new(),
            " # Errors".to_owned(),
            String::new(),
            " When the cache's backend fails or times out, or a key cannot be built: the first error \
             (every id is tried)."
                .to_owned(),
        ];
        let doc = doc(&lines, fn_name.span());
        quote! {
            #doc
            #(#inherited)*
            #lints
            #vis async fn #name #impl_generics (#(#inputs),*)
                -> ::core::result::Result<u64, #private::Error> #where_clause
            {
                #body
            }
        }
    }
}

impl Shape {
    /// `&[I]` of the batch parameter `ids`.
    fn slice(self, ids: &Ident) -> TokenStream {
        match self {
            Shape::Slice => quote!(#ids),
            Shape::Vec => quote!(::std::vec::Vec::as_slice(&#ids)),
            Shape::VecRef => quote!(::std::vec::Vec::as_slice(#ids)),
        }
    }
}

/// `sig` with no `mut` on its arguments' names: the body re-binds them (with
/// their `mut`), so the function's own bindings are never mutated.
pub(super) fn without_mut(sig: &Signature) -> Signature {
    let mut sig = sig.clone();
    for input in &mut sig.inputs {
        if let FnArg::Typed(typed) = input {
            if let Pat::Ident(pat) = &mut *typed.pat {
                pat.mutability = None;
            }
        }
    }
    sig
}
