//! Pipelines of models: the contracts models implement, typed stages, the
//! runner and what a run reports.

mod call;
mod chain;
mod error;
mod execute;
mod instruments;
mod lifecycle;
mod model;
mod report;
mod runner;
mod stage;

pub use call::ModelKind;
pub use error::{BuildError, LoadError, ModelFailure, RunError};
pub use model::{AsyncModel, Component, Model, ModelError, Prediction};
pub use report::{ModelReport, Outcome, RunReport, StageKind, StageReport};
pub use runner::{Execution, ModelInfo, Pipeline, PipelineBuilder, StageInfo, LOW_CONFIDENCE};
pub use stage::{Parallel, SelectionPolicy, Sequential, Stage};

#[cfg(test)]
mod tests;
