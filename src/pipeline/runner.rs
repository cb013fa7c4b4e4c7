//! The pipeline and its runner: a typed chain of stages, built once, run
//! many times, every run a `pipeline.run` span with metrics and log events.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry::metrics::{BoundCounter, BoundHistogram, Meter};
use opentelemetry::trace::TraceContextExt;
use opentelemetry::KeyValue;
use tracing::{field, Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::call::ModelKind;
use super::chain::{check_name, Binder, StageChain, StageStates, Start, Then};
use super::champion::Role;
use super::error::{BuildError, LoadError, ModelFailure, RunError};
use super::execution::{Env, Execution};
use super::feedback::{
    new_run_id, Awaiting, FeedbackError, FeedbackReport, JudgedStage, ShadowSink,
    FEEDBACK_RETENTION, FEEDBACK_RUNS,
};
use super::judge::Answer;
use super::lifecycle::ModelState;
use super::model::ModelError;
use super::report::{Outcome, RunReport, StageKind, StageReport};
use super::stage::Stage;
use crate::drift::{DriftMonitor, DriftSpec};
use crate::names;
use crate::store::{Claim, RunStore, StoreStatus};
use crate::telemetry::exemplars::{self, Series};

type BindChain<In, Out> =
    Box<dyn FnOnce(&Binder) -> Result<Box<dyn StageChain<In, Out>>, BuildError> + Send>;

/// Builds a [`Pipeline`] from `In` to `Out`: a name, typed stages, where
/// metrics go and where sync models run.
///
/// Each stage must take the previous stage's output type; a mismatch does
/// not compile:
///
/// ```compile_fail
/// use pipelens::{ModelError, Pipeline, Stage};
/// let _ = Pipeline::builder("typed")
///     .stage(Stage::step("count", |s: &String| Ok::<usize, ModelError>(s.len())))
///     // `usize` comes out of `count`, but this step wants a `String`.
///     .stage(Stage::step("shout", |s: &String| Ok::<String, ModelError>(s.to_uppercase())))
///     .build();
/// ```
pub struct PipelineBuilder<In, Out> {
    name: String,
    chain: BindChain<In, Out>,
    stages: usize,
    meter: Option<Meter>,
    execution: Execution,
    drift: Option<DriftSpec<In>>,
    retention: (usize, Duration),
    run_store: Option<RunStore>,
    _types: PhantomData<fn(In) -> Out>,
}

impl<In, Out> PipelineBuilder<In, Out>
where
    In: Send + Sync + 'static,
    Out: Send + Sync + 'static,
{
    /// Appends a stage that takes this pipeline's current output type.
    pub fn stage<Next: Send + Sync + 'static>(
        self,
        stage: impl Into<Stage<Out, Next>>,
    ) -> PipelineBuilder<In, Next> {
        let first = self.chain;
        let stage = stage.into();
        PipelineBuilder {
            name: self.name,
            chain: Box::new(move |binder: &Binder| {
                let first = first(binder)?;
                let second = (stage.bind)(binder)?;
                Ok(Box::new(Then { first, second }) as Box<dyn StageChain<In, Next>>)
            }),
            stages: self.stages + 1,
            meter: self.meter,
            execution: self.execution,
            drift: self.drift,
            retention: self.retention,
            run_store: self.run_store,
            _types: PhantomData,
        }
    }

    /// Appends a function step as a stage of its own (see [`Stage::step`]).
    pub fn step<Next: Send + Sync + 'static>(
        self,
        name: impl Into<String>,
        f: impl Fn(&Out) -> Result<Next, ModelError> + Send + Sync + 'static,
    ) -> PipelineBuilder<In, Next> {
        self.stage(Stage::step(name, f))
    }

    /// Records metrics with this meter instead of the global meter
    /// `pipelens` (which is a no-op until a meter provider is installed,
    /// for example by [`crate::telemetry::init`]).
    #[must_use]
    pub fn meter(mut self, meter: Meter) -> Self {
        self.meter = Some(meter);
        self
    }

    /// Chooses where sync model code runs (default [`Execution::Auto`]).
    #[must_use]
    pub fn execution(mut self, execution: Execution) -> Self {
        self.execution = execution;
        self
    }

    /// Watches the inputs' numeric features for drift
    /// (`ml_feature_drift_psi{pipeline, feature}`).
    #[must_use]
    pub fn drift(mut self, spec: DriftSpec<In>) -> Self {
        self.drift = Some(spec);
        self
    }

    /// How many runs of judged stages (see [`crate::Parallel::judge`]) are
    /// remembered for feedback, and for how long (default
    /// [`FEEDBACK_RUNS`] for [`FEEDBACK_RETENTION`]); past either, the
    /// oldest are forgotten and their feedback is answered as unknown.
    /// This sizes the pipeline's own memory store; with
    /// [`PipelineBuilder::run_store`] the store's configuration decides.
    #[must_use]
    pub fn feedback_retention(mut self, runs: usize, retention: Duration) -> Self {
        self.retention = (runs.max(1), retention);
        self
    }

    /// Keeps the runs of judged stages in `store` (shared by every pipeline
    /// given it, keyed by pipeline and run id) instead of a memory store of
    /// the pipeline's own: with a durable store (SQLite, Postgres) ground
    /// truth survives restarts and reaches runs made by other replicas.
    /// A durable store also keeps the pipeline's drift references (unless
    /// [`DriftSpec::persist_to`] or [`DriftSpec::references_in`] names a
    /// file or directory): the first replica to learn one saves it, the
    /// others and every restart read it, so all compare with the same.
    #[must_use]
    pub fn run_store(mut self, store: RunStore) -> Self {
        self.run_store = Some(store);
        self
    }

    /// Checks the pipeline (names, no empty stage), creates its instruments
    /// and binds every model's label sets. Models are not loaded yet
    /// (`ml_model_loaded` = 0): [`Pipeline::load`] loads them, or each loads
    /// before its first execution.
    pub fn build(mut self) -> Result<Pipeline<In, Out>, BuildError> {
        check_name("pipeline", &self.name)?;
        if self.stages == 0 {
            return Err(BuildError::NoStages {
                pipeline: self.name,
            });
        }
        let meter = self
            .meter
            .unwrap_or_else(|| opentelemetry::global::meter("pipelens"));
        let binder = Binder::new(self.name.clone(), &meter);
        let chain = (self.chain)(&binder)?;
        let (instruments, stages, judged) = binder.into_stages();
        let pipeline_kv = KeyValue::new(names::PIPELINE, self.name.clone());
        let run_duration = instruments
            .run_duration
            .bind(std::slice::from_ref(&pipeline_kv));
        let run_series = Series::new(
            names::PROM_PIPELINE_DURATION,
            std::slice::from_ref(&pipeline_kv),
        );
        let runs = [names::OUTCOME_SUCCESS, names::OUTCOME_FAILURE].map(|o| {
            instruments
                .runs
                .bind(&[pipeline_kv.clone(), KeyValue::new(names::OUTCOME, o)])
        });
        let parallel: Vec<(String, usize)> = stages
            .iter()
            .filter(|s| s.kind == StageKind::Parallel)
            .map(|s| (s.name.clone(), s.models.len()))
            .collect();
        // With a durable run store (unless a file or directory is named)
        // or a references directory, both monitors keep their part there.
        let references = match (self.drift.as_mut(), &self.run_store) {
            (Some(spec), Some(store)) if store.is_durable() => {
                spec.share_references(store.clone(), &self.name)
            }
            (Some(spec), _) => spec.open_references(&self.name),
            (None, _) => None,
        };
        let predictions = match &self.drift {
            Some(spec) if !parallel.is_empty() => {
                let (store, reference) = references.map_or((None, None), |(f, r)| (Some(f), r));
                Some(crate::drift::prediction_monitor(
                    &meter,
                    &self.name,
                    &parallel,
                    spec.sizes(),
                    reference,
                    store,
                ))
            }
            _ => None,
        };
        let drift = self
            .drift
            .map(|spec| DriftMonitor::from_spec(&meter, &self.name, spec));
        let (runs_kept, retention) = self.retention;
        let run_store = match self.run_store {
            _ if judged.is_empty() => None,
            Some(store) => Some(store),
            None => Some(RunStore::memory(runs_kept, retention)),
        };
        let judged_shadows = judged.iter().any(|j| {
            stages[j.position]
                .roster
                .as_ref()
                .is_some_and(|r| r.has_shadows())
        });
        Ok(Pipeline {
            inner: Arc::new(Inner {
                env: Env {
                    pipeline: self.name,
                    execution: self.execution,
                },
                chain,
                stages,
                runs,
                run_duration,
                run_series,
                drift,
                predictions,
                judged,
                run_store,
                judged_shadows,
                awaiting: Arc::default(),
            }),
        })
    }
}

/// An ordered, type-checked chain of stages from `In` to `Out`, ready to
/// run. Cheap to clone and share.
pub struct Pipeline<In, Out> {
    inner: Arc<Inner<In, Out>>,
}

impl<In, Out> Clone for Pipeline<In, Out> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

struct Inner<In, Out> {
    env: Env,
    chain: Box<dyn StageChain<In, Out>>,
    stages: Vec<StageStates>,
    /// `pipeline, outcome` for success and failure.
    runs: [BoundCounter<u64>; 2],
    run_duration: BoundHistogram<f64>,
    /// Where the run duration's exemplars go.
    run_series: Series,
    drift: Option<DriftMonitor<In>>,
    /// Prediction drift of the parallel stages, when drift is watched.
    predictions: Option<DriftMonitor<()>>,
    judged: Vec<JudgedStage>,
    /// Where runs await ground truth, when a stage is judged.
    run_store: Option<RunStore>,
    /// Whether a judged stage has shadows, whose answers come late.
    judged_shadows: bool,
    /// Stored runs whose judged shadows are still running.
    awaiting: Arc<Awaiting>,
}

/// One model of a stage, as [`Pipeline::stages`] lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ModelInfo {
    /// The model's name.
    pub name: String,
    /// The model's version (empty for function steps).
    pub version: String,
    /// Sync model, async model or function step.
    pub kind: ModelKind,
    /// In a parallel stage: whether it serves or shadows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// Whether it has loaded (function steps always have).
    pub loaded: bool,
    /// Why its last load failed, while it is not loaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_error: Option<String>,
}

/// One stage, as [`Pipeline::stages`] lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StageInfo {
    /// The stage's name.
    pub name: String,
    /// Parallel or sequential.
    pub kind: StageKind,
    /// Its models, in declaration order.
    pub models: Vec<ModelInfo>,
}

impl<In: Send + Sync + 'static> Pipeline<In, In> {
    /// Starts building a pipeline with this name (a metric label value and,
    /// when served, the URL segment).
    pub fn builder(name: impl Into<String>) -> PipelineBuilder<In, In> {
        PipelineBuilder {
            name: name.into(),
            chain: Box::new(|_| Ok(Box::new(Start))),
            stages: 0,
            meter: None,
            execution: Execution::default(),
            drift: None,
            retention: (FEEDBACK_RUNS, FEEDBACK_RETENTION),
            run_store: None,
            _types: PhantomData,
        }
    }
}

impl<In, Out> Pipeline<In, Out>
where
    In: Send + Sync + 'static,
    Out: Send + Sync + 'static,
{
    /// The pipeline's name.
    pub fn name(&self) -> &str {
        &self.inner.env.pipeline
    }

    /// The `(name, version)` of every model (not function steps), stage by
    /// stage.
    pub fn models(&self) -> Vec<(String, String)> {
        self.states()
            .filter(|m| m.kind != ModelKind::Step)
            .map(|m| (m.name.clone(), m.version.clone()))
            .collect()
    }

    /// Every stage with its models and their load state.
    pub fn stages(&self) -> Vec<StageInfo> {
        self.inner
            .stages
            .iter()
            .map(|s| StageInfo {
                name: s.name.clone(),
                kind: s.kind,
                models: s
                    .models
                    .iter()
                    .enumerate()
                    .map(|(i, m)| ModelInfo {
                        name: m.name.clone(),
                        version: m.version.clone(),
                        kind: m.kind,
                        role: s.roster.as_ref().map(|r| r.role(i)),
                        loaded: m.is_loaded(),
                        load_error: m.load_error(),
                    })
                    .collect(),
            })
            .collect()
    }

    /// Whether every model has loaded.
    pub fn is_loaded(&self) -> bool {
        self.states().all(|m| m.is_loaded())
    }

    /// Runs every model's load step, concurrently, and records each result
    /// on `ml_model_loaded`. Models that already loaded load again (a
    /// reload). Fails with every model that did not load.
    pub async fn load(&self) -> Result<(), LoadError> {
        self.load_each(false).await
    }

    /// Loads the models that have not loaded yet (or whose last load failed).
    pub async fn load_missing(&self) -> Result<(), LoadError> {
        self.load_each(true).await
    }

    async fn load_each(&self, only_missing: bool) -> Result<(), LoadError> {
        let pipeline = self.name();
        let results = futures_util::future::join_all(self.states().map(|m| async move {
            let result = if only_missing {
                m.load_if_missing(pipeline).await
            } else {
                m.load(pipeline).await
            };
            (m, result)
        }))
        .await;
        let failures: Vec<(String, String)> = results
            .into_iter()
            .filter_map(|(m, r)| r.err().map(|e| (m.name.clone(), e.to_string())))
            .collect();
        if failures.is_empty() {
            Ok(())
        } else {
            Err(LoadError {
                pipeline: pipeline.to_owned(),
                failures,
            })
        }
    }

    fn states(&self) -> impl Iterator<Item = &ModelState> {
        self.inner
            .stages
            .iter()
            .flat_map(|s| s.models.iter().map(|m| &**m))
    }

    /// Runs every stage on `input` inside a `pipeline.run` span (a child of the
    /// current span, if any) and returns the report, or the typed error of the
    /// first stage in which no model succeeded.
    pub async fn run(&self, input: In) -> Result<RunReport<Out>, RunError> {
        let run_id = new_run_id();
        let span = tracing::info_span!(
            "pipeline.run",
            pipeline.name = self.name(),
            pipeline.run_id = run_id.as_str(),
            pipeline.outcome = field::Empty,
            otel.status_code = field::Empty,
            otel.status_description = field::Empty,
        );
        self.run_under(input, span, run_id).await
    }

    /// Like [`Pipeline::run`], in a trace of its own whatever the current
    /// span: a batch's runs are separate traces, not one giant one.
    pub async fn run_root(&self, input: In) -> Result<RunReport<Out>, RunError> {
        let run_id = new_run_id();
        let span = tracing::info_span!(
            parent: None,
            "pipeline.run",
            pipeline.name = self.name(),
            pipeline.run_id = run_id.as_str(),
            pipeline.outcome = field::Empty,
            otel.status_code = field::Empty,
            otel.status_description = field::Empty,
        );
        self.run_under(input, span, run_id).await
    }

    /// Runs every input of `inputs` with at most `concurrency` runs at once,
    /// each in its own trace ([`Pipeline::run_root`]), and yields the
    /// results in input order. Reads ahead at most `concurrency` inputs, so
    /// a stream of any length runs in bounded memory.
    pub fn run_batch<'a, S>(
        &'a self,
        inputs: S,
        concurrency: usize,
    ) -> impl futures_util::Stream<Item = Result<RunReport<Out>, RunError>> + 'a
    where
        S: futures_util::Stream<Item = In> + 'a,
    {
        use futures_util::StreamExt as _;
        inputs
            .map(move |input| self.run_root(input))
            .buffered(concurrency.max(1))
    }

    async fn run_under(
        &self,
        input: In,
        span: Span,
        run_id: String,
    ) -> Result<RunReport<Out>, RunError> {
        let trace_id = trace_id_of(&span);
        self.run_in_span(input, &span, run_id, trace_id)
            .instrument(span.clone())
            .await
    }

    async fn run_in_span(
        &self,
        input: In,
        span: &Span,
        run_id: String,
        trace_id: Option<String>,
    ) -> Result<RunReport<Out>, RunError> {
        let inner = &*self.inner;
        let started = Instant::now();
        let pipeline = inner.env.pipeline.as_str();
        tracing::debug!(pipeline.name = pipeline, "pipeline started");
        if let Some(drift) = &inner.drift {
            drift.observe_input(&input);
        }
        let mut stages = Vec::with_capacity(inner.stages.len());
        // A judged stage implies a run store.
        let sink = inner.judged_shadows.then(ShadowSink::new);
        let output = inner
            .chain
            .run(&inner.env, sink.as_ref(), input, &mut stages)
            .await;
        match output {
            Some(output) => {
                let duration = self.finish(started, 0, span);
                span.record("pipeline.outcome", names::OUTCOME_SUCCESS);
                // The one INFO line of a successful run: what won each
                // parallel stage; per-model lines are DEBUG.
                if let Some(predictions) = &inner.predictions {
                    predictions.observe(prediction_values(&stages));
                }
                let id = super::feedback::parse_run_id(&run_id);
                if let (Some(store), Some(id)) = (&inner.run_store, id) {
                    let record = super::feedback::record(pipeline, id, &inner.judged, &stages);
                    match &sink {
                        Some(sink) => sink.store(record, store, &inner.awaiting),
                        None => store.record(record),
                    }
                } else if let Some(sink) = &sink {
                    sink.close();
                }
                tracing::info!(
                    pipeline.name = pipeline,
                    pipeline.run_id = run_id.as_str(),
                    pipeline.selected = %Selected(&stages),
                    duration_ms = duration.as_secs_f64() * 1e3,
                    "pipeline completed"
                );
                Ok(RunReport {
                    pipeline: pipeline.to_owned(),
                    run_id,
                    trace_id,
                    duration,
                    stages,
                    output,
                })
            }
            None => {
                if let Some(sink) = &sink {
                    sink.close();
                }
                let stage = stages.last().map(|s| s.stage.clone()).unwrap_or_default();
                let error = RunError::StageFailed {
                    pipeline: pipeline.to_owned(),
                    failures: stages.last().map(failures_of).unwrap_or_default(),
                    stage,
                    stages,
                    trace_id,
                };
                let message = error.to_string();
                span.record("pipeline.outcome", names::OUTCOME_FAILURE);
                span.record("otel.status_code", "ERROR");
                span.record("otel.status_description", message.as_str());
                self.finish(started, 1, span);
                tracing::error!(
                    pipeline.name = pipeline,
                    stage.name = error.stage(),
                    error.message = message.as_str(),
                    "pipeline failed"
                );
                Err(error)
            }
        }
    }

    /// Records the ground truth of run `run_id` for a judged stage (`stage`
    /// may be `None` when the pipeline judges one stage only): every
    /// candidate's answer in that run is judged and counted
    /// (`ml_model_feedback_total`, `ml_pipeline_feedback_total` for the
    /// served one, `ml_model_absolute_error` for values). Each stage of a run
    /// takes its truth once, even across replicas sharing a durable store.
    pub async fn feedback(
        &self,
        run_id: &str,
        stage: Option<&str>,
        truth: Answer,
    ) -> Result<FeedbackReport, FeedbackError> {
        let inner = &*self.inner;
        let Some(store) = &inner.run_store else {
            return Err(FeedbackError::NotJudged {
                pipeline: self.name().to_owned(),
            });
        };
        let stages = || inner.judged.iter().map(|j| j.name.clone()).collect();
        let index = match stage {
            Some(name) => inner
                .judged
                .iter()
                .position(|j| j.name == name)
                .ok_or_else(|| FeedbackError::UnknownStage {
                    stage: name.to_owned(),
                    stages: stages(),
                })?,
            None if inner.judged.len() == 1 => 0,
            None => return Err(FeedbackError::StageRequired { stages: stages() }),
        };
        let judged = &inner.judged[index];
        if truth.kind() != judged.rule.kind.as_str() {
            return Err(FeedbackError::WrongKind {
                stage: judged.name.clone(),
                expected: judged.rule.kind.as_str(),
            });
        }
        if matches!(truth, Answer::Value(v) if !v.is_finite()) {
            return Err(FeedbackError::NotFinite);
        }
        let unknown = || FeedbackError::UnknownRun {
            run_id: run_id.to_owned(),
        };
        let id = super::feedback::parse_run_id(run_id).ok_or_else(unknown)?;
        if inner.judged_shadows {
            ShadowSink::wait_for(&inner.awaiting, id).await;
        }
        let claim = store
            .claim(self.name(), id, &judged.name)
            .await
            .map_err(|e| FeedbackError::StoreUnavailable {
                message: e.to_string(),
            })?;
        match claim {
            Claim::Claimed(stored) => Ok(super::feedback::judge(
                self.name(),
                run_id,
                judged,
                stored,
                truth,
            )),
            Claim::Unknown => Err(unknown()),
            Claim::AlreadyClaimed => Err(FeedbackError::AlreadyJudged {
                run_id: run_id.to_owned(),
                stage: judged.name.clone(),
            }),
        }
    }

    /// The run store this pipeline keeps its judged runs in, and whether it
    /// answers (`None` when no stage is judged).
    pub fn run_store_status(&self) -> Option<StoreStatus> {
        self.inner.run_store.as_ref().map(RunStore::status)
    }

    /// The stages judged against ground truth, in order.
    pub fn judged_stages(&self) -> Vec<String> {
        self.inner.judged.iter().map(|j| j.name.clone()).collect()
    }

    /// Records the run's outcome (`0` success, `1` failure) and duration,
    /// offering the run's `span` as the duration's exemplar.
    fn finish(&self, started: Instant, outcome: usize, span: &Span) -> Duration {
        let duration = started.elapsed();
        let seconds = duration.as_secs_f64();
        self.inner.runs[outcome].add(1);
        self.inner.run_duration.record(seconds);
        exemplars::offer(&self.inner.run_series, seconds, span);
        duration
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

/// Per parallel stage, the selected output's confidence and the selected
/// candidate's index: the samples of prediction drift.
fn prediction_values(stages: &[StageReport]) -> Vec<f64> {
    let mut values = Vec::new();
    for stage in stages.iter().filter(|s| s.kind == StageKind::Parallel) {
        let selected = stage.selected_model.as_deref().and_then(|name| {
            stage
                .models
                .iter()
                .position(|m| m.model_name == name)
                .map(|i| (i, stage.models[i].confidence.unwrap_or(0.0)))
        });
        let (index, confidence) = selected.unwrap_or((0, 0.0));
        values.push(confidence);
        values.push(index as f64);
    }
    values
}

/// The W3C trace id of `span`'s OTel context, if the OTel layer is installed
/// and the span is sampled or has a valid remote parent.
fn trace_id_of(span: &Span) -> Option<String> {
    let cx = span.context();
    let span_ref = cx.span();
    let sc = span_ref.span_context();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// The selected model of each parallel stage, `stage=model` separated by
/// spaces, formatted only if the log line is written.
struct Selected<'a>(&'a [StageReport]);

impl std::fmt::Display for Selected<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for stage in self.0.iter().filter(|s| s.kind == StageKind::Parallel) {
            if let Some(model) = &stage.selected_model {
                if !first {
                    f.write_str(" ")?;
                }
                write!(f, "{}={model}", stage.stage)?;
                first = false;
            }
        }
        Ok(())
    }
}
