//! `similar(arg)` and `similar(arg, threshold = 0.9)`: one text argument matched by meaning.
//!
//! Parsed here (the option's own syntax), checked here against the function (the argument exists, is kept in
//! the key, and is text), and read by `expand.rs`. Every error points at the user's tokens: the argument's
//! name in the option, the argument's type in the signature, or the threshold.

use proc_macro2::Span;
use syn::ext::IdentExt;
use syn::parse::ParseStream;
use syn::{parenthesized, GenericArgument, Ident, Lit, PathArguments, Token, Type};

use crate::attr::Errors;
use crate::signature::FnShape;

/// `similar(...)` as written: the argument it names and the threshold, if given.
pub(crate) struct SimilarArg {
    pub(crate) arg: Ident,
    pub(crate) threshold: Option<Lit>,
}

/// `similar(...)`, checked: the argument matched by meaning, and the function's own threshold, if any.
pub(crate) struct SimilarPlan {
    pub(crate) arg: Ident,
    pub(crate) threshold: Option<f32>,
}

/// Parses `(name)` or `(name, threshold = <number>)` after the `similar` key at `key`.
pub(crate) fn parse(input: ParseStream<'_>, key: Span) -> syn::Result<SimilarArg> {
    let content;
    parenthesized!(content in input);
    if content.is_empty() {
        return Err(syn::Error::new(
            key,
            "`similar(...)` names the text argument matched by meaning, e.g. `similar(question)`",
        ));
    }
    let arg = content.call(Ident::parse_any)?;
    let mut threshold = None;
    while content.peek(Token![,]) {
        content.parse::<Token![,]>()?;
        if content.is_empty() {
            break;
        }
        let name = content.call(Ident::parse_any)?;
        if name != "threshold" {
            let message = format!("unknown `similar` option `{name}`; expected `threshold = <number in (0, 1]>`");
            return Err(syn::Error::new(name.span(), message));
        }
        content.parse::<Token![=]>()?;
        let value: Lit = content.parse()?;
        if threshold.replace(value).is_some() {
            return Err(syn::Error::new(name.span(), "duplicate option `threshold`"));
        }
    }
    Ok(SimilarArg { arg, threshold })
}

/// Checks `similar` against the function (a plain or a `stream` function alike).
pub(crate) fn check(similar: SimilarArg, shape: &FnShape<'_>, errors: &mut Errors) -> Option<SimilarPlan> {
    let threshold = similar.threshold.as_ref().and_then(|lit| checked_threshold(lit, errors));
    let name = &similar.arg;
    let Some(param) = shape.params.iter().find(|param| param.plain_ident() == Some(name)) else {
        let message = format!(
            "`similar({name})`: the function has no argument `{name}` (it must be a plain `{name}: <text type>` argument)"
        );
        errors.push(syn::Error::new(name.span(), message));
        return None;
    };
    if !param.in_key() {
        let message = format!("`{name}` is skipped: an argument matched by meaning cannot be left out of the key");
        errors.push(syn::Error::new(name.span(), message));
        return None;
    }
    if !is_text(&param.arg.ty) {
        let message = format!(
            "`similar({name})` matches a text by meaning: `{name}` must be `&str`, `String`, `&String` or `Cow<str>`"
        );
        errors.push(syn::Error::new_spanned(&param.arg.ty, message));
        return None;
    }
    if similar.threshold.is_some() && threshold.is_none() {
        return None;
    }
    Some(SimilarPlan { arg: similar.arg, threshold })
}

/// `threshold = <number>`: a float or integer literal in (0, 1].
fn checked_threshold(lit: &Lit, errors: &mut Errors) -> Option<f32> {
    let value = match lit {
        Lit::Float(f) => f.base10_parse::<f64>().ok(),
        Lit::Int(i) => i.base10_parse::<f64>().ok(),
        _ => None,
    };
    let Some(value) = value else {
        errors.push(syn::Error::new(lit.span(), "expected a number in (0, 1], e.g. `threshold = 0.9`"));
        return None;
    };
    if !(value > 0.0 && value <= 1.0) {
        let message = format!("the similarity threshold must be in (0, 1] (a cosine similarity), got {value}");
        errors.push(syn::Error::new(lit.span(), message));
        return None;
    }
    Some(value as f32)
}

/// `&str`, `String`, `&String` or `Cow<str>`, by the last segment of the path (also `&'a str`,
/// `std::borrow::Cow<'_, str>`, `alloc::string::String`).
fn is_text(ty: &Type) -> bool {
    match ty {
        Type::Reference(r) if r.mutability.is_none() => is_str(&r.elem) || is_string(&r.elem),
        Type::Paren(p) => is_text(&p.elem),
        Type::Group(g) => is_text(&g.elem),
        Type::Path(p) if p.qself.is_none() => {
            let Some(last) = p.path.segments.last() else { return false };
            match &last.arguments {
                PathArguments::None => last.ident == "String",
                PathArguments::AngleBracketed(args) if last.ident == "Cow" => {
                    args.args.iter().any(|arg| matches!(arg, GenericArgument::Type(t) if is_str(t)))
                }
                _ => false,
            }
        }
        _ => false,
    }
}

fn is_str(ty: &Type) -> bool {
    matches!(ty, Type::Path(p) if p.qself.is_none() && p.path.is_ident("str"))
}

fn is_string(ty: &Type) -> bool {
    is_text(ty) && !matches!(ty, Type::Reference(_))
}

#[cfg(test)]
mod tests {
    use super::is_text;

    #[test]
    fn text_types_are_recognised() {
        for ty in ["&str", "&'a str", "String", "&String", "Cow<str>", "Cow<'_, str>", "std::borrow::Cow<'a, str>"] {
            assert!(is_text(&syn::parse_str(ty).unwrap()), "{ty}");
        }
        for ty in ["usize", "&[u8]", "&mut str", "Vec<String>", "Cow<[u8]>", "Option<String>", "&&str", "str"] {
            assert!(!is_text(&syn::parse_str(ty).unwrap()), "{ty}");
        }
    }
}
