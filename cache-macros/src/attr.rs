//! The syntax tree of `#[pg_cached(...)]`'s arguments, and its parser.
//!
//! The options are one table, [`OPTIONS`]: each entry names an option, says how its value is written, and
//! names the field of [`Args`] that keeps it. The parser and the list of options in error messages both
//! read that table, so the two cannot disagree.
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

use crate::similar::SimilarArg;

/// The arguments of one `#[pg_cached(...)]`, as written.
#[derive(Default)]
pub(crate) struct Args {
    pub(crate) namespace: Option<LitStr>,
    pub(crate) ttl: Option<LitStr>,
    pub(crate) version: Option<LitInt>,
    pub(crate) skip: Option<Vec<Ident>>,
    pub(crate) cache: Option<Expr>,
    /// The `cache_none` key (errors about a non-`Option` return type point at it) and its value.
    pub(crate) cache_none: Option<Flag>,
    pub(crate) single_flight: Option<LitStr>,
    pub(crate) stale: Option<LitStr>,
    pub(crate) local: Option<LitStr>,
    pub(crate) companions: Option<Flag>,
    pub(crate) tags: Option<Vec<LitStr>>,
    pub(crate) stale_if_error: Option<LitStr>,
    pub(crate) cache_if: Option<syn::Path>,
    pub(crate) refresh_ahead: Option<LitStr>,
    pub(crate) background_refresh: Option<Flag>,
    /// Where the bare `stream` key was written.
    pub(crate) stream: Option<Span>,
    pub(crate) replay: Option<LitStr>,
    /// `similar(arg)` or `similar(arg, threshold = ...)`.
    pub(crate) similar: Option<SimilarArg>,
    /// Where the bare `encrypt` key was written.
    pub(crate) encrypt: Option<Span>,
    /// `tenant = <expr>`: the tenant whose scope the call runs in.
    pub(crate) tenant: Option<Expr>,
    /// Errors found while parsing that did not stop the parse.
    pub(crate) errors: Errors,
}

/// A `key = true` or `key = false` option: the key's span, and the value.
pub(crate) type Flag = (Span, LitBool);

/// One option: its name, how its value is written, and the field of [`Args`] that keeps it.
struct OptionSpec {
    name: &'static str,
    value: Value,
}

/// How an option's value is written; each kind holds the accessor of the field that keeps the value.
#[derive(Clone, Copy)]
enum Value {
    /// `= "..."`, and what to say about a value of another shape.
    Str(fn(&mut Args) -> &mut Option<LitStr>, &'static str),
    /// `= 123`, and what to say about a value of another shape.
    Int(fn(&mut Args) -> &mut Option<LitInt>, &'static str),
    /// `= true` or `= false`.
    Flag(fn(&mut Args) -> &mut Option<Flag>),
    /// `= <any expression>`.
    Expr(fn(&mut Args) -> &mut Option<Expr>),
    /// `(name, name, ...)`.
    Names(fn(&mut Args) -> &mut Option<Vec<Ident>>),
    /// `("...", "...", ...)`: string literals only.
    Strs(fn(&mut Args) -> &mut Option<Vec<LitStr>>),
    /// `= path::to::item`.
    Path(fn(&mut Args) -> &mut Option<syn::Path>),
    /// The key alone, with no value.
    Bare(fn(&mut Args) -> &mut Option<Span>),
    /// `(name)` or `(name, threshold = <number>)`: see `similar.rs`.
    Similar(fn(&mut Args) -> &mut Option<SimilarArg>),
}

/// Every option `#[pg_cached]` accepts. The parser, and the list in the "unknown option" message, both come
/// from this table.
const OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        name: "namespace",
        value: Value::Str(|args| &mut args.namespace, "a string literal, e.g. `namespace = \"retrieval\"`"),
    },
    OptionSpec { name: "ttl", value: Value::Str(|args| &mut args.ttl, "a string literal, e.g. `ttl = \"30m\"`") },
    OptionSpec {
        name: "version",
        value: Value::Int(|args| &mut args.version, "an integer literal, e.g. `version = 2`"),
    },
    OptionSpec { name: "skip", value: Value::Names(|args| &mut args.skip) },
    OptionSpec { name: "cache", value: Value::Expr(|args| &mut args.cache) },
    OptionSpec { name: "cache_none", value: Value::Flag(|args| &mut args.cache_none) },
    OptionSpec {
        name: "single_flight",
        value: Value::Str(|args| &mut args.single_flight, "a string literal: \"off\", \"process\" or \"cluster\""),
    },
    OptionSpec { name: "stale", value: Value::Str(|args| &mut args.stale, "a string literal, e.g. `stale = \"5m\"`") },
    OptionSpec { name: "local", value: Value::Str(|args| &mut args.local, "a string literal, e.g. `local = \"30s\"`") },
    OptionSpec { name: "companions", value: Value::Flag(|args| &mut args.companions) },
    OptionSpec { name: "tags", value: Value::Strs(|args| &mut args.tags) },
    OptionSpec {
        name: "stale_if_error",
        value: Value::Str(|args| &mut args.stale_if_error, "a string literal, e.g. `stale_if_error = \"1h\"`"),
    },
    OptionSpec { name: "cache_if", value: Value::Path(|args| &mut args.cache_if) },
    OptionSpec {
        name: "refresh_ahead",
        value: Value::Str(|args| &mut args.refresh_ahead, "a percentage, e.g. `refresh_ahead = \"10%\"`"),
    },
    OptionSpec { name: "background_refresh", value: Value::Flag(|args| &mut args.background_refresh) },
    OptionSpec { name: "stream", value: Value::Bare(|args| &mut args.stream) },
    OptionSpec {
        name: "replay",
        value: Value::Str(|args| &mut args.replay, "a string literal: \"as_recorded\" or \"immediate\""),
    },
    OptionSpec { name: "similar", value: Value::Similar(|args| &mut args.similar) },
    OptionSpec { name: "encrypt", value: Value::Bare(|args| &mut args.encrypt) },
    OptionSpec { name: "tenant", value: Value::Expr(|args| &mut args.tenant) },
];

/// "`namespace`, `ttl`, ... or `companions`": every option in [`OPTIONS`], for error messages.
fn option_list() -> String {
    let names: Vec<String> = OPTIONS.iter().map(|option| format!("`{}`", option.name)).collect();
    match names.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
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
    /// Parses one `key = value` (or `skip(...)`) and records it; an unknown key is reported and its value
    /// skipped, so that the options after it are still checked.
    fn parse_option(&mut self, input: ParseStream<'_>, seen: &mut Seen) -> syn::Result<()> {
        if !input.peek(Ident::peek_any) {
            return Err(input.error(format!("expected one of {}", option_list())));
        }
        let key = input.call(Ident::parse_any)?;
        match OPTIONS.iter().find(|option| key == option.name) {
            Some(option) => self.parse_value(input, option, key.span(), seen),
            None => {
                let message = format!("unknown option `{key}`; expected one of {}", option_list());
                self.errors.push(syn::Error::new(key.span(), message));
                skip_value(input)
            }
        }
    }

    /// Parses the value of `option`, whose key (at `key`) was just read, and stores it.
    fn parse_value(
        &mut self,
        input: ParseStream<'_>,
        option: &OptionSpec,
        key: Span,
        seen: &mut Seen,
    ) -> syn::Result<()> {
        let name = option.name;
        match option.value {
            Value::Str(field, expected) => {
                let value = literal(input, &mut self.errors, expected)?;
                seen.set_once(self, key, name, field, value);
            }
            Value::Int(field, expected) => {
                let value = literal(input, &mut self.errors, expected)?;
                seen.set_once(self, key, name, field, value);
            }
            Value::Flag(field) => {
                let value = literal(input, &mut self.errors, "`true` or `false`")?;
                seen.set_once(self, key, name, field, value.map(|value| (key, value)));
            }
            Value::Expr(field) => {
                let value = self.expression(input, name, key)?;
                seen.set_once(self, key, name, field, value);
            }
            Value::Names(field) => {
                let content;
                parenthesized!(content in input);
                let names = Punctuated::<Ident, Token![,]>::parse_terminated_with(&content, Ident::parse_any)?;
                seen.set_once(self, key, name, field, Some(names.into_iter().collect()));
            }
            Value::Strs(field) => {
                let content;
                parenthesized!(content in input);
                let values = Punctuated::<Expr, Token![,]>::parse_terminated(&content)?;
                let mut literals = Vec::with_capacity(values.len());
                for value in values {
                    match value {
                        Expr::Lit(syn::ExprLit { lit: syn::Lit::Str(lit), .. }) => literals.push(lit),
                        other => self.errors.push(syn::Error::new(
                            other.span(),
                            format!(
                                "`{name}(...)` takes string literals, e.g. `{name}(\"corpus\")`; for tags known \
                                     only at run time, call `cache_runtime::tag(...)` in the function's body"
                            ),
                        )),
                    }
                }
                seen.set_once(self, key, name, field, Some(literals));
            }
            Value::Bare(field) => {
                if input.peek(Token![=]) {
                    let value: Expr = {
                        input.parse::<Token![=]>()?;
                        input.parse()?
                    };
                    let message = format!("`{name}` takes no value: write `{name}` alone");
                    self.errors.push(syn::Error::new(value.span(), message));
                }
                seen.set_once(self, key, name, field, Some(key));
            }
            Value::Similar(field) => seen.set_once(self, key, name, field, Some(crate::similar::parse(input, key)?)),
            Value::Path(field) => {
                let path = match self.expression(input, name, key)? {
                    Some(Expr::Path(syn::ExprPath { path, qself: None, .. })) => Some(path),
                    Some(other) => {
                        let message = format!("expected a path to a function, e.g. `{name} = is_worth_caching`");
                        self.errors.push(syn::Error::new(other.span(), message));
                        None
                    }
                    None => None,
                };
                seen.set_once(self, key, name, field, path);
            }
        }
        Ok(())
    }

    /// `= <expression>`; without the `=`, an error at the key (the options after it are still checked).
    fn expression(&mut self, input: ParseStream<'_>, name: &str, key: Span) -> syn::Result<Option<Expr>> {
        if !input.peek(Token![=]) {
            self.errors.push(syn::Error::new(key, format!("`{name}` needs a value: write `{name} = <expression>`")));
            return Ok(None);
        }
        input.parse::<Token![=]>()?;
        input.parse::<Expr>().map(Some)
    }
}

/// Skips the value of an unknown option, `= <expression>` or `(...)`, if it has one.
fn skip_value(input: ParseStream<'_>) -> syn::Result<()> {
    if input.peek(Token![=]) {
        input.parse::<Token![=]>()?;
        input.parse::<Expr>()?;
    } else if input.peek(syn::token::Paren) {
        input.parse::<proc_macro2::Group>()?;
    }
    Ok(())
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
    /// Stores `value` in `args`' `field` the first time `name` is given; reports any later time at its key.
    /// `value` is `None` when it was malformed (already reported): the option still counts as given.
    fn set_once<T>(
        &mut self,
        args: &mut Args,
        key: Span,
        name: &'static str,
        field: fn(&mut Args) -> &mut Option<T>,
        value: Option<T>,
    ) {
        if self.0.contains(&name) {
            args.errors.push(syn::Error::new(key, format!("duplicate option `{name}`")));
        } else {
            self.0.push(name);
            *field(args) = value;
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
    use syn::LitStr;

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
            tags("corpus", "retrieval"),
            stale_if_error = "1h",
            cache_if = crate::worth_caching,
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
        assert!(args.companions.as_ref().is_some_and(|(_, b)| !b.value));
        let tags: Vec<String> = args.tags.iter().flatten().map(LitStr::value).collect();
        assert_eq!(tags, ["corpus", "retrieval"]);
        assert_eq!(args.stale_if_error.as_ref().map(|l| l.value()).as_deref(), Some("1h"));
        let cache_if = args.cache_if.as_ref().map(|p| p.to_token_stream().to_string());
        assert_eq!(cache_if.as_deref(), Some("crate :: worth_caching"));
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
                 `cache_none`, `single_flight`, `stale`, `local`, `companions`, `tags`, `stale_if_error`, `cache_if`, `refresh_ahead`, `background_refresh`, `stream`, `replay`, `similar`, `encrypt` or `tenant`",
                "duplicate option `ttl`",
                "expected an integer literal, e.g. `version = 2`",
                "expected a string literal, e.g. `namespace = \"retrieval\"`",
                "expected `true` or `false`",
                "duplicate option `cache`",
                "unknown option `frobnicate`; expected one of `namespace`, `ttl`, `version`, `skip`, `cache`, \
                 `cache_none`, `single_flight`, `stale`, `local`, `companions`, `tags`, `stale_if_error`, `cache_if`, `refresh_ahead`, `background_refresh`, `stream`, `replay`, `similar`, `encrypt` or `tenant`",
                "unknown option `flag`; expected one of `namespace`, `ttl`, `version`, `skip`, `cache`, \
                 `cache_none`, `single_flight`, `stale`, `local`, `companions`, `tags`, `stale_if_error`, `cache_if`, `refresh_ahead`, `background_refresh`, `stream`, `replay`, `similar`, `encrypt` or `tenant`",
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
        assert_eq!(
            err.as_deref(),
            Some(
                "expected one of `namespace`, `ttl`, `version`, `skip`, `cache`, `cache_none`, `single_flight`, \
                 `stale`, `local`, `companions`, `tags`, `stale_if_error`, `cache_if`, `refresh_ahead`, `background_refresh`, `stream`, `replay`, `similar`, `encrypt` or `tenant`"
            )
        );
    }

    #[test]
    fn a_keyword_is_an_unknown_option_not_a_syntax_error() {
        let args = parse(quote::quote!(type = 1, ttl = X));
        let messages = messages(args);
        assert!(messages[0].starts_with("unknown option `type`; expected one of `namespace`"), "{messages:?}");
        assert_eq!(messages[1], "expected a string literal, e.g. `ttl = \"30m\"`");
    }

    #[test]
    fn the_table_names_each_option_once() {
        let mut names: Vec<&str> = super::OPTIONS.iter().map(|option| option.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), super::OPTIONS.len());
    }

    /// The table of options in the attribute's documentation has a row for every option.
    #[test]
    fn the_documentation_lists_every_option() {
        let docs = include_str!("lib.rs");
        for option in super::OPTIONS {
            let rows = [
                format!("/// | `{} =", option.name),
                format!("/// | `{}(", option.name),
                format!("/// | `{}` |", option.name),
            ];
            assert!(
                rows.iter().any(|row| docs.contains(row.as_str())),
                "no row for `{}` in the options table of lib.rs",
                option.name
            );
        }
    }
}
