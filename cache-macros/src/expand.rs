//! Code generation for `#[cached]`: one check step that collects every mistake,
//! then the rewritten function and its three companions.
//!
//! The rewritten body is one call into the runtime:
//!
//! ```text
//! let __aside_cache: &Cache = &(<cache>);            // or __private::global()
//! let __aside_key = digest_2("computed", "revenue", 1u32, &region, &month);
//! let __aside_policy = Policy::new(ttl).function("computed:revenue").tag([Piece::Lit("orders")]);
//! __aside_cache.get_or_compute(__aside_key, &__aside_policy, compute(move || async move {
//!     if false { let __aside_fake_return: <return type> = loop {}; return __aside_fake_return; }
//!     <body>
//! })).await
//! ```
//!
//! Where a type error can arise, the generated tokens carry the span of the user's
//! token it is about: a key argument's `&region` the argument's, the call the stored
//! type's, the closure the body's. The `__private` helpers (`digest_N`, `compute`)
//! exist so that each such error has one obligation at one span, and is reported once.

use std::collections::BTreeSet;
use std::fmt::Display;
use std::time::Duration;

use proc_macro2::{Literal, Span, TokenStream, TokenTree};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::ext::IdentExt as _;
use syn::spanned::Spanned as _;
use syn::{
    Attribute, Block, Expr, FnArg, GenericArgument, GenericParam, Generics, Ident, ItemFn, LitStr, Pat, PathArguments,
    ReturnType, Signature, Type, WherePredicate,
};

use crate::attr::{Arg, Args, DurationLit, Segment, Template};

/// The longest TTL, stale window, lock lease or wait the attribute accepts.
const DAY: Duration = Duration::from_secs(86_400);

/// The most key arguments `__private::digest_N` takes; more go through one tuple.
const MAX_DIGEST_ARITY: usize = 6;

/// Expands `#[cached(args)] item`. On any mistake: the item unchanged, companions
/// that do nothing, and every error.
pub(crate) fn cached(args: TokenStream, item: TokenStream) -> TokenStream {
    // Whatever goes wrong, still expand to the user's function so that the rest of
    // their crate type-checks and IDEs keep working (tokio-macros does the same).
    let func: ItemFn = match syn::parse2(item.clone()) {
        Ok(func) => func,
        Err(error) => {
            let error = syn::Error::new(error.span(), format!("{error}: `#[cached]` applies to an `async fn`"));
            return with_error(item, error);
        }
    };
    let args: Args = match syn::parse2(args) {
        Ok(args) => args,
        Err(error) => return with_error(item, error),
    };
    let (plan, checked) = Plan::check(args, &func);
    match checked {
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

/// Collects every mistake so they are reported together (`serde_derive`'s `Ctxt`).
struct Errors(Vec<syn::Error>);

impl Errors {
    fn push(&mut self, span: Span, message: impl Display) {
        self.0.push(syn::Error::new(span, message));
    }

    fn ok<T>(&mut self, result: syn::Result<T>) -> Option<T> {
        result.map_err(|error| self.0.push(error)).ok()
    }

    fn finish(self) -> syn::Result<()> {
        let mut errors = self.0.into_iter();
        let Some(mut combined) = errors.next() else {
            return Ok(());
        };
        for error in errors {
            combined.combine(error);
        }
        Err(combined)
    }
}

/// How the return value is cached, chosen by the syntax of the return type.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `Result<T, E>`: only `Ok` is stored.
    Result,
    /// `Option<T>`: `None` only with `cache_none`.
    Option,
    /// Anything else: wrapped in `Plain`, always stored.
    Plain,
}

/// The key's name segment.
enum Name {
    /// Given with `name = "..."`, or the name of a function without receiver.
    Fixed(String),
    /// A method's name, to be joined with its type's at run time: `Type::name`.
    Method(String),
}

/// One argument of the function.
struct Param {
    /// The name with any `r#` removed; `self` for the receiver.
    name: String,
    /// The name as written (used to refer to the argument in generated code).
    ident: Ident,
    /// `None` for the receiver.
    ty: Option<Type>,
    /// Listed in `skip(...)`.
    skipped: bool,
    /// The argument's name (or `self`), for errors about the argument.
    span: Span,
}

impl Param {
    fn is_receiver(&self) -> bool {
        self.ty.is_none()
    }
}

/// Everything the expansion needs, checked.
struct Plan {
    /// `<crate>::__private`.
    private: TokenStream,
    cache: Option<Expr>,
    /// Names (unraw) of the arguments the `cache` expression mentions.
    cache_mentions: BTreeSet<String>,
    ttl: Duration,
    stale: Option<Duration>,
    lock_ttl: Option<Duration>,
    wait: Option<Duration>,
    cache_none: bool,
    prefix: String,
    /// The key's name segment.
    name: Name,
    version: u32,
    key: Option<Template>,
    tags: Vec<Template>,
    params: Vec<Param>,
    kind: Kind,
    /// The part of the return type that is stored, for errors about it.
    value_span: Span,
    /// The declared return type.
    ret: TokenStream,
}

impl Plan {
    /// The check step: every rule that involves the function or more than one
    /// argument. The plan is complete even with errors, for the companions' signatures.
    fn check(mut args: Args, func: &ItemFn) -> (Plan, syn::Result<()>) {
        let mut errors = Errors(std::mem::take(&mut args.errors));
        let sig = &func.sig;

        if sig.asyncness.is_none() {
            errors.push(
                sig.fn_token.span,
                "the `async` keyword is missing: `#[cached]` applies to `async fn`",
            );
        }
        let (kind, value_span) = check_return(sig, &mut errors);
        let mut params = check_params(sig, &mut errors);

        let mut skipped = BTreeSet::new();
        for ident in args.skip.iter().flat_map(|skip| &skip.value) {
            let name = ident.unraw().to_string();
            if !skipped.insert(name.clone()) {
                errors.push(ident.span(), format!("`{name}` is skipped twice"));
            } else if let Some(param) = params.iter_mut().find(|p| p.name == name) {
                param.skipped = true;
            } else if name == "self" {
                errors.push(
                    ident.span(),
                    format!("there is no `self` to skip: `{}` has no receiver", sig.ident),
                );
            } else {
                errors.push(
                    ident.span(),
                    format!("cannot skip `{name}`: {}", no_such_argument(&sig.ident, &params)),
                );
            }
        }
        for param in &params {
            if param.is_receiver() && !param.skipped {
                errors.push(
                    param.span,
                    "`self` cannot be part of the key: add `skip(self)` and pass what identifies \
                     the entry as arguments (or use it in `tags`)",
                );
            }
        }

        let ttl =
            duration(&mut errors, "ttl", args.ttl.as_ref(), Duration::from_secs(1)).unwrap_or(Duration::from_secs(300));
        let stale = duration(&mut errors, "stale", args.stale.as_ref(), Duration::ZERO);
        let lock_ttl = duration(
            &mut errors,
            "lock_ttl",
            args.lock_ttl.as_ref(),
            Duration::from_millis(1),
        );
        let wait = duration(&mut errors, "wait", args.wait.as_ref(), Duration::from_millis(1));

        let prefix = match &args.prefix {
            Some(arg) => segment(&mut errors, "prefix", &arg.value),
            None => "computed".to_owned(),
        };
        let name = match &args.name {
            Some(arg) => Name::Fixed(segment(&mut errors, "name", &arg.value)),
            None if params.first().is_some_and(Param::is_receiver) => Name::Method(sig.ident.unraw().to_string()),
            None => Name::Fixed(sig.ident.unraw().to_string()),
        };
        let version = match &args.version {
            Some(arg) => errors.ok(arg.value.base10_parse::<u32>().map_err(|_| {
                syn::Error::new(
                    arg.value.span(),
                    "`version` must be a whole number that fits in a `u32`",
                )
            })),
            None => Some(1),
        }
        .unwrap_or(1);

        let cache_none = match &args.cache_none {
            Some(Arg { span, value }) => {
                if value.value && kind != Kind::Option {
                    errors.push(
                        *span,
                        format!(
                            "`cache_none` applies to functions returning `Option<T>`; `{}` does not return an `Option`",
                            sig.ident
                        ),
                    );
                }
                value.value
            }
            None => false,
        };

        let key = args.key.as_ref().and_then(|arg| errors.ok(Template::parse(&arg.value)));
        if let Some(key) = &key {
            check_template(&mut errors, key, &params, &sig.ident, Use::Key);
        }
        let mut tags = Vec::new();
        for lit in args.tags.iter().flat_map(|tags| &tags.value) {
            if let Some(tag) = errors.ok(Template::parse(lit)) {
                check_template(&mut errors, &tag, &params, &sig.ident, Use::Tag);
                tags.push(tag);
            }
        }

        let cache = args.cache.map(|arg| arg.value);
        let mut cache_mentions = BTreeSet::new();
        if let Some(cache) = &cache {
            variables(cache.to_token_stream(), &mut cache_mentions);
        }
        cache_mentions.retain(|name| params.iter().any(|p| &p.name == name));

        let krate = match args.krate {
            Some(arg) => arg.value.into_token_stream(),
            None => quote!(::aside),
        };
        let plan = Plan {
            private: quote!(#krate::__private),
            cache,
            cache_mentions,
            ttl,
            stale,
            lock_ttl,
            wait,
            cache_none,
            prefix,
            name,
            version,
            key,
            tags,
            params,
            kind,
            value_span,
            ret: match &sig.output {
                ReturnType::Type(_, ty) => ty.to_token_stream(),
                ReturnType::Default => quote!(()),
            },
        };
        (plan, errors.finish())
    }

    /// The rewritten function.
    fn cached(&self, func: &ItemFn) -> TokenStream {
        let ItemFn { attrs, vis, sig, block } = func;
        let (outer, inner) = split_attrs(attrs);
        let body = self.body("get_or_compute", block);
        let body = in_braces_of(block, quote!(#(#inner)* #body));
        quote! {
            #(#outer)*
            #vis #sig #body
        }
    }

    /// `_invalidate`, `_refresh` and `_key`.
    fn companions(&self, func: &ItemFn, bodies: Bodies) -> TokenStream {
        let ItemFn { attrs, vis, sig, block } = func;
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
        let link = if self.params.first().is_some_and(Param::is_receiver) || mentions_self(sig) {
            format!("Self::{fn_name}")
        } else {
            lints.extend(quote!(#[allow(rustdoc::broken_intra_doc_links)]));
            fn_name.to_string()
        };
        let inherited: Vec<&Attribute> = split_attrs(attrs)
            .0
            .into_iter()
            .filter(|attr| attr.path().is_ident("cfg") || attr.path().is_ident("allow"))
            .collect();

        let (inputs, used_types) = self.companion_inputs();
        let generics = companion_generics(&sig.generics, used_types);
        let (impl_generics, _, where_clause) = generics.split_for_impl();
        let binding = self.cache_binding();
        let key = self.key_expr();

        let invalidate_body = stub(quote! {
            #binding
            __aside_cache.invalidate_key(#key).await
        });
        let invalidate = format_ident!("{}_invalidate", fn_name, span = fn_name.span());
        let invalidate_doc = [
            format!(" Invalidates the entry of [`{link}`] for these arguments: `true` if there was one."),
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

        let key_body = stub(quote! {
            #binding
            match __aside_cache.full_key(#key) {
                ::core::result::Result::Ok(key) => key,
                ::core::result::Result::Err(error) => ::std::format!("<no key: {}>", error),
            }
        });
        let key_fn = format_ident!("{}_key", fn_name, span = fn_name.span());
        let key_doc = format!(
            " The full cache key of [`{link}`] for these arguments, for logs and debugging \
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
        let (_, inner) = split_attrs(attrs);
        let refresh_body = stub(self.body("refresh", block));
        let refresh_body = in_braces_of(block, quote!(#(#inner)* #refresh_body));
        let refresh_doc = doc(&refresh_doc, fn_name.span());
        let refresh = quote! {
            #refresh_doc
            #(#inherited)*
            #lints
            #vis #refresh_sig #refresh_body
        };

        quote!(#invalidate #refresh #key_fn)
    }

    /// The body of the function (`method` = `get_or_compute`) or of `_refresh` (`refresh`).
    fn body(&self, method: &str, block: &Block) -> TokenStream {
        let private = &self.private;
        let binding = self.cache_binding();
        let key = self.key_expr();
        let policy = self.policy_expr();
        let ret = &self.ret;
        let span = block.span();
        // A `return` of the declared type that never runs, before the body: it fixes
        // the async block's output type, so `?` and `return` infer as in the function
        // and a type error stays in the body (tracing-attributes does the same).
        let ret_span = self.ret.clone().into_iter().next().map_or(span, |token| token.span());
        // The body's statements, not its block: `async move { { x } }` would trip `unused_braces`.
        let stmts = &block.stmts;
        let body = quote_spanned! {ret_span=>
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
                #(#stmts)*
            }
        };
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
        let method = Ident::new(method, self.value_span);
        let private_at_value = respan(self.private.clone(), self.value_span);
        // The call is spanned at the stored type, so that "not Serialize/DeserializeOwned"
        // points there (and only there).
        let call = quote_spanned! {self.value_span=>
            __aside_cache.#method(__aside_key, &__aside_policy, #private_at_value::compute(#compute)).await #unwrap
        };
        quote! {
            #binding
            let __aside_key = #key;
            let __aside_policy = #policy;
            #call
        }
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

    /// The entry's `Key`: a digest of the key arguments, or the `key = "..."` rendering.
    fn key_expr(&self) -> TokenStream {
        let private = &self.private;
        let prefix = &self.prefix;
        let name = self.name_expr();
        let version = Literal::u32_suffixed(self.version);
        match &self.key {
            Some(template) => {
                let pieces = self.pieces(template);
                quote!(#private::Key::template(#prefix, #name, #version, [#(#pieces),*]))
            }
            None => {
                let args: Vec<TokenStream> = self
                    .params
                    .iter()
                    .filter(|p| !p.skipped)
                    .map(|param| {
                        let ident = &param.ident;
                        quote_spanned!(param.span=> &#ident)
                    })
                    .collect();
                if args.len() <= MAX_DIGEST_ARITY {
                    // One generic parameter per argument: a type that is not
                    // `Serialize` is reported at its argument, and only there.
                    let digest = format_ident!("digest_{}", args.len());
                    quote!(#private::#digest(#prefix, #name, #version #(, #args)*))
                } else {
                    let args = self.params.iter().filter(|p| !p.skipped).map(|param| {
                        let ident = &param.ident;
                        quote_spanned!(param.span=> #private::key_arg(&#ident))
                    });
                    quote!(#private::Key::digest(#prefix, #name, #version, &(#(#args,)*)))
                }
            }
        }
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
        let function = self.function_expr();
        policy.extend(quote!(.function(#function)));
        for tag in &self.tags {
            let pieces = self.pieces(tag);
            policy.extend(quote!(.tag([#(#pieces),*])));
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
    fn pieces(&self, template: &Template) -> Vec<TokenStream> {
        let private = &self.private;
        template
            .segments
            .iter()
            .filter_map(|segment| match segment {
                Segment::Text(text) => Some(quote!(#private::Piece::Lit(#text))),
                Segment::Value { arg, fields } => {
                    // `check_template` made sure the argument exists.
                    let param = self.params.iter().find(|p| &p.name == arg)?;
                    let mut ident = param.ident.clone();
                    if fields.is_empty() {
                        // `{region}`: a type that is not `Serialize` is reported at the argument.
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

    /// The arguments of `_invalidate` and `_key`: those the `cache` expression
    /// mentions (`self` as `&self`) and the key arguments, in order; plus the
    /// tokens of their types, to find the generic parameters they need.
    fn companion_inputs(&self) -> (Vec<TokenStream>, TokenStream) {
        let mut inputs = Vec::new();
        let mut types = TokenStream::new();
        for param in &self.params {
            if param.skipped && !self.cache_mentions.contains(&param.name) {
                continue;
            }
            let ident = &param.ident;
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

/// The return type's [`Kind`] and the span of its stored part (`T` in
/// `Result<T, E>` and `Option<T>`, else the whole type).
fn check_return(sig: &Signature, errors: &mut Errors) -> (Kind, Span) {
    let ty = match &sig.output {
        ReturnType::Type(_, ty) => ungroup(ty),
        ReturnType::Default => {
            errors.push(
                sig.ident.span(),
                format!(
                    "a cached function must return a value: `{}` returns `()`; add `-> T`",
                    sig.ident
                ),
            );
            return (Kind::Plain, sig.ident.span());
        }
    };
    match ty {
        Type::Tuple(tuple) if tuple.elems.is_empty() => {
            errors.push(
                ty.span(),
                "a cached function must return a value: `()` has nothing to cache",
            );
        }
        Type::Never(_) => {
            errors.push(
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
                            return (kind, value.span());
                        }
                    }
                }
            }
        }
        _ => {}
    }
    (Kind::Plain, ty.span())
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

/// The outer attributes (`#[...]`, for the item) and the inner ones (`#![...]`,
/// written in the body, and to be emitted there).
fn split_attrs(attrs: &[Attribute]) -> (Vec<&Attribute>, Vec<&Attribute>) {
    attrs
        .iter()
        .partition(|attr| matches!(attr.style, syn::AttrStyle::Outer))
}

/// `body` in braces carrying the span of the user's block.
///
/// With braces of the macro's own span, the function's span would start in the
/// user's code and end in the expansion, and rustc would not report it as dead code.
fn in_braces_of(block: &Block, body: TokenStream) -> TokenStream {
    let mut group = proc_macro2::Group::new(proc_macro2::Delimiter::Brace, body);
    group.set_span(block.brace_token.span.join());
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

fn ungroup(mut ty: &Type) -> &Type {
    loop {
        match ty {
            Type::Group(group) => ty = &group.elem,
            Type::Paren(paren) => ty = &paren.elem,
            _ => return ty,
        }
    }
}

/// The function's arguments; a destructuring pattern is an error (it has no name
/// to put in the key or in `skip`).
fn check_params(sig: &Signature, errors: &mut Errors) -> Vec<Param> {
    let mut params = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(receiver) => params.push(Param {
                name: "self".to_owned(),
                ident: Ident::new("self", receiver.self_token.span),
                ty: None,
                skipped: false,
                span: receiver.self_token.span,
            }),
            FnArg::Typed(typed) => match &*typed.pat {
                Pat::Ident(pat) if pat.subpat.is_none() => params.push(Param {
                    name: pat.ident.unraw().to_string(),
                    ident: pat.ident.clone(),
                    ty: Some((*typed.ty).clone()),
                    skipped: false,
                    span: pat.ident.span(),
                }),
                pat => errors.push(
                    pat.span(),
                    "bind this argument to a name (`arg: Type`) and destructure it in the body: \
                     `#[cached]` puts arguments in the key by name, and names the ones to leave out in `skip(...)`",
                ),
            },
        }
    }
    params
}

/// A duration argument, checked against `min ..= 24 h`.
fn duration(errors: &mut Errors, what: &str, arg: Option<&Arg<DurationLit>>, min: Duration) -> Option<Duration> {
    let arg = arg?;
    let value = errors.ok(arg.value.value())?;
    if value < min || value > DAY {
        let min = if min.is_zero() {
            "0".to_owned()
        } else {
            humantime::format_duration(min).to_string()
        };
        errors.push(
            arg.value.span(),
            format!(
                "`{what}` must be between {min} and 24h; this is {}",
                if value.is_zero() {
                    "0".to_owned()
                } else {
                    humantime::format_duration(value).to_string()
                }
            ),
        );
        return None;
    }
    Some(value)
}

/// `prefix` or `name`: a key segment without white space, braces or glob characters.
fn segment(errors: &mut Errors, what: &str, lit: &LitStr) -> String {
    let value = lit.value();
    if value.is_empty() {
        errors.push(lit.span(), format!("`{what}` must not be empty"));
    } else if let Some(bad) = value.chars().find(|c| c.is_whitespace() || "{}*?[]".contains(*c)) {
        errors.push(
            lit.span(),
            format!(
                "`{what}` cannot contain {bad:?}: key segments have no white space, braces or glob characters (`*?[]`)"
            ),
        );
    }
    value
}

/// Where a template is used.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Use {
    Key,
    Tag,
}

/// Checks a template's placeholders against the arguments, and that no two
/// placeholders could run into each other.
fn check_template(errors: &mut Errors, template: &Template, params: &[Param], fn_name: &Ident, usage: Use) {
    let span = template.lit.span();
    let what = match usage {
        Use::Key => "`key`",
        Use::Tag => "a tag",
    };
    if template.segments.is_empty() {
        errors.push(span, format!("{what} cannot be empty"));
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
                    if let Some(bad) = text.chars().find(|c| c.is_whitespace() || "*?[]".contains(*c)) {
                        errors.push(
                            span,
                            format!(
                                "`key` cannot contain {bad:?}: keys have no white space or glob characters (`*?[]`)"
                            ),
                        );
                    }
                }
                // Rendered values are made of `[A-Za-z0-9._-]`, `%XX` escapes and `~`:
                // only another character tells where one value ends.
                separated |= text
                    .chars()
                    .any(|c| !(c.is_ascii_alphanumeric() || "._-%~".contains(c)));
            }
            Segment::Value { arg, .. } => {
                match params.iter().find(|p| &p.name == arg) {
                    None => {
                        unknown = true;
                        errors.push(
                            span,
                            format!("{what} uses `{{{arg}}}`, but {}", no_such_argument(fn_name, params)),
                        );
                    }
                    Some(param) if usage == Use::Key && param.skipped => errors.push(
                        span,
                        format!(
                            "`key` cannot use `{{{arg}}}`: `{arg}` is in `skip(...)` (tags may use skipped arguments, \
                             the key may not)"
                        ),
                    ),
                    Some(_) => {
                        used.insert(arg.as_str());
                    }
                }
                if let (Some(before), false) = (previous, separated) {
                    errors.push(
                        span,
                        format!(
                            "`{{{before}}}` and `{{{arg}}}` need a separator: values may contain letters, digits, \
                             `.`, `_` and `-`, so two different pairs of values could render the same; \
                             put a `:` between them (`{{{before}}}:{{{arg}}}`)"
                        ),
                    );
                }
                previous = Some(arg);
                separated = false;
            }
        }
    }
    // After a misspelt placeholder, "does not use `x`" would only repeat that mistake.
    if usage == Use::Key && !unknown {
        for param in params.iter().filter(|p| !p.skipped && !p.is_receiver()) {
            if !used.contains(param.name.as_str()) {
                let name = &param.name;
                errors.push(
                    span,
                    format!(
                        "`key` does not use the argument `{name}`: calls that differ only in `{name}` would share \
                         one entry; add `{{{name}}}` to the key or `{name}` to `skip(...)`"
                    ),
                );
            }
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

/// Collects the identifiers (unraw) and lifetimes (`'a`) in `tokens`.
fn idents(tokens: TokenStream, names: &mut BTreeSet<String>) {
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
fn variables(tokens: TokenStream, names: &mut BTreeSet<String>) {
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
/// associated function, and the companions' doc links go through `Self::`).
fn mentions_self(sig: &Signature) -> bool {
    let mut names = BTreeSet::new();
    idents(sig.inputs.to_token_stream(), &mut names);
    idents(sig.output.to_token_stream(), &mut names);
    names.contains("Self")
}

/// The generic parameters a companion needs: those its argument types mention,
/// those their bounds mention in turn, and the where-predicates among them only.
/// (A parameter used only by a skipped argument would otherwise be impossible to infer.)
fn companion_generics(generics: &Generics, used_types: TokenStream) -> Generics {
    let mut used = BTreeSet::new();
    idents(used_types, &mut used);
    let param_name = |param: &GenericParam| match param {
        GenericParam::Type(ty) => ty.ident.unraw().to_string(),
        GenericParam::Lifetime(lt) => format!("'{}", lt.lifetime.ident),
        GenericParam::Const(c) => c.ident.unraw().to_string(),
    };
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
            break;
        }
    }
    let declared: BTreeSet<String> = generics.params.iter().map(param_name).collect();
    let mut kept = generics.clone();
    kept.params = generics
        .params
        .iter()
        .filter(|p| used.contains(&param_name(p)))
        .cloned()
        .collect();
    if let Some(where_clause) = &mut kept.where_clause {
        where_clause.predicates = predicates
            .iter()
            .filter(|predicate| {
                let mut names = BTreeSet::new();
                idents(predicate.to_token_stream(), &mut names);
                names.intersection(&declared).all(|name| used.contains(name))
            })
            .map(|predicate| (*predicate).clone())
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
    use super::*;

    fn kept(generics: &str, where_clause: &str, used: &str) -> String {
        let mut generics: Generics = syn::parse_str(generics).unwrap();
        generics.where_clause = (!where_clause.is_empty()).then(|| syn::parse_str(where_clause).unwrap());
        let kept = companion_generics(&generics, used.parse().unwrap());
        let (params, _, where_clause) = kept.split_for_impl();
        quote!(#params #where_clause).to_string()
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
