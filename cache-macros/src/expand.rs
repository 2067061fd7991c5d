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
    Expr, FnArg, GenericParam, Ident, Item, ItemFn, LitInt, LitStr, Pat, PatIdent, PatType, Receiver, ReturnType,
    Signature, TraitItemFn, Type,
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
    /// `tags("...")`, each checked.
    tags: Vec<LitStr>,
    stale_if_error: Option<u64>,
    /// `cache_if = path`.
    cache_if: Option<syn::Path>,
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
    /// Checks the function and the attribute's arguments against each other, reporting every problem in
    /// `errors`, and keeps what the generated code needs.
    fn new(args: Args, function: &'a ItemFn, errors: &mut Errors) -> Plan<'a> {
        let sig = &function.sig;
        reject_repeated_attribute(function, errors);
        check_async_fn(sig, errors);
        let (ret, ret_span) = return_type(sig, errors);
        let (receiver, mut params) = parameters(sig, errors);

        let Args {
            namespace,
            ttl,
            version,
            skip,
            cache,
            cache_none,
            single_flight,
            stale,
            local,
            companions,
            tags,
            stale_if_error,
            cache_if,
            ..
        } = args;
        apply_skip(skip.iter().flatten(), &mut params, errors);
        reject_hash_sets(&params, errors);
        let namespace = checked_namespace(namespace, &sig.ident, errors);
        let version = checked_version(version, errors);
        let ttl = checked_duration(ttl, Never::Allowed, errors);
        let stale = checked_duration(stale, Never::Rejected, errors).and_then(seconds);
        let local_span = local.as_ref().map(LitStr::span);
        let local = checked_duration(local, Never::Rejected, errors).and_then(seconds).zip(local_span);
        let single_flight = single_flight.and_then(|lit| single_flight_mode(&lit, errors));
        let tags = checked_tags(tags.unwrap_or_default(), errors);
        let stale_if_error = checked_duration(stale_if_error, Never::Rejected, errors).and_then(seconds);
        let self_type = receiver.is_some() || signature_mentions_self(sig, &params, &ret);

        Plan {
            function,
            namespace,
            version,
            ttl,
            stale,
            local,
            single_flight,
            tags,
            stale_if_error,
            cache_if,
            cache,
            cache_none: cache_none.and_then(|(key, value)| value.value.then_some(key)),
            companions: companions.is_none_or(|(_, value)| value.value),
            receiver,
            self_type,
            params,
            ret,
            ret_span,
        }
    }
}

// The steps of `Plan::new`, in the order it takes them.

/// `#[pg_cached]` twice on one function would memoize the memoized function.
fn reject_repeated_attribute(function: &ItemFn, errors: &mut Errors) {
    for attr in &function.attrs {
        if attr.path().segments.last().is_some_and(|s| s.ident == "pg_cached") {
            errors.push(syn::Error::new_spanned(attr, "`#[pg_cached]` is applied more than once"));
        }
    }
}

/// The function must be an `async fn`, neither `const` nor variadic.
fn check_async_fn(sig: &Signature, errors: &mut Errors) {
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
}

/// The declared return type (`()` if none) and where errors about it go; an `impl Trait` in it is rejected.
fn return_type(sig: &Signature, errors: &mut Errors) -> (TokenStream, Span) {
    match &sig.output {
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
    }
}

/// The receiver, if any, and the other arguments with the names they bind (none skipped yet); `self` by
/// value is rejected.
fn parameters<'a>(sig: &'a Signature, errors: &mut Errors) -> (Option<&'a Receiver>, Vec<Param<'a>>) {
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
    (receiver, params)
}

/// Marks the bindings that `skip(...)` names; a name that is `self` or no argument's is reported.
fn apply_skip<'n>(skip: impl Iterator<Item = &'n Ident>, params: &mut [Param<'_>], errors: &mut Errors) {
    for name in skip {
        if name == "self" {
            errors.push(syn::Error::new(name.span(), "`self` is never part of the cache key; remove it from `skip`"));
        } else if !mark_skipped(name, params, errors) {
            errors.push(no_such_parameter(name, params));
        }
    }
}

/// Marks every binding called `name` as skipped, reporting one that already is; `false` if there is none.
fn mark_skipped(name: &Ident, params: &mut [Param<'_>], errors: &mut Errors) -> bool {
    let unraw = name.unraw();
    let mut found = false;
    for (ident, skipped) in params.iter_mut().flat_map(|param| &mut param.bindings) {
        if ident.unraw() == unraw {
            if *skipped {
                errors.push(syn::Error::new(name.span(), format!("`{name}` is skipped twice")));
            }
            *skipped = true;
            found = true;
        }
    }
    found
}

/// "no parameter named `name`", with the names that `skip` could have named.
fn no_such_parameter(name: &Ident, params: &[Param<'_>]) -> syn::Error {
    let names: Vec<String> = params.iter().flat_map(|p| &p.bindings).map(|(ident, _)| format!("`{ident}`")).collect();
    let known = match names.len() {
        0 => "; the function takes no arguments that could be skipped".to_owned(),
        _ => format!("; the arguments are {}", names.join(", ")),
    };
    syn::Error::new(name.span(), format!("no parameter named `{name}`{known}"))
}

/// Rejects a key argument whose type is a `HashSet` (by its last path segment, also behind references).
/// serde writes a set in its iteration order, which is random per process, so equal sets would give
/// different keys. A `HashMap` is fine: the key encoding sorts map entries.
fn reject_hash_sets(params: &[Param<'_>], errors: &mut Errors) {
    for param in params.iter().filter(|param| param.in_key()) {
        let Some(set) = hash_set(&param.arg.ty) else { continue };
        let names: Vec<String> =
            param.bindings.iter().filter(|(_, skipped)| !skipped).map(|(ident, _)| ident.to_string()).collect();
        errors.push(syn::Error::new_spanned(
            set,
            format!(
                "a `HashSet` cannot be part of the cache key: serde writes a set in its iteration order, which is \
                 random (it changes from process to process), so equal sets would give different keys; take a \
                 `BTreeSet` (or a sorted `Vec`), or leave the argument out of the key with `skip({})`",
                names.join(", ")
            ),
        ));
    }
}

/// `ty` if it is a `HashSet` (any path whose last segment is `HashSet`), seen through references and
/// parentheses.
fn hash_set(ty: &Type) -> Option<&syn::TypePath> {
    match ty {
        Type::Reference(reference) => hash_set(&reference.elem),
        Type::Paren(paren) => hash_set(&paren.elem),
        Type::Group(group) => hash_set(&group.elem),
        Type::Path(path) if path.path.segments.last().is_some_and(|s| s.ident == "HashSet") => Some(path),
        _ => None,
    }
}

/// The `namespace` option, checked, or else the function's name (which must then be a valid namespace).
fn checked_namespace(namespace: Option<LitStr>, function: &Ident, errors: &mut Errors) -> LitStr {
    match namespace {
        Some(lit) => {
            if let Some(problem) = namespace_problem(&lit.value()) {
                errors.push(syn::Error::new(lit.span(), format!("invalid namespace: {problem}")));
            }
            lit
        }
        None => {
            let name = function.unraw().to_string();
            if let Some(problem) = namespace_problem(&name) {
                errors.push(syn::Error::new(
                    function.span(),
                    format!(
                        "the function's name is not a valid namespace ({problem}); give one with \
                         `namespace = \"...\"`"
                    ),
                ));
            }
            LitStr::new(&name, function.span())
        }
    }
}

/// The `version` option as a `u32`, `0` if absent (or invalid, which is reported).
fn checked_version(version: Option<LitInt>, errors: &mut Errors) -> u32 {
    version.map_or(0, |lit| match (lit.suffix(), lit.base10_parse::<u32>()) {
        ("" | "u32", Ok(v)) => v,
        (_, Err(e)) => {
            let why =
                if lit.base10_digits().starts_with('-') { "it cannot be negative".to_owned() } else { e.to_string() };
            errors.push(syn::Error::new(lit.span(), format!("`version` must be a `u32`: {why}")));
            0
        }
        (suffix, Ok(_)) => {
            errors.push(syn::Error::new(lit.span(), format!("`version` is a `u32`; remove the `{suffix}` suffix")));
            0
        }
    })
}

/// A duration option (`ttl`, `stale`, `local`) parsed; an invalid one is reported at its literal.
fn checked_duration(lit: Option<LitStr>, never: Never, errors: &mut Errors) -> Option<Parsed> {
    let lit = lit?;
    duration::parse(&lit.value(), never).map_err(|message| errors.push(syn::Error::new(lit.span(), message))).ok()
}

/// The static tags, each reported at its literal when it is not a valid tag (see
/// `cache_runtime::validate_tag`, whose rules these are).
fn checked_tags(tags: Vec<LitStr>, errors: &mut Errors) -> Vec<LitStr> {
    const MAX_TAG_CHARS: usize = 200;
    for lit in &tags {
        let tag = lit.value();
        let problem = if tag.is_empty() {
            Some("a tag cannot be empty".to_owned())
        } else if let Some(c) = tag.chars().find(|c| c.is_control()) {
            Some(format!("a tag cannot contain control characters (found `{}`)", c.escape_default()))
        } else if tag.chars().count() > MAX_TAG_CHARS {
            Some(format!("a tag has at most {MAX_TAG_CHARS} characters; this one has {}", tag.chars().count()))
        } else {
            None
        };
        if let Some(problem) = problem {
            errors.push(syn::Error::new(lit.span(), format!("invalid tag: {problem}")));
        }
    }
    tags
}

/// The seconds of a duration that cannot be `"never"`.
fn seconds(parsed: Parsed) -> Option<u64> {
    match parsed {
        Parsed::Secs(s) => Some(s),
        Parsed::Never => None,
    }
}

/// The `SingleFlight` variant that `single_flight = "..."` names, spanned on the literal.
fn single_flight_mode(lit: &LitStr, errors: &mut Errors) -> Option<Ident> {
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
}

/// Whether `Self` appears in the generics, the where-clause, an argument's type or the return type: the
/// function is then in an `impl` and `Self` can be named.
fn signature_mentions_self(sig: &Signature, params: &[Param<'_>], ret: &TokenStream) -> bool {
    let mut tokens = sig.generics.to_token_stream();
    sig.generics.where_clause.to_tokens(&mut tokens);
    for param in params {
        param.arg.ty.to_tokens(&mut tokens);
    }
    ret.to_tokens(&mut tokens);
    mentions_self_type(tokens)
}

// Code generation.

impl Plan<'_> {
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
        if let Some(s) = self.stale_if_error {
            let d = secs(s);
            site.extend(quote!(.stale_if_error(#d)));
        }
        if !self.tags.is_empty() {
            let tags = &self.tags;
            site.extend(quote!(.tags(&[#(#tags),*])));
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
        let fake_return = self.fake_return_edge();
        let block = &self.function.block;
        let rt = rt(ret_span);
        let mut policy = quote_spanned!(ret_span=> (&#rt::Probe::<#ret>::new()).policy(#cache_none));
        // `cache_if = path`: the path is coerced to `fn(&T) -> bool` where it was written, so that a function
        // of another signature is reported there.
        if let Some(path) = &self.cache_if {
            let span = path.span();
            let path_rt = self::rt(span);
            policy = quote_spanned!(span=> #path_rt::cache_if::<#ret, _>(#policy, #path));
        }
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

    /// Tracing's "fake return edge": the async block's type is inferred from the declared return type, so `?`
    /// and `return` in the body work, and type errors point at the return type.
    fn fake_return_edge(&self) -> TokenStream {
        let ret = &self.ret;
        quote_spanned! {self.ret_span=>
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

    /// `{fn}_cache_key`, `{fn}_invalidate` and `{fn}_refresh`, unless `companions = false`.
    fn companions(&self) -> TokenStream {
        if !self.companions {
            return TokenStream::new();
        }
        // The companions are spanned on the function's name: an error about one of them (such as "not a member
        // of trait" in a trait impl) points there.
        let span = self.function.sig.ident.span();
        let [key_doc, invalidate_doc, refresh_doc] = self.companion_docs(span);
        let cache_key = self.cache_key_companion(span, &key_doc);
        let invalidate = self.invalidate_companion(span, &invalidate_doc);
        let refresh = self.refresh_companion(span, &refresh_doc);
        quote!(#cache_key #invalidate #refresh)
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
        let params: Vec<&PatType> = self.params.iter().filter(|p| p.in_key()).map(|p| p.arg).collect();
        let site = self.site();
        let key = self.key(&vec![false; self.params.len()]);
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
        let used_by_cache = {
            let mut finder = NameFinder::default();
            if let Some(expr) = &self.cache {
                finder.visit_expr(expr);
            }
            finder.names
        };
        let params: Vec<&PatType> = self
            .params
            .iter()
            .filter(|p| p.in_key() || p.bindings.iter().any(|(i, _)| used_by_cache.contains(&i.unraw())))
            .map(|p| p.arg)
            .collect();
        let site = self.site();
        let key = self.key(&vec![false; self.params.len()]);
        let cache = self.cache_ref();
        quote_spanned! {span=>
            #attrs
            #vis async fn #name #generics (#by_ref #(#params),*)
                -> ::core::result::Result<bool, #rt::CacheError>
                #where_clause
            {
                #site
                let __pg_cached_key = #key;
                let __pg_cached_cache = #cache;
                #rt::invalidate(&__PG_CACHED_SITE, __pg_cached_cache, __pg_cached_key).await
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
                #rt::refresh(__pg_cached_key, #call).await
            }
        }
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
        self.receiver.map(|r| match &r.reference {
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
        self.receiver.map(|r| match &r.reference {
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
        for (i, param) in self.params.iter().enumerate() {
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
        let call = match self.receiver {
            Some(receiver) => {
                let recv = receiver.self_token;
                quote!(Self::#name #turbofish(#recv, #(#args),*))
            }
            None if self.self_type => quote!(Self::#name #turbofish(#(#args),*)),
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

#[cfg(test)]
mod tests;
