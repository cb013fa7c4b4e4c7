//! What a run returns: the output and, per stage and model, what happened.

use std::time::Duration;

use serde::Serialize;

use super::judge::Answer;
use super::model::Component;

/// How one model execution ended. Each value is also the `outcome` label of
/// `ml_model_executions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The model returned a prediction.
    Success,
    /// The model returned an error.
    Error,
    /// The model panicked; the runner caught it.
    Panic,
    /// The model did not finish within its stage's timeout.
    Timeout,
}

impl Outcome {
    /// Every outcome, in label order.
    pub const ALL: [Outcome; 4] = [
        Outcome::Success,
        Outcome::Error,
        Outcome::Panic,
        Outcome::Timeout,
    ];

    /// The label value of this outcome.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Error => "error",
            Outcome::Panic => "panic",
            Outcome::Timeout => "timeout",
        }
    }
}

/// How a stage runs its models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StageKind {
    /// All models see the same input, concurrently; one output is selected.
    Parallel,
    /// Models run one after another, each seeing the previous output.
    Sequential,
}

impl StageKind {
    /// The attribute value of this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            StageKind::Parallel => "parallel",
            StageKind::Sequential => "sequential",
        }
    }
}

/// What happened to one model in one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelReport {
    /// The model's name.
    pub model_name: String,
    /// The model's version.
    pub model_version: String,
    /// How the execution ended.
    pub outcome: Outcome,
    /// The confidence reported (after clamping to `[0, 1]`), on success.
    pub confidence: Option<f64>,
    /// Wall-clock time of the execution.
    #[serde(rename = "duration_seconds", serialize_with = "as_seconds")]
    pub duration: Duration,
    /// Components produced, on success.
    pub components: Vec<Component>,
    /// The error, panic message or timeout, when the model did not succeed.
    pub error: Option<String>,
    /// What the model answered, in a stage with a [`crate::Judge`], on
    /// success: what its ground truth will be compared with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer: Option<Answer>,
}

/// What happened in one stage of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageReport {
    /// The stage's name.
    pub stage: String,
    /// Parallel or sequential.
    pub kind: StageKind,
    /// The model whose output the stage passed on: the selected candidate of a
    /// parallel stage, the last model of a sequential one. `None` when the
    /// stage failed.
    pub selected_model: Option<String>,
    /// Every model the stage ran (or tried to), in declaration order.
    pub models: Vec<ModelReport>,
    /// Wall-clock time of the stage.
    #[serde(rename = "duration_seconds", serialize_with = "as_seconds")]
    pub duration: Duration,
}

/// The result of a successful run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunReport<T> {
    /// The pipeline's name.
    pub pipeline: String,
    /// The run's id (32 hex digits, the `pipeline.run_id` attribute of its
    /// span): where its ground truth is sent
    /// (`POST /v1/pipelines/{name}/runs/{run_id}/feedback`, or
    /// [`crate::Pipeline::feedback`]).
    pub run_id: String,
    /// The W3C trace id of the run's `pipeline.run` span, when tracing is on.
    pub trace_id: Option<String>,
    /// Wall-clock time of the run.
    #[serde(rename = "duration_seconds", serialize_with = "as_seconds")]
    pub duration: Duration,
    /// Per-stage reports, in order.
    pub stages: Vec<StageReport>,
    /// The last stage's output.
    pub output: T,
}

fn as_seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}
