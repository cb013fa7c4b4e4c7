//! pipelens runs ML inference pipelines — parallel candidate models with
//! champion selection, sequential steps — and makes every run observable:
//! `pipeline.run` → `stage.run` → `model.run` spans bridged to OpenTelemetry,
//! the `ml_*` metrics of [`names`] from OTel meters, and structured log events
//! that carry the trace id. Models know nothing of telemetry.

pub mod names;
pub mod pipeline;
pub mod telemetry;

pub use pipeline::{
    BuildError, Component, Execution, Model, ModelError, ModelReport, Outcome, Pipeline,
    PipelineBuilder, Prediction, RunError, RunReport, SelectionPolicy, Stage, StageKind,
    StageReport,
};
pub mod ceiling;
pub mod drift;
pub mod faults;
pub mod loadgen;
pub mod planner;
pub mod server;
