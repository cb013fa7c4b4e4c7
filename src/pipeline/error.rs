//! Typed errors of building and running pipelines.

use super::report::{Outcome, StageReport};

/// Why a pipeline could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The pipeline has no stage.
    #[error("pipeline `{pipeline}` has no stage")]
    NoStages {
        /// The pipeline's name.
        pipeline: String,
    },
    /// A stage has no model.
    #[error("stage `{stage}` has no model")]
    EmptyStage {
        /// The stage's name.
        stage: String,
    },
    /// Two stages share a name (stage names are metric labels).
    #[error("stage name `{stage}` is used twice")]
    DuplicateStage {
        /// The repeated name.
        stage: String,
    },
    /// Two models of one stage share a name (model names are metric labels).
    #[error("model name `{model}` is used twice in stage `{stage}`")]
    DuplicateModel {
        /// The stage's name.
        stage: String,
        /// The repeated name.
        model: String,
    },
    /// A name is empty or too long to be a label value.
    #[error("invalid {what} name `{name}`: must be 1 to 64 characters")]
    InvalidName {
        /// What was being named: `pipeline`, `stage` or `model`.
        what: &'static str,
        /// The rejected name.
        name: String,
    },
    /// A parallel stage has shadows but no serving candidate.
    #[error("stage `{stage}` has only shadows: it needs at least one candidate to serve")]
    OnlyShadows {
        /// The stage's name.
        stage: String,
    },
    /// A stage selects by measured accuracy but has no judge to measure
    /// with (see [`crate::Parallel::judge`]).
    #[error("stage `{stage}` selects by measured accuracy but has no judge: add `.judge(..)`")]
    MeasuredWithoutJudge {
        /// The stage's name.
        stage: String,
    },
}

/// One model's failure, as named in a [`RunError`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFailure {
    /// The model's name.
    pub model: String,
    /// How it ended.
    pub outcome: Outcome,
    /// The error, panic message or timeout.
    pub message: String,
}

/// Why a pipeline run failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// No model of a stage succeeded, so the run cannot go on.
    #[error(
        "stage `{stage}` of pipeline `{pipeline}` failed: {}",
        describe(failures)
    )]
    StageFailed {
        /// The pipeline's name.
        pipeline: String,
        /// The stage that failed.
        stage: String,
        /// Every model of the stage that failed, with how.
        failures: Vec<ModelFailure>,
        /// The reports of the stages that ran, the failed one last.
        stages: Vec<StageReport>,
        /// The W3C trace id of the run, when tracing is on.
        trace_id: Option<String>,
    },
}

fn describe(failures: &[ModelFailure]) -> String {
    failures
        .iter()
        .map(|f| format!("{} ({}: {})", f.model, f.outcome.as_str(), f.message))
        .collect::<Vec<_>>()
        .join(", ")
}

impl RunError {
    /// The stage that failed.
    pub fn stage(&self) -> &str {
        match self {
            Self::StageFailed { stage, .. } => stage,
        }
    }

    /// The W3C trace id of the failed run, when tracing is on.
    pub fn trace_id(&self) -> Option<&str> {
        match self {
            Self::StageFailed { trace_id, .. } => trace_id.as_deref(),
        }
    }
}

/// Why some models of a pipeline did not load.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pipeline `{pipeline}`: {} did not load", describe_load(failures))]
pub struct LoadError {
    /// The pipeline's name.
    pub pipeline: String,
    /// Each model that failed to load, with its error.
    pub failures: Vec<(String, String)>,
}

fn describe_load(failures: &[(String, String)]) -> String {
    failures
        .iter()
        .map(|(model, error)| format!("{model} ({error})"))
        .collect::<Vec<_>>()
        .join(", ")
}
