//! Stages: a named group of models run in parallel or in sequence.

use std::sync::Arc;
use std::time::Duration;

use super::model::Model;
use super::report::StageKind;

/// How a parallel stage picks the output it passes on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SelectionPolicy {
    /// The successful candidate with the highest confidence; ties go to the
    /// model declared first.
    #[default]
    HighestConfidence,
    /// The first successful candidate in declaration order (a fallback chain
    /// that still runs every candidate, so their metrics stay comparable).
    FirstSuccess,
}

/// A named stage of a pipeline, built with [`Stage::parallel`] or
/// [`Stage::sequential`] and handed to [`crate::PipelineBuilder::stage`].
pub struct Stage<T> {
    pub(crate) name: String,
    pub(crate) kind: StageKind,
    pub(crate) models: Vec<Arc<dyn Model<T>>>,
    pub(crate) policy: SelectionPolicy,
    pub(crate) timeout: Option<Duration>,
}

impl<T> Stage<T> {
    /// A stage whose models all see the same input, run concurrently, and
    /// compete: one output is selected by the stage's [`SelectionPolicy`].
    pub fn parallel(name: impl Into<String>) -> Self {
        Self::new(name.into(), StageKind::Parallel)
    }

    /// A stage whose models run one after another, each seeing the previous
    /// model's output. A failing model fails the stage.
    pub fn sequential(name: impl Into<String>) -> Self {
        Self::new(name.into(), StageKind::Sequential)
    }

    fn new(name: String, kind: StageKind) -> Self {
        Self {
            name,
            kind,
            models: Vec::new(),
            policy: SelectionPolicy::default(),
            timeout: None,
        }
    }

    /// Adds a model to the stage.
    #[must_use]
    pub fn model(self, model: impl Model<T>) -> Self {
        self.shared_model(Arc::new(model))
    }

    /// Adds a model that is shared with other stages or pipelines.
    #[must_use]
    pub fn shared_model(mut self, model: Arc<dyn Model<T>>) -> Self {
        self.models.push(model);
        self
    }

    /// Sets how a parallel stage selects its output (ignored by sequential
    /// stages).
    #[must_use]
    pub fn select(mut self, policy: SelectionPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Sets the time each model of the stage may take. A model that takes
    /// longer is recorded with the `timeout` outcome and its output dropped.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The stage's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}
