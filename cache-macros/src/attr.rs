//! The syntax tree of `#[pg_cached(...)]`'s arguments, and its parser.
//!
//! Values stay syn nodes (`LitStr`, `LitInt`, `LitBool`, `Expr`) so that every later error can point at the
//! user's tokens. Parsing reports what it can and goes on: a wrong value, a duplicate option or an unknown
//! option is recorded in [`Args::errors`] and the next option is parsed; only a syntax error that leaves
//! the parser lost (a missing `=`, a stray token) stops it.

use proc_macro2::Span;
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{parenthesized, Expr, Ident, LitBool, LitInt, LitStr, Token};

mod kw {
    syn::custom_keyword!(namespace);
    syn::custom_keyword!(ttl);
    syn::custom_keyword!(version);
    syn::custom_keyword!(skip);
    syn::custom_keyword!(cache);
    syn::custom_keyword!(cache_none);
    syn::custom_keyword!(single_flight);
    syn::custom_keyword!(stale);
    syn::custom_keyword!(local);
    syn::custom_keyword!(companions);
}

/// Every option, for the "unknown option" message.
const OPTIONS: &str = "`namespace`, `ttl`, `version`, `skip`, `cache`, `cache_none`, `single_flight`, \
                       `stale`, `local` or `companions`";

/// The arguments of one `#[pg_cached(...)]`, as written.
#[derive(Default)]
pub(crate) struct Args {
    pub(crate) namespace: Option<LitStr>,
    pub(crate) ttl: Option<LitStr>,
    pub(crate) version: Option<LitInt>,
    pub(crate) skip: Option<Vec<Ident>>,
    pub(crate) cache: Option<Expr>,
    /// The `cache_none` key (errors about a non-`Option` return type point at it) and its value.
    pub(crate) cache_none: Option<(Span, LitBool)>,
    pub(crate) single_flight: Option<LitStr>,
    pub(crate) stale: Option<LitStr>,
    pub(crate) local: Option<LitStr>,
    pub(crate) companions: Option<LitBool>,
    /// Errors found while parsing that did not stop the parse.
    pub(crate) errors: Errors,
}

impl Parse for Args {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut args = Args::default();
        let mut seen = Seen::default();
        while !input.is_empty() {
            let step = args.parse_option(input, &mut seen).and_then(|()| {
                if !input.is_empty() {
                    input.parse::<Token![,]>()?;
                }
                Ok(())
            });
            if let Err(error) = step {
                // The parser is lost; report this error together with everything found before it.
                args.errors.push(error);
                return Err(args.errors.into_error().unwrap_or_else(|| input.error("invalid arguments")));
            }
        }
        Ok(args)
    }
}

impl Args {
    /// Parses one `key = value` (or `skip(...)`) and records it.
    fn parse_option(&mut self, input: ParseStream<'_>, seen: &mut Seen) -> syn::Result<()> {
        let errors = &mut self.errors;
        let lookahead = input.lookahead1();
        if lookahead.peek(kw::namespace) {
            let key = input.parse::<kw::namespace>()?.span;
            let value = literal(input, errors, "a string literal, e.g. `namespace = \"retrieval\"`")?;
            seen.set_once(errors, key, "namespace", &mut self.namespace, value);
        } else if lookahead.peek(kw::ttl) {
            let key = input.parse::<kw::ttl>()?.span;
            let value = literal(input, errors, "a string literal, e.g. `ttl = \"30m\"`")?;
            seen.set_once(errors, key, "ttl", &mut self.ttl, value);
        } else if lookahead.peek(kw::version) {
            let key = input.parse::<kw::version>()?.span;
            let value = literal(input, errors, "an integer literal, e.g. `version = 2`")?;
            seen.set_once(errors, key, "version", &mut self.version, value);
        } else if lookahead.peek(kw::skip) {
            let key = input.parse::<kw::skip>()?.span;
            let content;
            parenthesized!(content in input);
            let names = Punctuated::<Ident, Token![,]>::parse_terminated_with(&content, Ident::parse_any)?;
            seen.set_once(errors, key, "skip", &mut self.skip, Some(names.into_iter().collect()));
        } else if lookahead.peek(kw::cache_none) {
            let key = input.parse::<kw::cache_none>()?.span;
            let value = literal(input, errors, "`true` or `false`")?;
            seen.set_once(errors, key, "cache_none", &mut self.cache_none, value.map(|v| (key, v)));
        } else if lookahead.peek(kw::cache) {
            let key = input.parse::<kw::cache>()?.span;
            input.parse::<Token![=]>()?;
            let value = input.parse::<Expr>()?;
            seen.set_once(errors, key, "cache", &mut self.cache, Some(value));
        } else if lookahead.peek(kw::single_flight) {
            let key = input.parse::<kw::single_flight>()?.span;
            let value = literal(input, errors, "a string literal: \"off\", \"process\" or \"cluster\"")?;
            seen.set_once(errors, key, "single_flight", &mut self.single_flight, value);
        } else if lookahead.peek(kw::stale) {
            let key = input.parse::<kw::stale>()?.span;
            let value = literal(input, errors, "a string literal, e.g. `stale = \"5m\"`")?;
            seen.set_once(errors, key, "stale", &mut self.stale, value);
        } else if lookahead.peek(kw::local) {
            let key = input.parse::<kw::local>()?.span;
            let value = literal(input, errors, "a string literal, e.g. `local = \"30s\"`")?;
            seen.set_once(errors, key, "local", &mut self.local, value);
        } else if lookahead.peek(kw::companions) {
            let key = input.parse::<kw::companions>()?.span;
            let value = literal(input, errors, "`true` or `false`")?;
            seen.set_once(errors, key, "companions", &mut self.companions, value);
        } else if input.peek(Ident) {
            let key: Ident = input.parse()?;
            errors.push(syn::Error::new(key.span(), format!("unknown option `{key}`; expected one of {OPTIONS}")));
            // Skip the value, so that the options after it are still checked.
            if input.peek(Token![=]) {
                input.parse::<Token![=]>()?;
                input.parse::<Expr>()?;
            } else if input.peek(syn::token::Paren) {
                input.parse::<proc_macro2::Group>()?;
            }
        } else {
            return Err(lookahead.error());
        }
        Ok(())
    }
}

/// Parses `= <literal of type T>`. A value of another shape (a constant, an expression, another kind of
/// literal) is recorded as an error at that value, which is consumed, and `Ok(None)` is returned.
fn literal<T: Parse>(input: ParseStream<'_>, errors: &mut Errors, expected: &str) -> syn::Result<Option<T>> {
    input.parse::<Token![=]>()?;
    let fork = input.fork();
    if let Ok(value) = fork.parse::<T>() {
        if fork.is_empty() || fork.peek(Token![,]) {
            input.parse::<T>()?;
            return Ok(Some(value));
        }
    }
    let value = input.parse::<Expr>()?;
    errors.push(syn::Error::new(value.span(), format!("expected {expected}")));
    Ok(None)
}

/// The options seen so far: the one generic helper that reports duplicates.
#[derive(Default)]
struct Seen(Vec<&'static str>);

impl Seen {
    /// Stores `value` in `slot` the first time `name` is given; reports any later time at its key.
    /// `value` is `None` when it was malformed (already reported): the option still counts as given.
    fn set_once<T>(
        &mut self,
        errors: &mut Errors,
        key: Span,
        name: &'static str,
        slot: &mut Option<T>,
        value: Option<T>,
    ) {
        if self.0.contains(&name) {
            errors.push(syn::Error::new(key, format!("duplicate option `{name}`")));
        } else {
            self.0.push(name);
            *slot = value;
        }
    }
}

/// Errors collected so that the user sees all of them in one build.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(error),
            None => self.0 = Some(error),
        }
    }

    pub(crate) fn append(&mut self, other: Errors) {
        if let Some(error) = other.0 {
            self.push(error);
        }
    }

    pub(crate) fn into_error(self) -> Option<syn::Error> {
        self.0
    }

    /// `Err` with every error collected, if there is any.
    pub(crate) fn finish(self) -> syn::Result<()> {
        match self.0 {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Args;
    use quote::ToTokens;

    fn parse(tokens: proc_macro2::TokenStream) -> Args {
        syn::parse2::<Args>(tokens).unwrap_or_else(|e| panic!("fatal parse error: {e}"))
    }

    fn messages(args: Args) -> Vec<String> {
        args.errors.into_error().map_or_else(Vec::new, |e| e.into_iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn parses_every_option() {
        let args = parse(quote::quote!(
            namespace = "answer",
            ttl = "2h",
            version = 2,
            skip(trace_id, other),
            cache = self.cache,
            cache_none = true,
            single_flight = "cluster",
            stale = "5m",
            local = "30s",
            companions = false,
        ));
        assert_eq!(args.namespace.as_ref().map(|l| l.value()).as_deref(), Some("answer"));
        assert_eq!(args.ttl.as_ref().map(|l| l.value()).as_deref(), Some("2h"));
        assert_eq!(args.version.as_ref().map(|l| l.to_string()).as_deref(), Some("2"));
        let skip: Vec<String> = args.skip.iter().flatten().map(|i| i.to_string()).collect();
        assert_eq!(skip, ["trace_id", "other"]);
        assert_eq!(args.cache.as_ref().map(|e| e.to_token_stream().to_string()).as_deref(), Some("self . cache"));
        assert!(args.cache_none.as_ref().is_some_and(|(_, b)| b.value));
        assert_eq!(args.single_flight.as_ref().map(|l| l.value()).as_deref(), Some("cluster"));
        assert_eq!(args.stale.as_ref().map(|l| l.value()).as_deref(), Some("5m"));
        assert_eq!(args.local.as_ref().map(|l| l.value()).as_deref(), Some("30s"));
        assert!(args.companions.as_ref().is_some_and(|b| !b.value));
        assert!(args.errors.into_error().is_none());
    }

    #[test]
    fn empty_is_fine() {
        let args = parse(quote::quote!());
        assert!(args.errors.into_error().is_none() && args.ttl.is_none());
    }

    #[test]
    fn collects_every_error() {
        let args = parse(quote::quote!(
            ttll = "1m",
            ttl = "1m",
            ttl = "2m",
            version = "2",
            namespace = NS,
            cache_none = 1,
            cache = x,
            cache = y,
            frobnicate(a, b),
            flag,
            stale = "1m" + x
        ));
        assert_eq!(
            messages(args),
            [
                "unknown option `ttll`; expected one of `namespace`, `ttl`, `version`, `skip`, `cache`, \
                 `cache_none`, `single_flight`, `stale`, `local` or `companions`",
                "duplicate option `ttl`",
                "expected an integer literal, e.g. `version = 2`",
                "expected a string literal, e.g. `namespace = \"retrieval\"`",
                "expected `true` or `false`",
                "duplicate option `cache`",
                "unknown option `frobnicate`; expected one of `namespace`, `ttl`, `version`, `skip`, `cache`, \
                 `cache_none`, `single_flight`, `stale`, `local` or `companions`",
                "unknown option `flag`; expected one of `namespace`, `ttl`, `version`, `skip`, `cache`, \
                 `cache_none`, `single_flight`, `stale`, `local` or `companions`",
                "expected a string literal, e.g. `stale = \"5m\"`",
            ]
        );
    }

    #[test]
    fn a_malformed_value_still_counts_as_given() {
        let args = parse(quote::quote!(ttl = X, ttl = "1m"));
        assert_eq!(messages(args), ["expected a string literal, e.g. `ttl = \"30m\"`", "duplicate option `ttl`"]);
    }

    #[test]
    fn syntax_errors_stop_but_keep_earlier_errors() {
        let err = syn::parse2::<Args>(quote::quote!(nope = 1, ttl "1m"))
            .err()
            .map(|e| e.into_iter().map(|e| e.to_string()).collect::<Vec<_>>());
        let err = err.unwrap_or_default();
        assert_eq!(err.len(), 2, "{err:?}");
        assert!(err[0].starts_with("unknown option `nope`"));
        assert_eq!(err[1], "expected `=`");

        let err = syn::parse2::<Args>(quote::quote!("ttl" = 1)).err().map(|e| e.to_string());
        assert!(err.unwrap_or_default().starts_with("expected one of"));
    }
}
