//! The `#[pg_cached]` attribute of `cache-runtime`.
//!
//! Do not depend on this crate directly: depend on `cache-runtime` and write
//! `use cache_runtime::pg_cached;`. The code this macro generates names `::cache_runtime::__private`, which
//! is not a stable API.
//!
//! One expansion goes through three stages, each in its own module: `attr.rs` parses the options as written;
//! `plan.rs` (with `signature.rs` for the function and `duration.rs` for durations) checks everything and
//! builds a [`Plan`](plan::Plan) of typed values; `expand.rs` generates the memoized function and
//! `companions.rs` its `{fn}_cache_key`, `{fn}_invalidate` and `{fn}_refresh`. Generators only read the plan.

mod attr;
mod background;
mod companions;
mod duration;
mod expand;
mod plan;
mod signature;
mod similar;
mod stream;

use proc_macro::TokenStream;
use proc_macro2::Span;
use quote::quote;

use crate::attr::{Args, Errors};
use crate::plan::Plan;
use crate::signature::parse_function;

/// Memoizes an `async fn` in PostgreSQL.
///
/// ```ignore
/// use cache_runtime::pg_cached;
///
/// #[pg_cached(namespace = "retrieval", ttl = "30m")]
/// async fn retrieve(query: &str, max_results: usize) -> Result<Vec<Doc>, MyError> {
///     // ... an expensive search ...
/// }
///
/// impl Orchestrator {
///     #[pg_cached(namespace = "answer", ttl = "2h", version = 2, skip(trace_id), cache = self.cache)]
///     async fn answer(&self, query: &str, model: &str, trace_id: Uuid) -> Answer {
///         // ... a paid model call ...
///     }
/// }
/// ```
///
/// A call computes a key from the arguments and looks it up in the cache. On a hit it returns the stored
/// value without running the body; on a miss it runs the body, stores the result, and returns it. The
/// function keeps its exact signature, so callers do not change.
///
/// # Options
///
/// All are optional. Values are literals, checked when the crate compiles; a malformed value is reported
/// at the value.
///
/// | Option | Value | Default |
/// |---|---|---|
/// | `namespace = "..."` | 1 to 64 ASCII letters, digits, `_`, `-` or `.` (no `:`). The first part of every key; use it to list or drop a function's entries in SQL. | the function's name |
/// | `ttl = "..."` | how long an entry lives: a [duration](#durations), or `"never"` | the cache's default TTL |
/// | `version = N` | a `u32` literal. Bump it when the result's meaning or shape changes: entries written under another version are never read again (they expire by their TTL). | `0` |
/// | `skip(a, b, ...)` | names of arguments left out of the key (see [The key](#the-key)) | none |
/// | `cache = <expr>` | which cache to use, an expression evaluated on each call in the function's scope, e.g. `cache = self.cache` or `cache = crate::cache()`. It may be a `PgCache`, `&PgCache`, `Arc<PgCache>`, `Option<PgCache>`, `&Option<PgCache>` or `Option<&PgCache>` (`None`: no caching for this call). | the process-wide cache |
/// | `cache_none = true` | for a function returning `Option`: cache `None` as well as `Some` | `false` |
/// | `single_flight = "..."` | `"off"`, `"process"` or `"cluster"`; see [Concurrent calls](#concurrent-calls-on-the-same-key) | `"process"` |
/// | `stale = "..."` | a [duration](#durations): stale-while-revalidate window; see [Expiry](#expiry-stale-and-local) | none |
/// | `local = "..."` | a [duration](#durations): also keep entries in this process's memory for up to this long; see [Expiry](#expiry-stale-and-local) | no in-process tier |
/// | `companions = false` | do not generate the [companion functions](#companion-functions); **required on a method of a trait impl** | `true` |
/// | `tags("...", ...)` | string literals: [tags](#tags) every entry of the function carries (1 to 200 characters, no control characters) | none |
/// | `stale_if_error = "..."` | a [duration](#durations): when the body fails, an entry expired less than this long ago is returned instead; see [Expiry](#expiry-stale-and-local) | none |
/// | `cache_if = path` | a function `fn(&T) -> bool` on the value that would be stored; `false`: return it, do not store it | store every storable value |
/// | `refresh_ahead = "N%"` | 1% to 99%: a hit on an entry with at most that share of its `ttl` left starts a refresh in the background; see [Background refreshes](#background-refreshes) | none |
/// | `background_refresh = false` | refresh stale entries in the caller that finds them, as if the function could not be called in the background; see [Background refreshes](#background-refreshes) | `true` where possible |
/// | `stream` | the function returns a stream of `Result`s: record it, store it when it ends, replay it; see [Streams](#streams) | not a stream |
/// | `similar(arg)`, `similar(arg, threshold = 0.9)` | the name of one text argument (`&str`, `String`, `&String` or `Cow<str>`) matched by meaning, and optionally the lowest cosine similarity that counts as a match, in (0, 1]; see [Semantic hits](#semantic-hits) | exact keys only; the cache's `similarity_threshold` |
/// | `tenant = <expr>` | the tenant the call works for, an expression evaluated on each call in the function's scope (text: `&str`, `String`, ...), e.g. `tenant = user.org_id.as_str()`; not a literal; see [Tenants](#tenants) | the scope of `cache_runtime::tenant`, if any |
/// | `replay = "..."` | with `stream`: `"immediate"` (replay as fast as the caller reads) or `"as_recorded"` (with the recorded gaps between chunks) | `"immediate"` |
/// | `encrypt` | encrypt the function's values at rest with the cache's keyring ([`PgCacheBuilder::encryption`](../cache_runtime/struct.PgCacheBuilder.html#method.encryption)), streams included; not with `similar(...)`, whose text and vector are stored in plain form. Without a keyring the values are not cached (logged). See docs/SECURITY.md | the cache's `encrypt_namespaces` / `encrypt_all` |
///
/// An option given twice, or an unknown option, is an error at that option. All errors in one attribute
/// are reported together.
///
/// ## Durations
///
/// Whole numbers with the units `d` (days), `h` (hours), `m` (minutes) and `s` (seconds), largest unit first,
/// each unit at most once, no spaces: `"45s"`, `"30m"`, `"2h"`, `"1d"`, `"1h30m"`, `"1d12h"`. The total
/// must be more than zero and at most 10,000 years. `ttl` also accepts `"never"`: the entry does not expire
/// (it is still replaced by `{fn}_refresh` and removed by `{fn}_invalidate`). Rejected, with the reason:
/// `"30 minutes"`, `"1.5h"`, `"0s"`, `"-1m"`, `"5x"`, `"30m1h"` (units out of order), `"1h2h"` (unit twice),
/// `""`.
///
/// # What is cached
///
/// The return type decides, by its type rather than its spelling (so `std::io::Result<T>` and other aliases
/// of `Result` count as `Result`):
///
/// - `Result<T, E>`: only `Ok` values are stored. An `Err` is returned to the caller and not cached, so the
///   next call runs the function again. `E` needs no trait.
/// - `Option<T>`: only `Some` values are stored, unless `cache_none = true`, which stores `None` too.
///   `cache_none = true` on a function that does not return an `Option` is a compile error at `cache_none`.
/// - any other type: every value is stored.
///
/// The stored value (`T` for `Result<T, E>` and `Option<T>`, otherwise the whole return type) must implement
/// `serde::Serialize` and `serde::de::DeserializeOwned`; if it does not, the error points at the return
/// type. It is stored as JSON (`jsonb`), so you can read it in SQL. A value that JSON cannot hold exactly
/// (a NaN or infinite float, for instance) is not stored, and the caller still gets it: `Some(f64::NAN)` is
/// never turned into `None`. An `impl Trait` return type is rejected: a stored value is read back as a
/// concrete type.
///
/// `cache_if = predicate` filters further: `predicate` is a `fn(&T) -> bool` (`T` as above) called on the
/// value before it is stored; when it returns `false` the value is returned but not stored, so empty
/// retrievals or refusals are computed again next time. A function of another signature is a compile error
/// at the path.
///
/// ```ignore
/// use cache_runtime::pg_cached;
///
/// fn has_results(docs: &Vec<String>) -> bool {
///     !docs.is_empty()
/// }
///
/// #[pg_cached(namespace = "retrieval", cache_if = has_results)]
/// async fn retrieve(query: String) -> Result<Vec<String>, std::io::Error> {
///     Ok(vec![])
/// }
/// ```
///
/// # Tags
///
/// An entry can carry tags, and [`PgCache::invalidate_tag`](../cache_runtime/struct.PgCache.html#method.invalidate_tag)
/// deletes every entry that carries one, in every process's tier too. An entry's tags are
///
/// - the function's static tags, `tags("corpus")`;
/// - those its body adds while it runs, with `cache_runtime::tag("doc:42")` or `cache_runtime::tags(...)`;
/// - the tags of every memoized function it calls, hit or miss: an answer built from a retrieval tagged
///   `doc:42` is tagged `doc:42` too, with no code in the answer function.
///
/// ```ignore
/// use cache_runtime::pg_cached;
///
/// #[pg_cached(namespace = "retrieval", tags("corpus"))]
/// async fn retrieve(query: String) -> Vec<u64> {
///     let ids = vec![42, 7];
///     cache_runtime::tags(ids.iter().map(|id| format!("doc:{id}")));
///     ids
/// }
///
/// #[pg_cached(namespace = "answer")]
/// async fn answer(question: String) -> String {
///     let ids = retrieve(question).await; // the answer inherits "corpus", "doc:42" and "doc:7"
///     format!("based on {ids:?}")
/// }
/// ```
///
/// # The key
///
/// A key is `"<namespace>:"` followed by 64 hex digits, a hash of:
///
/// - the namespace and the function's path (`module_path!()` and its name), and the `version`;
/// - for a method with a receiver, the `Self` type (`std::any::type_name::<Self>()`); so are two `impl`
///   blocks in one module with a method of the same name kept apart, and so are `Wrapper<A>` and
///   `Wrapper<B>`;
/// - the concrete type of each generic type parameter, and the value of each const generic parameter,
///   so that `f::<u32>` and `f::<String>` never share an entry;
/// - the concrete type of each `impl Trait` argument;
/// - every argument that is not in `skip(...)`, in order, serialized with serde. An argument with a
///   pattern, such as `(a, b): (u32, u32)` or `Point { x, y }: Point`, contributes each name it binds, in
///   order; `skip` may name any of them. A `_` binds nothing, so the body cannot see it and it is not part of
///   the key.
///
/// **`self` is not part of the key.** Two different values calling the same method with the same arguments
/// share one entry. If the result depends on something in `self` (a tenant, a user, a setting), pass it as
/// an argument, or give each its own namespace or cache. In the same way, a skipped argument must not
/// change the result: a skipped tenant id would serve one tenant's answer to another.
///
/// Each argument not skipped must implement `serde::Serialize`; otherwise the error points at that
/// argument and suggests `skip`. Serialization is stable: a `HashMap` argument gives the same key whatever
/// its iteration order, because the key sorts map entries.
///
/// **A `HashSet` argument is a compile error**, unless it is skipped. serde writes a set in its iteration
/// order, which is random (it changes from process to process, and can differ between two equal sets), so
/// equal sets would give different keys and the cache would seldom hit. Take a `BTreeSet` (or a sorted
/// `Vec`) instead, or leave the argument out of the key with `skip(...)`. The check reads the type as
/// written: a type whose last path segment is `HashSet` (`HashSet<T>`, `std::collections::HashSet<T, S>`,
/// `hashbrown::HashSet<T>`), also behind references (`&HashSet<T>`, `&'a mut HashSet<T>`). A set inside
/// another type (`Vec<HashSet<T>>`, `Option<HashSet<T>>`, a field of a struct) or under a type alias is not
/// seen: keep such values out of the key yourself.
///
/// Renaming the function or moving it to another module changes its keys: the old entries are no longer
/// read, and expire by their TTL. Type names come from `std::any::type_name`, which a new compiler version
/// may spell differently: after a toolchain upgrade, generic functions and methods may recompute their
/// entries once.
///
/// The function's identity is its module path and name, so two functions of one module with the same name
/// share keys when nothing else tells them apart. That happens in two cases, both of which need their own
/// `namespace`: functions declared inside the bodies of two other functions, and associated functions
/// *without* a receiver in two `impl` blocks (`Self` is part of the key for methods with a receiver, and for
/// associated functions only when their signature mentions `Self`).
///
/// # Expiry, `stale` and `local`
///
/// An entry is served until its `ttl` has passed (by the database's clock); after that the next call runs the
/// body again. Without `ttl`, the TTL configured on the cache applies.
///
/// With `stale = "..."`, for that long after an entry expired, callers get the expired value at once while
/// one refresh (per key, in each process; across processes with `single_flight = "cluster"`) runs the body
/// and stores the result. Where the function can be called again from a task of its own (see
/// [Background refreshes](#background-refreshes)), the refresh runs there and no caller waits for it, not even
/// the one that found the entry stale; otherwise that caller refreshes it and gets the new value. A refresh
/// that fails (an `Err`, a `None` that is not cached) leaves the expired value in place, and the next caller
/// that finds it stale tries again.
///
/// With `stale_if_error = "..."`, an entry is kept that long past its expiry without being served; if the
/// body then fails (returns an `Err`, or a `None` that is not cached), the expired value is returned instead
/// of the failure, and counted as `stale_if_error` in the stats. An LLM endpoint answering 429 or 503 then
/// degrades to slightly old answers instead of errors. The expired entry is not refreshed by it: the next
/// call tries the body again.
///
/// # Background refreshes
///
/// A background refresh calls the function again from a task of its own, with owned copies of its arguments,
/// and stores what it returns (as `{fn}_refresh` would). `stale` starts one when an entry is found expired,
/// and `refresh_ahead = "N%"` when a hit finds an entry with at most N % of its `ttl` left, so a key that is
/// read often never expires at all. The attribute decides from the signature which functions can run so:
///
/// - the function has no generic parameters, and its companions are generated (not in a trait impl);
/// - its receiver, if any, is taken by reference or by value (`&self`, `self: &Arc<Self>`, `self`), not
///   `&mut`, and its type is `Clone`;
/// - each argument is a plain name whose type is `&str` (copied into a `String`), `&[T]`, `Cow<'_, X>`,
///   `&T` or `T`, with `T` `Clone` and no `impl Trait`, `dyn`, `&mut` or lifetime inside.
///
/// A function that fails one of these (a receiver or an argument that is not `Clone` included) refreshes in
/// the caller that finds the entry stale, as before, and `refresh_ahead` does nothing for it. A function
/// that passes them must return a `Send` future and, for a method, belong to an `impl` whose type has no
/// lifetime parameter and only `'static` type parameters; if not, it does not compile, and takes
/// `background_refresh = false`.
///
/// With `local = "..."`, entries are also kept in this process's memory for up to that long (never past their
/// `ttl`), so a hit costs no round trip. Invalidations made through the cache reach every process's in-memory
/// tier; a change made to the table by hand is seen after at most that long. Hits hand out clones, so the
/// return type must also be `Clone + Send + Sync + 'static` (a compile error at the `local` value otherwise).
///
/// # Streams
///
/// With `stream`, the function is a plain `fn` (not `async`) that returns a stream of `Result<C, E>` items:
/// `impl Stream<Item = Result<C, E>>` (with any further bounds), `BoxStream<'_, Result<C, E>>` or
/// `Pin<Box<dyn Stream<Item = Result<C, E>> + ...>>`, such as an LLM answer arriving token by token. `C` must
/// be `Serialize + DeserializeOwned + Send + 'static`.
///
/// ```ignore
/// use cache_runtime::pg_cached;
/// use futures_util::stream::{self, Stream};
///
/// #[pg_cached(namespace = "answer", ttl = "1h", stream, replay = "as_recorded")]
/// fn answer(question: &str) -> impl Stream<Item = Result<String, std::io::Error>> {
///     let words: Vec<String> = question.split(' ').map(str::to_owned).collect();
///     stream::iter(words.into_iter().map(Ok))
/// }
/// ```
///
/// The body runs on every call, to build the stream, but the stream does its work only when polled:
///
/// - **Miss**: the caller reads the function's own stream, unchanged; every `Ok` chunk is recorded as it
///   passes, with its time. When the stream ends, the chunks are stored as one entry (under the same guard
///   against invalidations as every other write).
/// - **Hit**: the function's stream is dropped unpolled, and the stored chunks are replayed in order.
/// - **Nothing is stored** when an item is an `Err` (the error still reaches the caller, and the stream
///   goes on), when the caller drops the stream before its end, when the chunks together pass the cache's
///   `max_value_bytes`, when a chunk cannot be stored as JSON, or when `cache_if = path`, here a
///   `fn(&[C]) -> bool` over all the chunks, says `false` (a truncated answer, say). The next call
///   computes again.
/// - **Concurrent callers** of a cold key in one process run the stream once: the first reads it, and the
///   others attach to it, receiving the chunks it produced so far and then each one as it comes. When the
///   error type `E` implements `From<cache_runtime::StreamInterrupted>` (`String`, `std::io::Error`,
///   `Box<dyn Error + Send + Sync>` and `anyhow::Error` do), they read live, and if the first caller's
///   stream ends early (an `Err`, or dropped), a caller that had received chunks gets that conversion as
///   its last item, and one that had received none computes its own. Without the conversion a follower
///   could not report that half-way, so it waits for the whole stream and then replays it (or computes its
///   own). Across processes, with `single_flight = "cluster"`, a follower waits for the stored entry,
///   through a lease.
///
/// A stream takes `namespace`, `ttl`, `version`, `skip`, `cache`, `single_flight`, `tags`, `cache_if`,
/// `companions` and `replay`; `local`, `cache_none`, `stale`, `stale_if_error`, `refresh_ahead` and
/// `background_refresh` are compile errors. Its companions are `{fn}_cache_key` and `{fn}_invalidate`.
/// `tenant` is a compile error too: call a stream function inside `cache_runtime::tenant(id, ...)` instead.
///
/// # Tenants
///
/// With `tenant = expr`, each call runs in the scope of that tenant, as if wrapped in
/// `cache_runtime::tenant(expr, ...)`: its key is qualified by the tenant (no call for another tenant can
/// ever find its entry, whatever the arguments), its entry is stored with the tenant in its `tenant`
/// column, and the memoized calls its body makes work for the same tenant. A function without the option
/// works for the tenant of the `cache_runtime::tenant` scope it is called in, if any.
///
/// The two must agree: called inside the scope of another tenant, a call with `tenant = ...` is refused
/// (a scope never changes tenant); it then runs its body uncached, as for an invalid tenant id (empty,
/// longer than 128 characters, or holding a control character), and the error is logged and counted.
/// The companions follow the option: `{fn}_cache_key` returns the qualified key and takes the arguments
/// the expression uses; `{fn}_invalidate` and `{fn}_refresh` work in the tenant's scope.
///
/// ```ignore
/// #[pg_cached(namespace = "answer", ttl = "2h", tenant = user.org.as_str(), skip(user))]
/// async fn answer(user: &User, question: &str) -> Result<Answer, LlmError> { ... }
/// ```
///
/// # Semantic hits
///
/// With `similar(question)`, a call whose exact key misses may be answered by the entry of a call that asked
/// the same thing in other words: the stored `question` nearest in meaning, among calls whose other key
/// arguments are all equal (a different `model` or `top_k` never matches), scoring at least the threshold
/// and accepted by the lexical guard (`cache_runtime::semantic::guard`: different numbers, names or a
/// negation refuse the match).
///
/// ```ignore
/// #[pg_cached(namespace = "answer", ttl = "2h", similar(question, threshold = 0.9))]
/// async fn answer(&self, question: &str, model: &str, top_k: usize) -> Result<Answer, LlmError> { ... }
/// ```
///
/// A miss computes as usual (single flight, tags, `cache_if`, `stale` all apply) and stores the value with
/// the text and its embedding, which every invalidation of the entry removes too. The cache needs an
/// embedder (`PgCacheBuilder::embedder`); without one, or when the text cannot be embedded, the function
/// works by its exact key alone, with one warning per function. Its model's id is part of every entry's
/// scope: entries embedded by another model are never compared. docs/SEMANTIC.md has the measurements
/// behind the default threshold (0.85) and what the model gets wrong.
///
/// # Failures
///
/// The cache never changes what the function returns. If the database cannot be reached or is slow, if a
/// key cannot be built, if a stored value cannot be read back as the return type (for instance after its
/// shape changed), or if the result cannot be stored, the body runs and its result is returned; the
/// problem is logged with `tracing`. The worst case is a call that costs what it would cost without the
/// cache, plus the cache's timeout.
///
/// # Concurrent calls on the same key
///
/// With the default `single_flight = "process"`, concurrent calls in one process that miss on the same key
/// run the body once: the first call runs it, the others wait and receive the same result (a `Result` or
/// `Option` that is not cached, such as an `Err`, is not shared: each waiter then runs the body itself).
/// If the running call is cancelled (its future dropped), a waiter takes over; nobody waits forever.
/// `single_flight = "cluster"` extends this to every process sharing the database, through a lease row in
/// PostgreSQL (a holder that crashes or is cancelled blocks nobody beyond its lease). `single_flight = "off"`
/// lets every miss run the body.
///
/// # Methods and trait impls
///
/// The attribute works on free functions, inherent methods and trait-impl methods (native `async fn` in
/// traits), with any visibility, attributes and doc comments, generics, lifetimes, where-clauses, argument
/// patterns and `impl Trait` arguments. Receivers may be `&self`, `&mut self`, or a typed receiver such as
/// `self: Arc<Self>`; `self` by value is rejected, because `self` is not part of the key and a method that
/// consumes `self` usually computes its result from it.
///
/// The returned future is `Send` whenever the original one would be, so a memoized call can be spawned on a
/// multi-threaded runtime.
///
/// On a method of a **trait impl**, write `companions = false`: a trait impl cannot contain methods that
/// the trait does not declare, so the companions below cannot be generated there (the compiler would say
/// "method `..._cache_key` is not a member of trait").
///
/// An associated function with neither a receiver nor `Self` in its signature looks like a free function
/// to the attribute, whose companion `f_refresh` then calls `f` by its bare name; in an `impl` block that is
/// an error ("cannot find function `f` in this scope"). Write `companions = false` there too (and give it a
/// namespace of its own, see [The key](#the-key)), or mention `Self` in the signature.
///
/// # Companion functions
///
/// Next to `f`, with the same visibility, generics and where-clause, the attribute generates:
///
/// | Companion | Arguments | Does |
/// |---|---|---|
/// | `fn f_cache_key(..) -> Result<String, CacheError>` | the key arguments | returns the key `f` uses for these arguments: the `cache_key` column of its row |
/// | `async fn f_invalidate(..) -> Result<bool, CacheError>` | the key arguments | deletes that entry; `Ok(true)` if there was one |
/// | `async fn f_refresh(..) -> R` | all of `f`'s arguments | runs `f`'s body now without looking up the entry, stores the result over the entry (if `f` would cache it: an `Err` leaves the entry as it was), and returns it |
///
/// The *key arguments* are `f`'s arguments without the skipped ones (an argument with a pattern stays if it
/// binds at least one name that is not skipped), with the same patterns and types; `f_invalidate` also
/// takes the skipped arguments that the `cache = <expr>` expression uses. For a method, `f_cache_key` and
/// `f_invalidate` take `&self` (also when `f` takes `&mut self` or `self: Arc<Self>`: they only read the
/// cache), and `f_refresh` takes the same receiver as `f`. A generic parameter that only skipped arguments
/// use cannot be inferred by `f_cache_key`; name it with a turbofish. The companions carry the function's
/// `#[cfg(...)]` attributes, and no warning is given for a companion that is never used.
///
/// ```ignore
/// impl Orchestrator {
///     #[pg_cached(namespace = "answer", ttl = "2h", skip(trace_id), cache = self.cache)]
///     async fn answer(&self, query: &str, model: &str, trace_id: Uuid) -> Answer { /* ... */ }
/// }
///
/// let key: String = orchestrator.answer_cache_key("what is a b-tree?", "large")?;
/// let existed: bool = orchestrator.answer_invalidate("what is a b-tree?", "large").await?;
/// let fresh: Answer = orchestrator.answer_refresh("what is a b-tree?", "large", trace_id).await;
/// ```
///
/// # Compile-time errors
///
/// Reported at the offending tokens: a function that is not `async`, a `const fn`, `self` by value,
/// variadic arguments, an `impl Trait` return type, the attribute on anything but a function, an invalid
/// namespace or duration, `version` out of `u32` range, `skip` naming something that is not an argument,
/// `cache_none = true` on a function that does not return `Option`, an argument or return type that cannot
/// be serialized, a `HashSet` argument in the key, `similar(...)` naming an argument that is missing,
/// skipped or not text, a similarity threshold outside (0, 1], and an option that is unknown, given twice, or not a
/// literal where a literal is required.
///
/// # What it expands to
///
/// The body becomes, in outline:
///
/// ```ignore
/// static __PG_CACHED_SITE: Site = Site::new("answer", concat!(module_path!(), "::", "answer"), 0).ttl(/* 2h */);
/// let __pg_cached_key = /* KeyBuilder fed with Self, generics and the key arguments */;
/// let __pg_cached_cache = /* the `cache` expression, or the process-wide cache */;
/// memoize(&__PG_CACHED_SITE, __pg_cached_cache, __pg_cached_key, /* policy from the return type */,
///         async move { /* the original body */ }).await
/// ```
///
/// Generated names start with `__pg_cached_` (`__PG_CACHED_` for the static), so they cannot clash with
/// names in the body. The generated code calls `::cache_runtime::__private`, so the crate must be a
/// dependency under the name `cache_runtime`.
#[proc_macro_attribute]
pub fn pg_cached(args: TokenStream, item: TokenStream) -> TokenStream {
    let original = proc_macro2::TokenStream::from(item.clone());
    expand(args.into(), item.into())
        .unwrap_or_else(|error| {
            // The item unchanged next to the errors, so that its callers do not add errors of their own.
            let mut tokens = error.into_compile_error();
            tokens.extend(original);
            tokens
        })
        .into()
}

/// Parses the attribute's arguments and the item, checks both, and generates the memoized function and its
/// companions. Every error found is returned at once.
fn expand(args: proc_macro2::TokenStream, item: proc_macro2::TokenStream) -> syn::Result<proc_macro2::TokenStream> {
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

#[cfg(test)]
mod tests;
