//! Code generation for `#[pg_cached]`.
//!
//! The function is rewritten in place: it keeps its attributes, visibility and signature token for token,
//! and only its body changes (see [`Plan::body`]). Generated code names nothing but
//! `::cache_runtime::__private::*`, `::core::*` and `::std::*`, and its locals start with `__pg_cached_`.

use proc_macro2::{Delimiter, Group, Span, TokenStream, TokenTree};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::visit::Visit;
use syn::visit_mut::VisitMut;
use syn::{
    Expr, FnArg, GenericParam, Ident, Item, ItemFn, LitStr, Pat, PatIdent, PatType, Receiver, ReturnType, TraitItemFn,
    Type,
};

use crate::attr::{Args, Errors};
use crate::duration::{self, Never, Parsed};

/// Parses the attribute's arguments and the item, checks both, and generates the memoized function and its
/// companions. Every error found is returned at once.
pub(crate) fn expand(args: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let mut errors = Errors::default();
    let args = match syn::parse2::<Args>(args) {
        Ok(mut args) => {
            errors.append(std::mem::take(&mut args.errors));
            Some(args)
        }
        Err(error) => {
            errors.push(error);
            None
        }
    };
    let function = match parse_function(item) {
        Ok(function) => Some(function),
        Err(error) => {
            errors.push(error);
            None
        }
    };
    let (Some(args), Some(function)) = (args, function) else {
        return Err(errors.into_error().unwrap_or_else(|| syn::Error::new(Span::call_site(), "invalid input")));
    };
    let plan = Plan::new(args, &function, &mut errors);
    errors.finish()?;
    let main = plan.function();
    let companions = plan.companions();
    Ok(quote!(#main #companions))
}

/// The item must be a function with a body.
fn parse_function(item: TokenStream) -> syn::Result<ItemFn> {
    const ONLY: &str = "`#[pg_cached]` applies only to `async fn` items";
    match syn::parse2::<Item>(item.clone()) {
        Ok(Item::Fn(function)) => Ok(function),
        Ok(Item::Verbatim(tokens)) => match syn::parse2::<TraitItemFn>(tokens.clone()) {
            Ok(method) if method.default.is_none() => Err(syn::Error::new_spanned(
                &method.sig,
                "`#[pg_cached]` needs the function's body: put it on the method in the `impl` block \
                 (with `companions = false` in a trait impl), not on the declaration",
            )),
            _ => Err(syn::Error::new_spanned(tokens, ONLY)),
        },
        Ok(other) => Err(syn::Error::new_spanned(item_head(&other), ONLY)),
        Err(error) => Err(error),
    }
}

/// The tokens that name an item (`struct Foo`, `impl Trait for Type`), where the error "not a function" goes.
fn item_head(item: &Item) -> TokenStream {
    match item {
        Item::Struct(i) => pair(&i.struct_token, &i.ident),
        Item::Enum(i) => pair(&i.enum_token, &i.ident),
        Item::Union(i) => pair(&i.union_token, &i.ident),
        Item::Trait(i) => pair(&i.trait_token, &i.ident),
        Item::Mod(i) => pair(&i.mod_token, &i.ident),
        Item::Const(i) => pair(&i.const_token, &i.ident),
        Item::Static(i) => pair(&i.static_token, &i.ident),
        Item::Type(i) => pair(&i.type_token, &i.ident),
        Item::Impl(i) => pair(&i.impl_token, &i.self_ty),
        other => other.to_token_stream(),
    }
}

/// One argument of the function (not the receiver).
struct Param<'a> {
    arg: &'a PatType,
    /// The names its pattern binds, in order, each with whether `skip` names it.
    bindings: Vec<(&'a Ident, bool)>,
    /// Whether its type mentions `impl Trait`; its concrete type then goes into the key.
    impl_trait: bool,
}

impl Param<'_> {
    /// Whether the argument contributes to the key: it binds a name that is not skipped.
    fn in_key(&self) -> bool {
        self.bindings.iter().any(|(_, skipped)| !skipped)
    }

    /// `Some(ident)` for a plain `name: Type` or `mut name: Type` argument.
    fn plain_ident(&self) -> Option<&Ident> {
        match &*self.arg.pat {
            Pat::Ident(PatIdent { by_ref: None, subpat: None, ident, .. }) => Some(ident),
            _ => None,
        }
    }
}

/// Everything the generated code needs, checked.
struct Plan<'a> {
    function: &'a ItemFn,
    namespace: LitStr,
    version: u32,
    ttl: Option<Parsed>,
    stale: Option<u64>,
    /// The in-process tier's max age, and where `local = "..."` was written.
    local: Option<(u64, Span)>,
    single_flight: Option<Ident>,
    cache: Option<Expr>,
    /// The `cache_none` key's span when `cache_none = true`.
    cache_none: Option<Span>,
    companions: bool,
    receiver: Option<&'a Receiver>,
    /// Whether the key includes `Self`: for methods with a receiver, and for functions whose signature
    /// mentions `Self` (so they are in an `impl` and `Self` can be named).
    self_type: bool,
    params: Vec<Param<'a>>,
    /// The declared return type, `()` if none.
    ret: TokenStream,
    /// Where errors about the return type go: the return type, or the function name without one.
    ret_span: Span,
}

impl<'a> Plan<'a> {
    fn new(args: Args, function: &'a ItemFn, errors: &mut Errors) -> Plan<'a> {
        let sig = &function.sig;

        for attr in &function.attrs {
            if attr.path().segments.last().is_some_and(|s| s.ident == "pg_cached") {
                errors.push(syn::Error::new_spanned(attr, "`#[pg_cached]` is applied more than once"));
            }
        }
        if let Some(constness) = &sig.constness {
            errors.push(syn::Error::new_spanned(
                constness,
                "`#[pg_cached]` cannot be applied to a `const fn`: a memoized call reads and writes a database",
            ));
        } else if sig.asyncness.is_none() {
            errors.push(syn::Error::new_spanned(
                pair(&sig.fn_token, &sig.ident),
                format!(
                    "`#[pg_cached]` applies only to `async fn`: a memoized call waits on the database; \
                     write `async fn {}`",
                    sig.ident
                ),
            ));
        }
        if let Some(variadic) = &sig.variadic {
            errors.push(syn::Error::new_spanned(variadic, "`#[pg_cached]` does not support variadic functions"));
        }

        let (ret, ret_span) = match &sig.output {
            ReturnType::Type(_, ty) => {
                let mut finder = ImplTraitFinder::default();
                finder.visit_type(ty);
                if let Some(impl_trait) = finder.found {
                    errors.push(syn::Error::new_spanned(
                        impl_trait,
                        "`#[pg_cached]` cannot cache an `impl Trait` return type: a cached value is read back \
                         as a concrete type; name the type",
                    ));
                }
                (ty.to_token_stream(), ty.span())
            }
            ReturnType::Default => (quote_spanned!(sig.ident.span()=> ()), sig.ident.span()),
        };

        let mut receiver = None;
        let mut params = Vec::new();
        for input in &sig.inputs {
            match input {
                FnArg::Receiver(r) => {
                    if r.reference.is_none() && is_self_type(&r.ty) {
                        errors.push(syn::Error::new_spanned(
                            r,
                            "`#[pg_cached]` does not support `self` by value: `self` is not part of the cache \
                             key, and a method that consumes `self` usually computes its result from it; take \
                             `&self`, or pass the data as an argument",
                        ));
                    }
                    receiver = Some(r);
                }
                FnArg::Typed(arg) => {
                    let mut names = Vec::new();
                    collect_bindings(&arg.pat, &mut names, errors);
                    let mut finder = ImplTraitFinder::default();
                    finder.visit_type(&arg.ty);
                    params.push(Param {
                        arg,
                        bindings: names.into_iter().map(|n| (n, false)).collect(),
                        impl_trait: finder.found.is_some(),
                    });
                }
            }
        }

        let Args { namespace, ttl, version, skip, cache, cache_none, single_flight, stale, local, companions, .. } =
            args;

        for name in skip.iter().flatten() {
            let unraw = name.unraw();
            if name == "self" {
                errors
                    .push(syn::Error::new(name.span(), "`self` is never part of the cache key; remove it from `skip`"));
                continue;
            }
            let mut found = false;
            for param in &mut params {
                for (ident, skipped) in &mut param.bindings {
                    if ident.unraw() == unraw {
                        if *skipped {
                            errors.push(syn::Error::new(name.span(), format!("`{name}` is skipped twice")));
                        }
                        *skipped = true;
                        found = true;
                    }
                }
            }
            if !found {
                let names: Vec<String> =
                    params.iter().flat_map(|p| &p.bindings).map(|(ident, _)| format!("`{ident}`")).collect();
                let known = match names.len() {
                    0 => "; the function takes no arguments that could be skipped".to_owned(),
                    _ => format!("; the arguments are {}", names.join(", ")),
                };
                errors.push(syn::Error::new(name.span(), format!("no parameter named `{name}`{known}")));
            }
        }

        let namespace = match namespace {
            Some(lit) => {
                if let Some(problem) = namespace_problem(&lit.value()) {
                    errors.push(syn::Error::new(lit.span(), format!("invalid namespace: {problem}")));
                }
                lit
            }
            None => {
                let name = sig.ident.unraw().to_string();
                if let Some(problem) = namespace_problem(&name) {
                    errors.push(syn::Error::new(
                        sig.ident.span(),
                        format!(
                            "the function's name is not a valid namespace ({problem}); give one with \
                             `namespace = \"...\"`"
                        ),
                    ));
                }
                LitStr::new(&name, sig.ident.span())
            }
        };

        let version = version.map_or(0, |lit| match (lit.suffix(), lit.base10_parse::<u32>()) {
            ("" | "u32", Ok(v)) => v,
            (_, Err(e)) => {
                let why = if lit.base10_digits().starts_with('-') {
                    "it cannot be negative".to_owned()
                } else {
                    e.to_string()
                };
                errors.push(syn::Error::new(lit.span(), format!("`version` must be a `u32`: {why}")));
                0
            }
            (suffix, Ok(_)) => {
                errors.push(syn::Error::new(lit.span(), format!("`version` is a `u32`; remove the `{suffix}` suffix")));
                0
            }
        });

        let mut parse_duration = |lit: Option<LitStr>, never: Never| {
            let lit = lit?;
            duration::parse(&lit.value(), never)
                .map_err(|message| errors.push(syn::Error::new(lit.span(), message)))
                .ok()
        };
        let ttl = parse_duration(ttl, Never::Allowed);
        let as_secs = |p: Option<Parsed>| match p {
            Some(Parsed::Secs(s)) => Some(s),
            _ => None,
        };
        let stale = as_secs(parse_duration(stale, Never::Rejected));
        let local_span = local.as_ref().map(LitStr::span);
        let local = as_secs(parse_duration(local, Never::Rejected)).zip(local_span);

        let single_flight = single_flight.and_then(|lit| {
            let variant = match lit.value().as_str() {
                "off" => "Off",
                "process" => "Process",
                "cluster" => "Cluster",
                _ => {
                    errors.push(syn::Error::new(lit.span(), "expected \"off\", \"process\" or \"cluster\""));
                    return None;
                }
            };
            Some(Ident::new(variant, lit.span()))
        });

        let self_type = receiver.is_some() || {
            let mut tokens = sig.generics.to_token_stream();
            sig.generics.where_clause.to_tokens(&mut tokens);
            for param in &params {
                param.arg.ty.to_tokens(&mut tokens);
            }
            ret.to_tokens(&mut tokens);
            mentions_self_type(tokens)
        };

        Plan {
            function,
            namespace,
            version,
            ttl,
            stale,
            local,
            single_flight,
            cache,
            cache_none: cache_none.and_then(|(key, value)| value.value.then_some(key)),
            companions: companions.is_none_or(|lit| lit.value),
            receiver,
            self_type,
            params,
            ret,
            ret_span,
        }
    }

    /// `static __PG_CACHED_SITE: Site = Site::new(..).ttl(..)...;`
    fn site(&self) -> TokenStream {
        let rt = rt(Span::call_site());
        let namespace = &self.namespace;
        let name = &self.function.sig.ident;
        let version = self.version;
        let mut site = quote! {
            #rt::Site::new(
                #namespace,
                ::core::concat!(::core::module_path!(), "::", ::core::stringify!(#name)),
                #version,
            )
        };
        let secs = |s: u64| quote!(#rt::Duration::from_secs(#s));
        match self.ttl {
            Some(Parsed::Never) => site.extend(quote!(.ttl(#rt::Ttl::Never))),
            Some(Parsed::Secs(s)) => {
                let d = secs(s);
                site.extend(quote!(.ttl(#rt::Ttl::After(#d))));
            }
            None => {}
        }
        if let Some(mode) = &self.single_flight {
            site.extend(quote!(.single_flight(#rt::SingleFlight::#mode)));
        }
        if let Some(s) = self.stale {
            let d = secs(s);
            site.extend(quote!(.stale(#d)));
        }
        if let Some((s, _)) = self.local {
            let d = secs(s);
            site.extend(quote!(.local(#d)));
        }
        quote!(static __PG_CACHED_SITE: #rt::Site = #site;)
    }

    /// An expression of type `Result<String, CacheError>`: the key for the arguments in scope.
    ///
    /// `borrowed[i]` says that the names bound by argument `i` are references to the values (in
    /// `{fn}_refresh`, which binds them with `ref` so that it can still pass the argument on); otherwise they
    /// are the values themselves. Either way the key sees `&value`, so every key is the same.
    fn key(&self, borrowed: &[bool]) -> TokenStream {
        let rt = rt(Span::call_site());
        let mut feed = TokenStream::new();
        if self.self_type {
            feed.extend(quote!(__pg_cached_kb.self_type::<Self>();));
        }
        let generics = &self.function.sig.generics.params;
        for param in generics {
            if let GenericParam::Type(t) = param {
                let t = &t.ident;
                feed.extend(quote!(__pg_cached_kb.type_param::<#t>();));
            }
        }
        for param in generics {
            if let GenericParam::Const(c) = param {
                let c = &c.ident;
                feed.extend(quote!(#rt::KeyArg::add_to_key(&#c, &mut __pg_cached_kb);));
            }
        }
        for (param, &borrowed) in self.params.iter().zip(borrowed) {
            for &(ident, skipped) in &param.bindings {
                if skipped {
                    continue;
                }
                // Spanned on the argument, so that a type that is not `Serialize` is reported there.
                let span = ident.span();
                let rt = self::rt(span);
                let value = if borrowed { quote_spanned!(span=> #ident) } else { quote_spanned!(span=> &#ident) };
                if param.impl_trait {
                    feed.extend(quote_spanned!(span=> __pg_cached_kb.type_of_val(#value);));
                }
                feed.extend(quote_spanned!(span=> #rt::KeyArg::add_to_key(#value, &mut __pg_cached_kb);));
            }
        }
        quote! {{
            let mut __pg_cached_kb = #rt::KeyBuilder::new(&__PG_CACHED_SITE);
            #feed
            __pg_cached_kb.finish()
        }}
    }

    /// An expression of type `CacheRef`.
    fn cache_ref(&self) -> TokenStream {
        match &self.cache {
            Some(expr) => {
                // `&(expr)` spanned from the expression's first token to its last, so that a wrong type is
                // reported under the whole expression.
                let mut tokens = expr.to_token_stream().into_iter();
                let first = tokens.next().map_or_else(Span::call_site, |t| t.span());
                let last = tokens.last().map_or(first, |t| t.span());
                let mut group = Group::new(Delimiter::Parenthesis, expr.to_token_stream());
                group.set_span(last);
                let rt = rt(first);
                quote_spanned!(first=> #rt::explicit(&#group))
            }
            None => quote!(::cache_runtime::__private::CacheRef::Global),
        }
    }

    /// The memoized function: the original attributes and signature around a new body.
    fn function(&self) -> TokenStream {
        let function = self.function;
        let (outer, inner): (Vec<_>, Vec<_>) =
            function.attrs.iter().partition(|a| matches!(a.style, syn::AttrStyle::Outer));
        let vis = &function.vis;
        let sig = &function.sig;
        let body = self.body();
        let mut tokens = quote!(#(#outer)* #vis #sig);
        function.block.brace_token.surround(&mut tokens, |tokens| {
            tokens.extend(quote!(#(#inner)* #body));
        });
        tokens
    }

    /// ```text
    /// static __PG_CACHED_SITE: Site = ...;
    /// let __pg_cached_key = <key from the arguments>;
    /// let __pg_cached_cache = <cache>;
    /// let __pg_cached_policy = <policy chosen from the return type>;
    /// memoize(&__PG_CACHED_SITE, __pg_cached_cache, __pg_cached_key, __pg_cached_policy, async move {
    ///     <fake return edge>
    ///     <original block>
    /// }).await
    /// ```
    fn body(&self) -> TokenStream {
        let site = self.site();
        let key = self.key(&vec![false; self.params.len()]);
        let cache = self.cache_ref();
        let ret = &self.ret;
        let ret_span = self.ret_span;
        let cache_none = self.cache_none.is_some();
        // Spanned on `cache_none`, the return type included, so that a return type that is not an `Option` is
        // reported there.
        let assert_option = self.cache_none.map(|span| {
            let rt = rt(span);
            let ret = respan(ret.clone(), span);
            quote_spanned!(span=> #rt::assert_returns_option::<#ret>();)
        });
        // Tracing's "fake return edge": the async block's type is inferred from the declared return type,
        // so `?` and `return` in the body work, and type errors point at the return type.
        let fake_return = quote_spanned! {ret_span=>
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
                let __pg_cached_fake_return: #ret = loop {};
                return __pg_cached_fake_return;
            }
        };
        let block = &self.function.block;
        let rt = rt(ret_span);
        let policy = quote_spanned!(ret_span=> (&#rt::Probe::<#ret>::new()).policy(#cache_none));
        // With `local = "..."` the in-process tier hands out clones: `memoize_local` needs `R: Clone`, and the
        // call is spanned on the option's value so that a return type that is not `Clone` is reported there.
        let (memoize_fn, call_span) = match self.local {
            Some((_, span)) => (quote_spanned!(span=> memoize_local), span),
            None => (quote_spanned!(ret_span=> memoize), ret_span),
        };
        let call_rt = self::rt(call_span);
        let memoize = quote_spanned! {call_span=>
            #call_rt::#memoize_fn(
                &__PG_CACHED_SITE,
                __pg_cached_cache,
                __pg_cached_key,
                __pg_cached_policy,
                async move {
                    #fake_return
                    #block
                },
            )
            .await
        };
        quote! {
            #site
            let __pg_cached_key = #key;
            let __pg_cached_cache = #cache;
            #assert_option
            #[allow(unused_imports)]
            use #rt::{OptionKind as _, PlainKind as _, ResultKind as _};
            let __pg_cached_policy = #policy;
            #memoize
        }
    }

    /// `{fn}_cache_key`, `{fn}_invalidate` and `{fn}_refresh`, unless `companions = false`.
    fn companions(&self) -> TokenStream {
        if !self.companions {
            return TokenStream::new();
        }
        let function = self.function;
        let sig = &function.sig;
        let name = &sig.ident;
        // The companions are spanned on the function's name: an error about one of them (such as "not a member
        // of trait" in a trait impl) points there.
        let span = name.span();
        let rt = rt(span);
        let vis = &function.vis;
        let generics = &sig.generics;
        let where_clause = &generics.where_clause;
        let cfgs: Vec<_> = function.attrs.iter().filter(|a| a.path().is_ident("cfg")).collect();
        let site = self.site();
        let cache = self.cache_ref();
        let allow =
            quote!(#[allow(dead_code, unused_mut, unused_variables, clippy::needless_lifetimes, clippy::unused_self)]);
        let unsafety = &sig.unsafety;
        let ident = |suffix: &str| format_ident!("{}_{}", name.unraw(), suffix, span = name.span());
        let (key_fn, invalidate_fn, refresh_fn) = (ident("cache_key"), ident("invalidate"), ident("refresh"));

        // `&self` (keeping a lifetime written as `&'a self`) for the two companions that only need the cache.
        let by_ref = self.receiver.map(|r| match &r.reference {
            Some((and, lifetime)) => {
                let recv = &r.self_token;
                quote!(#and #lifetime #recv,)
            }
            None => quote_spanned!(r.self_token.span=> &self,),
        });
        let key_params: Vec<&PatType> = self.params.iter().filter(|p| p.in_key()).map(|p| p.arg).collect();
        // `_invalidate` also takes the skipped arguments that `cache = <expr>` names.
        let used_by_cache = {
            let mut finder = NameFinder::default();
            if let Some(expr) = &self.cache {
                finder.visit_expr(expr);
            }
            finder.names
        };
        let invalidate_params: Vec<&PatType> = self
            .params
            .iter()
            .filter(|p| p.in_key() || p.bindings.iter().any(|(i, _)| used_by_cache.contains(&i.unraw())))
            .map(|p| p.arg)
            .collect();
        let key = self.key(&vec![false; self.params.len()]);

        // `_refresh` takes every argument and passes it on to the function. A plain `name: Type` keeps its
        // name; any other pattern is received as `__pg_cached_argN` and its names are bound by reference.
        let mut refresh_params = Vec::new();
        let mut refresh_args = Vec::new();
        let mut rebind = Vec::new();
        let mut borrowed = Vec::new();
        for (i, param) in self.params.iter().enumerate() {
            let PatType { attrs, ty, .. } = param.arg;
            let arg = match param.plain_ident() {
                Some(ident) => {
                    borrowed.push(false);
                    ident.clone()
                }
                None => {
                    let arg = format_ident!("__pg_cached_arg{}", i);
                    borrowed.push(true);
                    if param.in_key() {
                        let mut pat = (*param.arg.pat).clone();
                        BindByRef.visit_pat_mut(&mut pat);
                        rebind.push(quote!(let #pat = #arg;));
                    }
                    arg
                }
            };
            refresh_params.push(quote!(#(#attrs)* #arg: #ty));
            refresh_args.push(arg);
        }
        let refresh_key = self.key(&borrowed);
        let turbofish = {
            let names: Vec<&Ident> = generics
                .params
                .iter()
                .filter_map(|p| match p {
                    GenericParam::Type(t) => Some(&t.ident),
                    GenericParam::Const(c) => Some(&c.ident),
                    GenericParam::Lifetime(_) => None,
                })
                .collect();
            (!names.is_empty()).then(|| quote!(::<#(#names),*>))
        };
        let call = match self.receiver {
            Some(receiver) => {
                let recv = receiver.self_token;
                quote!(Self::#name #turbofish(#recv, #(#refresh_args),*))
            }
            None if self.self_type => quote!(Self::#name #turbofish(#(#refresh_args),*)),
            None => quote!(#name #turbofish(#(#refresh_args),*)),
        };
        let call = match unsafety {
            Some(_) => quote!(unsafe { #call }),
            None => call,
        };
        let refresh_receiver = self.receiver.map(|r| match &r.reference {
            Some(_) => quote!(#r,),
            None => {
                let Receiver { attrs, self_token, colon_token, ty, .. } = r;
                quote!(#(#attrs)* #self_token #colon_token #ty,)
            }
        });
        let output = &sig.output;

        let docs = self.companion_docs(span);
        let (key_doc, invalidate_doc, refresh_doc) = (&docs[0], &docs[1], &docs[2]);
        quote_spanned! {span=>
            #(#key_doc)*
            #(#cfgs)*
            #allow
            #vis fn #key_fn #generics (#by_ref #(#key_params),*)
                -> ::core::result::Result<::std::string::String, #rt::CacheError>
                #where_clause
            {
                #site
                #key
            }

            #(#invalidate_doc)*
            #(#cfgs)*
            #allow
            #vis async fn #invalidate_fn #generics (#by_ref #(#invalidate_params),*)
                -> ::core::result::Result<bool, #rt::CacheError>
                #where_clause
            {
                #site
                let __pg_cached_key = #key;
                let __pg_cached_cache = #cache;
                #rt::invalidate(&__PG_CACHED_SITE, __pg_cached_cache, __pg_cached_key).await
            }

            #(#refresh_doc)*
            #(#cfgs)*
            #allow
            #vis async #unsafety fn #refresh_fn #generics (#refresh_receiver #(#refresh_params),*) #output
                #where_clause
            {
                #site
                let __pg_cached_key = {
                    #(#rebind)*
                    #refresh_key
                };
                #rt::refresh(__pg_cached_key, #call).await
            }
        }
    }

    /// The doc comments of the three companions.
    fn companion_docs(&self, span: Span) -> [Vec<TokenStream>; 3] {
        let name = self.function.sig.ident.unraw().to_string();
        let link = if self.self_type { format!("[`{name}`](Self::{name})") } else { format!("`{name}`") };
        let skipped: Vec<String> = self
            .params
            .iter()
            .flat_map(|p| &p.bindings)
            .filter(|(_, skipped)| *skipped)
            .map(|(i, _)| format!("`{i}`"))
            .collect();
        let arguments = if skipped.is_empty() {
            format!("Takes the arguments of {link}.")
        } else {
            format!("Takes the arguments of {link} except those left out of the key: {}.", skipped.join(", "))
        };
        let lines = |text: String| -> Vec<TokenStream> {
            text.lines().map(|line| quote_spanned!(span=> #[doc = #line])).collect()
        };
        [
            lines(format!(
                "Returns the cache key that {link} uses for these arguments.\n\n\
                 {arguments} The key is the string stored in the cache table's `cache_key` column: \
                 `\"{ns}:\"` followed by 64 hex digits.\n\n\
                 # Errors\n\n\
                 Fails only if an argument cannot be serialized.\n\n\
                 Generated by `#[pg_cached]`.",
                ns = self.namespace.value(),
            )),
            lines(format!(
                "Deletes the entry that {link} stored for these arguments, so that the next call runs the \
                 function again.\n\n\
                 {arguments} Returns `Ok(true)` if an entry was deleted and `Ok(false)` if there was none.\n\n\
                 # Errors\n\n\
                 Fails if the cache cannot be reached, if no cache is configured, or if an argument cannot be \
                 serialized.\n\n\
                 Generated by `#[pg_cached]`."
            )),
            lines(format!(
                "Runs {link} now without looking in the cache, stores its result over any existing entry \
                 (when the result is one that {link} caches), and returns it.\n\n\
                 Takes the same arguments as {link}. Like {link}, it never fails because of the cache: if \
                 the entry cannot be written, the result is still returned.\n\n\
                 Generated by `#[pg_cached]`."
            )),
        ]
    }
}

/// `::cache_runtime::__private`, spanned so that errors in a call through it point at `span`.
fn rt(span: Span) -> TokenStream {
    quote_spanned!(span=> ::cache_runtime::__private)
}

/// `tokens` with every span set to `span`.
fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut tree| {
            if let TokenTree::Group(group) = &tree {
                let mut respanned = Group::new(group.delimiter(), respan(group.stream(), span));
                respanned.set_span(span);
                tree = TokenTree::Group(respanned);
            } else {
                tree.set_span(span);
            }
            tree
        })
        .collect()
}

/// Why `namespace` is not valid, if it is not.
fn namespace_problem(namespace: &str) -> Option<String> {
    const ALLOWED: &str = "use 1 to 64 ASCII letters, digits, `_`, `-` or `.`";
    if namespace.is_empty() {
        return Some(format!("it is empty; {ALLOWED}"));
    }
    if let Some(c) = namespace.chars().find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))) {
        let why = if c == ':' { " (`:` separates the namespace from the hash in a key)" } else { "" };
        return Some(format!("`{}` is not allowed{why}; {ALLOWED}", c.escape_default()));
    }
    if namespace.len() > 64 {
        return Some(format!("it is {} characters long; {ALLOWED}", namespace.len()));
    }
    None
}

/// `Self`, the type of `self` written by value.
fn is_self_type(ty: &Type) -> bool {
    matches!(ty, Type::Path(p) if p.qself.is_none() && p.path.is_ident("Self"))
}

fn mentions_self_type(tokens: TokenStream) -> bool {
    tokens.into_iter().any(|tree| match tree {
        TokenTree::Ident(ident) => ident == "Self",
        TokenTree::Group(group) => mentions_self_type(group.stream()),
        _ => false,
    })
}

/// Collects, in order, the names a pattern binds. `_` and `..` bind nothing.
fn collect_bindings<'a>(pat: &'a Pat, names: &mut Vec<&'a Ident>, errors: &mut Errors) {
    match pat {
        Pat::Ident(p) => {
            names.push(&p.ident);
            if let Some((_, sub)) = &p.subpat {
                collect_bindings(sub, names, errors);
            }
        }
        Pat::Tuple(p) => p.elems.iter().for_each(|p| collect_bindings(p, names, errors)),
        Pat::TupleStruct(p) => p.elems.iter().for_each(|p| collect_bindings(p, names, errors)),
        Pat::Slice(p) => p.elems.iter().for_each(|p| collect_bindings(p, names, errors)),
        Pat::Struct(p) => p.fields.iter().for_each(|f| collect_bindings(&f.pat, names, errors)),
        Pat::Reference(p) => collect_bindings(&p.pat, names, errors),
        Pat::Paren(p) => collect_bindings(&p.pat, names, errors),
        Pat::Type(p) => collect_bindings(&p.pat, names, errors),
        // Every alternative binds the same names.
        Pat::Or(p) => {
            if let Some(first) = p.cases.first() {
                collect_bindings(first, names, errors);
            }
        }
        Pat::Wild(_) | Pat::Rest(_) | Pat::Path(_) | Pat::Lit(_) | Pat::Range(_) | Pat::Const(_) => {}
        other => errors.push(syn::Error::new_spanned(
            other,
            "`#[pg_cached]` cannot see which names this pattern binds; bind the argument to a name",
        )),
    }
}

/// Two token sequences, one after the other (an error spanning both points from the first to the last).
fn pair(first: &dyn ToTokens, second: &dyn ToTokens) -> TokenStream {
    let mut tokens = first.to_token_stream();
    second.to_tokens(&mut tokens);
    tokens
}

/// Finds the first `impl Trait` in a type.
#[derive(Default)]
struct ImplTraitFinder<'a> {
    found: Option<&'a syn::TypeImplTrait>,
}

impl<'a> Visit<'a> for ImplTraitFinder<'a> {
    fn visit_type_impl_trait(&mut self, node: &'a syn::TypeImplTrait) {
        self.found.get_or_insert(node);
    }
}

/// Collects the single-segment paths (variable names) of an expression.
#[derive(Default)]
struct NameFinder {
    names: Vec<Ident>,
}

impl Visit<'_> for NameFinder {
    fn visit_expr_path(&mut self, node: &syn::ExprPath) {
        if let Some(ident) = node.path.get_ident() {
            self.names.push(ident.unraw());
        }
    }
}

/// Turns every binding of a pattern into `ref name`, so that matching borrows instead of moving.
struct BindByRef;

impl VisitMut for BindByRef {
    fn visit_pat_ident_mut(&mut self, node: &mut PatIdent) {
        node.by_ref = Some(Default::default());
        node.mutability = None;
        syn::visit_mut::visit_pat_ident_mut(self, node);
    }
}

#[cfg(test)]
mod tests;
