//! Pipelines of models: the contract models implement, stages, the runner and
//! what a run reports.

mod error;
mod instruments;
mod model;
mod report;
mod runner;
mod stage;

pub use error::{BuildError, ModelFailure, RunError};
pub use model::{Component, Model, ModelError, Prediction};
pub use report::{ModelReport, Outcome, RunReport, StageKind, StageReport};
pub use runner::{Execution, Pipeline, PipelineBuilder, LOW_CONFIDENCE};
pub use stage::{SelectionPolicy, Stage};

#[cfg(test)]
mod tests;
