//! The rules for what a namespace, a tag and a TTL may be, in one place.
//!
//! `#[pg_cached]` applies them at compile time to the literals it is given (`cache-macros`), and
//! `cache-runtime` at run time to the values it is given (and, through it, the `pg-cached` command line).
//! Each rule is written once, here, as a plain function or constant that says *what* is wrong; each caller
//! words the message for its own reader (a compiler diagnostic, the reason in a `cache_runtime::CacheError`).
//!
//! Do not depend on this crate directly: its items are re-exported by `cache-runtime` where they are public
//! API (`MAX_NAMESPACE_LEN`, `MAX_TAG_CHARS`, `MAX_TAGS_PER_ENTRY`, `validate_namespace`, `validate_tag`).

mod namespace;
mod tag;
mod ttl;

pub use namespace::{namespace_problem, NamespaceProblem, MAX_NAMESPACE_LEN};
pub use tag::{
    tag_problem, TagProblem, MAX_TAGS_PER_ENTRY, MAX_TAG_BYTES, MAX_TAG_CHARS, MAX_TAG_LOCKS_PER_BATCH,
    SQL_MAX_TAG_BYTES,
};
pub use ttl::{ttl_in_range, MAX_TTL, MAX_TTL_SECS};
