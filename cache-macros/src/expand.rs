//! Code generation for `#[cached]`: the checked [`Plan`] becomes the rewritten
//! function and its companions (those of a `batch = ids` function in
//! `expand/batch.rs`). Nothing is decided here: the rules are in `check.rs`,
//! the analysis of generics in `generics.rs`.
//!
//! The rewritten body is one call into the runtime:
//!
//! ```text
//! let __aside_cache: &Cache = &(<cache>);            // or __private::global()
//! let __aside_key = digest_2("computed", "revenue", 1u32, &[], &region, &month);
//! let __aside_policy = counted_at(
//!     Policy::new(ttl).function("computed:revenue").tag([Piece::Lit("orders")]),
//!     { static __ASIDE_SITE: FunctionSite = FunctionSite::new(); &__ASIDE_SITE },  // the counters' memo
//! );
//! let (__aside_output, __aside_status) = get_or_compute(
//!     __aside_cache, __aside_key, &__aside_policy,
//!     (&SharingProbe::<Report>::new()).sharing(),    // or Decode
//!     compute(move || async move {
//!         if false { let __aside_fake_return: <return type> = loop {}; return __aside_fake_return; }
//!         <body>
//!     }),
//! ).await;
//! __aside_output
//! ```
//!
//! (The probe picks, for the stored type, whether hits on in-process entries
//! clone the kept decoded value out or decode: see `Plan::shared`.)
//!
//! (`&[]` lists what tells instantiations apart: `type_name::<Self>()` for a
//! method, `type_name::<T>()` for each type parameter of a generic function.)
//!
//! Where a type error can arise, the generated tokens carry the span of the user's
//! token it is about: a key argument's `&region` the argument's, the call the stored
//! type's, the closure the body's. The `__private` helpers (`digest_N`, `compute`)
//! exist so that each such error has one obligation at one span, and is reported once.

use std::time::Duration;

use proc_macro2::{Literal, Span, TokenStream, TokenTree};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::spanned::Spanned as _;
use syn::{Attribute, Ident};

use crate::attr::{Args, Segment, Template};
use crate::check::batch::Batch;
use crate::check::{self, Distinct, Kind, Name, Param, Plan, Use};
use crate::ctxt::Ctxt;
use crate::generics::companion_generics;
use crate::item::MaybeItemFn;

mod batch;

/// The most key arguments `__private::digest_N` takes; more go through one tuple.
const MAX_DIGEST_ARITY: usize = 6;

/// Expands `#[cached(args)] item`. On any mistake: the item unchanged, companions
/// that do nothing, and every error.
pub(crate) fn cached(args: TokenStream, item: TokenStream) -> TokenStream {
    // Whatever goes wrong, still expand to the user's function so that the rest of
    // their crate type-checks and IDEs keep working (tokio-macros does the same).
    // The body is kept as tokens, so a body that does not parse yet still gets
    // its companions (tracing-attributes' `MaybeItemFn`).
    let func: MaybeItemFn = match syn::parse2(item.clone()) {
        Ok(func) => func,
        Err(error) => {
            let error = syn::Error::new(error.span(), format!("{error}: `#[cached]` applies to an `async fn`"));
            return with_error(item, error);
        }
    };
    let args = syn::parse2::<Args>(args).unwrap_or_else(|error| Args {
        errors: vec![error],
        ..Args::default()
    });
    let cx = Ctxt::new();
    let plan = check::check(&cx, args, &func);
    match cx.check() {
        Ok(()) => {
            let cached = plan.cached(&func);
            let companions = plan.companions(&func, Bodies::Real);
            quote!(#cached #companions)
        }
        // The companions too, so that calls to them do not add errors of their own.
        Err(error) => {
            let companions = plan.companions(&func, Bodies::Stub);
            with_error(quote!(#item #companions), error)
        }
    }
}

/// What the companions do: their work, or nothing, beside a function with errors.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Bodies {
    Real,
    Stub,
}

fn with_error(mut item: TokenStream, error: syn::Error) -> TokenStream {
    item.extend(error.into_compile_error());
    item
}

impl Plan {
    /// The rewritten function.
    fn cached(&self, func: &MaybeItemFn) -> TokenStream {
        let MaybeItemFn {
            outer_attrs,
            inner_attrs,
            vis,
            sig,
            ..
        } = func;
        let (body, sig) = match &self.batch {
            // The arguments are re-bound (with their `mut`) for each run of the body.
            Some(batch) => (self.batch_body(func, batch), batch::without_mut(sig)),
            None => (self.body("get_or_compute", func), sig.clone()),
        };
        let body = in_braces_of(func, quote!(#(#inner_attrs)* #body));
        quote! {
            #(#outer_attrs)*
            #vis #sig #body
        }
    }

    /// `_invalidate`, `_expire`, `_refresh`, `_key` and `_with_status`.
    fn companions(&self, func: &MaybeItemFn, bodies: Bodies) -> TokenStream {
        let MaybeItemFn {
            outer_attrs,
            inner_attrs,
            vis,
            sig,
            ..
        } = func;
        let private = &self.private;
        let stub = |body: TokenStream| match bodies {
            Bodies::Real => body,
            Bodies::Stub => quote!(::core::unreachable!("`#[cached]` reported errors")),
        };
        let mut lints = quote!(#[allow(dead_code)]);
        if bodies == Bodies::Stub {
            lints.extend(quote!(#[allow(unused_variables, unused_mut, clippy::unused_async)]));
        }
        let fn_name = &sig.ident;
        // In an `impl` block the function is `Self::name`, elsewhere `name`; a macro
        // cannot see which. A receiver or `Self` in the signature settles it; else
        // assume a free function, and keep rustdoc quiet if it is an associated one
        // (the name is then shown without a link).
        let link = if self.in_impl {
            format!("Self::{fn_name}")
        } else {
            lints.extend(quote!(#[allow(rustdoc::broken_intra_doc_links)]));
            fn_name.to_string()
        };
        let inherited: Vec<&Attribute> = outer_attrs
            .iter()
            .filter(|attr| attr.path().is_ident("cfg") || attr.path().is_ident("allow"))
            .collect();

        let (inputs, mut used) = self.companion_inputs(true);
        // The parameters that are part of the key, even if no argument names them
        // (`parse_as::<u32>`): the companions must be told them as well.
        for param in &self.key_generics {
            param.to_tokens(&mut used);
        }
        let generics = companion_generics(&sig.generics, used);
        let (impl_generics, _, where_clause) = generics.split_for_impl();
        let binding = self.cache_binding();
        let key = self.key_expr();

        let invalidate_body = stub(quote! {
            #binding
            __aside_cache.invalidate_key(#key).await
        });
        let invalidate = format_ident!("{}_invalidate", fn_name, span = fn_name.span());
        let these = self.these_arguments();
        let invalidate_doc = [
            format!(" Invalidates the entry of [`{link}`] for {these}: `true` if there was one."),
            String::new(),
            " # Errors".to_owned(),
            String::new(),
            " When the cache's backend fails or times out, or the key cannot be built.".to_owned(),
        ];
        let invalidate_doc = doc(&invalidate_doc, fn_name.span());
        let invalidate = quote! {
            #invalidate_doc
            #(#inherited)*
            #lints
            #vis async fn #invalidate #impl_generics (#(#inputs),*)
                -> ::core::result::Result<bool, #private::Error> #where_clause
            {
                #invalidate_body
            }
        };

        let expire_body = stub(quote! {
            #binding
            __aside_cache.expire_key(#key).await
        });
        let expire = format_ident!("{}_expire", fn_name, span = fn_name.span());
        let expire_doc = [
            format!(
                " Soft invalidation of the entry of [`{link}`] for {these}: it turns stale, \
                 and within its `stale` window callers keep being served the old value while one \
                 refreshes it. `true` if there was one."
            ),
            String::new(),
            " # Errors".to_owned(),
            String::new(),
            " When the cache's backend fails or times out, or the key cannot be built.".to_owned(),
        ];
        let expire_doc = doc(&expire_doc, fn_name.span());
        let expire = quote! {
            #expire_doc
            #(#inherited)*
            #lints
            #vis async fn #expire #impl_generics (#(#inputs),*)
                -> ::core::result::Result<bool, #private::Error> #where_clause
            {
                #expire_body
            }
        };

        let key_body = stub(quote! {
            #binding
            match __aside_cache.full_key(#key) {
                ::core::result::Result::Ok(key) => key,
                ::core::result::Result::Err(error) => ::std::format!("<no key: {}>", error),
            }
        });
        let key_fn = format_ident!("{}_key", fn_name, span = fn_name.span());
        let key_doc = format!(
            " The full cache key of [`{link}`] for {these}, for logs and debugging \
             (`<no key: reason>` when an argument cannot be rendered)."
        );
        let key_doc = doc(&[key_doc], fn_name.span());
        let key_fn = quote! {
            #key_doc
            #(#inherited)*
            #lints
            #vis fn #key_fn #impl_generics (#(#inputs),*) -> ::std::string::String #where_clause {
                #key_body
            }
        };

        if let Some(batch) = &self.batch {
            // Neither `_refresh` nor `_with_status`: see `batch_invalidate_many`.
            let invalidate_many = self.batch_invalidate_many(func, batch, bodies, &lints, &inherited, &link);
            return quote!(#invalidate #invalidate_many #expire #key_fn);
        }

        let mut refresh_sig = sig.clone();
        refresh_sig.ident = format_ident!("{}_refresh", fn_name, span = fn_name.span());
        let mut refresh_doc = vec![format!(
            " Runs [`{link}`] now and overwrites its entry for these arguments with the result \
             (when it is cached at all): warm-up and write-through."
        )];
        if self.kind == Kind::Result {
            refresh_doc.extend(
                [
                    "",
                    " # Errors",
                    "",
                    " Those of the body: an `Err` is returned and not stored.",
                ]
                .map(String::from),
            );
        }
        let refresh_body = stub(self.body("refresh", func));
        let refresh_body = in_braces_of(func, quote!(#(#inner_attrs)* #refresh_body));
        let refresh_doc = doc(&refresh_doc, fn_name.span());
        let refresh = quote! {
            #refresh_doc
            #(#inherited)*
            #lints
            #vis #refresh_sig #refresh_body
        };

        let mut status_sig = sig.clone();
        status_sig.ident = format_ident!("{}_with_status", fn_name, span = fn_name.span());
        let ret = &self.ret;
        status_sig.output = syn::parse_quote!(-> (#ret, #private::CacheStatus));
        let status_doc = [format!(
            " Calls [`{link}`] and tells how it was answered: a hit, a stale value, a miss \
             (computed for this call), coalesced (another caller's computation) or bypassed \
             (computed without the cache)."
        )];
        let status_body = stub(self.body("get_or_compute_with_status", func));
        let status_body = in_braces_of(func, quote!(#(#inner_attrs)* #status_body));
        let status_doc = doc(&status_doc, fn_name.span());
        let with_status = quote! {
            #status_doc
            #(#inherited)*
            #lints
            #vis #status_sig #status_body
        };

        quote!(#invalidate #expire #refresh #key_fn #with_status)
    }

    /// The body of the function (`method` = `get_or_compute`), of `_refresh`
    /// (`refresh`) or of `_with_status` (`get_or_compute_with_status`).
    fn body(&self, method: &str, func: &MaybeItemFn) -> TokenStream {
        let private = &self.private;
        let binding = self.cache_binding();
        let key = self.key_expr();
        let policy = self.policy_expr();
        let span = func.brace_token.span.join();
        let body = self.async_body(func, TokenStream::new());
        let (compute, unwrap) = match self.kind {
            Kind::Plain => {
                let private = respan(private.clone(), self.value_span);
                (
                    quote_spanned!(self.value_span=> move || async move { #private::Plain(#body.await) }),
                    quote_spanned!(self.value_span=> .0),
                )
            }
            Kind::Result | Kind::Option => (quote_spanned!(span=> move || #body), quote!()),
        };
        let (compute, unwrap) = self.adaptive(compute, unwrap);
        let with_status = method == "get_or_compute_with_status";
        // A body that may finish in the background is handed over whole.
        let method = match method {
            "get_or_compute" if self.detached => "get_or_compute_detached",
            "get_or_compute_with_status" if self.detached => "get_or_compute_detached_with_status",
            method => method,
        };
        let method = Ident::new(method, self.value_span);
        let private_at_value = respan(self.private.clone(), self.value_span);
        // The call is spanned at the stored type, so that "not Serialize/DeserializeOwned"
        // points there (and only there).
        let call = if method == "get_or_compute" || method == "get_or_compute_with_status" {
            // Through the runtime's sharing probe: hits on in-process entries
            // clone the kept decoded value out when the stored type allows it.
            let share = self.sharing();
            let output = if with_status {
                quote_spanned!(self.value_span=> (__aside_output #unwrap, __aside_status))
            } else {
                quote_spanned!(self.value_span=> __aside_output #unwrap)
            };
            quote_spanned! {self.value_span=>
                // The probe's borrow is what picks (autoref specialisation).
                #[allow(clippy::needless_borrow)]
                let __aside_share = #share;
                let (__aside_output, __aside_status) = #private_at_value::get_or_compute(
                    __aside_cache, __aside_key, &__aside_policy, __aside_share, #private_at_value::compute(#compute),
                ).await;
                #output
            }
        } else if with_status {
            quote_spanned! {self.value_span=>
                let (__aside_output, __aside_status) = __aside_cache
                    .#method(__aside_key, &__aside_policy, #private_at_value::compute(#compute)).await;
                (__aside_output #unwrap, __aside_status)
            }
        } else {
            quote_spanned! {self.value_span=>
                __aside_cache.#method(__aside_key, &__aside_policy, #private_at_value::compute(#compute)).await #unwrap
            }
        };
        quote! {
            #binding
            let __aside_key = #key;
            let __aside_policy = #policy;
            #call
        }
    }

    /// `async move { <prelude> <body> }`, its output fixed to the declared return type.
    fn async_body(&self, func: &MaybeItemFn, prelude: TokenStream) -> TokenStream {
        let ret = &self.ret;
        let span = func.brace_token.span.join();
        // A `return` of the declared type that never runs, before the body: it fixes
        // the async block's output type, so `?` and `return` infer as in the function
        // and a type error stays in the body (tracing-attributes does the same).
        let ret_span = self.ret.clone().into_iter().next().map_or(span, |token| token.span());
        // The body's statements, not its block: `async move { { x } }` would trip
        // `unused_braces`. As tokens: a body that does not parse yet is the
        // compiler's to report, and everything else is still generated.
        let stmts = &func.body;
        quote_spanned! {ret_span=>
            async move {
                #[allow(
                    unknown_lints,
                    unreachable_code,
                    clippy::diverging_sub_expression,
                    clippy::empty_loop,
                    clippy::let_unit_value,
                    clippy::let_with_type_underscore,
                    clippy::needless_return,
                    clippy::unreachable
                )]
                if false {
                    let __aside_fake_return: #ret = loop {};
                    return __aside_fake_return;
                }
                #prelude
                #stmts
            }
        }
    }

    /// How hits hand out in-process entries' decoded values: what the
    /// runtime's probe picks for the stored type, or decoding every hit when
    /// the type may not be probed ([`Plan::shared`]).
    fn sharing(&self) -> TokenStream {
        let private = respan(self.private.clone(), self.value_span);
        match &self.shared {
            Some(stored) => quote_spanned! {self.value_span=>
                {
                    #[allow(unused_imports)]
                    use #private::{ByClone as _, ByDecode as _};
                    (&#private::SharingProbe::<#stored>::new()).sharing()
                }
            },
            None => quote_spanned!(self.value_span=> #private::Decode),
        }
    }

    /// With `unless` or `ttl_from`, the computation's result wrapped in
    /// `Adaptive`, judged by the user's functions (each call spanned at its path,
    /// so a function of the wrong type is reported there), and unwrapped after.
    fn adaptive(&self, compute: TokenStream, unwrap: TokenStream) -> (TokenStream, TokenStream) {
        if self.unless.is_none() && self.ttl_from.is_none() {
            return (compute, unwrap);
        }
        let private = &self.private;
        let mut judged = quote!(#private::Adaptive::new((#compute)().await));
        if let Some(path) = &self.unless {
            judged.extend(quote_spanned!(path.span()=> .unless(#path)));
        }
        if let Some(path) = &self.ttl_from {
            judged.extend(quote_spanned!(path.span()=> .ttl_from(#path)));
        }
        (
            quote!(move || async move { #judged }),
            quote_spanned!(self.value_span=> .into_inner() #unwrap),
        )
    }

    /// `let __aside_cache: &Cache = ...;`
    fn cache_binding(&self) -> TokenStream {
        let private = &self.private;
        let source = match &self.cache {
            Some(expr) => quote_spanned!(expr.span()=> &(#expr)),
            None => quote!(#private::global()),
        };
        quote! {
            let __aside_cache: &#private::Cache = #source;
        }
    }

    /// The key's name segment: a literal, or `Type::method` built at run time.
    fn name_expr(&self) -> TokenStream {
        let private = &self.private;
        match &self.name {
            Name::Fixed(name) => quote!(#name),
            Name::Method(method) => quote!(::std::format!("{}::{}", #private::short_type_name::<Self>(), #method)),
        }
    }

    /// The name statistics are kept under: `prefix:name`.
    fn function_expr(&self) -> TokenStream {
        let private = &self.private;
        let prefix = &self.prefix;
        match &self.name {
            Name::Fixed(name) => {
                let function = format!("{prefix}:{name}");
                quote!(#function)
            }
            Name::Method(method) => quote!(::std::format!(
                "{}:{}::{}",
                #prefix,
                #private::short_type_name::<Self>(),
                #method
            )),
        }
    }

    /// The entry's `Key`: a digest of the key arguments, or the `key = "..."`
    /// rendering; told apart by the [`Distinct`]s (none for a non-generic free
    /// function, whose key is then exactly the plain digest or rendering).
    fn key_expr(&self) -> TokenStream {
        self.key_expr_for(OneId::Value)
    }

    /// [`key_expr`](Plan::key_expr), the batch's id held as `one` says.
    fn key_expr_for(&self, one: OneId) -> TokenStream {
        let private = &self.private;
        let prefix = &self.prefix;
        let name = self.name_expr();
        let version = Literal::u32_suffixed(self.version);
        let types = self.distinct_expr();
        match &self.key {
            Some(template) => {
                let pieces = self.pieces(template, Use::Key, one);
                quote!(#private::template_typed(#prefix, #name, #version, #types, [#(#pieces),*]))
            }
            None => {
                let args: Vec<TokenStream> = self
                    .params
                    .iter()
                    .filter(|p| !p.skipped)
                    .map(|param| self.key_arg(param, one))
                    .collect();
                if args.len() <= MAX_DIGEST_ARITY {
                    // One generic parameter per argument: a type that is not
                    // `Serialize` is reported at its argument, and only there.
                    let digest = format_ident!("digest_{}", args.len());
                    quote!(#private::#digest(#prefix, #name, #version, #types #(, #args)*))
                } else {
                    let args = args
                        .iter()
                        .zip(self.params.iter().filter(|p| !p.skipped))
                        .map(|(arg, param)| {
                            let private = respan(private.clone(), param.span);
                            quote_spanned!(param.span=> #private::key_arg(#arg))
                        });
                    quote!(#private::digest_typed(#prefix, #name, #version, #types, &(#(#args,)*)))
                }
            }
        }
    }

    /// `&[...]`: the strings that tell instantiations apart.
    fn distinct_expr(&self) -> TokenStream {
        let items = self.distinct.iter().map(|distinct| match distinct {
            Distinct::SelfType => quote!(::core::any::type_name::<Self>()),
            Distinct::Type(ty) => quote!(::core::any::type_name::<#ty>()),
            Distinct::Const(value) => quote!(::std::string::ToString::to_string(&#value).as_str()),
            Distinct::ValueOf(arg) => quote!(::core::any::type_name_of_val(&#arg)),
        });
        quote!(&[#(#items),*])
    }

    /// The call's `Policy`.
    fn policy_expr(&self) -> TokenStream {
        let private = &self.private;
        let ttl = self.duration(self.ttl);
        let mut policy = quote!(#private::Policy::new(#ttl));
        for (method, value) in [("stale", self.stale), ("lock_ttl", self.lock_ttl), ("wait", self.wait)] {
            if let Some(value) = value {
                let method = Ident::new(method, Span::call_site());
                let value = self.duration(value);
                policy.extend(quote!(.#method(#value)));
            }
        }
        if self.cache_none {
            policy.extend(quote!(.cache_none(true)));
        }
        if let Some(jitter) = self.jitter {
            let jitter = Literal::f64_suffixed(jitter);
            policy.extend(quote!(.jitter(#jitter)));
        }
        if let Some(fraction) = self.refresh_ahead {
            let fraction = Literal::f64_suffixed(fraction);
            policy.extend(quote!(.refresh_ahead(#fraction)));
        }
        if let Some(soft_timeout) = self.soft_timeout {
            let soft_timeout = self.duration(soft_timeout);
            policy.extend(quote!(.soft_timeout(#soft_timeout)));
        }
        let function = self.function_expr();
        policy.extend(quote!(.function(#function)));
        for tag in &self.tags {
            let pieces = self.pieces(tag, Use::Tag, OneId::Value);
            policy.extend(quote!(.tag([#(#pieces),*])));
        }
        if let Name::Fixed(_) = self.name {
            // The function's name is the same on every call (and in every
            // instantiation, which share the static): the site remembers
            // where its counters are.
            policy = quote! {
                #private::counted_at(#policy, {
                    static __ASIDE_SITE: #private::FunctionSite = #private::FunctionSite::new();
                    &__ASIDE_SITE
                })
            };
        }
        policy
    }

    fn duration(&self, duration: Duration) -> TokenStream {
        let private = &self.private;
        let secs = Literal::u64_suffixed(duration.as_secs());
        let nanos = Literal::u32_suffixed(duration.subsec_nanos());
        quote!(#private::Duration::new(#secs, #nanos))
    }

    /// The `Piece`s of a template. A whole argument's type errors point at the
    /// argument; a field's at the template.
    fn pieces(&self, template: &Template, usage: Use, one: OneId) -> Vec<TokenStream> {
        let private = &self.private;
        template
            .segments
            .iter()
            .filter_map(|segment| match segment {
                Segment::Text(text) => Some(quote!(#private::Piece::Lit(#text))),
                Segment::Value { arg, fields } => {
                    // The check step made sure the argument exists.
                    let param = self.params.iter().find(|p| &p.name == arg)?;
                    let mut ident = param.ident.clone();
                    if let Some(batch) = self.batch_of(param).filter(|_| usage == Use::Key) {
                        // `{ids}` in the key: the one id of the entry.
                        let id = one.expr(&batch.one, param.span);
                        let private = respan(private.clone(), param.span);
                        let span = template.lit.span();
                        return Some(if fields.is_empty() {
                            quote_spanned!(param.span=> #private::key_piece(#id))
                        } else {
                            quote_spanned!(span=> #private::Piece::value(&(#id) #(.#fields)*))
                        });
                    }
                    if fields.is_empty() && usage == Use::Key {
                        // `{region}` in the key: a type that is not `Serialize` is
                        // reported at the argument, as a key argument.
                        let arg = self.key_arg(param, one);
                        let private = respan(private.clone(), param.span);
                        Some(quote_spanned!(param.span=> #private::key_piece(#arg)))
                    } else if fields.is_empty() {
                        // `{region}` in a tag: a type that is not `Serialize` is reported at the argument.
                        Some(quote_spanned!(param.span=> #private::Piece::value(&#ident)))
                    } else {
                        // `{db.tenant}`: at the template, where the field is named.
                        let span = template.lit.span();
                        ident.set_span(span);
                        Some(quote_spanned!(span=> #private::Piece::value(&#ident #(.#fields)*)))
                    }
                }
            })
            .collect()
    }

    /// `&arg` for a key argument ([`key_arg_of`]); the batch's one id as `one` holds it.
    fn key_arg(&self, param: &Param, one: OneId) -> TokenStream {
        match self.batch_of(param) {
            Some(batch) => one.expr(&batch.one, param.span),
            None => key_arg_of(param),
        }
    }

    /// The batch, when `param` is its parameter.
    fn batch_of(&self, param: &Param) -> Option<&Batch> {
        self.batch
            .as_ref()
            .filter(|batch| std::ptr::eq(param, &self.params[batch.index]))
    }

    /// What the companions' docs call their arguments.
    fn these_arguments(&self) -> String {
        match &self.batch {
            Some(batch) => format!("one id (`{}`) and these other arguments", batch.one),
            None => "these arguments".to_owned(),
        }
    }

    /// The arguments of `_invalidate` and `_key`: those the `cache` expression
    /// mentions (`self` as `&self`) and the key arguments, in order; plus the
    /// tokens of their types, to find the generic parameters they need.
    ///
    /// A batch function's companions take one id where the function takes its ids
    /// (`one_id`), but `_invalidate_many`, which takes them as the function does.
    fn companion_inputs(&self, one_id: bool) -> (Vec<TokenStream>, TokenStream) {
        let mut inputs = Vec::new();
        let mut types = TokenStream::new();
        for param in &self.params {
            if param.skipped && !self.cache_mentions.contains(&param.name) {
                continue;
            }
            let ident = &param.ident;
            if let Some(batch) = self.batch_of(param).filter(|_| one_id) {
                let (one, id) = (&batch.one, &batch.id);
                inputs.push(quote!(#one: #id));
                id.to_tokens(&mut types);
                continue;
            }
            match &param.ty {
                None => inputs.push(quote_spanned!(param.span=> &#ident)),
                Some(ty) => {
                    inputs.push(quote!(#ident: #ty));
                    ty.to_tokens(&mut types);
                }
            }
        }
        (inputs, types)
    }
}

/// How a key refers to a batch's one id.
#[derive(Clone, Copy)]
enum OneId {
    /// A value of the id's type (the companions' argument): the key takes `&id`.
    Value,
    /// A reference to one (iterating over the batch): the key takes `id`.
    Ref,
}

impl OneId {
    /// The reference to the id, named `one`, spanned at `span`.
    fn expr(self, one: &Ident, span: Span) -> TokenStream {
        match self {
            OneId::Value => quote_spanned!(span=> &#one),
            OneId::Ref => quote_spanned!(span=> #one),
        }
    }
}

/// `&arg` for a key argument, spanned so that an error about it covers the
/// argument as written, `name: Type`: `&` at the name, `arg` at the type's end.
fn key_arg_of(param: &Param) -> TokenStream {
    let amp = quote_spanned!(param.span=> &);
    let mut ident = param.ident.clone();
    ident.set_span(param.ident.span().located_at(param.end));
    quote!(#amp #ident)
}

/// `#[doc = "..."]` for each line, spanned at the user's function name: clippy
/// reads documentation from the user's spans only (`missing_errors_doc` and others).
fn doc(lines: &[String], span: Span) -> TokenStream {
    let mut tokens = TokenStream::new();
    for line in lines {
        let mut text = Literal::string(line);
        text.set_span(span);
        tokens.extend(quote_spanned!(span=> #[doc = #text]));
    }
    tokens
}

/// `body` in braces carrying the span of the user's block.
///
/// With braces of the macro's own span, the function's span would start in the
/// user's code and end in the expansion, and rustc would not report it as dead code.
fn in_braces_of(func: &MaybeItemFn, body: TokenStream) -> TokenStream {
    let mut group = proc_macro2::Group::new(proc_macro2::Delimiter::Brace, body);
    group.set_span(func.brace_token.span.join());
    group.into_token_stream()
}

/// `tokens` with every span set to `span`.
fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut token| {
            if let TokenTree::Group(group) = &token {
                let mut inner = proc_macro2::Group::new(group.delimiter(), respan(group.stream(), span));
                inner.set_span(span);
                token = TokenTree::Group(inner);
            }
            token.set_span(span);
            token
        })
        .collect()
}
