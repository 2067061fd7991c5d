//! What a follower of a memoized stream meets when the computation it reads live ends early, and how the
//! generated code finds out whether the function's error type can say so.

use std::marker::PhantomData;

/// The error a caller of a memoized stream meets when it was reading, live, a computation that another
/// caller in this process was driving, and that computation ended before its end (its stream yielded an
/// error, or its caller dropped it). The chunks received so far were real; the rest will not come: call
/// again to compute it.
///
/// A function's stream error type that implements `From<StreamInterrupted>` lets concurrent callers of a
/// cold stream receive its chunks as they are produced. Without that conversion they wait for the whole
/// stream and then replay it, since they could not report an interruption half-way. `String`,
/// `std::io::Error` (of kind `Interrupted`), `Box<dyn Error + Send + Sync>` and `anyhow::Error` convert
/// already; for an error type of your own:
///
/// ```
/// #[derive(Debug)]
/// enum LlmError {
///     Http(String),
///     Interrupted,
/// }
///
/// impl From<cache_runtime::StreamInterrupted> for LlmError {
///     fn from(_: cache_runtime::StreamInterrupted) -> Self {
///         LlmError::Interrupted
///     }
/// }
/// # let _ = LlmError::Http(String::new());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the shared computation of this memoized stream ended before its end (its stream failed or was dropped by \
     its caller); call again to compute it"
)]
#[non_exhaustive]
pub struct StreamInterrupted {}

impl StreamInterrupted {
    pub(crate) fn new() -> StreamInterrupted {
        StreamInterrupted {}
    }
}

impl From<StreamInterrupted> for String {
    fn from(interrupted: StreamInterrupted) -> String {
        interrupted.to_string()
    }
}

impl From<StreamInterrupted> for std::io::Error {
    fn from(interrupted: StreamInterrupted) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::Interrupted, interrupted)
    }
}

/// How an interruption becomes the function's error `E`, if it can: `None` makes followers wait for the
/// whole stream.
pub type Interruption<E> = Option<fn(StreamInterrupted) -> E>;

/// Whether `E: From<StreamInterrupted>`, decided at compile time by autoref specialization (as in
/// `work.rs`): `(&Interrupt::<E>::new()).interruption()` finds [`InterruptInto`]'s method on the receiver
/// `&Interrupt<E>` when the bound holds, and otherwise [`NoInterrupt`]'s, one reference further.
#[doc(hidden)]
pub struct Interrupt<E>(PhantomData<fn() -> E>);

impl<E> std::fmt::Debug for Interrupt<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Interrupt")
    }
}

impl<E> Interrupt<E> {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Interrupt<E> {
        Interrupt(PhantomData)
    }
}

#[doc(hidden)]
pub trait InterruptInto<E> {
    fn interruption(&self) -> Interruption<E>;
}

impl<E: From<StreamInterrupted>> InterruptInto<E> for Interrupt<E> {
    fn interruption(&self) -> Interruption<E> {
        Some(E::from)
    }
}

#[doc(hidden)]
pub trait NoInterrupt<E> {
    fn interruption(&self) -> Interruption<E>;
}

impl<E> NoInterrupt<E> for &Interrupt<E> {
    fn interruption(&self) -> Interruption<E> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Opaque;

    // The borrow clippy calls needless is the specialization: without it `NoInterrupt` is never found.
    #[allow(clippy::needless_borrow)]
    #[test]
    fn the_probe_finds_the_conversion_where_there_is_one() {
        assert!((&Interrupt::<String>::new()).interruption().is_some());
        assert!((&Interrupt::<std::io::Error>::new()).interruption().is_some());
        assert!((&Interrupt::<Box<dyn std::error::Error + Send + Sync>>::new()).interruption().is_some());
        assert!((&Interrupt::<Opaque>::new()).interruption().is_none());
        let into = (&Interrupt::<std::io::Error>::new()).interruption().expect("converts");
        assert_eq!(into(StreamInterrupted::new()).kind(), std::io::ErrorKind::Interrupted);
    }
}
