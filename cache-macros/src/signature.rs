//! The annotated item, checked: it must be an `async fn` with a body, and its signature gives the cache key's
//! parts (the receiver, each argument's bindings and whether `skip` names them) and the return type.
//!
//! Everything here is about the function as written; the attribute's own options are checked in `plan.rs`.
//! Each check reports into [`Errors`] and goes on, so the user sees every problem in one build.

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::{quote_spanned, ToTokens};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::visit::Visit;
use syn::{FnArg, Ident, Item, ItemFn, Pat, PatIdent, PatType, Receiver, ReturnType, Signature, TraitItemFn, Type};

use crate::attr::Errors;

/// The item must be a function with a body.
pub(crate) fn parse_function(item: TokenStream) -> syn::Result<ItemFn> {
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

/// What the function's signature gives the generated code, checked.
pub(crate) struct FnShape<'a> {
    pub(crate) receiver: Option<&'a Receiver>,
    /// Whether the key includes `Self`: for methods with a receiver, and for functions whose signature
    /// mentions `Self` (so they are in an `impl` and `Self` can be named).
    pub(crate) self_type: bool,
    pub(crate) params: Vec<Param<'a>>,
    /// The declared return type, `()` if none.
    pub(crate) ret: TokenStream,
    /// Where errors about the return type go: the return type, or the function name without one.
    pub(crate) ret_span: Span,
}

impl<'a> FnShape<'a> {
    /// Checks the function, its arguments and the names `skip` gives, reporting every problem in `errors`.
    /// `stream`: the function returns a stream (checked in `stream.rs`), so it is not `async` and its return
    /// type is an `impl Stream` or a boxed one.
    pub(crate) fn new(function: &'a ItemFn, skip: &[Ident], stream: bool, errors: &mut Errors) -> FnShape<'a> {
        let sig = &function.sig;
        reject_repeated_attribute(function, errors);
        check_async_fn(sig, stream, errors);
        let (ret, ret_span) = return_type(sig, stream, errors);
        let (receiver, mut params) = parameters(sig, errors);
        apply_skip(skip, &mut params, errors);
        reject_hash_sets(&params, errors);
        let self_type = receiver.is_some() || signature_mentions_self(sig, &params, &ret);
        FnShape { receiver, self_type, params, ret, ret_span }
    }
}

/// One argument of the function (not the receiver).
pub(crate) struct Param<'a> {
    pub(crate) arg: &'a PatType,
    /// The names its pattern binds, in order, each with whether `skip` names it.
    pub(crate) bindings: Vec<(&'a Ident, bool)>,
    /// Whether its type mentions `impl Trait`; its concrete type then goes into the key.
    pub(crate) impl_trait: bool,
}

impl Param<'_> {
    /// Whether the argument contributes to the key: it binds a name that is not skipped.
    pub(crate) fn in_key(&self) -> bool {
        self.bindings.iter().any(|(_, skipped)| !skipped)
    }

    /// `Some(ident)` for a plain `name: Type` or `mut name: Type` argument.
    pub(crate) fn plain_ident(&self) -> Option<&Ident> {
        match &*self.arg.pat {
            Pat::Ident(PatIdent { by_ref: None, subpat: None, ident, .. }) => Some(ident),
            _ => None,
        }
    }
}

// The steps of `FnShape::new`, in the order it takes them.

/// `#[pg_cached]` twice on one function would memoize the memoized function.
fn reject_repeated_attribute(function: &ItemFn, errors: &mut Errors) {
    for attr in &function.attrs {
        if attr.path().segments.last().is_some_and(|s| s.ident == "pg_cached") {
            errors.push(syn::Error::new_spanned(attr, "`#[pg_cached]` is applied more than once"));
        }
    }
}

/// The function must be an `async fn` (unless it returns a stream), neither `const` nor variadic.
fn check_async_fn(sig: &Signature, stream: bool, errors: &mut Errors) {
    if let Some(constness) = &sig.constness {
        errors.push(syn::Error::new_spanned(
            constness,
            "`#[pg_cached]` cannot be applied to a `const fn`: a memoized call reads and writes a database",
        ));
    } else if sig.asyncness.is_none() && !stream {
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

/// The declared return type (`()` if none) and where errors about it go; an `impl Trait` in it is rejected
/// (but for a stream, whose return type `stream.rs` checks).
fn return_type(sig: &Signature, stream: bool, errors: &mut Errors) -> (TokenStream, Span) {
    match &sig.output {
        ReturnType::Type(_, ty) if stream => (ty.to_token_stream(), ty.span()),
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
fn apply_skip(skip: &[Ident], params: &mut [Param<'_>], errors: &mut Errors) {
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

/// `Self`, the type of `self` written by value.
fn is_self_type(ty: &Type) -> bool {
    matches!(ty, Type::Path(p) if p.qself.is_none() && p.path.is_ident("Self"))
}

/// Whether the identifier `Self` appears anywhere in `tokens`.
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
