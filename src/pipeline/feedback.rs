//! Ground truth after the run: what each judged stage's candidates answered
//! is remembered per run id, in a bounded store, until the truth arrives;
//! then every answer is judged and counted per model.

use std::time::SystemTime;

use opentelemetry::metrics::{BoundCounter, BoundHistogram};
use opentelemetry::KeyValue;
use serde::Serialize;

use super::instruments::Instruments;
use super::judge::{Answer, Rule};
use super::report::StageReport;
use crate::names;
use crate::store::{ModelAnswer, RunRecord, StageRecord};

pub use crate::store::{FEEDBACK_RETENTION, FEEDBACK_RUNS};

/// Why ground truth was not recorded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum FeedbackError {
    /// The pipeline has no judged stage, so it remembers no run.
    #[error("pipeline `{pipeline}` takes no feedback: none of its stages has a judge")]
    NotJudged {
        /// The pipeline.
        pipeline: String,
    },
    /// No run with this id is waiting for feedback: the id is unknown, the
    /// run failed, it is older than the retention window, or the store
    /// dropped it (queue full).
    #[error("no run `{run_id}` awaits feedback (unknown, failed, or past the retention window)")]
    UnknownRun {
        /// The id as given.
        run_id: String,
    },
    /// This stage of this run has had its ground truth already.
    #[error("run `{run_id}` already has feedback for stage `{stage}`")]
    AlreadyJudged {
        /// The run.
        run_id: String,
        /// The stage.
        stage: String,
    },
    /// The pipeline judges several stages: the feedback must name one.
    #[error("name the stage the truth is for: one of {stages:?}")]
    StageRequired {
        /// The judged stages.
        stages: Vec<String>,
    },
    /// The named stage is not judged in this pipeline.
    #[error("stage `{stage}` is not judged; judged stages: {stages:?}")]
    UnknownStage {
        /// The stage as given.
        stage: String,
        /// The judged stages.
        stages: Vec<String>,
    },
    /// The truth is a label where the stage judges values, or the reverse.
    #[error("stage `{stage}` is judged by {expected}: send the truth as `{expected}`")]
    WrongKind {
        /// The stage.
        stage: String,
        /// `label` or `value`.
        expected: &'static str,
    },
    /// A value truth must be a finite number.
    #[error("the true value must be a finite number")]
    NotFinite,
    /// The run store did not answer: the run may exist, so try again later
    /// (an HTTP service answers 503 with `Retry-After`).
    #[error("the run store is unavailable, retry later: {message}")]
    StoreUnavailable {
        /// Why (never a password).
        message: String,
    },
}

impl FeedbackError {
    /// The request field at fault, for errors about the feedback's content
    /// (an HTTP service answers those with 422).
    pub fn field(&self) -> Option<&'static str> {
        match self {
            FeedbackError::StageRequired { .. } | FeedbackError::UnknownStage { .. } => {
                Some("stage")
            }
            FeedbackError::WrongKind { expected, .. } => Some(expected),
            FeedbackError::NotFinite => Some("value"),
            _ => None,
        }
    }
}

/// The verdict on one candidate's answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Judgement {
    /// The candidate.
    pub model_name: String,
    /// What it answered in the run.
    pub answer: Answer,
    /// Whether the answer counts as correct.
    pub correct: bool,
    /// For values, `|answer - truth|`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub absolute_error: Option<f64>,
}

/// What recording ground truth found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeedbackReport {
    /// The pipeline.
    pub pipeline: String,
    /// The run.
    pub run_id: String,
    /// The judged stage.
    pub stage: String,
    /// The truth.
    pub truth: Answer,
    /// The candidate whose output the stage served.
    pub selected_model: Option<String>,
    /// Whether the served answer was correct.
    pub selected_correct: Option<bool>,
    /// Every candidate that answered, in declaration order.
    pub models: Vec<Judgement>,
}

/// One judged parallel stage, bound when the pipeline is built.
pub(crate) struct JudgedStage {
    pub(crate) name: String,
    /// The stage's position among all of the pipeline's stages.
    pub(crate) position: usize,
    pub(crate) rule: Rule,
    pub(crate) models: Vec<JudgedModel>,
    /// `ml_pipeline_feedback_total{outcome}`: incorrect, correct.
    served: [BoundCounter<u64>; 2],
}

/// One candidate of a judged stage.
pub(crate) struct JudgedModel {
    pub(crate) name: String,
    /// `ml_model_feedback_total{outcome}`: incorrect, correct.
    counts: [BoundCounter<u64>; 2],
    /// For value judges: `ml_model_absolute_error`.
    error: Option<BoundHistogram<f64>>,
}

fn outcome(correct: bool) -> &'static str {
    if correct {
        names::FEEDBACK_CORRECT
    } else {
        names::FEEDBACK_INCORRECT
    }
}

impl JudgedStage {
    /// Binds the feedback instruments of a stage's candidates.
    pub(crate) fn bind(
        ins: &Instruments,
        pipeline: &str,
        name: &str,
        position: usize,
        rule: Rule,
        models: &[String],
    ) -> Self {
        let p = KeyValue::new(names::PIPELINE, pipeline.to_owned());
        let s = KeyValue::new(names::STAGE, name.to_owned());
        let served = [false, true].map(|c| {
            ins.pipeline_feedback.bind(&[
                p.clone(),
                s.clone(),
                KeyValue::new(names::OUTCOME, outcome(c)),
            ])
        });
        let models = models
            .iter()
            .map(|m| {
                let labels = [
                    p.clone(),
                    s.clone(),
                    KeyValue::new(names::MODEL_NAME, m.clone()),
                ];
                JudgedModel {
                    name: m.clone(),
                    counts: [false, true].map(|c| {
                        let mut with_outcome = labels.to_vec();
                        with_outcome.push(KeyValue::new(names::OUTCOME, outcome(c)));
                        ins.feedback.bind(&with_outcome)
                    }),
                    error: (rule.kind == super::judge::JudgeKind::Value)
                        .then(|| ins.absolute_error.bind(&labels)),
                }
            })
            .collect();
        Self {
            name: name.to_owned(),
            position,
            rule,
            models,
            served,
        }
    }
}

/// What the judged stages of a successful run answered, as the run store
/// keeps it.
pub(crate) fn record(
    pipeline: &str,
    run_id: u128,
    judged: &[JudgedStage],
    reports: &[StageReport],
) -> RunRecord {
    let stages = judged
        .iter()
        .map(|j| {
            let report = reports.get(j.position);
            StageRecord {
                stage: j.name.clone(),
                selected: report.and_then(|r| r.selected_model.clone()),
                answers: report
                    .map(|r| {
                        r.models
                            .iter()
                            .map(|m| ModelAnswer {
                                model: m.model_name.clone(),
                                answer: m.answer.clone(),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            }
        })
        .collect();
    RunRecord {
        pipeline: pipeline.to_owned(),
        run_id,
        at: SystemTime::now(),
        stages,
    }
}

/// Judges a claimed stage's answers against `truth`: counts every
/// candidate's verdict and the served one's, and reports them.
pub(crate) fn judge(
    pipeline: &str,
    run_id: &str,
    spec: &JudgedStage,
    stored: StageRecord,
    truth: Answer,
) -> FeedbackReport {
    let mut models = Vec::new();
    let mut selected_correct = None;
    for stored_answer in stored.answers {
        let Some(answer) = stored_answer.answer else {
            continue;
        };
        // A candidate that is no longer declared (the pipeline changed
        // since the run) is reported but not counted.
        let model = spec.models.iter().find(|m| m.name == stored_answer.model);
        let verdict = spec.rule.verdict(&answer, &truth);
        if let Some(model) = model {
            model.counts[usize::from(verdict.correct)].add(1);
            if let (Some(h), Some(e)) = (&model.error, verdict.absolute_error) {
                h.record(e);
            }
        }
        if stored.selected.as_deref() == Some(stored_answer.model.as_str()) {
            spec.served[usize::from(verdict.correct)].add(1);
            selected_correct = Some(verdict.correct);
        }
        models.push(Judgement {
            model_name: stored_answer.model,
            answer,
            correct: verdict.correct,
            absolute_error: verdict.absolute_error,
        });
    }
    tracing::info!(
        pipeline.name = pipeline,
        stage.name = spec.name.as_str(),
        run_id = run_id,
        model.name = stored.selected.as_deref().unwrap_or(""),
        feedback.correct = selected_correct.unwrap_or(false),
        "feedback recorded"
    );
    FeedbackReport {
        pipeline: pipeline.to_owned(),
        run_id: run_id.to_owned(),
        stage: spec.name.clone(),
        truth,
        selected_model: stored.selected,
        selected_correct,
        models,
    }
}

/// A run id is a W3C trace id: 32 lowercase hex digits, not all zero.
pub(crate) fn parse_run_id(run_id: &str) -> Option<u128> {
    if run_id.len() != 32
        || !run_id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    u128::from_str_radix(run_id, 16).ok().filter(|&id| id != 0)
}

/// A fresh random run id, for runs without a trace id (tracing off).
pub(crate) fn new_run_id() -> String {
    use opentelemetry_sdk::trace::{IdGenerator as _, RandomIdGenerator};
    RandomIdGenerator::default().new_trace_id().to_string()
}
