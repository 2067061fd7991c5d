//! What is stored of a memoized function's outcome, and how it comes back ([`Policy`]): `Ok` values of a
//! `Result`, `Some` values of an `Option`, anything else whole, optionally filtered by `cache_if`. The
//! policy is picked from the return type at compile time ([`Probe`]). Part of the `__private` contract.

// Items of the hidden `__private` contract, re-exported there: not part of the documented API.
#![allow(missing_docs)]

use crate::codec;
use crate::error::CacheError;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::marker::PhantomData;

/// What is stored for an outcome `R` of a memoized function, and how it comes back.
#[diagnostic::on_unimplemented(
    message = "the return type `{R}` cannot be cached",
    label = "the cached value must implement `serde::Serialize` and `serde::de::DeserializeOwned`",
    note = "for `Result<T, E>` only `T` is stored, for `Option<T>` only `T`; other types are stored whole"
)]
pub trait Policy<R> {
    /// What is stored of an outcome: `T` for `Result<T, E>` and `Option<T>`, the outcome itself otherwise.
    type Value;
    /// The value to store, if the outcome has one.
    fn value<'a>(&self, outcome: &'a R) -> Option<&'a Self::Value>;
    /// The JSON to store, or `None` when this outcome is not stored.
    fn encode(&self, outcome: &R, limit: usize) -> Option<Result<String, CacheError>>;
    fn decode(&self, json: &str) -> Result<R, serde_json::Error>;
    /// Whether the outcome is a failure (`Err`, or `None` unless `None` is cached), which an entry expired
    /// less than `stale_if_error` ago may replace.
    fn failed(&self, outcome: &R) -> bool;
}

/// Stores the whole outcome.
#[derive(Debug, Clone, Copy)]
pub struct AsIs;
impl<T: Serialize + DeserializeOwned> Policy<T> for AsIs {
    type Value = T;
    fn value<'a>(&self, outcome: &'a T) -> Option<&'a T> {
        Some(outcome)
    }
    fn failed(&self, _: &T) -> bool {
        false
    }
    fn encode(&self, outcome: &T, limit: usize) -> Option<Result<String, CacheError>> {
        Some(codec::encode(outcome, limit))
    }
    fn decode(&self, json: &str) -> Result<T, serde_json::Error> {
        codec::decode(json)
    }
}

/// Stores `Ok` values only.
#[derive(Debug, Clone, Copy)]
pub struct OkOnly;
impl<T: Serialize + DeserializeOwned, E> Policy<Result<T, E>> for OkOnly {
    type Value = T;
    fn value<'a>(&self, outcome: &'a Result<T, E>) -> Option<&'a T> {
        outcome.as_ref().ok()
    }
    fn failed(&self, outcome: &Result<T, E>) -> bool {
        outcome.is_err()
    }
    fn encode(&self, outcome: &Result<T, E>, limit: usize) -> Option<Result<String, CacheError>> {
        outcome.as_ref().ok().map(|value| codec::encode(value, limit))
    }
    fn decode(&self, json: &str) -> Result<Result<T, E>, serde_json::Error> {
        codec::decode(json).map(Ok)
    }
}

/// Stores `Some` values, and `None` too when `cache_none` is on.
#[derive(Debug, Clone, Copy)]
pub struct OptionPolicy {
    cache_none: bool,
}
impl<T: Serialize + DeserializeOwned> Policy<Option<T>> for OptionPolicy {
    type Value = T;
    fn value<'a>(&self, outcome: &'a Option<T>) -> Option<&'a T> {
        outcome.as_ref()
    }
    fn failed(&self, outcome: &Option<T>) -> bool {
        outcome.is_none() && !self.cache_none
    }
    fn encode(&self, outcome: &Option<T>, limit: usize) -> Option<Result<String, CacheError>> {
        match outcome {
            None if self.cache_none => Some(Ok("null".to_owned())),
            None => None,
            Some(value) => {
                let json = codec::encode(value, limit);
                // With cache_none, `null` means None: a Some whose value is itself written as `null` (a unit,
                // a nested None) would come back as None, so it is not stored at all.
                match json {
                    Ok(json) if self.cache_none && json == "null" => None,
                    other => Some(other),
                }
            }
        }
    }
    fn decode(&self, json: &str) -> Result<Option<T>, serde_json::Error> {
        if self.cache_none && json == "null" {
            return Ok(None);
        }
        codec::decode(json).map(Some)
    }
}

/// `cache_if = predicate`: a policy that stores a value only when `keep` says so. The value is still returned
/// either way.
pub struct CacheIf<P, V> {
    policy: P,
    keep: fn(&V) -> bool,
}

impl<P: std::fmt::Debug, V> std::fmt::Debug for CacheIf<P, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheIf").field("policy", &self.policy).finish_non_exhaustive()
    }
}

impl<R, P, V> Policy<R> for CacheIf<P, V>
where
    P: Policy<R, Value = V>,
{
    type Value = V;
    fn value<'a>(&self, outcome: &'a R) -> Option<&'a V> {
        self.policy.value(outcome)
    }
    fn encode(&self, outcome: &R, limit: usize) -> Option<Result<String, CacheError>> {
        match self.policy.value(outcome) {
            Some(value) if !(self.keep)(value) => None,
            _ => self.policy.encode(outcome, limit),
        }
    }
    fn decode(&self, json: &str) -> Result<R, serde_json::Error> {
        self.policy.decode(json)
    }
    fn failed(&self, outcome: &R) -> bool {
        self.policy.failed(outcome)
    }
}

/// Wraps the policy of a function returning `R` with its `cache_if` predicate. A predicate of the wrong
/// signature fails to coerce to `fn(&V) -> bool` here, at the path the user wrote.
pub fn cache_if<R, P: Policy<R>>(policy: P, keep: fn(&P::Value) -> bool) -> CacheIf<P, P::Value> {
    CacheIf { policy, keep }
}

/// Selects a [`Policy`] from a return type by autoref specialization: `Result` and `Option` (through any
/// alias) get their own policies, anything else is stored whole.
///
/// `(&Probe::<R>::new()).policy(cache_none)`
pub struct Probe<R>(PhantomData<fn() -> R>);

impl<R> std::fmt::Debug for Probe<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Probe")
    }
}

impl<R> Probe<R> {
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        Probe(PhantomData)
    }
}

pub trait ResultKind {
    fn policy(&self, cache_none: bool) -> OkOnly;
}
impl<T, E> ResultKind for Probe<Result<T, E>> {
    fn policy(&self, _cache_none: bool) -> OkOnly {
        OkOnly
    }
}

pub trait OptionKind {
    fn policy(&self, cache_none: bool) -> OptionPolicy;
}
impl<T> OptionKind for Probe<Option<T>> {
    fn policy(&self, cache_none: bool) -> OptionPolicy {
        OptionPolicy { cache_none }
    }
}

pub trait PlainKind {
    fn policy(&self, cache_none: bool) -> AsIs;
}
impl<R> PlainKind for &Probe<R> {
    fn policy(&self, _cache_none: bool) -> AsIs {
        AsIs
    }
}

/// `cache_none = true` on a function that does not return an `Option` fails here.
#[diagnostic::on_unimplemented(
    message = "`cache_none` applies only to functions that return `Option<_>`; this one returns `{Self}`"
)]
pub trait ReturnsOption {}
impl<T> ReturnsOption for Option<T> {}

pub fn assert_returns_option<R: ReturnsOption>() {}
