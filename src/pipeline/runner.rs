//! The pipeline and its runner: executes stages, isolates model failures and
//! turns every run into spans, metrics and log events.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry::metrics::{BoundCounter, BoundHistogram, Meter};
use opentelemetry::trace::TraceContextExt;
use opentelemetry::KeyValue;
use tracing::{field, Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::error::{BuildError, ModelFailure, RunError};
use super::instruments::{Instruments, ModelInstruments};
use super::model::{Component, Model, ModelError, Prediction};
use super::report::{ModelReport, Outcome, RunReport, StageKind, StageReport};
use super::stage::{SelectionPolicy, Stage};
use crate::names;

/// Confidence below which a model completion is logged at WARN.
pub const LOW_CONFIDENCE: f64 = 0.4;

/// Where model code runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Execution {
    /// Each model runs on tokio's blocking pool: parallel candidates run
    /// concurrently, a model over its timeout is abandoned (its thread finishes
    /// in the background, its output is dropped) and the async runtime is never
    /// blocked. Falls back to [`Execution::Inline`] outside a tokio runtime.
    #[default]
    Offload,
    /// Models run on the calling task, one after another. No thread hop, so it
    /// suits cheap models and batch jobs; panics are still caught, but a
    /// timeout can only be detected once the model returns.
    Inline,
}

/// Builds a [`Pipeline`]: a name, ordered stages, and where metrics go.
pub struct PipelineBuilder<T> {
    name: String,
    stages: Vec<Stage<T>>,
    meter: Option<Meter>,
    execution: Execution,
}

impl<T: Send + Sync + 'static> PipelineBuilder<T> {
    /// Appends a stage.
    #[must_use]
    pub fn stage(mut self, stage: Stage<T>) -> Self {
        self.stages.push(stage);
        self
    }

    /// Records metrics with this meter instead of the global meter
    /// `pipelens` (which is a no-op until a meter provider is installed,
    /// for example by [`crate::telemetry::init`]).
    #[must_use]
    pub fn meter(mut self, meter: Meter) -> Self {
        self.meter = Some(meter);
        self
    }

    /// Chooses where model code runs (default [`Execution::Offload`]).
    #[must_use]
    pub fn execution(mut self, execution: Execution) -> Self {
        self.execution = execution;
        self
    }

    /// Checks the pipeline, creates its instruments, binds every model's
    /// label sets and marks the models loaded (`ml_model_loaded` = 1).
    pub fn build(self) -> Result<Pipeline<T>, BuildError> {
        check_name("pipeline", &self.name)?;
        if self.stages.is_empty() {
            return Err(BuildError::NoStages {
                pipeline: self.name,
            });
        }
        let meter = self
            .meter
            .unwrap_or_else(|| opentelemetry::global::meter("pipelens"));
        let instruments = Instruments::new(&meter);
        let mut stages: Vec<StageSlot<T>> = Vec::with_capacity(self.stages.len());
        for stage in self.stages {
            check_name("stage", &stage.name)?;
            if stages.iter().any(|s| s.name == stage.name) {
                return Err(BuildError::DuplicateStage { stage: stage.name });
            }
            if stage.models.is_empty() {
                return Err(BuildError::EmptyStage { stage: stage.name });
            }
            let mut models: Vec<ModelSlot<T>> = Vec::with_capacity(stage.models.len());
            for model in stage.models {
                let name = model.name().to_owned();
                check_name("model", &name)?;
                if models.iter().any(|m| m.name == name) {
                    return Err(BuildError::DuplicateModel {
                        stage: stage.name,
                        model: name,
                    });
                }
                instruments.loaded.record(
                    1,
                    &[
                        KeyValue::new(names::MODEL_NAME, name.clone()),
                        KeyValue::new(names::MODEL_VERSION, model.version().to_owned()),
                    ],
                );
                models.push(ModelSlot {
                    metrics: ModelInstruments::new(
                        &instruments,
                        &name,
                        &stage.name,
                        stage.kind == StageKind::Parallel,
                    ),
                    version: model.version().to_owned(),
                    name,
                    model,
                });
            }
            stages.push(StageSlot {
                name: stage.name,
                kind: stage.kind,
                policy: stage.policy,
                timeout: stage.timeout,
                models,
            });
        }
        let pipeline_kv = KeyValue::new(names::PIPELINE, self.name.clone());
        let run_duration = instruments
            .run_duration
            .bind(std::slice::from_ref(&pipeline_kv));
        let runs = [names::OUTCOME_SUCCESS, names::OUTCOME_FAILURE].map(|o| {
            instruments
                .runs
                .bind(&[pipeline_kv.clone(), KeyValue::new(names::OUTCOME, o)])
        });
        Ok(Pipeline {
            inner: Arc::new(Inner {
                name: self.name,
                stages,
                instruments,
                execution: self.execution,
                runs,
                run_duration,
            }),
        })
    }
}

fn check_name(what: &'static str, name: &str) -> Result<(), BuildError> {
    if name.is_empty() || name.len() > 64 {
        return Err(BuildError::InvalidName {
            what,
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// An ordered list of stages, ready to run. Cheap to clone and share.
pub struct Pipeline<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Clone for Pipeline<T> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

struct Inner<T> {
    name: String,
    stages: Vec<StageSlot<T>>,
    instruments: Instruments,
    execution: Execution,
    /// `pipeline, outcome` for success and failure.
    runs: [BoundCounter<u64>; 2],
    run_duration: BoundHistogram<f64>,
}

struct StageSlot<T> {
    name: String,
    kind: StageKind,
    policy: SelectionPolicy,
    timeout: Option<Duration>,
    models: Vec<ModelSlot<T>>,
}

struct ModelSlot<T> {
    name: String,
    version: String,
    model: Arc<dyn Model<T>>,
    metrics: ModelInstruments,
}

/// A model execution's raw result, before it is recorded.
enum Exec<T> {
    Done(Result<Prediction<T>, ModelError>, Duration),
    Panicked(String, Duration),
    TimedOut(Duration),
}

/// A recorded execution: its report line and, on success, its prediction.
struct Ran<T> {
    report: ModelReport,
    prediction: Option<Prediction<T>>,
}

impl<T: Send + Sync + 'static> Pipeline<T> {
    /// Starts building a pipeline with this name (a metric label value).
    pub fn builder(name: impl Into<String>) -> PipelineBuilder<T> {
        PipelineBuilder {
            name: name.into(),
            stages: Vec::new(),
            meter: None,
            execution: Execution::default(),
        }
    }

    /// The pipeline's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The `(name, version)` of every model, stage by stage.
    pub fn models(&self) -> Vec<(String, String)> {
        self.inner
            .stages
            .iter()
            .flat_map(|s| s.models.iter().map(|m| (m.name.clone(), m.version.clone())))
            .collect()
    }

    /// Runs every stage on `input` inside a `pipeline.run` span (a child of the
    /// current span, if any) and returns the report, or the typed error of the
    /// first stage in which no model succeeded.
    pub async fn run(&self, input: T) -> Result<RunReport<T>, RunError> {
        let span = tracing::info_span!(
            "pipeline.run",
            pipeline.name = self.inner.name.as_str(),
            pipeline.outcome = field::Empty,
            otel.status_code = field::Empty,
            otel.status_description = field::Empty,
        );
        let trace_id = trace_id_of(&span);
        self.run_in_span(input, trace_id).instrument(span).await
    }

    async fn run_in_span(
        &self,
        input: T,
        trace_id: Option<String>,
    ) -> Result<RunReport<T>, RunError> {
        let inner = &*self.inner;
        let started = Instant::now();
        tracing::info!(pipeline.name = inner.name.as_str(), "pipeline started");
        let mut state = input;
        let mut stages = Vec::with_capacity(inner.stages.len());
        for stage in &inner.stages {
            let span = tracing::info_span!(
                "stage.run",
                pipeline.name = inner.name.as_str(),
                stage.name = stage.name.as_str(),
                stage.kind = stage.kind.as_str(),
                stage.selected_model = field::Empty,
                otel.status_code = field::Empty,
                otel.status_description = field::Empty,
            );
            // The stage span is the explicit parent of its model spans and is
            // entered only to emit events: no enter/exit around every poll.
            let (report, next) = self.run_stage(stage, &span, Arc::new(state)).await;
            match next {
                Some(output) => {
                    span.record("stage.selected_model", report.selected_model.as_deref());
                    stages.push(report);
                    state = output;
                }
                None => {
                    let failures = failures_of(&report);
                    let error = RunError::StageFailed {
                        pipeline: inner.name.clone(),
                        stage: stage.name.clone(),
                        failures,
                        stages: {
                            stages.push(report);
                            stages
                        },
                        trace_id,
                    };
                    let message = error.to_string();
                    span.record("otel.status_code", "ERROR");
                    span.record("otel.status_description", message.as_str());
                    let current = Span::current();
                    current.record("pipeline.outcome", names::OUTCOME_FAILURE);
                    current.record("otel.status_code", "ERROR");
                    current.record("otel.status_description", message.as_str());
                    self.finish(started, 1);
                    tracing::error!(
                        pipeline.name = inner.name.as_str(),
                        stage.name = stage.name.as_str(),
                        error.message = message.as_str(),
                        "pipeline failed"
                    );
                    return Err(error);
                }
            }
        }
        let duration = self.finish(started, 0);
        Span::current().record("pipeline.outcome", names::OUTCOME_SUCCESS);
        tracing::info!(
            pipeline.name = inner.name.as_str(),
            duration_ms = duration.as_secs_f64() * 1e3,
            "pipeline completed"
        );
        Ok(RunReport {
            pipeline: inner.name.clone(),
            trace_id,
            duration,
            stages,
            output: state,
        })
    }
}

impl<T: Send + Sync + 'static> Pipeline<T> {
    /// Runs one stage on `input`; returns its report and, when it succeeded,
    /// the output it passes on.
    async fn run_stage(
        &self,
        stage: &StageSlot<T>,
        span: &Span,
        input: Arc<T>,
    ) -> (StageReport, Option<T>) {
        let started = Instant::now();
        let (reports, output, selected) = match stage.kind {
            StageKind::Parallel => self.run_parallel(stage, span, input).await,
            StageKind::Sequential => self.run_sequential(stage, span, input).await,
        };
        let report = StageReport {
            stage: stage.name.clone(),
            kind: stage.kind,
            selected_model: selected.map(|i| stage.models[i].name.clone()),
            models: reports,
            duration: started.elapsed(),
        };
        (report, output)
    }

    async fn run_parallel(
        &self,
        stage: &StageSlot<T>,
        stage_span: &Span,
        input: Arc<T>,
    ) -> (Vec<ModelReport>, Option<T>, Option<usize>) {
        let spans: Vec<Span> = stage
            .models
            .iter()
            .map(|m| model_span(stage_span, stage, m))
            .collect();
        let execs: Vec<Exec<T>> = match self.offload_handle() {
            Some(handle) => {
                let start = tokio::time::Instant::now();
                let tasks: Vec<_> = stage
                    .models
                    .iter()
                    .map(|slot| {
                        let model = Arc::clone(&slot.model);
                        let input = Arc::clone(&input);
                        handle.spawn_blocking(move || timed(|| model.run(&input)))
                    })
                    .collect();
                let mut execs = Vec::with_capacity(tasks.len());
                for task in tasks {
                    execs.push(join(task, start, stage.timeout).await);
                }
                execs
            }
            None => stage
                .models
                .iter()
                .map(|slot| run_inline(slot, &input, stage.timeout))
                .collect(),
        };
        let mut ran: Vec<Ran<T>> = Vec::with_capacity(execs.len());
        for ((slot, span), exec) in stage.models.iter().zip(&spans).zip(execs) {
            ran.push(self.record(stage, slot, span, exec));
        }
        drop(spans);
        let (reports, mut predictions): (Vec<ModelReport>, Vec<Option<Prediction<T>>>) =
            ran.into_iter().map(|r| (r.report, r.prediction)).unzip();
        let Some(index) = select(stage.policy, &predictions) else {
            return (reports, None, None);
        };
        let slot = &stage.models[index];
        let Some(prediction) = predictions.swap_remove(index) else {
            return (reports, None, None);
        };
        slot.metrics.selected();
        stage_span.in_scope(|| {
            tracing::info!(
                stage.name = stage.name.as_str(),
                model.name = slot.name.as_str(),
                model.confidence = prediction.confidence,
                candidates = stage.models.len(),
                survivors = reports
                    .iter()
                    .filter(|r| r.outcome == Outcome::Success)
                    .count(),
                "model selected"
            );
        });
        (reports, Some(prediction.output), Some(index))
    }

    async fn run_sequential(
        &self,
        stage: &StageSlot<T>,
        stage_span: &Span,
        input: Arc<T>,
    ) -> (Vec<ModelReport>, Option<T>, Option<usize>) {
        let mut reports = Vec::with_capacity(stage.models.len());
        let mut current = input;
        let last = stage.models.len() - 1;
        for (i, slot) in stage.models.iter().enumerate() {
            let span = model_span(stage_span, stage, slot);
            let exec = match self.offload_handle() {
                Some(handle) => {
                    let model = Arc::clone(&slot.model);
                    let input = Arc::clone(&current);
                    let task = handle.spawn_blocking(move || timed(|| model.run(&input)));
                    join(task, tokio::time::Instant::now(), stage.timeout).await
                }
                None => run_inline(slot, &current, stage.timeout),
            };
            let ran = self.record(stage, slot, &span, exec);
            reports.push(ran.report);
            match ran.prediction {
                Some(prediction) if i == last => {
                    return (reports, Some(prediction.output), Some(i));
                }
                Some(prediction) => current = Arc::new(prediction.output),
                None => return (reports, None, None),
            }
        }
        (reports, None, None)
    }

    fn offload_handle(&self) -> Option<tokio::runtime::Handle> {
        match self.inner.execution {
            Execution::Offload => tokio::runtime::Handle::try_current().ok(),
            Execution::Inline => None,
        }
    }

    /// Records one execution in its span, the metrics and the log, and turns
    /// it into a report line.
    fn record(
        &self,
        stage: &StageSlot<T>,
        slot: &ModelSlot<T>,
        span: &Span,
        exec: Exec<T>,
    ) -> Ran<T> {
        let ins = &self.inner.instruments;
        let _entered = span.enter();
        let (outcome, duration, result) = match exec {
            Exec::Done(Ok(prediction), d) => (Outcome::Success, d, Ok(prediction)),
            Exec::Done(Err(e), d) => (Outcome::Error, d, Err((e.error_type(), e.to_string()))),
            Exec::Panicked(msg, d) => (
                Outcome::Panic,
                d,
                Err(("panic", format!("model panicked: {msg}"))),
            ),
            Exec::TimedOut(d) => (
                Outcome::Timeout,
                d,
                Err((
                    "timeout",
                    format!(
                        "model exceeded its timeout of {:?}",
                        stage.timeout.unwrap_or(d)
                    ),
                )),
            ),
        };
        let seconds = duration.as_secs_f64();
        slot.metrics.execution(outcome, seconds);
        match result {
            Ok(mut prediction) => {
                let confidence = clamp_confidence(prediction.confidence);
                prediction.confidence = confidence;
                slot.metrics.confidence(ins, confidence);
                let mut total = 0;
                for c in &prediction.components {
                    total += c.count;
                    slot.metrics.components(ins, c.kind.clone(), c.count);
                }
                record_success(span, outcome.as_str(), confidence, total);
                if confidence < LOW_CONFIDENCE {
                    tracing::warn!(
                        stage.name = stage.name.as_str(),
                        model.name = slot.name.as_str(),
                        model.confidence = confidence,
                        model.components = total,
                        duration_ms = seconds * 1e3,
                        "model completed with low confidence"
                    );
                } else {
                    tracing::info!(
                        stage.name = stage.name.as_str(),
                        model.name = slot.name.as_str(),
                        model.confidence = confidence,
                        model.components = total,
                        duration_ms = seconds * 1e3,
                        "model completed"
                    );
                }
                Ran {
                    report: ModelReport {
                        model_name: slot.name.clone(),
                        model_version: slot.version.clone(),
                        outcome,
                        confidence: Some(confidence),
                        duration,
                        components: std::mem::take(&mut prediction.components),
                        error: None,
                    },
                    prediction: Some(prediction),
                }
            }
            Err((error_type, message)) => {
                slot.metrics.error(ins, error_type);
                record_failure(span, outcome.as_str(), error_type, &message);
                tracing::error!(
                    stage.name = stage.name.as_str(),
                    model.name = slot.name.as_str(),
                    model.outcome = outcome.as_str(),
                    error.type = error_type,
                    error.message = message.as_str(),
                    duration_ms = seconds * 1e3,
                    "model failed"
                );
                Ran {
                    report: ModelReport {
                        model_name: slot.name.clone(),
                        model_version: slot.version.clone(),
                        outcome,
                        confidence: None,
                        duration,
                        components: Vec::<Component>::new(),
                        error: Some(message),
                    },
                    prediction: None,
                }
            }
        }
    }

    /// Records the run's outcome (`0` success, `1` failure) and duration.
    fn finish(&self, started: Instant, outcome: usize) -> Duration {
        let duration = started.elapsed();
        self.inner.runs[outcome].add(1);
        self.inner.run_duration.record(duration.as_secs_f64());
        duration
    }
}

/// Records a successful execution on its `model.run` span in one dispatch
/// (each `Span::record` call goes through every layer on its own).
fn record_success(span: &Span, outcome: &str, confidence: f64, components: u64) {
    let Some(fields) = span.metadata().map(|m| m.fields()) else {
        return;
    };
    if let (Some(o), Some(c), Some(n)) = (
        fields.field("model.outcome"),
        fields.field("model.confidence"),
        fields.field("model.components"),
    ) {
        span.record_all(&fields.value_set(&[
            (&o, Some(&outcome as &dyn field::Value)),
            (&c, Some(&confidence as &dyn field::Value)),
            (&n, Some(&components as &dyn field::Value)),
        ]));
    }
}

/// Records a failed execution on its `model.run` span in one dispatch,
/// setting the span status to ERROR with the message.
fn record_failure(span: &Span, outcome: &str, error_type: &str, message: &str) {
    let Some(fields) = span.metadata().map(|m| m.fields()) else {
        return;
    };
    if let (Some(o), Some(e), Some(s), Some(d)) = (
        fields.field("model.outcome"),
        fields.field("error.type"),
        fields.field("otel.status_code"),
        fields.field("otel.status_description"),
    ) {
        span.record_all(&fields.value_set(&[
            (&o, Some(&outcome as &dyn field::Value)),
            (&e, Some(&error_type as &dyn field::Value)),
            (&s, Some(&"ERROR" as &dyn field::Value)),
            (&d, Some(&message as &dyn field::Value)),
        ]));
    }
}

fn model_span<T>(parent: &Span, stage: &StageSlot<T>, slot: &ModelSlot<T>) -> Span {
    tracing::info_span!(
        parent: parent,
        "model.run",
        stage.name = stage.name.as_str(),
        model.name = slot.name.as_str(),
        model.version = slot.version.as_str(),
        model.outcome = field::Empty,
        model.confidence = field::Empty,
        model.components = field::Empty,
        error.type = field::Empty,
        otel.status_code = field::Empty,
        otel.status_description = field::Empty,
    )
}

/// Runs `f`, timing it.
fn timed<T>(
    f: impl FnOnce() -> Result<Prediction<T>, ModelError>,
) -> (Result<Prediction<T>, ModelError>, Duration) {
    let started = Instant::now();
    let result = f();
    (result, started.elapsed())
}

/// Waits for an offloaded model until `start + timeout`.
async fn join<T>(
    task: tokio::task::JoinHandle<(Result<Prediction<T>, ModelError>, Duration)>,
    start: tokio::time::Instant,
    timeout: Option<Duration>,
) -> Exec<T> {
    let joined = match timeout {
        Some(t) => match tokio::time::timeout_at(start + t, task).await {
            Ok(joined) => joined,
            Err(_) => return Exec::TimedOut(start.elapsed()),
        },
        None => task.await,
    };
    match joined {
        Ok((result, duration)) => over_time((result, duration), timeout),
        Err(e) if e.is_panic() => Exec::Panicked(panic_message(e.into_panic()), start.elapsed()),
        Err(_) => Exec::Panicked("model task was cancelled".to_owned(), start.elapsed()),
    }
}

/// Runs a model on the calling thread, catching panics.
fn run_inline<T: 'static>(slot: &ModelSlot<T>, input: &T, timeout: Option<Duration>) -> Exec<T> {
    let started = Instant::now();
    match std::panic::catch_unwind(AssertUnwindSafe(|| slot.model.run(input))) {
        Ok(result) => over_time((result, started.elapsed()), timeout),
        Err(payload) => Exec::Panicked(panic_message(payload), started.elapsed()),
    }
}

/// A result that came back after its deadline is a timeout.
fn over_time<T>(
    (result, duration): (Result<Prediction<T>, ModelError>, Duration),
    timeout: Option<Duration>,
) -> Exec<T> {
    match timeout {
        Some(t) if duration > t => Exec::TimedOut(duration),
        _ => Exec::Done(result, duration),
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

fn clamp_confidence(c: f64) -> f64 {
    if c.is_nan() {
        0.0
    } else {
        c.clamp(0.0, 1.0)
    }
}

/// The index of the selected candidate, if any succeeded.
fn select<T>(policy: SelectionPolicy, predictions: &[Option<Prediction<T>>]) -> Option<usize> {
    let mut survivors = predictions
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.as_ref().map(|p| (i, p.confidence)));
    match policy {
        SelectionPolicy::FirstSuccess => survivors.next().map(|(i, _)| i),
        SelectionPolicy::HighestConfidence => survivors
            .fold(None, |best: Option<(usize, f64)>, (i, c)| match best {
                Some((_, b)) if b >= c => best,
                _ => Some((i, c)),
            })
            .map(|(i, _)| i),
    }
}

fn failures_of(report: &StageReport) -> Vec<ModelFailure> {
    report
        .models
        .iter()
        .filter(|m| m.outcome != Outcome::Success)
        .map(|m| ModelFailure {
            model: m.model_name.clone(),
            outcome: m.outcome,
            message: m.error.clone().unwrap_or_default(),
        })
        .collect()
}

/// The W3C trace id of `span`'s OTel context, if the OTel layer is installed
/// and the span is sampled or has a valid remote parent.
fn trace_id_of(span: &Span) -> Option<String> {
    let cx = span.context();
    let span_ref = cx.span();
    let sc = span_ref.span_context();
    sc.is_valid().then(|| sc.trace_id().to_string())
}
