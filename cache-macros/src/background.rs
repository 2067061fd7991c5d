//! Background refreshes (`stale`, `refresh_ahead`): whether a function can be called again from a task of
//! its own, and the code that does it.
//!
//! A stale hit is answered at once while one refresh runs elsewhere, when the function allows it. The body
//! borrows the caller's arguments, so the refresh does not run the body: it calls the function again with
//! owned copies of its arguments, from a hidden sibling function (`__pg_cached_{fn}_task`), under a refresh
//! scope. This module decides, from the signature alone, whether that call can be written:
//!
//! - no generic parameters on the function (a copy of a `T` could not be proven `'static`);
//! - a receiver by reference (`&self`, `self: &Arc<Self>`) or by value, never `&mut`;
//! - arguments that are plain names, of types `&str` (copied into a `String`), `&[T]` (into a `Vec<T>`),
//!   `Cow<'_, X>` (into `X::Owned`), `&T` or `T` (cloned), with no `impl Trait`, `dyn`, `&mut` or lifetime
//!   inside the type.
//!
//! What the signature cannot tell is left to the compiler: an argument or receiver type that is not `Clone`
//! makes the generated code give the body after all (autoref specialization in `cache_runtime::__private`,
//! see its `work.rs`), and the refresh runs in the caller as before. Two things cannot be told even so, and
//! fail to compile: a function whose future is not `Send`, and a receiver type whose impl has lifetime or
//! non-`'static` type parameters (the compiler asks for a `'static` bound). Such a function takes
//! `background_refresh = false`.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::{FnArg, GenericArgument, Ident, PathArguments, Receiver, Type, TypeReference};

use crate::expand::rt;
use crate::plan::Plan;
use crate::signature::FnShape;

/// How a function is called again in the background: its receiver and arguments, each as it is copied.
pub(crate) struct Background {
    receiver: Option<Copied>,
    params: Vec<(Ident, Copied)>,
}

/// One value, and how it is copied and passed back.
struct Copied {
    kind: Kind,
    /// The type of the copy, as the sibling function takes it.
    owned: TokenStream,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `&str`: into a `String`, passed as `&copy`.
    Str,
    /// `&[T]`: into a `Vec<T>`, passed as `&copy`.
    Slice,
    /// `Cow<'_, X>`: into `X::Owned`, passed as `Cow::Owned(copy)`.
    Cow,
    /// `&T`: a clone of `T`, passed as `&copy`.
    Ref,
    /// `T`: a clone, passed as it is.
    Value,
}

impl Background {
    /// The plan for `function`, or `None` when its signature does not allow a call from a task of its own.
    pub(crate) fn new(shape: &FnShape<'_>, sig: &syn::Signature) -> Option<Background> {
        if !sig.generics.params.is_empty() {
            return None;
        }
        let receiver = match shape.receiver {
            Some(receiver) => Some(copied_receiver(receiver)?),
            None => None,
        };
        let mut params = Vec::with_capacity(shape.params.len());
        for param in &shape.params {
            let name = param.plain_ident()?.clone();
            params.push((name, copied(&param.arg.ty)?));
        }
        // Every argument of the signature is accounted for (the receiver apart).
        let args = sig.inputs.iter().filter(|arg| matches!(arg, FnArg::Typed(_))).count();
        (args == params.len()).then_some(Background { receiver, params })
    }
}

fn copied_receiver(receiver: &Receiver) -> Option<Copied> {
    if receiver.mutability.is_some() && receiver.reference.is_some() {
        return None;
    }
    match &*receiver.ty {
        Type::Reference(TypeReference { mutability: Some(_), .. }) => None,
        Type::Reference(TypeReference { elem, .. }) => {
            plain(elem).then(|| Copied { kind: Kind::Ref, owned: elem.to_token_stream() })
        }
        by_value => plain(by_value).then(|| Copied { kind: Kind::Value, owned: by_value.to_token_stream() }),
    }
}

fn copied(ty: &Type) -> Option<Copied> {
    match ty {
        Type::Reference(TypeReference { mutability: Some(_), .. }) => None,
        Type::Reference(TypeReference { elem, .. }) => match &**elem {
            Type::Path(path) if path.qself.is_none() && path.path.is_ident("str") => {
                Some(Copied { kind: Kind::Str, owned: quote!(::std::string::String) })
            }
            Type::Slice(slice) if plain(&slice.elem) => {
                let elem = &slice.elem;
                Some(Copied { kind: Kind::Slice, owned: quote!(::std::vec::Vec<#elem>) })
            }
            elem if plain(elem) => Some(Copied { kind: Kind::Ref, owned: elem.to_token_stream() }),
            _ => None,
        },
        ty => match cow_of(ty) {
            Some(inner) => Some(Copied { kind: Kind::Cow, owned: quote!(<#inner as ::std::borrow::ToOwned>::Owned) }),
            None => plain(ty).then(|| Copied { kind: Kind::Value, owned: ty.to_token_stream() }),
        },
    }
}

/// `X` for `Cow<'_, X>` or `Cow<X>` (by the last path segment), when `X` is plain.
fn cow_of(ty: &Type) -> Option<&Type> {
    let Type::Path(path) = ty else { return None };
    let last = path.path.segments.last()?;
    let PathArguments::AngleBracketed(args) = &last.arguments else { return None };
    if last.ident != "Cow" {
        return None;
    }
    let mut types = args.args.iter().filter_map(|arg| match arg {
        GenericArgument::Type(ty) => Some(ty),
        _ => None,
    });
    types.next().filter(|inner| plain(inner) && types.next().is_none())
}

/// Whether a type names no lifetime, reference, `impl Trait` or `dyn Trait`: a copy of it can be `'static`.
fn plain(ty: &Type) -> bool {
    fn tokens_plain(tokens: TokenStream) -> bool {
        tokens.into_iter().all(|token| match token {
            proc_macro2::TokenTree::Punct(p) => p.as_char() != '&' && p.as_char() != '\'',
            proc_macro2::TokenTree::Ident(i) => i != "impl" && i != "dyn",
            proc_macro2::TokenTree::Group(g) => tokens_plain(g.stream()),
            proc_macro2::TokenTree::Literal(_) => true,
        })
    }
    tokens_plain(ty.to_token_stream())
}

impl Plan<'_> {
    /// In the body closure, before the body: asked to run elsewhere, copy the arguments and give the task
    /// made by the sibling function (or fall through to the body, when a copy or the task is not possible).
    pub(crate) fn background_branch(&self) -> TokenStream {
        let Some(background) = &self.background else {
            return quote!(let _ = __pg_cached_how;);
        };
        let rt = rt(Span::call_site());
        let mut copies: Vec<TokenStream> = Vec::new();
        let mut names: Vec<Ident> = Vec::new();
        if let Some(receiver) = &background.receiver {
            let value = match receiver.kind {
                Kind::Value => quote!(&self),
                _ => quote!(self),
            };
            copies.push(quote!((&&#rt::Own(#value)).owned()));
            names.push(format_ident!("__pg_cached_this"));
        }
        for (i, (name, copied)) in background.params.iter().enumerate() {
            copies.push(copy_expr(&rt, name, copied.kind));
            names.push(format_ident!("__pg_cached_arg{i}"));
        }
        let task_fn = self.task_fn_name();
        let call = match self.shape.self_type {
            true => quote!(Self::#task_fn(#(#names),*)),
            false => quote!(#task_fn(#(#names),*)),
        };
        quote! {
            if let #rt::How::Elsewhere = __pg_cached_how {
                #[allow(unused_imports)]
                use #rt::{NotOwned as _, Owned as _};
                if let (#(::core::option::Option::Some(#names),)*) = (#(#copies,)*) {
                    if let ::core::option::Option::Some(task) = #call {
                        return #rt::Body::Elsewhere(task);
                    }
                }
            }
        }
    }

    /// The hidden sibling `__pg_cached_{fn}_task(copies...) -> Option<Task>`: the call of the function with
    /// the copies, as a task if its future can be spawned.
    pub(crate) fn background_task_fn(&self) -> TokenStream {
        let Some(background) = &self.background else { return TokenStream::new() };
        let rt = rt(Span::call_site());
        let mut params = Vec::new();
        let mut args = Vec::new();
        if let Some(receiver) = &background.receiver {
            let owned = &receiver.owned;
            params.push(quote!(__pg_cached_this: #owned));
            args.push(pass(&format_ident!("__pg_cached_this"), receiver.kind));
        }
        for (i, (_, copied)) in background.params.iter().enumerate() {
            let (name, owned) = (format_ident!("__pg_cached_arg{i}"), &copied.owned);
            params.push(quote!(#name: #owned));
            args.push(pass(&name, copied.kind));
        }
        let name = self.task_fn_name();
        let function = &self.function.sig.ident;
        let call = match self.shape.self_type {
            true => quote!(Self::#function(#(#args),*)),
            false => quote!(#function(#(#args),*)),
        };
        let call = match self.function.sig.unsafety {
            Some(_) => quote!(unsafe { #call }),
            None => call,
        };
        quote_spanned! {self.function.sig.ident.span()=>
            #[doc(hidden)]
            #[allow(clippy::all, clippy::pedantic, non_snake_case, missing_docs, dead_code)]
            fn #name(#(#params),*) -> ::core::option::Option<#rt::Task> {
                ::core::option::Option::Some(#rt::task(async move {
                    let _ = #call.await;
                }))
            }
        }
    }

    fn task_fn_name(&self) -> Ident {
        format_ident!("__pg_cached_{}_task", self.function.sig.ident.to_string().trim_start_matches("r#"))
    }
}

/// The expression that copies argument `name`: an `Option` of the copy.
fn copy_expr(rt: &TokenStream, name: &Ident, kind: Kind) -> TokenStream {
    match kind {
        Kind::Str => quote!(::core::option::Option::Some(::std::string::String::from(#name))),
        Kind::Slice => quote!((&&#rt::OwnSlice(#name)).owned()),
        Kind::Cow => quote!(::core::option::Option::Some(::std::borrow::Cow::into_owned(
            ::std::clone::Clone::clone(&#name)
        ))),
        Kind::Ref => quote!((&&#rt::Own(#name)).owned()),
        Kind::Value => quote!((&&#rt::Own(&#name)).owned()),
    }
}

/// How the copy `name` is passed back to the function.
fn pass(name: &Ident, kind: Kind) -> TokenStream {
    match kind {
        Kind::Str | Kind::Slice | Kind::Ref => quote!(&#name),
        Kind::Cow => quote!(::std::borrow::Cow::Owned(#name)),
        Kind::Value => quote!(#name),
    }
}
