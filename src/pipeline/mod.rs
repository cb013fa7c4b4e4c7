//! Pipelines of models: the contracts models implement, typed stages, the
//! runner and what a run reports.

mod call;
mod chain;
mod champion;
mod error;
mod execute;
mod execution;
mod feedback;
mod instruments;
mod judge;
mod lifecycle;
mod model;
mod pace;
mod report;
mod runner;
mod stage;

pub use call::ModelKind;
pub use champion::{MeasuredAccuracy, Role};
pub use error::{BuildError, LoadError, ModelFailure, RunError};
pub use execution::{Execution, LOW_CONFIDENCE};
pub use feedback::{FeedbackError, FeedbackReport, Judgement, FEEDBACK_RETENTION, FEEDBACK_RUNS};
pub use judge::{Answer, Judge};
pub use model::{AsyncModel, Component, Model, ModelError, Prediction};
pub use pace::INLINE_BELOW;
pub use report::{ModelReport, Outcome, RunReport, StageKind, StageReport};
pub use runner::{ModelInfo, Pipeline, PipelineBuilder, StageInfo};
pub use stage::{Parallel, SelectionPolicy, Sequential, Stage, MAX_PENDING_SHADOWS};

#[cfg(test)]
mod tests;
