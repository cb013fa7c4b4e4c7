//! Where a run's sync models execute, and what every stage of a run shares.

/// Confidence below which a model completion is logged at WARN.
pub const LOW_CONFIDENCE: f64 = 0.4;

/// Where synchronous model code runs. Async models are always polled on the
/// calling task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Execution {
    /// Each sync model runs on tokio's blocking pool: parallel candidates run
    /// concurrently, a model over its timeout is abandoned (its thread finishes
    /// in the background, its output is dropped) and the async runtime is never
    /// blocked. Falls back to [`Execution::Inline`] outside a tokio runtime.
    #[default]
    Offload,
    /// Sync models run on the calling task, one after another. No thread hop,
    /// so it suits cheap models and batch jobs; panics are still caught, but a
    /// timeout can only be detected once the model returns.
    Inline,
}

/// What every stage of a run shares.
pub(crate) struct Env {
    pub(crate) pipeline: String,
    pub(crate) execution: Execution,
}

impl Env {
    pub(crate) fn offloads(&self) -> bool {
        self.execution == Execution::Offload
    }
}
