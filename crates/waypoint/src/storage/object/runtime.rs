//! The bridge from waypoint's synchronous [`crate::storage::Storage`] calls to object_store's async
//! API: a tokio runtime owned by the storage, futures run on its threads, the caller waits on a
//! channel. Waiting on a channel (never `block_on`) works from any thread, including a thread of
//! another tokio runtime, and the runtime is shut down in the background so that dropping the
//! storage inside an async context never panics. Also the counting gate that bounds the number of
//! part uploads (and so the memory they hold) in flight.

use crate::error::{Error, Result};
use std::future::Future;
use std::sync::{Condvar, Mutex, PoisonError};

/// A multi-threaded tokio runtime that is shut down without blocking when dropped.
pub(super) struct OwnedRuntime {
    runtime: Option<tokio::runtime::Runtime>,
}

impl OwnedRuntime {
    /// A runtime with `threads` worker threads named `waypoint-object`.
    pub(super) fn new(threads: usize) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("waypoint-object")
            .enable_all()
            .build()
            .map_err(|e| Error::io("start the object-store runtime", "tokio", e))?;
        Ok(OwnedRuntime {
            runtime: Some(runtime),
        })
    }

    /// Runs `future` on the runtime and waits for its output on the calling thread. A panic inside
    /// the future becomes [`Error::WorkerPanicked`] naming `what`.
    pub(super) fn run<F, T>(&self, what: &str, future: F) -> Result<T>
    where
        F: Future<Output = Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        let Some(runtime) = &self.runtime else {
            return Err(Error::WorkerPanicked {
                what: what.to_owned(),
            });
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        runtime.spawn(async move {
            // The receiver only goes away when the caller is gone; nothing to report then.
            let _ = tx.send(future.await);
        });
        rx.recv().unwrap_or_else(|_| {
            Err(Error::WorkerPanicked {
                what: what.to_owned(),
            })
        })
    }
}

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A counting semaphore for synchronous callers: at most `limit` holders at once.
pub(super) struct Gate {
    limit: usize,
    held: Mutex<usize>,
    freed: Condvar,
}

/// One place in a [`Gate`], released on drop.
pub(super) struct Permit<'a>(&'a Gate);

impl Gate {
    pub(super) fn new(limit: usize) -> Self {
        Gate {
            limit: limit.max(1),
            held: Mutex::new(0),
            freed: Condvar::new(),
        }
    }

    /// Waits for a free place.
    pub(super) fn enter(&self) -> Permit<'_> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        while *held >= self.limit {
            held = self
                .freed
                .wait(held)
                .unwrap_or_else(PoisonError::into_inner);
        }
        *held += 1;
        Permit(self)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let mut held = self.0.held.lock().unwrap_or_else(PoisonError::into_inner);
        *held -= 1;
        self.0.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn runs_from_inside_another_runtime_and_drops_there() {
        let outer = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let value = outer.block_on(async {
            let inner = OwnedRuntime::new(1).unwrap();
            let value = inner.run("test", async { Ok(41 + 1) }).unwrap();
            drop(inner); // must not panic inside an async context
            value
        });
        assert_eq!(value, 42);
    }

    #[test]
    fn a_panicking_future_is_an_error() {
        let runtime = OwnedRuntime::new(1).unwrap();
        let result: Result<()> = runtime.run("the panicking job", async { panic!("boom") });
        let err = result.unwrap_err();
        assert!(err.to_string().contains("the panicking job"), "{err}");
    }

    #[test]
    fn gate_bounds_concurrency() {
        let gate = Gate::new(2);
        let inside = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for _ in 0..50 {
                        let _permit = gate.enter();
                        let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::yield_now();
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                });
            }
        });
        assert!(most.load(Ordering::SeqCst) <= 2);
        assert_eq!(inside.load(Ordering::SeqCst), 0);
    }
}
