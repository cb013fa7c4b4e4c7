//! Stages: a named group of models run in parallel (candidates that compete)
//! or in sequence (steps whose types change from one to the next).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::instrument::WithSubscriber as _;
use tracing::{field, Span};

use super::call::{BoxFuture, Candidate};
use super::chain::{Binder, LinkChain, LinkCtx, LinkThen, StageChain, Start};
use super::champion::{highest, Board, MeasuredAccuracy, Role, Roster};
use super::error::BuildError;
use super::execute::{BoundModel, Ran};
use super::execution::Env;
use super::feedback::ShadowSink;
use super::judge::{Judge, Read, Rule};
use super::model::{AsyncModel, Model, ModelError, Prediction};
use super::report::{ModelReport, Outcome, StageKind, StageReport};
use crate::store::ModelAnswer;

/// How a parallel stage picks the output it passes on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SelectionPolicy {
    /// The successful candidate with the highest confidence; ties go to the
    /// model declared first.
    #[default]
    HighestConfidence,
    /// The first successful candidate in declaration order (a fallback chain
    /// that still runs every candidate, so their metrics stay comparable).
    FirstSuccess,
    /// The successful candidate with the best measured accuracy against
    /// ground truth (see [`MeasuredAccuracy`]); by confidence until every
    /// candidate has enough judged answers. Needs a judge
    /// ([`Parallel::judge`]).
    MeasuredAccuracy(MeasuredAccuracy),
}

impl From<MeasuredAccuracy> for SelectionPolicy {
    fn from(policy: MeasuredAccuracy) -> Self {
        SelectionPolicy::MeasuredAccuracy(policy)
    }
}

/// Default bound on a parallel stage's shadow executions running at once.
pub const MAX_PENDING_SHADOWS: usize = 256;

type BindStage<In, Out> =
    Box<dyn FnOnce(&Binder) -> Result<Box<dyn StageChain<In, Out>>, BuildError> + Send>;
type BindLinks<In, Out> =
    Box<dyn FnOnce(&Binder) -> Result<Box<dyn LinkChain<In, Out>>, BuildError> + Send>;

/// A stage from `In` to `Out`, ready for [`crate::PipelineBuilder::stage`].
///
/// Build one with [`Stage::parallel`], [`Stage::sequential`] or
/// [`Stage::step`]; [`Parallel`] and [`Sequential`] convert into it.
pub struct Stage<In, Out> {
    pub(crate) bind: BindStage<In, Out>,
}

impl<In, Out> Stage<In, Out>
where
    In: Send + Sync + 'static,
    Out: Send + Sync + 'static,
{
    /// A stage whose candidate models all see the same input, run
    /// concurrently, and compete: one output is selected by the stage's
    /// [`SelectionPolicy`]. Every candidate maps `In` to `Out`.
    pub fn parallel(name: impl Into<String>) -> Parallel<In, Out> {
        Parallel {
            name: name.into(),
            candidates: Vec::new(),
            policy: SelectionPolicy::default(),
            timeout: None,
            judge: None,
            promote: false,
            max_pending: MAX_PENDING_SHADOWS,
        }
    }

    /// A stage of one plain function (pre- or post-processing, such as
    /// tokenising text): it gets its own `model.run` span and duration metric,
    /// but no confidence. It runs where models run (see
    /// [`crate::Execution`]).
    pub fn step(
        name: impl Into<String>,
        f: impl Fn(&In) -> Result<Out, ModelError> + Send + Sync + 'static,
    ) -> Self {
        let name = name.into();
        Stage::sequential(name.clone()).step(name, f).into()
    }
}

impl<T: Send + Sync + 'static> Stage<T, T> {
    /// A stage whose models run one after another, each seeing the previous
    /// model's output, so the type may change at every step
    /// ([`Sequential::model`]). A failing model fails the stage.
    pub fn sequential(name: impl Into<String>) -> Sequential<T, T> {
        Sequential {
            name: name.into(),
            timeout: None,
            links: Box::new(|_| Ok(Box::new(Start))),
        }
    }
}

/// A parallel stage being built: candidates from `In` to `Out`, sync and
/// async side by side.
pub struct Parallel<In, Out> {
    name: String,
    /// Every model in declaration order, with whether it is a shadow.
    candidates: Vec<(Candidate<In, Out>, bool)>,
    policy: SelectionPolicy,
    timeout: Option<Duration>,
    judge: Option<Judge<Out>>,
    promote: bool,
    max_pending: usize,
}

impl<In, Out> Parallel<In, Out>
where
    In: Send + Sync + 'static,
    Out: Send + Sync + 'static,
{
    /// Adds a synchronous candidate (run on the blocking pool by default).
    #[must_use]
    pub fn model(mut self, model: impl Model<In, Out>) -> Self {
        self.candidates.push((Candidate::sync(model), false));
        self
    }

    /// Adds an asynchronous candidate (polled on the calling task, cancelled
    /// at the stage's timeout).
    #[must_use]
    pub fn async_model(mut self, model: impl AsyncModel<In, Out>) -> Self {
        self.candidates
            .push((Candidate::asynchronous(model), false));
        self
    }

    /// Adds a synchronous shadow: a challenger that runs on the stage's
    /// input after the stage has answered, off the request path. It never
    /// delays the response and is never selected; in a judged stage its
    /// answer is remembered with the run and judged like a candidate's. It
    /// gets its own `model.run` span (with `model.role = "shadow"`, a child
    /// of the stage's span, in the run's trace) and the `ml_model_*`
    /// metrics; its errors, panics and timeouts (the stage's timeout, from
    /// its own start) touch nothing else. At most
    /// [`Parallel::max_pending_shadows`] run at once; past that an
    /// execution is skipped and counted (`ml_shadow_skipped_total`).
    #[must_use]
    pub fn shadow(mut self, model: impl Model<In, Out>) -> Self {
        self.candidates.push((Candidate::sync(model), true));
        self
    }

    /// Adds an asynchronous shadow (see [`Parallel::shadow`]).
    #[must_use]
    pub fn shadow_async(mut self, model: impl AsyncModel<In, Out>) -> Self {
        self.candidates.push((Candidate::asynchronous(model), true));
        self
    }

    /// Lets a shadow that measurably beats the champion (its pessimistic
    /// bound better than the champion's optimistic one, both measured over
    /// their windows, see [`MeasuredAccuracy`]) become a serving candidate
    /// by itself: counted on `ml_model_promotions_total` and logged. A
    /// promotion is for the life of the process; nothing is ever demoted,
    /// so the stage always keeps its candidates.
    #[must_use]
    pub fn promote_shadows(mut self) -> Self {
        self.promote = true;
        self
    }

    /// Sets how many shadow executions of this stage may run at once
    /// (default [`MAX_PENDING_SHADOWS`]).
    #[must_use]
    pub fn max_pending_shadows(mut self, executions: usize) -> Self {
        self.max_pending = executions;
        self
    }

    /// Sets how the stage selects its output.
    #[must_use]
    pub fn select(mut self, policy: impl Into<SelectionPolicy>) -> Self {
        self.policy = policy.into();
        self
    }

    /// Sets the time the candidates may take, from the stage's start. A
    /// candidate that takes longer is recorded with the `timeout` outcome and
    /// its output dropped; an async one is cancelled.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Judges the candidates against ground truth that arrives after the
    /// run: each run remembers every candidate's answer (also in its
    /// report) until [`crate::Pipeline::feedback`] brings the truth, which
    /// is counted per model as correct or not (see [`Judge`]).
    #[must_use]
    pub fn judge(mut self, judge: Judge<Out>) -> Self {
        self.judge = Some(judge);
        self
    }
}

impl<In, Out> From<Parallel<In, Out>> for Stage<In, Out>
where
    In: Send + Sync + 'static,
    Out: Send + Sync + 'static,
{
    fn from(stage: Parallel<In, Out>) -> Self {
        Stage {
            bind: Box::new(move |binder: &Binder| {
                binder.begin_stage(&stage.name, StageKind::Parallel)?;
                let shadows: Vec<bool> = stage.candidates.iter().map(|(_, s)| *s).collect();
                let models = stage
                    .candidates
                    .into_iter()
                    .map(|(c, _)| binder.bind(c).map(Arc::new))
                    .collect::<Result<Vec<_>, _>>()?;
                binder.end_stage()?;
                if shadows.iter().all(|s| *s) {
                    return Err(BuildError::OnlyShadows { stage: stage.name });
                }
                let measured = match stage.policy {
                    SelectionPolicy::MeasuredAccuracy(p) => Some(p),
                    _ => None,
                };
                if measured.is_some() && stage.judge.is_none() {
                    return Err(BuildError::MeasuredWithoutJudge { stage: stage.name });
                }
                let roster = Arc::new(Roster::new(
                    &binder.meter,
                    &binder.pipeline,
                    &stage.name,
                    binder.stage_models(),
                    &shadows,
                    stage.promote,
                    stage.max_pending,
                ));
                binder.set_roster(Arc::clone(&roster));
                let (judge, board) = match stage.judge {
                    Some(j) => {
                        let board = Arc::new(Board::new(
                            &binder.meter,
                            &binder.pipeline,
                            j.kind,
                            measured,
                            Arc::clone(&roster),
                        ));
                        binder.judge_stage(
                            Rule {
                                kind: j.kind,
                                tolerance: j.tolerance,
                                relative_tolerance: j.relative_tolerance,
                            },
                            Arc::clone(&board),
                        );
                        (Some(j.read), Some(board))
                    }
                    None => (None, None),
                };
                Ok(Box::new(BoundParallel {
                    name: stage.name,
                    policy: stage.policy,
                    timeout: stage.timeout,
                    models,
                    judge,
                    roster,
                    board,
                }) as Box<dyn StageChain<In, Out>>)
            }),
        }
    }
}

/// A sequential stage being built, from `In` to the current `Out`.
pub struct Sequential<In, Out> {
    name: String,
    timeout: Option<Duration>,
    links: BindLinks<In, Out>,
}

impl<In, Out> Sequential<In, Out>
where
    In: Send + Sync + 'static,
    Out: Send + Sync + 'static,
{
    /// Appends a synchronous model that takes the current output; the stage
    /// now ends in the model's output type.
    pub fn model<Next: Send + Sync + 'static>(
        self,
        model: impl Model<Out, Next>,
    ) -> Sequential<In, Next> {
        self.link(Candidate::sync(model))
    }

    /// Appends an asynchronous model that takes the current output.
    pub fn async_model<Next: Send + Sync + 'static>(
        self,
        model: impl AsyncModel<Out, Next>,
    ) -> Sequential<In, Next> {
        self.link(Candidate::asynchronous(model))
    }

    /// Appends a plain function step (no confidence).
    pub fn step<Next: Send + Sync + 'static>(
        self,
        name: impl Into<String>,
        f: impl Fn(&Out) -> Result<Next, ModelError> + Send + Sync + 'static,
    ) -> Sequential<In, Next> {
        self.link(Candidate::step(name.into(), f))
    }

    /// Sets the time each model of the stage may take, from its own start.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    fn link<Next: Send + Sync + 'static>(
        self,
        candidate: Candidate<Out, Next>,
    ) -> Sequential<In, Next> {
        let first = self.links;
        Sequential {
            name: self.name,
            timeout: self.timeout,
            links: Box::new(move |binder: &Binder| {
                let first = first(binder)?;
                let second: Box<dyn LinkChain<Out, Next>> = Box::new(binder.bind(candidate)?);
                Ok(Box::new(LinkThen { first, second }) as Box<dyn LinkChain<In, Next>>)
            }),
        }
    }
}

impl<In, Out> From<Sequential<In, Out>> for Stage<In, Out>
where
    In: Send + Sync + 'static,
    Out: Send + Sync + 'static,
{
    fn from(stage: Sequential<In, Out>) -> Self {
        Stage {
            bind: Box::new(move |binder: &Binder| {
                binder.begin_stage(&stage.name, StageKind::Sequential)?;
                let chain = (stage.links)(binder)?;
                binder.end_stage()?;
                Ok(Box::new(BoundSequential {
                    name: stage.name,
                    timeout: stage.timeout,
                    chain,
                }) as Box<dyn StageChain<In, Out>>)
            }),
        }
    }
}

fn stage_span(env: &Env, name: &str, kind: StageKind) -> Span {
    tracing::info_span!(
        "stage.run",
        pipeline.name = env.pipeline.as_str(),
        stage.name = name,
        stage.kind = kind.as_str(),
        stage.selected_model = field::Empty,
        otel.status_code = field::Empty,
        otel.status_description = field::Empty,
    )
}

/// Records the stage's outcome on its span and hands the report on.
fn finish_stage<Out>(
    span: &Span,
    report: StageReport,
    output: Option<Out>,
    reports: &mut Vec<StageReport>,
) -> Option<Out> {
    match (&report.selected_model, &output) {
        (Some(selected), Some(_)) => {
            span.record("stage.selected_model", selected.as_str());
        }
        _ => {
            span.record("otel.status_code", "ERROR");
            span.record(
                "otel.status_description",
                format!("no model of stage `{}` succeeded", report.stage).as_str(),
            );
        }
    }
    reports.push(report);
    output
}

struct BoundParallel<In, Out> {
    name: String,
    policy: SelectionPolicy,
    timeout: Option<Duration>,
    /// Candidates and shadows, in declaration order (a shadow's execution
    /// outlives the run, so each model is shared with it).
    models: Vec<Arc<BoundModel<In, Out>>>,
    /// Reads a candidate's answer, in a judged stage.
    judge: Option<Read<Out>>,
    /// Who serves and who shadows.
    roster: Arc<Roster>,
    /// The measurement of a judged stage.
    board: Option<Arc<Board>>,
}

impl<In, Out> BoundParallel<In, Out>
where
    In: Send + Sync + 'static,
    Out: Send + Sync + 'static,
{
    /// The position in `predictions` (of the `serving` models) of the one
    /// the policy selects.
    fn select(&self, serving: &[usize], predictions: &[Option<Prediction<Out>>]) -> Option<usize> {
        let mut survivors = predictions
            .iter()
            .enumerate()
            .filter_map(|(k, p)| p.as_ref().map(|p| (k, p.confidence)));
        match (self.policy, &self.board) {
            (SelectionPolicy::FirstSuccess, _) => survivors.next().map(|(k, _)| k),
            (SelectionPolicy::MeasuredAccuracy(_), Some(board)) => {
                let model = board.pick(survivors.map(|(k, c)| (serving[k], c)))?;
                serving.iter().position(|&i| i == model)
            }
            _ => highest(survivors),
        }
    }

    /// Starts the shadows on `input`, each in a task of its own with a
    /// `model.run` span under the stage's `span`; a judged shadow's answer
    /// goes to `sink`.
    fn start_shadows(
        &self,
        env: &Env,
        span: &Span,
        input: &Arc<In>,
        sink: Option<&Arc<ShadowSink>>,
    ) {
        let runtime = tokio::runtime::Handle::try_current().ok();
        // Each shadow's span is made in its task, under the stage's context.
        let stage_cx = {
            use tracing_opentelemetry::OpenTelemetrySpanExt as _;
            span.context()
        };
        // The tasks run under the caller's subscriber (which may be a
        // scoped, thread-local one), as the stage's own models do.
        let dispatch = tracing::dispatcher::get_default(Clone::clone);
        for (i, model) in self.models.iter().enumerate() {
            if self.roster.role(i) != Role::Shadow {
                continue;
            }
            let pending = &self.roster.pending;
            let Some(runtime) = runtime
                .as_ref()
                .filter(|_| pending.fetch_add(1, Ordering::AcqRel) < self.roster.max_pending)
            else {
                if runtime.is_some() {
                    pending.fetch_sub(1, Ordering::AcqRel);
                }
                self.roster.skipped(i);
                continue;
            };
            let slot = PendingSlot(Arc::clone(&self.roster));
            let model = Arc::clone(model);
            let stage_cx = stage_cx.clone();
            let env = env.clone();
            let input = Arc::clone(input);
            // A ticket only where the answer is judged: it holds the
            // run's feedback until the shadow is done.
            let answer = self
                .judge
                .clone()
                .and_then(|read| sink.map(|s| (read, s.ticket())));
            let timeout = self.timeout;
            let shadow = async move {
                let roster = &slot.0;
                let span = model.shadow_span(stage_cx, &roster.stage);
                let exec = model
                    .execute(&env, &input, &span, Instant::now(), timeout)
                    .await;
                drop(input);
                let ran = model.record(&roster.stage, &span, exec, timeout);
                drop(span);
                if let (Some((read, ticket)), Some(p)) = (&answer, ran.prediction) {
                    ticket.deliver(
                        &roster.stage,
                        ModelAnswer {
                            model: model.name().to_owned(),
                            answer: Some(read(&p.output)),
                        },
                    );
                }
            };
            runtime.spawn(shadow.with_subscriber(dispatch.clone()));
        }
    }
}

/// A shadow execution's place among its stage's pending ones, given back
/// when the execution ends (or its task is dropped).
struct PendingSlot(Arc<Roster>);

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<In, Out> StageChain<In, Out> for BoundParallel<In, Out>
where
    In: Send + Sync + 'static,
    Out: Send + Sync + 'static,
{
    fn run<'a>(
        &'a self,
        env: &'a Env,
        sink: Option<&'a Arc<ShadowSink>>,
        input: In,
        reports: &'a mut Vec<StageReport>,
    ) -> BoxFuture<'a, Option<Out>> {
        Box::pin(async move {
            let span = stage_span(env, &self.name, StageKind::Parallel);
            let started = Instant::now();
            let input = Arc::new(input);
            let serving: Vec<usize> = (0..self.models.len())
                .filter(|&i| self.roster.role(i) == Role::Candidate)
                .collect();
            let spans: Vec<Span> = serving
                .iter()
                .map(|&i| self.models[i].span(&span, &self.name))
                .collect();
            let execs = futures_util::future::join_all(
                serving
                    .iter()
                    .zip(&spans)
                    .map(|(&i, s)| self.models[i].execute(env, &input, s, started, self.timeout)),
            )
            .await;
            let mut ran: Vec<Ran<Out>> = serving
                .iter()
                .zip(&spans)
                .zip(execs)
                .map(|((&i, s), exec)| self.models[i].record(&self.name, s, exec, self.timeout))
                .collect();
            drop(spans);
            if let Some(read) = &self.judge {
                for r in &mut ran {
                    if let Some(p) = &r.prediction {
                        r.report.answer = Some(read(&p.output));
                    }
                }
            }
            let (models, mut predictions): (Vec<ModelReport>, Vec<Option<Prediction<Out>>>) =
                ran.into_iter().map(|r| (r.report, r.prediction)).unzip();
            let chosen = self
                .select(&serving, &predictions)
                .and_then(|k| predictions.swap_remove(k).map(|p| (serving[k], p)));
            if let Some((index, prediction)) = &chosen {
                let model = &self.models[*index];
                model.metrics.selected();
                if tracing::enabled!(tracing::Level::DEBUG) {
                    span.in_scope(|| {
                        tracing::debug!(
                            stage.name = self.name.as_str(),
                            model.name = model.name(),
                            model.confidence = prediction.confidence,
                            candidates = serving.len(),
                            survivors = models
                                .iter()
                                .filter(|r| r.outcome == Outcome::Success)
                                .count(),
                            "model selected"
                        );
                    });
                }
            }
            if serving.len() < self.models.len() {
                self.start_shadows(env, &span, &input, sink);
            }
            drop(input);
            let report = StageReport {
                stage: self.name.clone(),
                kind: StageKind::Parallel,
                selected_model: chosen
                    .as_ref()
                    .map(|(i, _)| self.models[*i].name().to_owned()),
                models,
                duration: started.elapsed(),
            };
            finish_stage(&span, report, chosen.map(|(_, p)| p.output), reports)
        })
    }
}

struct BoundSequential<In, Out> {
    name: String,
    timeout: Option<Duration>,
    chain: Box<dyn LinkChain<In, Out>>,
}

impl<In, Out> StageChain<In, Out> for BoundSequential<In, Out>
where
    In: Send + Sync + 'static,
    Out: Send + Sync + 'static,
{
    fn run<'a>(
        &'a self,
        env: &'a Env,
        _sink: Option<&'a Arc<ShadowSink>>,
        input: In,
        reports: &'a mut Vec<StageReport>,
    ) -> BoxFuture<'a, Option<Out>> {
        Box::pin(async move {
            let span = stage_span(env, &self.name, StageKind::Sequential);
            let started = Instant::now();
            let ctx = LinkCtx {
                stage: &self.name,
                span: &span,
                timeout: self.timeout,
            };
            let mut models = Vec::new();
            let output = self.chain.run(env, &ctx, input, &mut models).await;
            let report = StageReport {
                stage: self.name.clone(),
                kind: StageKind::Sequential,
                selected_model: output
                    .as_ref()
                    .and_then(|_| models.last())
                    .map(|m| m.model_name.clone()),
                models,
                duration: started.elapsed(),
            };
            finish_stage(&span, report, output, reports)
        })
    }
}
