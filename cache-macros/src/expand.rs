//! Code generation for the memoized function itself: the static `Site`, the key, the cache reference, and
//! the new body around the original block.
//!
//! The function is rewritten in place: it keeps its attributes, visibility and signature token for token,
//! and only its body changes (see [`Plan::body`]). Generated code names nothing but
//! `::cache_runtime::__private::*`, `::core::*` and `::std::*`, and its locals start with `__pg_cached_`.

use proc_macro2::{Delimiter, Group, Span, TokenStream, TokenTree};
use quote::{quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;
use syn::{GenericParam, Ident};

use crate::duration::Parsed;
use crate::plan::Plan;

impl Plan<'_> {
    /// `static __PG_CACHED_SITE: Site = Site::new(..).ttl(..)...;`
    pub(crate) fn site(&self) -> TokenStream {
        let rt = rt(Span::call_site());
        let namespace = &self.options.namespace;
        let name = &self.function.sig.ident;
        let version = self.options.version;
        let mut site = quote! {
            #rt::Site::new(
                #namespace,
                ::core::concat!(::core::module_path!(), "::", ::core::stringify!(#name)),
                #version,
            )
        };
        let secs = |s: u64| quote!(#rt::Duration::from_secs(#s));
        match self.options.ttl {
            Some(Parsed::Never) => site.extend(quote!(.ttl(#rt::Ttl::Never))),
            Some(Parsed::Secs(s)) => {
                let d = secs(s);
                site.extend(quote!(.ttl(#rt::Ttl::After(#d))));
            }
            None => {}
        }
        if let Some((mode, span)) = self.options.single_flight {
            let mode = Ident::new(mode.variant(), span);
            site.extend(quote!(.single_flight(#rt::SingleFlight::#mode)));
        }
        if let Some(s) = self.options.stale {
            let d = secs(s);
            site.extend(quote!(.stale(#d)));
        }
        if let Some((s, _)) = self.options.local {
            let d = secs(s);
            site.extend(quote!(.local(#d)));
        }
        if let Some(s) = self.options.stale_if_error {
            let d = secs(s);
            site.extend(quote!(.stale_if_error(#d)));
        }
        if !self.options.tags.is_empty() {
            let tags = &self.options.tags;
            site.extend(quote!(.tags(&[#(#tags),*])));
        }
        if let Some(percent) = self.options.refresh_ahead {
            site.extend(quote!(.refresh_ahead(#percent)));
        }
        if self.options.replay_as_recorded {
            site.extend(quote!(.replay_as_recorded()));
        }
        if self.options.encrypt {
            site.extend(quote!(.encrypt()));
        }
        if let Some(similar) = &self.similar {
            let threshold = match similar.threshold {
                Some(t) => quote!(::core::option::Option::Some(#t)),
                None => quote!(::core::option::Option::None),
            };
            site.extend(quote!(.similar(#threshold)));
        }
        quote!(static __PG_CACHED_SITE: #rt::Site = #site;)
    }

    /// An expression of type `Result<String, CacheError>`: the key for the arguments in scope.
    ///
    /// `borrowed[i]` says that the names bound by argument `i` are references to the values (in
    /// `{fn}_refresh`, which binds them with `ref` so that it can still pass the argument on); otherwise they
    /// are the values themselves. Either way the key sees `&value`, so every key is the same.
    pub(crate) fn key(&self, borrowed: &[bool]) -> TokenStream {
        self.key_without(borrowed, None)
    }

    /// [`key`](Self::key) without the argument `left_out`: with `similar(arg)`, the key of the call's scope.
    pub(crate) fn key_without(&self, borrowed: &[bool], left_out: Option<&Ident>) -> TokenStream {
        let rt = rt(Span::call_site());
        let mut feed = TokenStream::new();
        if self.shape.self_type {
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
        for (param, &borrowed) in self.shape.params.iter().zip(borrowed) {
            for &(ident, skipped) in &param.bindings {
                if skipped || Some(ident) == left_out {
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
    pub(crate) fn cache_ref(&self) -> TokenStream {
        match &self.options.cache {
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
    pub(crate) fn function(&self) -> TokenStream {
        let function = self.function;
        let (outer, inner): (Vec<_>, Vec<_>) =
            function.attrs.iter().partition(|a| matches!(a.style, syn::AttrStyle::Outer));
        let vis = &function.vis;
        let sig = &function.sig;
        let body = match &self.stream {
            Some(shape) => self.stream_body(shape),
            None => self.body(),
        };
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
    /// memoize(&__PG_CACHED_SITE, __pg_cached_cache, __pg_cached_key, __pg_cached_policy, move |how| {
    ///     <with background refreshes: asked for How::Elsewhere, the task that calls the function again>
    ///     Body::Here(async move {
    ///         <fake return edge>
    ///         <original block>
    ///     })
    /// }).await
    /// ```
    ///
    /// The closure is called once, when the engine needs the body (not at all on a hit): so nothing is built
    /// that a hit does not use, and the arguments can still be copied for a background refresh.
    fn body(&self) -> TokenStream {
        let site = self.site();
        let key = self.key(&vec![false; self.shape.params.len()]);
        let cache = self.cache_ref();
        let ret = &self.shape.ret;
        let ret_span = self.shape.ret_span;
        let cache_none = self.options.cache_none.is_some();
        // Spanned on `cache_none`, the return type included, so that a return type that is not an `Option` is
        // reported there.
        let assert_option = self.options.cache_none.map(|span| {
            let rt = rt(span);
            let ret = respan(ret.clone(), span);
            quote_spanned!(span=> #rt::assert_returns_option::<#ret>();)
        });
        let fake_return = self.fake_return_edge();
        let block = &self.function.block;
        let rt = rt(ret_span);
        let mut policy = quote_spanned!(ret_span=> (&#rt::Probe::<#ret>::new()).policy(#cache_none));
        // `cache_if = path`: the path is coerced to `fn(&T) -> bool` where it was written, so that a function
        // of another signature is reported there.
        if let Some(path) = &self.options.cache_if {
            let span = path.span();
            let path_rt = self::rt(span);
            policy = quote_spanned!(span=> #path_rt::cache_if::<#ret, _>(#policy, #path));
        }
        // With `local = "..."` the in-process tier hands out clones: `memoize_local` needs `R: Clone`, and the
        // call is spanned on the option's value so that a return type that is not `Clone` is reported there.
        let (memoize_fn, call_span) = match self.options.local {
            Some((_, span)) => (quote_spanned!(span=> memoize_local), span),
            None => (quote_spanned!(ret_span=> memoize), ret_span),
        };
        let call_rt = self::rt(call_span);
        let background = self.background_branch();
        // `similar(arg)`: the scope's key and the text go to `memoize_similar` (the value is decoded from
        // JSON on every hit, in-process ones included). The text is taken where the argument is named, so
        // that a type that is not text is reported there.
        let (memoize_fn, similar) = match &self.similar {
            Some(similar) => {
                let scope = self.key_without(&vec![false; self.shape.params.len()], Some(&similar.arg));
                let arg = &similar.arg;
                let arg_rt = self::rt(arg.span());
                let text = quote_spanned!(arg.span()=> #arg_rt::SimilarText::similar_text(&#arg));
                (quote_spanned!(call_span=> memoize_similar), quote!(#call_rt::Similar::new(#scope, #text),))
            }
            None => (memoize_fn, TokenStream::new()),
        };
        let memoize = quote_spanned! {call_span=>
            #call_rt::#memoize_fn(
                &__PG_CACHED_SITE,
                __pg_cached_cache,
                __pg_cached_key,
                #similar
                __pg_cached_policy,
                move |__pg_cached_how: #call_rt::How| {
                    #background
                    #call_rt::Body::Here(async move {
                        #fake_return
                        #block
                    })
                },
            )
            .await
        };
        let call = quote! {
            let __pg_cached_key = #key;
            let __pg_cached_cache = #cache;
            #assert_option
            #[allow(unused_imports)]
            use #rt::{OptionKind as _, PlainKind as _, ResultKind as _};
            let __pg_cached_policy = #policy;
            #memoize
        };
        match self.tenant() {
            // `tenant = ...`: the whole call, its key included, is made inside the tenant's scope.
            Some((tenant, in_tenant)) => {
                quote!(#site #tenant #in_tenant(&__pg_cached_tenant, move || async move { #call }).await)
            }
            None => quote!(#site #call),
        }
    }

    /// With `tenant = <expr>`: `let __pg_cached_tenant: String = <expr as text>;` (owned, so that the
    /// arguments it borrows can move into the call), and the path of `in_tenant`, both spanned on the
    /// expression so that a value that is not text is reported there.
    pub(crate) fn tenant(&self) -> Option<(TokenStream, TokenStream)> {
        let expr = self.options.tenant.as_ref()?;
        let span = expr.to_token_stream().into_iter().next().map_or_else(Span::call_site, |t| t.span());
        let rt = rt(span);
        let tenant = quote_spanned! {span=>
            let __pg_cached_tenant: ::std::string::String =
                ::std::borrow::ToOwned::to_owned(#rt::TenantArg::tenant_id(&(#expr)));
        };
        Some((tenant, quote_spanned!(span=> #rt::in_tenant)))
    }

    /// Tracing's "fake return edge": the async block's type is inferred from the declared return type, so `?`
    /// and `return` in the body work, and type errors point at the return type.
    fn fake_return_edge(&self) -> TokenStream {
        let ret = &self.shape.ret;
        quote_spanned! {self.shape.ret_span=>
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
        }
    }
}

/// `::cache_runtime::__private`, spanned so that errors in a call through it point at `span`.
pub(crate) fn rt(span: Span) -> TokenStream {
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
