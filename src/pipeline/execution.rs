//! Where a run's sync models execute, and what every stage of a run shares.

/// Confidence below which a model completion is logged at WARN.
pub const LOW_CONFIDENCE: f64 = 0.4;

/// Where synchronous model code runs. Async models are always polled on the
/// calling task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Execution {
    /// Each sync model runs inline while its recent executions average under
    /// [`INLINE_BELOW`](crate::pipeline::INLINE_BELOW) (100 µs), on the
    /// blocking pool otherwise; the first execution of a model is offloaded,
    /// and one slow execution sends it back to the pool. Microsecond models
    /// skip the thread hop (10–30 µs), slow ones keep the runtime free. A
    /// model that was fast and then hangs blocks one runtime thread until it
    /// returns: use [`Execution::Offload`] for models that may hang.
    #[default]
    Auto,
    /// Each sync model runs on tokio's blocking pool: parallel candidates run
    /// concurrently, a model over its timeout is abandoned (its thread finishes
    /// in the background, its output is dropped) and the async runtime is never
    /// blocked. Falls back to [`Execution::Inline`] outside a tokio runtime.
    Offload,
    /// Sync models run on the calling task, one after another. No thread hop,
    /// so it suits cheap models and batch jobs; panics are still caught, but a
    /// timeout can only be detected once the model returns.
    Inline,
}

/// What every stage of a run shares.
#[derive(Clone)]
pub(crate) struct Env {
    pub(crate) pipeline: String,
    pub(crate) execution: Execution,
}

impl Env {
    /// Whether a sync model whose recent pace is `fast` runs on the
    /// blocking pool.
    pub(crate) fn offloads(&self, fast: bool) -> bool {
        match self.execution {
            Execution::Auto => !fast,
            Execution::Offload => true,
            Execution::Inline => false,
        }
    }
}
