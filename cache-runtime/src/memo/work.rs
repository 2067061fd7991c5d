//! The work of one memoized call, made only when it is needed: its body, run in the caller, or a task that
//! runs the whole call again in the background, so that a stale hit (or a hit close to its expiry, with
//! `refresh_ahead`) is answered at once while one refresh runs elsewhere.
//!
//! A function's body borrows its arguments, so it cannot be moved to another task. Generated code gives the
//! engine a closure instead: asked for [`How::Here`], it builds the body; asked for [`How::Elsewhere`], it
//! makes owned copies of the arguments and returns a [`Task`] that calls the function with them under a
//! refresh scope (`{fn}_refresh` semantics: run the body, overwrite the entry), or, when some argument cannot
//! be copied or the call's future cannot be sent to another thread, the body after all.
//!
//! Whether a copy or a task is possible is decided at compile time by autoref specialization: `Owned` is
//! implemented for `&Own<T>` where `T: Clone`, `NotOwned` for `Own<T>`, one reference less; method lookup on
//! `(&&Own(x)).owned()` tries the receiver `&&Own<T>` first, which only `Owned`'s method takes, and only
//! when its bound holds; otherwise it goes one reference down and finds `NotOwned`'s, which gives `None`.
//! The task itself must be `Send + 'static` (see [`task`]). Part of the `__private` contract.

// Items of the hidden `__private` contract, re-exported there: not part of the documented API.
#![allow(missing_docs)]

use std::future::Future;
use std::pin::Pin;

/// What the engine asks of a call's body closure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// Build the body, to run in the caller.
    Here,
    /// Give a task that runs the call elsewhere, if the function can be called so; else the body.
    Elsewhere,
}

/// What a call's body closure gave.
pub enum Body<F> {
    /// The body, to run in the caller.
    Here(F),
    /// A task that calls the function again, with owned copies of its arguments.
    Elsewhere(Task),
}

impl<F> std::fmt::Debug for Body<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Body::Here(_) => "Body::Here",
            Body::Elsewhere(_) => "Body::Elsewhere",
        })
    }
}

/// A call of a memoized function that owns everything it uses, ready to be spawned.
pub type Task = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// An argument to copy (see the module docs).
#[derive(Debug)]
pub struct Own<'a, T>(pub &'a T);

/// Copies a `Clone` argument.
pub trait Owned<T> {
    fn owned(&self) -> Option<T>;
}

impl<T: Clone> Owned<T> for &Own<'_, T> {
    fn owned(&self) -> Option<T> {
        Some(self.0.clone())
    }
}

/// Gives up on any other.
pub trait NotOwned<T> {
    fn owned(&self) -> Option<T>;
}

impl<T> NotOwned<T> for Own<'_, T> {
    fn owned(&self) -> Option<T> {
        None
    }
}

/// A slice argument to copy into a `Vec`.
#[derive(Debug)]
pub struct OwnSlice<'a, T>(pub &'a [T]);

impl<T: Clone> Owned<Vec<T>> for &OwnSlice<'_, T> {
    fn owned(&self) -> Option<Vec<T>> {
        Some(self.0.to_vec())
    }
}

impl<T> NotOwned<Vec<T>> for OwnSlice<'_, T> {
    fn owned(&self) -> Option<Vec<T>> {
        None
    }
}

/// Boxes the future of a call made elsewhere as a [`Task`]. Autoref specialization cannot test a future for
/// `Send` (the compiler settles an `async` block's auto traits after choosing the method), so a function
/// whose future is not `Send` does not compile with background refreshes: it takes
/// `background_refresh = false`.
pub fn task<F: Future<Output = ()> + Send + 'static>(future: F) -> Task {
    Box::pin(future)
}

/// The body closure of a call, and what became of it.
pub(crate) struct Work<M, F> {
    state: State<M, F>,
}

enum State<M, F> {
    Unmade(M),
    /// Only while the body is being made.
    Making,
    /// Boxed once: the paths that run it pass it through several nested futures, each of which would reserve
    /// room for it inline.
    Made(Pin<Box<F>>),
}

impl<M, F> Work<M, F>
where
    M: FnOnce(How) -> Body<F>,
    F: Future,
{
    pub(crate) fn new(make: M) -> Self {
        Work { state: State::Unmade(make) }
    }

    /// The body, made now if it was not yet.
    pub(crate) fn body(&mut self) -> Pin<&mut F> {
        if matches!(self.state, State::Unmade(_)) {
            if let State::Unmade(make) = std::mem::replace(&mut self.state, State::Making) {
                self.state = State::Made(Box::pin(here(make)));
            }
        }
        match &mut self.state {
            State::Made(body) => body.as_mut(),
            State::Unmade(_) | State::Making => unreachable!("the body was made just above"),
        }
    }

    /// The task that runs the call elsewhere, if the function allows it and the body was not made yet; else
    /// the work back, with its body made.
    pub(crate) fn into_task(self) -> Result<Task, Self> {
        match self.state {
            State::Unmade(make) => match make(How::Elsewhere) {
                Body::Elsewhere(task) => Ok(task),
                Body::Here(body) => Err(Work { state: State::Made(Box::pin(body)) }),
            },
            other => Err(Work { state: other }),
        }
    }
}

fn here<M: FnOnce(How) -> Body<F>, F>(make: M) -> F {
    match make(How::Here) {
        Body::Here(body) => body,
        // The closure builds the body whenever it is asked for it (generated code does).
        Body::Elsewhere(_) => unreachable!("a body closure asked for its body gave a task"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, PartialEq, Debug)]
    struct Copyable(u32);
    struct NotClone;

    // `&&` is the dispatch under test, not a needless borrow.
    #[test]
    #[allow(clippy::needless_borrow)]
    fn only_clone_values_are_copied() {
        assert_eq!((&&Own(&Copyable(3))).owned(), Some(Copyable(3)));
        assert!((&&Own(&NotClone)).owned().is_none());
        assert_eq!((&&OwnSlice(&[1, 2][..])).owned(), Some(vec![1, 2]));
        assert!((&&OwnSlice(&[NotClone][..])).owned().is_none());
    }
}
