//! Ground truth after the run: what each judged stage's candidates answered
//! is remembered per run id, in a bounded store, until the truth arrives;
//! then every answer is judged and counted per model.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use opentelemetry::metrics::{BoundCounter, BoundHistogram};
use opentelemetry::KeyValue;
use serde::Serialize;

use super::champion::Board;
use super::instruments::Instruments;
use super::judge::{Answer, Rule};
use super::report::StageReport;
use crate::names;
use crate::store::{LateAnswer, ModelAnswer, RunRecord, RunStore, StageRecord};

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
    /// Each model's measured accuracy, and the champion.
    board: Arc<Board>,
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
        board: Arc<Board>,
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
            board,
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
    let mut verdicts = Vec::with_capacity(stored.answers.len());
    for stored_answer in stored.answers {
        let Some(answer) = stored_answer.answer else {
            continue;
        };
        // A candidate that is no longer declared (the pipeline changed
        // since the run) is reported but not counted.
        let index = spec
            .models
            .iter()
            .position(|m| m.name == stored_answer.model);
        let verdict = spec.rule.verdict(&answer, &truth);
        if let Some(i) = index {
            verdicts.push((i, verdict));
            let model = &spec.models[i];
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
    spec.board.observe(&verdicts);
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

/// Longest feedback waits for the shadows of its run that are still
/// running in this process.
const SHADOW_WAIT: Duration = Duration::from_secs(2);

/// Runs whose judged shadows are still running, by run id: feedback for
/// one of them waits for its shadows first.
pub(crate) type Awaiting = Mutex<HashMap<u128, Arc<ShadowSink>>>;

/// Where a run's judged shadows leave their answers: they answer after the
/// stage, often after the run, so an answer that comes before the run is
/// stored joins its record, and one that comes after is added to it.
pub(crate) struct ShadowSink {
    state: Mutex<SinkState>,
    done: tokio::sync::Notify,
}

struct SinkState {
    /// Shadows started for this run that have not finished.
    pending: usize,
    sink: Sink,
    /// Where the run waits while its shadows run (once it is stored).
    listed: Option<(Weak<Awaiting>, u128)>,
}

enum Sink {
    /// The run has not ended: answers wait here (by stage).
    Collecting(Vec<(String, ModelAnswer)>),
    /// The run is stored: answers go to the store.
    Stored {
        store: RunStore,
        pipeline: String,
        run_id: u128,
    },
    /// The run failed or takes no feedback: answers are dropped.
    Closed,
}

/// A started shadow's hold on its run's sink: finishing (or being dropped)
/// lets feedback that waits for the run go on.
pub(crate) struct ShadowTicket(Arc<ShadowSink>);

impl ShadowTicket {
    /// The shadow answered.
    pub(crate) fn deliver(&self, stage: &str, answer: ModelAnswer) {
        let mut state = self.0.lock();
        match &mut state.sink {
            Sink::Collecting(answers) => answers.push((stage.to_owned(), answer)),
            Sink::Stored {
                store,
                pipeline,
                run_id,
            } => store.add_answer(LateAnswer {
                pipeline: pipeline.clone(),
                run_id: *run_id,
                stage: stage.to_owned(),
                answer,
            }),
            Sink::Closed => {}
        }
    }
}

impl Drop for ShadowTicket {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.pending = state.pending.saturating_sub(1);
        if state.pending == 0 {
            if let Some((awaiting, id)) = state.listed.take() {
                if let Some(awaiting) = awaiting.upgrade() {
                    awaiting
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&id);
                }
            }
            self.0.done.notify_waiters();
        }
    }
}

impl ShadowSink {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(SinkState {
                pending: 0,
                sink: Sink::Collecting(Vec::new()),
                listed: None,
            }),
            done: tokio::sync::Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SinkState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A shadow starts for this run.
    pub(crate) fn ticket(self: &Arc<Self>) -> ShadowTicket {
        self.lock().pending += 1;
        ShadowTicket(Arc::clone(self))
    }

    /// Stores the run with the answers that came so far; later ones follow
    /// it into the store, and while they run the run is listed in
    /// `awaiting`.
    pub(crate) fn store(
        self: &Arc<Self>,
        mut run: RunRecord,
        store: &RunStore,
        awaiting: &Arc<Awaiting>,
    ) {
        let mut state = self.lock();
        if let Sink::Collecting(answers) = &mut state.sink {
            for (stage, answer) in answers.drain(..) {
                if let Some(s) = run.stages.iter_mut().find(|s| s.stage == stage) {
                    s.answers.push(answer);
                }
            }
        }
        let (pipeline, run_id) = (run.pipeline.clone(), run.run_id);
        store.record(run);
        state.sink = Sink::Stored {
            store: store.clone(),
            pipeline,
            run_id,
        };
        if state.pending > 0 {
            awaiting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(run_id, Arc::clone(self));
            state.listed = Some((Arc::downgrade(awaiting), run_id));
        }
    }

    /// The run will not be stored: drop what comes.
    pub(crate) fn close(&self) {
        self.lock().sink = Sink::Closed;
    }

    /// Waits (at most 2 s) until the shadows of run `run_id`, if it is
    /// listed in `awaiting`, have answered.
    pub(crate) async fn wait_for(awaiting: &Awaiting, run_id: u128) {
        let sink = awaiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&run_id)
            .cloned();
        let Some(sink) = sink else { return };
        let _ = tokio::time::timeout(SHADOW_WAIT, async {
            loop {
                let done = sink.done.notified();
                if sink.lock().pending == 0 {
                    return;
                }
                done.await;
            }
        })
        .await;
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
