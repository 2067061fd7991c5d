//! `#[pg_cached(stream)]`: the check of a stream function's signature, and the body that memoizes it.
//!
//! A memoized stream function is a plain (not `async`) function returning `impl Stream<Item = Result<C, E>>`
//! (with any further bounds), `BoxStream<'_, Result<C, E>>`, or `Pin<Box<dyn Stream<Item = Result<C, E>>>>`
//! (recognized by the last path segments `Stream` and `BoxStream`). Its body still builds the stream, on every
//! call; the generated code hands it to the engine (`cache_runtime::__private::memoize_stream`) and returns
//! the engine's stream, which reads it (recording) on a miss and drops it unpolled on a hit.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{GenericArgument, PathArguments, ReturnType, Signature, Type, TypeParamBound};

use crate::attr::Errors;
use crate::expand::rt;
use crate::plan::Plan;

/// What a stream function's return type says.
pub(crate) struct StreamShape {
    /// `C` of `Result<C, E>`: the chunk type that is stored.
    pub(crate) chunk: Type,
    /// `E` of `Result<C, E>`: whether it converts from `StreamInterrupted` decides whether concurrent
    /// callers read a running stream live.
    /// (`None` for an alias such as `anyhow::Result<C>`: such callers wait for the whole stream).
    pub(crate) error: Option<Type>,
    /// Whether the stream is returned boxed (`BoxStream`, `Pin<Box<dyn Stream>>`), so the engine's stream is
    /// boxed too.
    pub(crate) boxed: bool,
}

/// Checks a stream function's signature: not `async`, returning a stream of `Result`s.
pub(crate) fn check(sig: &Signature, stream_span: Span, errors: &mut Errors) -> Option<StreamShape> {
    if let Some(asyncness) = &sig.asyncness {
        errors.push(syn::Error::new_spanned(
            asyncness,
            "a `stream` function returns its stream at once, and the stream does the waiting: remove `async`",
        ));
    }
    let ReturnType::Type(_, ty) = &sig.output else {
        let message = "a `stream` function returns `impl Stream<Item = Result<T, E>>` or \
                       `BoxStream<'_, Result<T, E>>`; this one returns nothing";
        errors.push(syn::Error::new(stream_span, message));
        return None;
    };
    let (item, boxed) = match stream_item(ty) {
        Some(found) => found,
        None => {
            errors.push(syn::Error::new_spanned(
                ty,
                "a `stream` function returns `impl Stream<Item = Result<T, E>>` or `BoxStream<'_, Result<T, E>>`",
            ));
            return None;
        }
    };
    match result_types(item) {
        Some((chunk, error)) => Some(StreamShape { chunk: chunk.clone(), error: error.cloned(), boxed }),
        None => {
            errors.push(syn::Error::new_spanned(
                item,
                "a memoized stream's items are `Result<T, E>`: the `Ok` chunks are stored, an `Err` stops the \
                 recording",
            ));
            None
        }
    }
}

/// The `Item` of a stream return type, and whether it is boxed.
fn stream_item(ty: &Type) -> Option<(&Type, bool)> {
    match ty {
        Type::ImplTrait(impl_trait) => Some((item_of_bounds(impl_trait.bounds.iter())?, false)),
        Type::Path(path) => {
            let last = path.path.segments.last()?;
            let PathArguments::AngleBracketed(args) = &last.arguments else { return None };
            let types: Vec<&Type> = args
                .args
                .iter()
                .filter_map(|a| match a {
                    GenericArgument::Type(t) => Some(t),
                    _ => None,
                })
                .collect();
            match (last.ident.to_string().as_str(), types.as_slice()) {
                ("BoxStream", [item]) => Some((*item, true)),
                ("Pin", [Type::Path(inner)]) => {
                    let boxed = inner.path.segments.last()?;
                    let PathArguments::AngleBracketed(args) = &boxed.arguments else { return None };
                    let Some(GenericArgument::Type(Type::TraitObject(object))) = args.args.first() else { return None };
                    (boxed.ident == "Box").then_some(())?;
                    Some((item_of_bounds(object.bounds.iter())?, true))
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// `T` of the `Stream<Item = T>` bound among `bounds`.
fn item_of_bounds<'a>(bounds: impl Iterator<Item = &'a TypeParamBound>) -> Option<&'a Type> {
    bounds
        .filter_map(|bound| match bound {
            TypeParamBound::Trait(trait_bound) => trait_bound.path.segments.last(),
            _ => None,
        })
        .filter(|segment| segment.ident == "Stream")
        .find_map(|segment| {
            let PathArguments::AngleBracketed(args) = &segment.arguments else { return None };
            args.args.iter().find_map(|arg| match arg {
                GenericArgument::AssocType(assoc) if assoc.ident == "Item" => Some(&assoc.ty),
                _ => None,
            })
        })
}

/// `T` and `E` of `Result<T, E>` (by its last path segment; no `E` in an alias such as `io::Result<T>`).
fn result_types(ty: &Type) -> Option<(&Type, Option<&Type>)> {
    let Type::Path(path) = ty else { return None };
    let last = path.path.segments.last()?;
    let PathArguments::AngleBracketed(args) = &last.arguments else { return None };
    if last.ident != "Result" {
        return None;
    }
    let mut types = args.args.iter().filter_map(|arg| match arg {
        GenericArgument::Type(t) => Some(t),
        _ => None,
    });
    match (types.next(), types.next(), types.next()) {
        (Some(ok), error, None) => Some((ok, error)),
        _ => None,
    }
}

impl Plan<'_> {
    /// The body of a memoized stream function.
    pub(crate) fn stream_body(&self, shape: &StreamShape) -> TokenStream {
        let site = self.site();
        let key = self.key(&vec![false; self.shape.params.len()]);
        let cache = self.cache_ref();
        let block = &self.function.block;
        let chunk = &shape.chunk;
        let rt = rt(Span::call_site());
        let live = match &shape.error {
            Some(error) => quote! {{
                use #rt::{InterruptInto as _, NoInterrupt as _};
                (&#rt::Interrupt::<#error>::new()).interruption()
            }},
            None => quote!(::core::option::Option::None),
        };
        // `cache_if = path` over the whole stream's chunks: coerced where it was written, so that a function of
        // another signature is reported there.
        let keep = match &self.options.cache_if {
            Some(path) => {
                let span = path.span();
                quote_spanned!(span=> ::core::option::Option::Some(#path as fn(&[#chunk]) -> bool))
            }
            None => quote!(::core::option::Option::None),
        };
        // The body runs now, as it would without the attribute, to build the stream (a closure called at once,
        // so that a `return` in it returns the stream); the engine polls it only on a miss. A boxed stream's
        // type is written on the closure, so that each `return` coerces to it as it would in the function (an
        // `impl Stream` cannot be written there, and needs no coercion: every return has the one type).
        let ret = match (&self.function.sig.output, shape.boxed) {
            (ReturnType::Type(arrow, ty), true) => quote!(#arrow #ty),
            _ => TokenStream::new(),
        };
        // Spanned on the chunk type, so that a chunk that is not `Serialize + DeserializeOwned` is reported there.
        let memoize_stream = {
            let rt = crate::expand::rt(chunk.span());
            quote_spanned!(chunk.span()=> #rt::memoize_stream::<#chunk, _, _>)
        };
        // `similar(arg)`: the scope's key and the text, taken before the body's closure moves the arguments.
        let similar = match &self.similar {
            Some(similar) => {
                let scope = self.key_without(&vec![false; self.shape.params.len()], Some(&similar.arg));
                let arg = &similar.arg;
                let arg_rt = crate::expand::rt(arg.span());
                let text = quote_spanned!(arg.span()=> #arg_rt::SimilarText::similar_text(&#arg));
                quote!(::core::option::Option::Some(#rt::Similar::new(#scope, #text)))
            }
            None => quote!(::core::option::Option::None),
        };
        let call = quote! {
            #memoize_stream(
                &__PG_CACHED_SITE,
                __pg_cached_cache,
                __pg_cached_key,
                __pg_cached_keep,
                __pg_cached_live,
                __pg_cached_similar,
                (move || #ret #block)(),
            )
        };
        let call = if shape.boxed { quote!(::std::boxed::Box::pin(#call)) } else { call };
        quote! {
            #site
            let __pg_cached_key = #key;
            let __pg_cached_cache = #cache;
            let __pg_cached_keep: ::core::option::Option<fn(&[#chunk]) -> bool> = #keep;
            let __pg_cached_live = #live;
            let __pg_cached_similar = #similar;
            #call
        }
    }
}
