//! Admission control for pipeline runs: at most `limit` runs at once, at
//! most `queue` more waiting (each for at most `max_wait`), and everything
//! beyond refused at once with 503 and `Retry-After`, so an overload is
//! answered in microseconds instead of piling up behind the blocking pool.
//! Only the run routes are limited: /health, /ready and /metrics stay fast.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use super::error::ApiError;

/// How many runs may execute at once, how many may wait, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Concurrency {
    /// Runs executing at once.
    pub limit: usize,
    /// Runs waiting for a slot; beyond that, requests are refused at once.
    pub queue: usize,
    /// Longest a request waits for a slot before it is refused.
    pub max_wait: Duration,
}

impl Default for Concurrency {
    /// Four runs per core, as many waiting, for at most one second.
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        Self {
            limit: 4 * cores,
            queue: 4 * cores,
            max_wait: Duration::from_secs(1),
        }
    }
}

/// The shared admission state of a server's run routes: a request first
/// takes one of `limit + queue` admission tickets (none left: 503 at once),
/// then waits for one of `limit` run slots. Both are released together when
/// the run's response is ready, so the count is exact: a finished request
/// frees its ticket before its client can send the next one.
#[derive(Debug)]
pub(crate) struct Admission {
    tickets: Arc<Semaphore>,
    slots: Arc<Semaphore>,
    config: Concurrency,
}

impl Admission {
    pub(crate) fn new(config: Concurrency) -> Self {
        let limit = config.limit.max(1);
        Self {
            tickets: Arc::new(Semaphore::new(limit + config.queue)),
            slots: Arc::new(Semaphore::new(limit)),
            config,
        }
    }

    /// Seconds a refused caller is told to wait.
    fn retry_after(&self) -> u64 {
        self.config.max_wait.as_secs().max(1)
    }
}

/// Middleware on the run routes: runs the request once it holds a slot, or
/// answers 503 `overloaded` with `Retry-After`.
pub(crate) async fn admit(
    State(admission): State<Arc<Admission>>,
    request: Request,
    next: Next,
) -> Response {
    let overloaded = || {
        ApiError::Overloaded {
            retry_after_s: admission.retry_after(),
        }
        .into_response()
    };
    let Ok(ticket) = Arc::clone(&admission.tickets).try_acquire_owned() else {
        return overloaded();
    };
    let slot = match Arc::clone(&admission.slots).try_acquire_owned() {
        Ok(slot) => slot,
        Err(_) => match tokio::time::timeout(
            admission.config.max_wait,
            Arc::clone(&admission.slots).acquire_owned(),
        )
        .await
        {
            Ok(Ok(slot)) => slot,
            _ => return overloaded(),
        },
    };
    let response = next.run(request).await;
    drop((slot, ticket));
    response
}
