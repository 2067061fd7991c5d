//! The plan of one expansion: the attribute's options checked against the function and turned into typed
//! values ([`Options`]), next to the checked signature ([`FnShape`]).
//!
//! Generators (`expand.rs`, `companions.rs`) only read a [`Plan`]; every check lives here or in
//! `signature.rs`. A new option is one field of [`Options`], one check in [`Options::new`], and the code
//! that reads it.

use proc_macro2::Span;
use syn::ext::IdentExt;
use syn::{Expr, Ident, ItemFn, LitInt, LitStr};

use cache_rules::{tag_problem, NamespaceProblem, TagProblem, MAX_NAMESPACE_LEN, MAX_TAG_CHARS};

use crate::attr::{Args, Errors, Flag};
use crate::background::Background;
use crate::duration::{self, Never, Parsed};
use crate::signature::FnShape;
use crate::similar::SimilarPlan;
use crate::stream::StreamShape;

/// Everything the generated code needs, checked: what the generators read, and all they read.
pub(crate) struct Plan<'a> {
    /// The function as written: its attributes, visibility, signature and block are kept.
    pub(crate) function: &'a ItemFn,
    pub(crate) options: Options,
    pub(crate) shape: FnShape<'a>,
    /// How a stale or nearly expired entry is refreshed in the background, when the function allows it.
    pub(crate) background: Option<Background>,
    /// With `stream`: the stream's chunk type and whether it is boxed.
    pub(crate) stream: Option<StreamShape>,
    /// `similar(arg)`: the argument matched by meaning, and the function's own threshold.
    pub(crate) similar: Option<SimilarPlan>,
}

impl<'a> Plan<'a> {
    /// Checks the function and the attribute's arguments against each other, reporting every problem in
    /// `errors`, and keeps what the generated code needs.
    pub(crate) fn new(mut args: Args, function: &'a ItemFn, errors: &mut Errors) -> Plan<'a> {
        let skip = args.skip.take().unwrap_or_default();
        let stream_span = args.stream;
        let similar_arg = args.similar.take();
        if let (Some(encrypt), Some(_)) = (args.encrypt, &similar_arg) {
            // The semantic tier stores the matched text and its vector beside the entry, in plain form.
            let message = "`encrypt` cannot be combined with `similar(...)`: the text matched by meaning and its \
                           vector are stored unencrypted; see docs/SECURITY.md";
            errors.push(syn::Error::new(encrypt, message));
        }
        let shape = FnShape::new(function, &skip, stream_span.is_some(), errors);
        let similar = similar_arg.and_then(|arg| crate::similar::check(arg, &shape, errors));
        let options = Options::new(args, &function.sig.ident, errors);
        let stream = stream_span.and_then(|span| crate::stream::check(&function.sig, span, errors));
        // A refresh in the background needs the stale window or refresh-ahead that start one, the sibling
        // function that runs it (a companion), and a signature that allows the call.
        let wanted = (options.stale.is_some() || options.refresh_ahead.is_some()) && options.background_refresh;
        let wanted = wanted && options.companions && stream_span.is_none();
        let background = wanted.then(|| Background::new(&shape, &function.sig)).flatten();
        Plan { function, options, shape, background, stream, similar }
    }
}

/// The attribute's options, each checked and in the form the generated code uses.
pub(crate) struct Options {
    /// `namespace = "..."`, or the function's name.
    pub(crate) namespace: LitStr,
    pub(crate) version: u32,
    pub(crate) ttl: Option<Parsed>,
    /// `stale = "..."`, in seconds.
    pub(crate) stale: Option<u64>,
    /// The in-process tier's max age in seconds, and where `local = "..."` was written.
    pub(crate) local: Option<(u64, Span)>,
    /// `single_flight = "..."`, and where it was written.
    pub(crate) single_flight: Option<(SingleFlight, Span)>,
    /// `tags("...")`, each checked.
    pub(crate) tags: Vec<LitStr>,
    /// `stale_if_error = "..."`, in seconds.
    pub(crate) stale_if_error: Option<u64>,
    /// `cache_if = path`.
    pub(crate) cache_if: Option<syn::Path>,
    /// `cache = <expr>`: the cache to use instead of the process-wide one.
    pub(crate) cache: Option<Expr>,
    /// The `cache_none` key's span when `cache_none = true`.
    pub(crate) cache_none: Option<Span>,
    /// Whether to generate `{fn}_cache_key`, `{fn}_invalidate` and `{fn}_refresh`.
    pub(crate) companions: bool,
    /// `refresh_ahead = "N%"`: the share of the TTL left at which a hit starts a refresh.
    pub(crate) refresh_ahead: Option<u8>,
    /// `background_refresh = false` turns background refreshes off.
    pub(crate) background_refresh: bool,
    /// `replay = "as_recorded"` (streams): replay with the recorded gaps.
    pub(crate) replay_as_recorded: bool,
    /// `encrypt`: the function's values are encrypted at rest.
    pub(crate) encrypt: bool,
    /// `tenant = <expr>`: the call runs in the scope of this tenant (`cache_runtime::tenant`).
    pub(crate) tenant: Option<Expr>,
}

impl Options {
    /// Checks every option but `skip` (which `FnShape::new` applies to the arguments), in the order of the
    /// fields, reporting each problem at the option's value.
    fn new(args: Args, function: &Ident, errors: &mut Errors) -> Options {
        let Args {
            namespace,
            ttl,
            version,
            cache,
            cache_none,
            single_flight,
            stale,
            local,
            companions,
            tags,
            stale_if_error,
            cache_if,
            refresh_ahead,
            background_refresh,
            stream,
            replay,
            encrypt,
            tenant,
            ..
        } = args;
        if stream.is_some() {
            let span = |lit: &Option<LitStr>| lit.as_ref().map(LitStr::span);
            let flag = |flag: &Option<Flag>| flag.as_ref().map(|(key, _)| *key);
            reject_with_stream(
                &[
                    ("local", span(&local)),
                    ("cache_none", flag(&cache_none)),
                    ("stale", span(&stale)),
                    ("stale_if_error", span(&stale_if_error)),
                    ("refresh_ahead", span(&refresh_ahead)),
                    ("background_refresh", flag(&background_refresh)),
                ],
                errors,
            );
        }
        let replay_as_recorded = replay.as_ref().is_some_and(|lit| checked_replay(lit, stream.is_some(), errors));
        let tenant = tenant.and_then(|expr| checked_tenant(expr, stream.is_some(), errors));
        let namespace = checked_namespace(namespace, function, errors);
        let version = checked_version(version, errors);
        let ttl = checked_duration(ttl, Never::Allowed, errors);
        let stale = checked_duration(stale, Never::Rejected, errors).and_then(seconds);
        let local_span = local.as_ref().map(LitStr::span);
        let local = checked_duration(local, Never::Rejected, errors).and_then(seconds).zip(local_span);
        let single_flight =
            single_flight.and_then(|lit| SingleFlight::parse(&lit, errors).map(|mode| (mode, lit.span())));
        let tags = checked_tags(tags.unwrap_or_default(), errors);
        let stale_if_error = checked_duration(stale_if_error, Never::Rejected, errors).and_then(seconds);
        let refresh_ahead = refresh_ahead.and_then(|lit| checked_percent(&lit, ttl.as_ref(), errors));
        Options {
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
            refresh_ahead,
            background_refresh: background_refresh.is_none_or(|(_, value)| value.value),
            replay_as_recorded,
            encrypt: encrypt.is_some(),
            tenant,
        }
    }
}

/// `tenant = <expr>`: an expression evaluated per call. A string literal is refused (it would name one
/// tenant for every call, which a namespace does better), and so is `stream` (a stream's call runs when it is
/// read, outside any scope the function could set: call it inside `cache_runtime::tenant(...)` instead).
fn checked_tenant(expr: Expr, stream: bool, errors: &mut Errors) -> Option<Expr> {
    if let Expr::Lit(syn::ExprLit { lit: syn::Lit::Str(lit), .. }) = &expr {
        errors.push(syn::Error::new(
            lit.span(),
            "`tenant` takes an expression naming the caller's tenant (e.g. `tenant = user.org_id`), not a \
             literal: a fixed tenant is the same for every call, which `namespace` expresses",
        ));
        return None;
    }
    if stream {
        errors.push(syn::Error::new(
            syn::spanned::Spanned::span(&expr),
            "`tenant` does not apply to a `stream` function; call it inside `cache_runtime::tenant(id, ...)`",
        ));
        return None;
    }
    Some(expr)
}

/// Options a memoized stream does not take, each reported where it was written.
fn reject_with_stream(given: &[(&str, Option<Span>)], errors: &mut Errors) {
    for (name, span) in given {
        if let Some(span) = span {
            let message =
                format!("`{name}` does not apply to a `stream` function; see the attribute's docs, \"Streams\"");
            errors.push(syn::Error::new(*span, message));
        }
    }
}

/// `replay = "as_recorded" | "immediate"`, with `stream` only; whether to replay with the recorded gaps.
fn checked_replay(lit: &LitStr, stream: bool, errors: &mut Errors) -> bool {
    if !stream {
        errors.push(syn::Error::new(lit.span(), "`replay` applies to `stream` functions only"));
        return false;
    }
    match lit.value().as_str() {
        "as_recorded" => true,
        "immediate" => false,
        other => {
            let message = format!("invalid replay {other:?}: write \"as_recorded\" or \"immediate\"");
            errors.push(syn::Error::new(lit.span(), message));
            false
        }
    }
}

/// `refresh_ahead = "N%"`: 1 to 99 percent of a TTL that ends (not `ttl = "never"`).
fn checked_percent(lit: &LitStr, ttl: Option<&Parsed>, errors: &mut Errors) -> Option<u8> {
    let text = lit.value();
    let percent = text.strip_suffix('%').and_then(|n| n.trim().parse::<u8>().ok()).filter(|n| (1..=99).contains(n));
    let Some(percent) = percent else {
        let message =
            format!("invalid refresh_ahead {text:?}: write a percentage of the TTL from 1% to 99%, e.g. \"10%\"");
        errors.push(syn::Error::new(lit.span(), message));
        return None;
    };
    if matches!(ttl, Some(Parsed::Never)) {
        errors.push(syn::Error::new(
            lit.span(),
            "refresh_ahead needs entries that expire, and this one has `ttl = \"never\"`",
        ));
        return None;
    }
    Some(percent)
}

/// How concurrent misses share one computation: `single_flight = "off" | "process" | "cluster"`.
#[derive(Clone, Copy)]
pub(crate) enum SingleFlight {
    Off,
    Process,
    Cluster,
}

impl SingleFlight {
    /// The mode `lit` names; another value is reported at the literal.
    fn parse(lit: &LitStr, errors: &mut Errors) -> Option<SingleFlight> {
        match lit.value().as_str() {
            "off" => Some(SingleFlight::Off),
            "process" => Some(SingleFlight::Process),
            "cluster" => Some(SingleFlight::Cluster),
            _ => {
                errors.push(syn::Error::new(lit.span(), "expected \"off\", \"process\" or \"cluster\""));
                None
            }
        }
    }

    /// The name of the runtime's `SingleFlight` variant.
    pub(crate) fn variant(self) -> &'static str {
        match self {
            SingleFlight::Off => "Off",
            SingleFlight::Process => "Process",
            SingleFlight::Cluster => "Cluster",
        }
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

/// The static tags, each reported at its literal when it breaks the tag rule (`cache_rules::tag_problem`,
/// which `cache_runtime::validate_tag` applies at run time).
fn checked_tags(tags: Vec<LitStr>, errors: &mut Errors) -> Vec<LitStr> {
    for lit in &tags {
        let problem = match tag_problem(&lit.value()) {
            None => continue,
            Some(TagProblem::Empty) => "a tag cannot be empty".to_owned(),
            Some(TagProblem::Control(c)) => {
                format!("a tag cannot contain control characters (found `{}`)", c.escape_default())
            }
            Some(TagProblem::TooLong { chars }) => {
                format!("a tag has at most {MAX_TAG_CHARS} characters; this one has {chars}")
            }
        };
        errors.push(syn::Error::new(lit.span(), format!("invalid tag: {problem}")));
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

/// Why `namespace` breaks the namespace rule (`cache_rules::namespace_problem`, which the runtime applies
/// too), worded for a diagnostic; `None` if it is valid.
fn namespace_problem(namespace: &str) -> Option<String> {
    let allowed = format!("use 1 to {MAX_NAMESPACE_LEN} ASCII letters, digits, `_`, `-` or `.`");
    let problem = cache_rules::namespace_problem(namespace)?;
    Some(match problem {
        NamespaceProblem::Empty => format!("it is empty; {allowed}"),
        NamespaceProblem::Forbidden { .. } => {
            // Always `Some` for the namespace the problem was found in.
            let c = problem.forbidden_char(namespace).unwrap_or(char::REPLACEMENT_CHARACTER);
            let why = if c == ':' { " (`:` separates the namespace from the hash in a key)" } else { "" };
            format!("`{}` is not allowed{why}; {allowed}", c.escape_default())
        }
        NamespaceProblem::TooLong { len } => format!("it is {len} characters long; {allowed}"),
    })
}
