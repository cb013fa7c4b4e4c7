//! pipelens runs ML inference pipelines — parallel candidate models with
//! champion selection, sequential steps — and makes every run observable:
//! `pipeline.run` → `stage.run` → `model.run` spans bridged to OpenTelemetry,
//! the `ml_*` metrics of [`names`] from OTel meters, and structured log events
//! that carry the trace id. Models know nothing of telemetry.
//!
//! ```
//! use pipelens::telemetry::{self, TelemetryConfig};
//! use pipelens::{Model, ModelError, Pipeline, Prediction, Stage};
//!
//! struct Doubler;
//!
//! impl Model<f64> for Doubler {
//!     fn name(&self) -> &str { "doubler" }
//!     fn version(&self) -> &str { "1.0.0" }
//!     fn run(&self, x: &f64) -> Result<Prediction<f64>, ModelError> {
//!         Ok(Prediction::new(x * 2.0, 0.9).with_component("value", 1))
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # tokio::runtime::Runtime::new()?.block_on(async {
//! // The only global install: subscriber, meter provider, propagator.
//! let telemetry = telemetry::init(&TelemetryConfig::from_env()?)?;
//! let pipeline = Pipeline::builder("numbers")
//!     .meter(telemetry.meter())
//!     .stage(Stage::parallel("candidates").model(Doubler).timeout(std::time::Duration::from_secs(1)))
//!     .build()?;
//! let report = pipeline.run(21.0).await?;
//! assert_eq!(report.output, 42.0);
//! assert_eq!(report.stages[0].selected_model.as_deref(), Some("doubler"));
//! assert!(telemetry.encode_metrics().contains(r#"ml_model_selected_total{model_name="doubler",stage="candidates"} 1"#));
//! // Flush traces, logs and metrics (blocking: off the async threads).
//! tokio::task::spawn_blocking(move || telemetry.shutdown()).await??;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })
//! # }
//! ```

pub mod ceiling;
pub mod drift;
pub mod faults;
pub mod loadgen;
pub mod names;
pub mod pipeline;
pub mod planner;
pub mod server;
pub mod telemetry;

pub use pipeline::{
    BuildError, Component, Execution, Model, ModelError, ModelReport, Outcome, Pipeline,
    PipelineBuilder, Prediction, RunError, RunReport, SelectionPolicy, Stage, StageKind,
    StageReport,
};
