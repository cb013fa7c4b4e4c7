//! The run store: what a judged run must remember until its ground truth
//! arrives — hours or weeks later, at any replica.
//!
//! One seam, [`Backend`], with three implementations: [`memory`] (bounded,
//! in the process, no dependency; the library's default), `sqlite` (cargo
//! feature `sqlite`; the binary's embedded default) and `postgres` (cargo
//! feature `postgres`; one database shared by every replica). A
//! [`RunStore`] wraps a backend for the pipelines of a process: it writes
//! runs in batches off the request path through a bounded queue (a full
//! queue or a failed write is counted on
//! `pipelens_run_store_writes_total{outcome}`, never waited for), claims
//! feedback atomically in the backend, and deletes expired runs in the
//! background.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use pipelens::store::{RunStore, StoreConfig};
//! // PIPELENS_RUN_STORE=postgres://pipelens@db:5432/pipelens, say.
//! let config = StoreConfig::from_env(StoreConfig::memory())?;
//! let store = RunStore::open(&config, None).await?;
//! // Every pipeline of the process shares it:
//! // Pipeline::builder("reviews").run_store(store.clone())...
//! # drop(store);
//! # Ok(()) }
//! ```

mod config;
pub mod memory;
mod recorder;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql;

#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;

use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::answer::Answer;

pub use config::{
    parse_duration, redact, StoreConfig, StoreTarget, MAX_RUNS_VAR, PASSWORD_FILE_VAR,
    RETENTION_VAR, RUN_STORE_VAR,
};
pub use recorder::{RunStore, StoreStatus};

/// Default number of runs a memory store remembers for feedback.
pub const FEEDBACK_RUNS: usize = 100_000;
/// Default time a run waits for its ground truth in a memory store.
pub const FEEDBACK_RETENTION: Duration = Duration::from_secs(3600);
/// Default time a run waits for its ground truth in a durable store.
pub const DURABLE_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
/// Default bound on the rows (one per judged stage of a run) a durable
/// store keeps per pipeline; past it the oldest go first.
pub const MAX_RUNS_PER_PIPELINE: u64 = 10_000_000;

/// What one judged stage of a run answered, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    /// The stage's name.
    pub stage: String,
    /// The candidate whose answer the stage served.
    pub selected: Option<String>,
    /// Every candidate in declaration order, with its answer (`None` when it
    /// failed).
    pub answers: Vec<ModelAnswer>,
}

/// One candidate's answer in a stored run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelAnswer {
    /// The candidate's name.
    pub model: String,
    /// What it answered, if it succeeded.
    pub answer: Option<Answer>,
}

/// A successful run of a pipeline with judged stages, as the store keeps it
/// until the truth arrives.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    /// The pipeline.
    pub pipeline: String,
    /// The run id (a W3C trace id as a number).
    pub run_id: u128,
    /// When the run ended.
    pub at: SystemTime,
    /// Its judged stages.
    pub stages: Vec<StageRecord>,
}

/// A shadow model's answer that came after its run was stored: added to
/// the stored stage unless its truth has arrived already.
#[derive(Debug, Clone, PartialEq)]
pub struct LateAnswer {
    /// The pipeline.
    pub pipeline: String,
    /// The run id.
    pub run_id: u128,
    /// The judged stage.
    pub stage: String,
    /// The shadow and what it answered.
    pub answer: ModelAnswer,
}

/// What claiming a stage of a run for its ground truth found.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// The stage was waiting and is now judged: here is what it answered.
    Claimed(StageRecord),
    /// No such run of this pipeline is waiting (never stored, or expired).
    Unknown,
    /// The stage of this run has had its truth already.
    AlreadyClaimed,
}

/// Why the store could not be opened or used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A configuration variable holds a value that cannot be used (the
    /// value is shown with any password replaced by `***`).
    #[error("{variable}={value}: {reason}")]
    Config {
        /// The variable.
        variable: String,
        /// Its value, redacted.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// The store could not be opened (file, server, schema).
    #[error("cannot open the run store {target}: {message}")]
    Open {
        /// The file or URL, redacted.
        target: String,
        /// Why.
        message: String,
    },
    /// The database was written by a newer pipelens: this binary does not
    /// know its schema and will not touch it.
    #[error("the run store {target} has schema version {found}, newer than this pipelens knows ({supported}): upgrade pipelens, or point it at another database")]
    NewerSchema {
        /// The file or URL, redacted.
        target: String,
        /// The database's version.
        found: i64,
        /// The newest this binary knows.
        supported: i64,
    },
    /// The backend did not answer or failed (the store is down).
    #[error("the {backend} run store is unavailable: {message}")]
    Unavailable {
        /// `sqlite`, `postgres`, ...
        backend: &'static str,
        /// Why.
        message: String,
    },
    /// The store needs a Tokio runtime for its writer and none is running.
    #[error("a durable run store must be created inside a Tokio runtime")]
    NoRuntime,
}

/// The seam: where judged runs are kept. Implement it to keep runs
/// elsewhere; [`RunStore`] batches, counts and retries around it.
///
/// Every method may be called concurrently, from several processes sharing
/// one database: [`Backend::claim`] must be atomic (of two claims of the
/// same stage of a run, exactly one gets [`Claim::Claimed`]).
pub trait Backend: Send + Sync + 'static {
    /// `memory`, `sqlite`, `postgres`: a label value on the store's metrics.
    fn name(&self) -> &'static str;

    /// Whether the runs outlive the process. A store that does not is
    /// written inline (its writes must complete without waiting); a durable
    /// one through the batching queue.
    fn durable(&self) -> bool {
        true
    }

    /// Stores `runs` (a run already stored is left as it is).
    fn write<'a>(&'a self, runs: &'a [RunRecord]) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Adds late answers (of shadow models, which answer after their run
    /// is stored) to their stored stages; a stage that has had its truth,
    /// or a run that is not stored, is left as it is.
    fn add_answers<'a>(&'a self, late: &'a [LateAnswer]) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Claims `stage` of run `run_id` of `pipeline` for its ground truth,
    /// once: runs that ended before `not_before` count as unknown.
    fn claim<'a>(
        &'a self,
        pipeline: &'a str,
        run_id: u128,
        stage: &'a str,
        not_before: SystemTime,
    ) -> BoxFuture<'a, Result<Claim, StoreError>>;

    /// Deletes at most `limit` stored rows that ended before `before` or
    /// are beyond the newest `max_per_pipeline` of their pipeline; returns
    /// how many went (call again while it returns `limit`).
    fn expire(
        &self,
        before: SystemTime,
        max_per_pipeline: u64,
        limit: u32,
    ) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// Checks the backend answers.
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>>;

    /// The drift reference `part` (`features` or `predictions`) of
    /// `pipeline` as saved (JSON), if any. A store that keeps none (the
    /// default) says none.
    fn load_reference<'a>(
        &'a self,
        pipeline: &'a str,
        part: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        let _ = (pipeline, part);
        Box::pin(futures_util::future::ready(Ok(None)))
    }

    /// Saves `body` as the drift reference `part` of `pipeline` unless one
    /// is saved already (the first replica to learn it wins), and returns
    /// the one saved now: `body`, or the earlier one. `None`: this store
    /// keeps no references (the default).
    fn save_reference<'a>(
        &'a self,
        pipeline: &'a str,
        part: &'a str,
        body: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        let _ = (pipeline, part, body);
        Box::pin(futures_util::future::ready(Ok(None)))
    }
}

/// Milliseconds since the Unix epoch (0 before it).
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A run id as stored: 32 lowercase hex digits.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn run_id_hex(run_id: u128) -> String {
    format!("{run_id:032x}")
}
