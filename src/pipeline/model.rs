//! The model contracts: what a pipeline runs. Models know nothing of
//! telemetry; the runner adds spans, metrics, logs, timeouts, panic
//! isolation and the load lifecycle around them.

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;

/// A component a model produced, counted by type (for example 12 `light`s).
///
/// The type is a label value on `ml_components_placed_total`, so it must come
/// from a small fixed set chosen by the model's author, never from user input.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Component {
    /// What was produced, such as `light` or `smoke_detector`.
    pub kind: Cow<'static, str>,
    /// How many of them.
    pub count: u64,
}

impl Component {
    /// A component count of the given type.
    pub fn new(kind: impl Into<Cow<'static, str>>, count: u64) -> Self {
        Self {
            kind: kind.into(),
            count,
        }
    }
}

/// What a model returns: its output, how confident it is, and what it produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction<T> {
    /// The model's output; in a pipeline it becomes the next stage's input.
    pub output: T,
    /// Confidence in `[0, 1]`; the runner clamps values outside that range and
    /// treats NaN as 0.
    pub confidence: f64,
    /// Components produced, by type.
    pub components: Vec<Component>,
}

impl<T> Prediction<T> {
    /// A prediction with no components.
    pub fn new(output: T, confidence: f64) -> Self {
        Self {
            output,
            confidence,
            components: Vec::new(),
        }
    }

    /// Adds a component count to the prediction.
    #[must_use]
    pub fn with_component(mut self, kind: impl Into<Cow<'static, str>>, count: u64) -> Self {
        self.components.push(Component::new(kind, count));
        self
    }
}

/// Why a model could not load or produce a prediction.
///
/// Each variant maps to a fixed `error_type` label value (see
/// [`ModelError::error_type`]); the message stays in logs and spans only.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ModelError {
    /// The input is outside what the model can handle.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The model ran but could not compute a result.
    #[error("computation failed: {0}")]
    Computation(String),
    /// A remote dependency (a model server, a queue) could not be reached or
    /// answered with an error.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The model has not loaded (its load step failed or has not run).
    #[error("not loaded: {0}")]
    NotLoaded(String),
    /// A [`crate::faults::Faulty`] wrapper failed the execution on purpose,
    /// to test alerts and dashboards.
    #[error("injected fault: {0}")]
    InjectedFault(String),
}

impl ModelError {
    /// Every `error_type` label value a [`ModelError`] can carry.
    pub const ERROR_TYPES: [&'static str; 5] = [
        "invalid_input",
        "computation",
        "unavailable",
        "not_loaded",
        "injected_fault",
    ];

    /// The bounded `error_type` label value for this error.
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::InvalidInput(_) => "invalid_input",
            Self::Computation(_) => "computation",
            Self::Unavailable(_) => "unavailable",
            Self::NotLoaded(_) => "not_loaded",
            Self::InjectedFault(_) => "injected_fault",
        }
    }
}

/// A synchronous model from `In` to `Out`: CPU work such as a decision tree,
/// an ONNX session or a geometric planner.
///
/// By default ([`crate::Execution::Auto`]) the runner calls it on tokio's
/// blocking pool, so it never blocks the async threads, unless its recent
/// executions took under 100 µs, when it runs in place and skips the thread
/// hop. Either way it runs inside its `model.run` span, so its own
/// `tracing` spans and events are children of that span.
pub trait Model<In, Out>: Send + Sync + 'static {
    /// Stable model name; a label value on every model metric.
    fn name(&self) -> &str;
    /// Model version; a label value on `ml_model_loaded`.
    fn version(&self) -> &str;
    /// Loads or warms up the model (weights from disk, a lookup table). Runs
    /// once on the blocking pool before the first execution, or when
    /// [`crate::Pipeline::load`] is called; `ml_model_loaded` is 0 until it
    /// succeeds. Keep what it loads in a `OnceLock` or similar. The default
    /// does nothing.
    fn load(&self) -> Result<(), ModelError> {
        Ok(())
    }
    /// Runs the model on `input`.
    fn run(&self, input: &In) -> Result<Prediction<Out>, ModelError>;
}

/// An asynchronous model from `In` to `Out`: a call to a remote model server
/// (Triton, TEI, vLLM, any HTTP endpoint), a queue or a GPU batcher.
///
/// The runner polls it on the calling task inside its `model.run` span (so
/// outbound calls made in it are children of that span: see
/// [`crate::telemetry::trace_headers`] to carry the trace to the server) and
/// drops it, cancelling it, when its stage's timeout passes.
pub trait AsyncModel<In, Out>: Send + Sync + 'static {
    /// Stable model name; a label value on every model metric.
    fn name(&self) -> &str;
    /// Model version; a label value on `ml_model_loaded`.
    fn version(&self) -> &str;
    /// Loads or warms up the model (opens a connection, checks the remote
    /// model is served). `ml_model_loaded` is 0 until it succeeds. The default
    /// does nothing.
    fn load(&self) -> impl Future<Output = Result<(), ModelError>> + Send {
        std::future::ready(Ok(()))
    }
    /// Runs the model on `input`.
    fn run(&self, input: &In) -> impl Future<Output = Result<Prediction<Out>, ModelError>> + Send;
}

impl<In, Out, M: Model<In, Out>> Model<In, Out> for Arc<M> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn version(&self) -> &str {
        (**self).version()
    }
    fn load(&self) -> Result<(), ModelError> {
        (**self).load()
    }
    fn run(&self, input: &In) -> Result<Prediction<Out>, ModelError> {
        (**self).run(input)
    }
}

impl<In: Sync, Out, M: AsyncModel<In, Out>> AsyncModel<In, Out> for Arc<M> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn version(&self) -> &str {
        (**self).version()
    }
    fn load(&self) -> impl Future<Output = Result<(), ModelError>> + Send {
        (**self).load()
    }
    fn run(&self, input: &In) -> impl Future<Output = Result<Prediction<Out>, ModelError>> + Send {
        (**self).run(input)
    }
}
