//! Running a database operation in the caller's task, and finishing it in the background if the caller is
//! cancelled.
//!
//! sqlx closes a connection whose statement future is dropped mid-flight, so a cancelled caller must not drop
//! its statement (see `exec.rs`). Running every statement in a task of its own guarantees that, but costs a
//! task switch and a cross-thread wake-up per operation: at a few concurrent callers on 2 cores that was a
//! third of the rate. [`FinishOnDrop`] keeps the fast path in the caller's task: it polls the operation
//! inline, and only if it is dropped before the operation completed does it hand the rest to a spawned task,
//! which finishes the statement and gives the connection back to the pool.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

/// A future that is polled in place and, if dropped unfinished, completes in a task of its own.
pub(crate) struct FinishOnDrop<T: Send + 'static> {
    operation: Option<Pin<Box<dyn Future<Output = T> + Send>>>,
    /// Set when the caller gave up: the operation may skip work nobody wants (see `exec::attempt_holding`).
    abandoned: Arc<AtomicBool>,
}

impl<T: Send + 'static> FinishOnDrop<T> {
    /// Wraps the operation `make` builds; it receives the flag that says whether the caller left.
    pub(crate) fn new<F>(make: impl FnOnce(Arc<AtomicBool>) -> F) -> Self
    where
        F: Future<Output = T> + Send + 'static,
    {
        let abandoned = Arc::new(AtomicBool::new(false));
        FinishOnDrop { operation: Some(Box::pin(make(Arc::clone(&abandoned)))), abandoned }
    }
}

impl<T: Send + 'static> Future for FinishOnDrop<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let Some(operation) = self.operation.as_mut() else {
            // Polled after completion: never happens through `.await`.
            return Poll::Pending;
        };
        let output = std::task::ready!(operation.as_mut().poll(cx));
        self.operation = None;
        Poll::Ready(output)
    }
}

impl<T: Send + 'static> Drop for FinishOnDrop<T> {
    fn drop(&mut self) {
        if let Some(operation) = self.operation.take() {
            self.abandoned.store(true, Ordering::Release);
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = operation.await;
                });
            }
        }
    }
}
