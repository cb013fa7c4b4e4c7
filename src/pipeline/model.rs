//! The model contract: what a pipeline runs. Models know nothing of telemetry.

use std::borrow::Cow;

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

/// Why a model could not produce a prediction.
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
    /// A fault knob made the model fail on purpose (demos and alert tests).
    #[error("injected fault: {0}")]
    InjectedFault(String),
}

impl ModelError {
    /// The bounded `error_type` label value for this error.
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::InvalidInput(_) => "invalid_input",
            Self::Computation(_) => "computation",
            Self::InjectedFault(_) => "injected_fault",
        }
    }
}

/// A model that a pipeline stage can run on an input of type `T`.
///
/// Every stage of a pipeline maps `T` to `T`: a parallel stage gives all its
/// candidates the same input and passes the selected output on; a sequential
/// stage feeds each model the previous model's output. Models are plain
/// computation: the runner adds spans, metrics, logs, timeouts and panic
/// isolation around them.
pub trait Model<T>: Send + Sync + 'static {
    /// Stable model name; a label value on every model metric.
    fn name(&self) -> &str;
    /// Model version; a label value on `ml_model_loaded`.
    fn version(&self) -> &str;
    /// Runs the model on `input`.
    fn run(&self, input: &T) -> Result<Prediction<T>, ModelError>;
}
