//! The companions of a memoized function: `{fn}_cache_key`, `{fn}_invalidate` and `{fn}_refresh`, with
//! their doc comments.
//!
//! They reuse the generators of `expand.rs` for the site and the key, so a companion computes exactly the
//! key that the function uses. `companions = false` leaves them out (in a trait impl, where extra methods
//! are not allowed).

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::visit::Visit;
use syn::visit_mut::VisitMut;
use syn::{GenericParam, Ident, PatIdent, PatType, Receiver};

use crate::expand::rt;
use crate::plan::Plan;

impl Plan<'_> {
    /// `{fn}_cache_key`, `{fn}_invalidate` and `{fn}_refresh`, unless `companions = false`.
    pub(crate) fn companions(&self) -> TokenStream {
        if !self.options.companions {
            return TokenStream::new();
        }
        // The companions are spanned on the function's name: an error about one of them (such as "not a member
        // of trait" in a trait impl) points there.
        let span = self.function.sig.ident.span();
        let [key_doc, invalidate_doc, refresh_doc] = self.companion_docs(span);
        let cache_key = self.cache_key_companion(span, &key_doc);
        let invalidate = self.invalidate_companion(span, &invalidate_doc);
        // A stream's call runs when its stream is read, outside any scope `{fn}_refresh` could set.
        let refresh = match self.stream {
            Some(_) => TokenStream::new(),
            None => self.refresh_companion(span, &refresh_doc),
        };
        let task = self.background_task_fn();
        quote!(#cache_key #invalidate #refresh #task)
    }

    /// `fn {fn}_cache_key(<key arguments>) -> Result<String, CacheError>`.
    fn cache_key_companion(&self, span: Span, docs: &[TokenStream]) -> TokenStream {
        let rt = rt(span);
        let attrs = self.companion_attrs(docs);
        let vis = &self.function.vis;
        let name = self.companion_name("cache_key");
        let generics = &self.function.sig.generics;
        let where_clause = &generics.where_clause;
        let by_ref = self.receiver_by_ref();
        let used_by_tenant = names_in(&[self.options.tenant.as_ref()]);
        let params: Vec<&PatType> = self.key_params_and(&used_by_tenant);
        let site = self.site();
        let key = self.key(&vec![false; self.shape.params.len()]);
        // With `tenant = ...`, the key the function uses is qualified by the tenant.
        let key = match self.tenant() {
            Some((tenant, _)) => quote!({ #tenant #rt::tenant_key(&__pg_cached_tenant, #key) }),
            None => key,
        };
        quote_spanned! {span=>
            #attrs
            #vis fn #name #generics (#by_ref #(#params),*)
                -> ::core::result::Result<::std::string::String, #rt::CacheError>
                #where_clause
            {
                #site
                #key
            }
        }
    }

    /// `async fn {fn}_invalidate(<key arguments>) -> Result<bool, CacheError>`; it also takes the skipped
    /// arguments that `cache = <expr>` names.
    fn invalidate_companion(&self, span: Span, docs: &[TokenStream]) -> TokenStream {
        let rt = rt(span);
        let attrs = self.companion_attrs(docs);
        let vis = &self.function.vis;
        let name = self.companion_name("invalidate");
        let generics = &self.function.sig.generics;
        let where_clause = &generics.where_clause;
        let by_ref = self.receiver_by_ref();
        let used = names_in(&[self.options.cache.as_ref(), self.options.tenant.as_ref()]);
        let params: Vec<&PatType> = self.key_params_and(&used);
        let site = self.site();
        let key = self.key(&vec![false; self.shape.params.len()]);
        let cache = self.cache_ref();
        let invalidate = quote!(#rt::invalidate(&__PG_CACHED_SITE, __pg_cached_cache, __pg_cached_key));
        // With `tenant = ...`, the delete runs in the tenant's scope, which qualifies the key as the call did.
        let invalidate = match self.tenant() {
            Some((tenant, in_tenant)) => quote!(#tenant #in_tenant(&__pg_cached_tenant, move || #invalidate).await),
            None => quote!(#invalidate.await),
        };
        quote_spanned! {span=>
            #attrs
            #vis async fn #name #generics (#by_ref #(#params),*)
                -> ::core::result::Result<bool, #rt::CacheError>
                #where_clause
            {
                #site
                let __pg_cached_key = #key;
                let __pg_cached_cache = #cache;
                #invalidate
            }
        }
    }

    /// `async fn {fn}_refresh(<every argument>) -> R`: the function's own receiver and arguments, passed on
    /// to the function after the key is computed from them.
    fn refresh_companion(&self, span: Span, docs: &[TokenStream]) -> TokenStream {
        let rt = rt(span);
        let attrs = self.companion_attrs(docs);
        let vis = &self.function.vis;
        let name = self.companion_name("refresh");
        let sig = &self.function.sig;
        let (unsafety, generics, output) = (&sig.unsafety, &sig.generics, &sig.output);
        let where_clause = &generics.where_clause;
        let receiver = self.refresh_receiver();
        let RefreshArgs { params, args, rebind, borrowed } = self.refresh_args();
        let site = self.site();
        let key = self.key(&borrowed);
        let call = self.call_function(&args);
        let refresh = quote!(#rt::refresh(__pg_cached_key, #call));
        // With `tenant = ...`, the refresh mark is set in the tenant's scope, which qualifies the key as the
        // call does. The tenant is computed before the arguments move into the call.
        let refresh = match self.tenant() {
            Some((tenant, in_tenant)) => quote! {
                let __pg_cached_tenant = { #(#rebind)* #tenant __pg_cached_tenant };
                #in_tenant(&__pg_cached_tenant, move || #refresh).await
            },
            None => quote!(#refresh.await),
        };
        quote_spanned! {span=>
            #attrs
            #vis async #unsafety fn #name #generics (#receiver #(#params),*) #output
                #where_clause
            {
                #site
                let __pg_cached_key = {
                    #(#rebind)*
                    #key
                };
                #refresh
            }
        }
    }

    /// The arguments in the key, and those that bind one of `names` (used by an option's expression).
    fn key_params_and(&self, names: &[Ident]) -> Vec<&PatType> {
        let params = self.shape.params.iter();
        params
            .filter(|p| p.in_key() || p.bindings.iter().any(|(i, _)| names.contains(&i.unraw())))
            .map(|p| p.arg)
            .collect()
    }

    /// `{fn}_{suffix}`, spanned on the function's name.
    fn companion_name(&self, suffix: &str) -> Ident {
        let name = &self.function.sig.ident;
        format_ident!("{}_{}", name.unraw(), suffix, span = name.span())
    }

    /// A companion's doc comment, the function's `#[cfg(...)]`s, and the lints a companion never warns of.
    fn companion_attrs(&self, docs: &[TokenStream]) -> TokenStream {
        let cfgs = self.function.attrs.iter().filter(|a| a.path().is_ident("cfg"));
        let allow =
            quote!(#[allow(dead_code, unused_mut, unused_variables, clippy::needless_lifetimes, clippy::unused_self)]);
        quote!(#(#docs)* #(#cfgs)* #allow)
    }

    /// `&self,` (keeping a lifetime written as `&'a self`) for the two companions that only need the cache.
    fn receiver_by_ref(&self) -> Option<TokenStream> {
        self.shape.receiver.map(|r| match &r.reference {
            Some((and, lifetime)) => {
                let recv = &r.self_token;
                quote!(#and #lifetime #recv,)
            }
            None => quote_spanned!(r.self_token.span=> &self,),
        })
    }

    /// `{fn}_refresh`'s receiver: the function's own, except that a typed receiver (`self: Arc<Self>`) loses
    /// a `mut`, as it is only passed on.
    fn refresh_receiver(&self) -> Option<TokenStream> {
        self.shape.receiver.map(|r| match &r.reference {
            Some(_) => quote!(#r,),
            None => {
                let Receiver { attrs, self_token, colon_token, ty, .. } = r;
                quote!(#(#attrs)* #self_token #colon_token #ty,)
            }
        })
    }

    /// `{fn}_refresh` takes every argument and passes it on to the function. A plain `name: Type` keeps its
    /// name; any other pattern is received as `__pg_cached_argN` and its names are bound by reference.
    fn refresh_args(&self) -> RefreshArgs {
        let mut refresh = RefreshArgs::default();
        for (i, param) in self.shape.params.iter().enumerate() {
            let PatType { attrs, ty, .. } = param.arg;
            let arg = match param.plain_ident() {
                Some(ident) => {
                    refresh.borrowed.push(false);
                    ident.clone()
                }
                None => {
                    let arg = format_ident!("__pg_cached_arg{}", i);
                    refresh.borrowed.push(true);
                    if param.in_key() {
                        let mut pat = (*param.arg.pat).clone();
                        BindByRef.visit_pat_mut(&mut pat);
                        refresh.rebind.push(quote!(let #pat = #arg;));
                    }
                    arg
                }
            };
            refresh.params.push(quote!(#(#attrs)* #arg: #ty));
            refresh.args.push(arg);
        }
        refresh
    }

    /// A call of the function itself with `args` (after the receiver, if any), naming its generic
    /// parameters.
    fn call_function(&self, args: &[Ident]) -> TokenStream {
        let sig = &self.function.sig;
        let name = &sig.ident;
        let turbofish = {
            let names: Vec<&Ident> = sig
                .generics
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
        let call = match self.shape.receiver {
            Some(receiver) => {
                let recv = receiver.self_token;
                quote!(Self::#name #turbofish(#recv, #(#args),*))
            }
            None if self.shape.self_type => quote!(Self::#name #turbofish(#(#args),*)),
            None => quote!(#name #turbofish(#(#args),*)),
        };
        match sig.unsafety {
            Some(_) => quote!(unsafe { #call }),
            None => call,
        }
    }

    /// The doc comments of the three companions.
    fn companion_docs(&self, span: Span) -> [Vec<TokenStream>; 3] {
        let name = self.function.sig.ident.unraw().to_string();
        let link = if self.shape.self_type { format!("[`{name}`](Self::{name})") } else { format!("`{name}`") };
        let skipped: Vec<String> = self
            .shape
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
                ns = self.options.namespace.value(),
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

/// The variable names the expressions use.
fn names_in(exprs: &[Option<&syn::Expr>]) -> Vec<Ident> {
    let mut finder = NameFinder::default();
    for expr in exprs.iter().flatten() {
        finder.visit_expr(expr);
    }
    finder.names
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

/// What `{fn}_refresh` does with the function's arguments (see [`Plan::refresh_args`]).
#[derive(Default)]
struct RefreshArgs {
    /// Its own arguments, `name: Type`.
    params: Vec<TokenStream>,
    /// The names it passes on to the function.
    args: Vec<Ident>,
    /// `let <pattern with ref bindings> = __pg_cached_argN;` for each argument with a pattern in the key.
    rebind: Vec<TokenStream>,
    /// For [`Plan::key`]: whether the names each argument binds are references.
    borrowed: Vec<bool>,
}
