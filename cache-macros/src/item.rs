//! Parsing the annotated item: the signature, and the body kept as tokens
//! (tracing-attributes' `MaybeItemFn`).
//!
//! The body is not parsed: while it is being edited and does not parse yet, the
//! function and its companions are still generated, so an IDE keeps knowing them
//! and the compiler reports only the body's own syntax error.

use proc_macro2::TokenStream;
use syn::parse::{Parse, ParseStream};
use syn::token::Brace;
use syn::{Attribute, Signature, Visibility};

/// A function whose body is kept as it was written.
pub(crate) struct MaybeItemFn {
    /// `#[...]` before the function.
    pub(crate) outer_attrs: Vec<Attribute>,
    /// `#![...]` at the start of the body.
    pub(crate) inner_attrs: Vec<Attribute>,
    pub(crate) vis: Visibility,
    pub(crate) sig: Signature,
    /// The body's braces (their span is the body's).
    pub(crate) brace_token: Brace,
    /// The body's statements, as tokens.
    pub(crate) body: TokenStream,
}

impl Parse for MaybeItemFn {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let outer_attrs = input.call(Attribute::parse_outer)?;
        let vis: Visibility = input.parse()?;
        let sig: Signature = input.parse()?;
        let content;
        let brace_token = syn::braced!(content in input);
        let inner_attrs = content.call(Attribute::parse_inner)?;
        let body: TokenStream = content.parse()?;
        Ok(MaybeItemFn {
            outer_attrs,
            inner_attrs,
            vis,
            sig,
            brace_token,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_that_does_not_parse_is_kept() {
        let item: MaybeItemFn =
            syn::parse_str("pub async fn f(a: u32) -> u32 { #![allow(unused)] let x = ; a }").unwrap();
        assert_eq!(item.sig.ident, "f");
        assert_eq!(item.inner_attrs.len(), 1);
        assert_eq!(item.body.to_string(), "let x = ; a");
    }

    #[test]
    fn a_signature_must_parse() {
        assert!(syn::parse_str::<MaybeItemFn>("struct S;").is_err());
        assert!(syn::parse_str::<MaybeItemFn>("fn f(a: ) {}").is_err());
    }
}
