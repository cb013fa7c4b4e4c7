//! pipelens runs ML inference pipelines — typed stages of sync and async
//! models, parallel candidates with champion selection, sequential steps —
//! and makes every run observable: `pipeline.run` → `stage.run` →
//! `model.run` spans bridged to OpenTelemetry, the `ml_*` metrics of
//! [`names`] from OTel meters, and structured log events that carry the
//! trace id. Models know nothing of telemetry. With the `server` feature,
//! [`server`] serves any number of pipelines over HTTP.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # tokio::runtime::Runtime::new()?.block_on(async {
//! use pipelens::server::{FieldError, Served, Server};
//! use pipelens::telemetry::{self, TelemetryConfig};
//! use pipelens::{AsyncModel, Model, ModelError, Pipeline, Prediction, Stage};
//!
//! #[derive(serde::Deserialize)]
//! struct Review { text: String }
//!
//! #[derive(serde::Serialize)]
//! struct Verdict { label: &'static str, score: f64 }
//!
//! /// A sync model: CPU work, run off the async threads.
//! struct Keywords;
//! impl Model<Vec<String>, f64> for Keywords {
//!     fn name(&self) -> &str { "keywords" }
//!     fn version(&self) -> &str { "1.0.0" }
//!     fn run(&self, words: &Vec<String>) -> Result<Prediction<f64>, ModelError> {
//!         let good = words.iter().filter(|w| *w == "great").count() as f64;
//!         Ok(Prediction::new(good / words.len().max(1) as f64, 0.7))
//!     }
//! }
//!
//! /// An async model: a remote model server, with a load step.
//! struct Remote;
//! impl AsyncModel<Vec<String>, f64> for Remote {
//!     fn name(&self) -> &str { "remote" }
//!     fn version(&self) -> &str { "2.1.0" }
//!     async fn load(&self) -> Result<(), ModelError> { Ok(()) } // connect, check the model is served
//!     async fn run(&self, words: &Vec<String>) -> Result<Prediction<f64>, ModelError> {
//!         // e.g. POST to Triton/TEI/vLLM with pipelens::telemetry::trace_headers()
//!         Ok(Prediction::new(words.len() as f64 / 10.0, 0.6))
//!     }
//! }
//!
//! let telemetry = telemetry::init(&TelemetryConfig::from_env()?)?; // the only global install
//! let reviews: Pipeline<Review, Verdict> = Pipeline::builder("reviews")
//!     .meter(telemetry.meter())
//!     .step("tokenize", |r: &Review| Ok(r.text.split_whitespace().map(str::to_lowercase).collect()))
//!     .stage(Stage::parallel("score").model(Keywords).async_model(Remote)
//!         .timeout(std::time::Duration::from_millis(500)))
//!     .step("label", |s: &f64| Ok(Verdict { label: if *s > 0.3 { "positive" } else { "negative" }, score: *s }))
//!     .build()?;
//!
//! // Run it in-process...
//! let report = reviews.run(Review { text: "great great stuff".into() }).await?;
//! assert_eq!(report.output.label, "positive");
//!
//! // ...or serve it: POST /v1/pipelines/reviews/runs, GET /v1/pipelines, /health, /ready, /metrics.
//! let server = Server::builder()
//!     .telemetry(&telemetry)
//!     .pipeline(Served::new(reviews).validate(|r: &Review| {
//!         if r.text.is_empty() { Err(FieldError::new("text", "must not be empty")) } else { Ok(()) }
//!     }))
//!     .build()?;
//! let app: axum::Router = server.router(); // mount in your own app: your_router.merge(app)
//! // or standalone, until SIGTERM, then drain and flush telemetry:
//! // pipelens::server::run(server, "127.0.0.1:8000".parse()?, telemetry).await?;
//! # drop(app);
//! # tokio::task::spawn_blocking(move || telemetry.shutdown()).await??;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })
//! # }
//! ```

mod answer;
pub mod batch;
pub mod drift;
pub mod faults;
pub mod input;
#[cfg(any(feature = "onnx", feature = "open-inference"))]
pub mod models;
pub mod names;
pub mod pipeline;
#[cfg(feature = "server")]
pub mod server;
pub mod store;
pub mod telemetry;

pub use drift::{DriftSpec, Feature};
pub use pipeline::{
    Answer, AsyncModel, BuildError, Component, Execution, FeedbackError, FeedbackReport, Judge,
    LoadError, MeasuredAccuracy, Model, ModelError, ModelInfo, ModelKind, ModelReport, Outcome,
    Parallel, Pipeline, PipelineBuilder, Prediction, Role, RunError, RunReport, SelectionPolicy,
    Sequential, Stage, StageInfo, StageKind, StageReport,
};
