//! Ground truth after the run: what each judged stage's candidates answered
//! is remembered per run id, in a bounded store, until the truth arrives;
//! then every answer is judged and counted per model.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use opentelemetry::metrics::{BoundCounter, BoundHistogram};
use opentelemetry::KeyValue;
use serde::Serialize;

use super::instruments::Instruments;
use super::judge::{Answer, Rule};
use super::report::StageReport;
use crate::names;

/// Default number of runs remembered for feedback, per pipeline.
pub const FEEDBACK_RUNS: usize = 100_000;
/// Default time a run waits for its ground truth.
pub const FEEDBACK_RETENTION: Duration = Duration::from_secs(3600);

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
    /// run failed, or it is older than the retention window.
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

/// What one judged stage of one run answered.
struct Answers {
    /// By candidate, in declaration order; `None` for those that failed.
    answers: Vec<Option<Answer>>,
    selected: Option<usize>,
    judged: bool,
}

struct Entry {
    at: Instant,
    /// By judged stage.
    stages: Vec<Answers>,
}

#[derive(Default)]
struct Shard {
    runs: HashMap<u128, Entry>,
    /// Run ids in the order they were remembered (so oldest first).
    order: VecDeque<u128>,
}

const SHARDS: usize = 16;

/// The runs of one pipeline awaiting ground truth: at most `capacity`,
/// none older than `retention`; the oldest go first. Sharded so concurrent
/// runs rarely wait on each other.
pub(crate) struct Memory {
    shards: [Mutex<Shard>; SHARDS],
    per_shard: usize,
    retention: Duration,
}

impl Memory {
    pub(crate) fn new(capacity: usize, retention: Duration) -> Self {
        Self {
            shards: std::array::from_fn(|_| Mutex::new(Shard::default())),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            retention,
        }
    }

    fn shard(&self, id: u128) -> std::sync::MutexGuard<'_, Shard> {
        // Ids are random: their low bits spread evenly.
        let shard = &self.shards[(id as usize) % SHARDS];
        shard.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remembers what the judged stages of a successful run answered.
    pub(crate) fn remember(&self, id: u128, judged: &[JudgedStage], reports: &[StageReport]) {
        let stages = judged
            .iter()
            .map(|j| {
                let report = reports.get(j.position);
                Answers {
                    answers: report
                        .map(|r| r.models.iter().map(|m| m.answer.clone()).collect())
                        .unwrap_or_default(),
                    selected: report.and_then(|r| {
                        let selected = r.selected_model.as_deref()?;
                        r.models.iter().position(|m| m.model_name == selected)
                    }),
                    judged: false,
                }
            })
            .collect();
        let now = Instant::now();
        let mut shard = self.shard(id);
        shard.evict(now, self.retention, self.per_shard.saturating_sub(1));
        if shard.runs.insert(id, Entry { at: now, stages }).is_none() {
            shard.order.push_back(id);
        }
    }

    /// Judges the answers of `stage` (an index into `judged`) of run `id`
    /// against `truth`, once.
    pub(crate) fn judge(
        &self,
        pipeline: &str,
        run_id: &str,
        judged: &[JudgedStage],
        stage: usize,
        truth: Answer,
    ) -> Result<FeedbackReport, FeedbackError> {
        let unknown = || FeedbackError::UnknownRun {
            run_id: run_id.to_owned(),
        };
        let id = parse_run_id(run_id).ok_or_else(unknown)?;
        let spec = &judged[stage];
        let now = Instant::now();
        let (answers, selected) = {
            let mut shard = self.shard(id);
            shard.evict(now, self.retention, self.per_shard);
            let entry = shard.runs.get_mut(&id).ok_or_else(unknown)?;
            let Some(answers) = entry.stages.get_mut(stage) else {
                return Err(unknown());
            };
            if answers.judged {
                return Err(FeedbackError::AlreadyJudged {
                    run_id: run_id.to_owned(),
                    stage: spec.name.clone(),
                });
            }
            answers.judged = true;
            (std::mem::take(&mut answers.answers), answers.selected)
        };
        let mut models = Vec::new();
        let mut selected_correct = None;
        for (i, (answer, model)) in answers.into_iter().zip(&spec.models).enumerate() {
            let Some(answer) = answer else { continue };
            let verdict = spec.rule.verdict(&answer, &truth);
            model.counts[usize::from(verdict.correct)].add(1);
            if let (Some(h), Some(e)) = (&model.error, verdict.absolute_error) {
                h.record(e);
            }
            if selected == Some(i) {
                spec.served[usize::from(verdict.correct)].add(1);
                selected_correct = Some(verdict.correct);
            }
            models.push(Judgement {
                model_name: model.name.clone(),
                answer,
                correct: verdict.correct,
                absolute_error: verdict.absolute_error,
            });
        }
        let selected_model = selected.map(|i| spec.models[i].name.clone());
        tracing::info!(
            pipeline.name = pipeline,
            stage.name = spec.name.as_str(),
            run_id = run_id,
            model.name = selected_model.as_deref().unwrap_or(""),
            feedback.correct = selected_correct.unwrap_or(false),
            "feedback recorded"
        );
        Ok(FeedbackReport {
            pipeline: pipeline.to_owned(),
            run_id: run_id.to_owned(),
            stage: spec.name.clone(),
            truth,
            selected_model,
            selected_correct,
            models,
        })
    }
}

impl Shard {
    /// Drops runs older than `retention`, then the oldest until at most
    /// `keep` are left.
    fn evict(&mut self, now: Instant, retention: Duration, keep: usize) {
        while let Some(&oldest) = self.order.front() {
            let expired = self
                .runs
                .get(&oldest)
                .is_none_or(|e| now.duration_since(e.at) > retention);
            if !expired && self.runs.len() <= keep {
                break;
            }
            self.order.pop_front();
            self.runs.remove(&oldest);
        }
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
