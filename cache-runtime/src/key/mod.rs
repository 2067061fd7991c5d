//! Stable cache keys: `namespace:<64 hex digits of SHA-256>`.
//!
//! A key is the namespace, a colon, and the SHA-256 of a canonical encoding of the arguments (see
//! `canonical.rs`). The encoding depends only on the serde data model, so the same arguments give the same
//! key in every process, build and platform. Keys are always 65 to 129 characters long, well inside the
//! `VARCHAR(500)` column, whatever the arguments' size.
//!
//! Also the rules every key obeys before any I/O ([`check_key`]), the namespace a key belongs to, and the
//! 64-bit hash that notifications and shard routing use. A leaf module.

pub(crate) mod canonical;

use crate::error::CacheError;
use canonical::EncodeError;
use serde::Serialize;
use sha2::{Digest, Sha256};

#[doc(inline)]
pub use cache_rules::MAX_NAMESPACE_LEN;

/// Where the key format changes incompatibly, this changes, so old entries are abandoned instead of misread.
const KEY_FORMAT: &str = "pg_cached/key/v1";
const FUNCTION_FORMAT: &str = "pg_cached/fn/v1";

/// Checks a namespace: 1 to 64 characters from `A-Z a-z 0-9 _ - .` (the rule, written once for the attribute
/// and the runtime, is `cache_rules::namespace_problem`).
///
/// It is a `const fn` so that `cache_key!` and `#[pg_cached]` can reject a bad literal at compile time.
pub const fn namespace_problem(namespace: &str) -> Option<&'static str> {
    match cache_rules::namespace_problem(namespace) {
        Some(problem) => Some(problem.reason()),
        None => None,
    }
}

/// Validates a namespace at run time.
pub fn validate_namespace(namespace: &str) -> Result<(), CacheError> {
    match namespace_problem(namespace) {
        None => Ok(()),
        Some(reason) => Err(CacheError::InvalidNamespace { namespace: namespace.to_owned(), reason }),
    }
}

/// The longest key the `cache_key VARCHAR(500)` column holds, in characters.
pub const MAX_KEY_CHARS: usize = 500;

/// Checks a key as every operation does before any I/O, for tools that take keys from people: not empty, no
/// NUL character, at most [`MAX_KEY_CHARS`] characters.
///
/// ```
/// assert!(cache_runtime::validate_key("retrieval:abc").is_ok());
/// assert!(cache_runtime::validate_key("a\0b").is_err());
/// ```
///
/// # Errors
/// [`CacheError::InvalidKey`] or [`CacheError::KeyTooLong`].
pub fn validate_key(key: &str) -> Result<(), CacheError> {
    check_key(key)
}

/// Checks a key before any I/O: no NUL (PostgreSQL text cannot hold it), not empty, at most 500 characters
/// (longer keys would fail or, with a cast, be truncated into collisions).
pub(crate) fn check_key(key: &str) -> Result<(), CacheError> {
    if key.is_empty() {
        return Err(CacheError::InvalidKey { reason: "the key is empty".into() });
    }
    if key.contains('\0') {
        return Err(CacheError::InvalidKey { reason: "the key contains a NUL character".into() });
    }
    // Byte length bounds character count from above: only count characters when it could matter.
    if key.len() > MAX_KEY_CHARS {
        let chars = key.chars().count();
        if chars > MAX_KEY_CHARS {
            return Err(CacheError::KeyTooLong { chars, max: MAX_KEY_CHARS });
        }
    }
    Ok(())
}

/// A stable 64-bit hash of a key, the same in every process and build (FNV-1a).
pub(crate) fn key_hash(key: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The namespace of a key: what comes before the first `:`. Keys without one share the namespace "", so
/// that counters stay one per namespace instead of growing with every distinct plain key.
pub(crate) fn namespace_of(key: &str) -> &str {
    key.split_once(':').map_or("", |(ns, _)| ns)
}

/// Builds one fingerprint. Used by [`cache_key!`](crate::cache_key) and by code that `#[pg_cached]` generates.
#[derive(Debug, Clone)]
#[doc(hidden)]
pub struct KeyBuilder {
    namespace: &'static str,
    hasher: Sha256,
    error: Option<String>,
}

/// Tags that keep the different kinds of input apart inside one hash.
mod part {
    pub const POSITIONAL: u8 = b'P';
    pub const NAMED: u8 = b'N';
    pub const SELF_TYPE: u8 = b'Y';
    pub const TYPE_PARAM: u8 = b'G';
    pub const ARG_TYPE: u8 = b'A';
}

impl KeyBuilder {
    /// Starts a key for `cache_key!`: only the namespace and the arguments count.
    pub fn for_namespace(namespace: &'static str) -> Self {
        let mut builder = KeyBuilder::start(namespace, KEY_FORMAT);
        builder.check_namespace();
        builder
    }

    /// Starts a key for one memoized function: its identity and version count too.
    pub(crate) fn for_function(namespace: &'static str, function: &'static str, version: u32) -> Self {
        let mut builder = KeyBuilder::start(namespace, FUNCTION_FORMAT);
        builder.text(function);
        builder.hasher.update(version.to_le_bytes());
        builder.check_namespace();
        builder
    }

    fn start(namespace: &'static str, format: &str) -> Self {
        let mut builder = KeyBuilder { namespace, hasher: Sha256::new(), error: None };
        builder.text(format);
        builder.text(namespace);
        builder
    }

    fn check_namespace(&mut self) {
        if let Some(reason) = namespace_problem(self.namespace) {
            self.error.get_or_insert_with(|| format!("invalid namespace {:?}: {reason}", self.namespace));
        }
    }

    fn text(&mut self, s: &str) {
        self.hasher.update((s.len() as u64).to_le_bytes());
        self.hasher.update(s.as_bytes());
    }

    fn value<T: Serialize + ?Sized>(&mut self, value: &T) {
        if let Err(err) = canonical::encode(&mut self.hasher, value) {
            let msg = match err {
                EncodeError::Custom(msg) | EncodeError::Unsupported(msg) => msg,
            };
            self.error.get_or_insert(msg);
        }
    }

    /// Adds a positional argument.
    pub fn positional<T: Serialize + ?Sized>(&mut self, value: &T) {
        self.hasher.update([part::POSITIONAL]);
        self.value(value);
    }

    /// Adds a named argument; the name is part of the key.
    pub fn named<T: Serialize + ?Sized>(&mut self, name: &str, value: &T) {
        self.hasher.update([part::NAMED]);
        self.text(name);
        self.value(value);
    }

    /// Adds the `Self` type of a method.
    pub fn self_type<T: ?Sized>(&mut self) {
        self.hasher.update([part::SELF_TYPE]);
        self.text(std::any::type_name::<T>());
    }

    /// Adds one generic type parameter's concrete type.
    pub fn type_param<T: ?Sized>(&mut self) {
        self.hasher.update([part::TYPE_PARAM]);
        self.text(std::any::type_name::<T>());
    }

    /// Adds the concrete type of an `impl Trait` argument.
    pub fn type_of_val<T: ?Sized>(&mut self, _value: &T) {
        self.hasher.update([part::ARG_TYPE]);
        self.text(std::any::type_name::<T>());
    }

    /// The finished key, or the first reason it could not be built.
    pub fn finish(self) -> Result<String, CacheError> {
        if let Some(reason) = self.error {
            return Err(CacheError::InvalidKey { reason: format!("an argument cannot be fingerprinted: {reason}") });
        }
        let digest = self.hasher.finalize();
        let mut key = String::with_capacity(self.namespace.len() + 1 + 64);
        key.push_str(self.namespace);
        key.push(':');
        for byte in digest {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            key.push(char::from(HEX[usize::from(byte >> 4)]));
            key.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
        Ok(key)
    }

    /// The finished key as a plain `String`, for `cache_key!`. When an argument could not be fingerprinted
    /// (its `Serialize` impl failed) the result holds a NUL character: every store operation rejects such a
    /// key with [`CacheError::InvalidKey`], so it can never hit another call's entry.
    pub fn finish_string(self) -> String {
        let namespace = self.namespace;
        self.finish().unwrap_or_else(|err| format!("{namespace}:\0unfingerprintable: {err}"))
    }
}

/// Builds a cache key from a namespace and arguments: `"namespace:<sha-256 hex>"`.
///
/// Arguments are anything that implements `serde::Serialize`, given positionally or as `name = value` (the
/// name is then part of the key). The namespace must be a constant expression (a literal or a `const`); an
/// invalid namespace is a compile-time error.
///
/// **Sets.** A `HashSet` argument gives different keys for equal sets, because serde writes a set in its
/// iteration order, which is random per process (a `HashMap` is fine: the key encoding sorts its entries).
/// Pass a `BTreeSet` or a sorted `Vec` instead. `cache_key!` cannot see argument types, so unlike
/// `#[pg_cached]` it does not reject a `HashSet` at compile time.
///
/// ```
/// use cache_runtime::cache_key;
/// let query = "rust async";
/// let a: String = cache_key!("retrieval", query, 5);
/// let b: String = cache_key!("answer", query = query, model = "gpt-4");
/// assert!(a.starts_with("retrieval:") && a.len() == "retrieval:".len() + 64);
/// assert_ne!(cache_key!("answer", query = query), cache_key!("answer", q = query));
/// // Length-prefixed: ("ab", "c") and ("a", "bc") are different keys.
/// assert_ne!(cache_key!("k", "ab", "c"), cache_key!("k", "a", "bc"));
/// ```
///
/// ```compile_fail
/// // Namespaces are checked at compile time.
/// let k = cache_runtime::cache_key!("bad namespace!", 1);
/// ```
#[macro_export]
macro_rules! cache_key {
    ($namespace:expr $(,)?) => {{
        const __PG_CACHED_NS: &str = $crate::__private::check_namespace($namespace);
        $crate::__private::KeyBuilder::for_namespace(__PG_CACHED_NS).finish_string()
    }};
    ($namespace:expr, $($args:tt)+) => {{
        const __PG_CACHED_NS: &str = $crate::__private::check_namespace($namespace);
        let mut __pg_cached_key = $crate::__private::KeyBuilder::for_namespace(__PG_CACHED_NS);
        $crate::__cache_key_args!(__pg_cached_key; $($args)+);
        __pg_cached_key.finish_string()
    }};
}

#[doc(hidden)]
#[macro_export]
macro_rules! __cache_key_args {
    ($builder:ident; ) => {};
    ($builder:ident; $name:ident = $value:expr $(, $($rest:tt)*)?) => {
        $builder.named(::core::stringify!($name), &$value);
        $( $crate::__cache_key_args!($builder; $($rest)*); )?
    };
    ($builder:ident; $value:expr $(, $($rest:tt)*)?) => {
        $builder.positional(&$value);
        $( $crate::__cache_key_args!($builder; $($rest)*); )?
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashMap};

    #[test]
    fn keys_are_checked_before_io() {
        assert!(check_key(&"k".repeat(500)).is_ok());
        assert!(matches!(check_key(&"k".repeat(501)), Err(CacheError::KeyTooLong { chars: 501, max: 500 })));
        // 500 characters of 2 bytes each is still 500 characters.
        assert!(check_key(&"é".repeat(500)).is_ok());
        assert!(matches!(check_key("a\0b"), Err(CacheError::InvalidKey { .. })));
        assert!(matches!(check_key(""), Err(CacheError::InvalidKey { .. })));
    }

    // Golden vectors: these strings are the on-disk contract. If one changes, every deployed cache entry is
    // silently abandoned, so a change here must come with a bump of KEY_FORMAT and a changelog line.
    #[test]
    fn golden_vectors() {
        #[derive(Serialize)]
        struct Query<'a> {
            text: &'a str,
            filters: BTreeMap<&'a str, Vec<i64>>,
            boost: Option<f64>,
        }
        let query = Query { text: "pgvector", filters: [("year", vec![2023, 2024])].into(), boost: Some(0.5) };
        let mut function = KeyBuilder::for_function("answer", "app::Orchestrator::answer", 2);
        function.self_type::<str>();
        function.positional("what is MVCC?");
        let vectors = [
            crate::cache_key!("retrieval", "python", 5),
            crate::cache_key!("answer", query = "what is rust", model = "gpt-4"),
            crate::cache_key!("q", query),
            crate::cache_key!("nums", i64::MIN, u64::MAX, 0.1f64, -0.0f64, 'x', ()),
            function.finish().unwrap(),
        ];
        let expected = [
            "retrieval:d342aa24433af3a25603571b79454c918e115d16fbef4e47feda29c4bf802bb3",
            "answer:290878e845147dd4e28a882a2ac7b078daf6734151fd74f32d636c0adb6ecad2",
            "q:6de92018cae3b62faeb9f7dbf22fc02378de5a6a0afb42317254844093847ba1",
            "nums:104f96dc79314de55364013b5242eb3aa65feaeb03c8722c6e6c2c93f542a70e",
            "answer:6d458aadd2ea8476cbdebaa919ebef15982aadb43cfbe272c1ca772828970f20",
        ];
        assert_eq!(vectors, expected);
    }

    #[test]
    fn length_prefixes_keep_arguments_apart() {
        assert_ne!(crate::cache_key!("k", "ab", "c"), crate::cache_key!("k", "a", "bc"));
        assert_ne!(crate::cache_key!("k", vec![1, 2], 3), crate::cache_key!("k", vec![1], 2, 3));
        assert_ne!(crate::cache_key!("k", Some(())), crate::cache_key!("k", None::<()>));
        assert_ne!(crate::cache_key!("k", x = 1), crate::cache_key!("k", 1));
    }

    #[test]
    fn map_order_does_not_matter() {
        let reference: BTreeMap<String, u32> = (0..50).map(|i| (format!("k{i}"), i)).collect();
        let expected = crate::cache_key!("maps", reference);
        for round in 0..1000u32 {
            // A fresh RandomState every time gives a different iteration order.
            let mut map: HashMap<String, u32> = HashMap::new();
            let mut items: Vec<_> = (0..50u32).collect();
            items.rotate_left((round % 50) as usize);
            if round % 2 == 1 {
                items.reverse();
            }
            for i in items {
                map.insert(format!("k{i}"), i);
            }
            assert_eq!(crate::cache_key!("maps", map), expected, "round {round}");
        }
    }

    #[test]
    fn namespaces_are_checked() {
        assert!(namespace_problem("retrieval").is_none());
        assert!(namespace_problem("a.b-c_D9").is_none());
        assert!(namespace_problem("").is_some());
        assert!(namespace_problem("has:colon").is_some());
        assert!(namespace_problem("space here").is_some());
        assert!(namespace_problem(&"x".repeat(65)).is_some());
        let err = KeyBuilder::for_function("bad ns", "f", 1).finish().unwrap_err();
        assert!(matches!(err, CacheError::InvalidKey { .. }), "{err}");
    }

    #[test]
    fn failing_serialize_gives_an_unusable_key() {
        struct Fails;
        impl Serialize for Fails {
            fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(serde::ser::Error::custom("no"))
            }
        }
        let key = crate::cache_key!("ns", Fails);
        assert!(key.contains('\0'));
    }

    #[test]
    fn floats_and_integers() {
        assert_eq!(crate::cache_key!("k", f64::NAN), crate::cache_key!("k", -f64::NAN));
        assert_ne!(crate::cache_key!("k", 0.0f64), crate::cache_key!("k", -0.0f64));
        // Integer width does not matter, value does.
        assert_eq!(crate::cache_key!("k", 5u8), crate::cache_key!("k", 5i64));
        assert_ne!(crate::cache_key!("k", u128::MAX), crate::cache_key!("k", -1i128));
    }
}
