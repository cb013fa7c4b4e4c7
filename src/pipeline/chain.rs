//! How typed stages are chained: each stage is a boxed `StageChain<A, B>`,
//! and `Then` composes `A → B` with `B → C` into `A → C`, so a pipeline's
//! stages keep their own types while the pipeline holds one trait object.
//! The `Binder` turns stage definitions into bound stages when the pipeline
//! is built: it checks names, binds every model's metric labels and collects
//! the models' load states.

use std::cell::RefCell;
use std::sync::Arc;

use opentelemetry::metrics::Meter;
use tracing::Span;

use super::call::{BoxFuture, Candidate};
use super::champion::{Board, Roster};
use super::error::BuildError;
use super::execute::BoundModel;
use super::execution::Env;
use super::feedback::{JudgedStage, ShadowSink};
use super::instruments::{Instruments, ModelInstruments};
use super::judge::Rule;
use super::lifecycle::ModelState;
use super::pace::Pace;
use super::report::{ModelReport, StageKind, StageReport};

/// A bound stage (or chain of stages) from `In` to `Out`. On failure it has
/// pushed the failed stage's report and returns `None`.
/// `sink` takes the late answers of judged shadows, when the run has any.
pub(crate) trait StageChain<In, Out>: Send + Sync {
    fn run<'a>(
        &'a self,
        env: &'a Env,
        sink: Option<&'a Arc<ShadowSink>>,
        input: In,
        reports: &'a mut Vec<StageReport>,
    ) -> BoxFuture<'a, Option<Out>>;
}

/// The empty chain a builder starts with.
pub(crate) struct Start;

impl<T: Send + 'static> StageChain<T, T> for Start {
    fn run<'a>(
        &'a self,
        _env: &'a Env,
        _sink: Option<&'a Arc<ShadowSink>>,
        input: T,
        _reports: &'a mut Vec<StageReport>,
    ) -> BoxFuture<'a, Option<T>> {
        Box::pin(std::future::ready(Some(input)))
    }
}

/// `first`, then `second`.
pub(crate) struct Then<A, B, C> {
    pub(crate) first: Box<dyn StageChain<A, B>>,
    pub(crate) second: Box<dyn StageChain<B, C>>,
}

impl<A: Send + 'static, B: Send + 'static, C: Send + 'static> StageChain<A, C> for Then<A, B, C> {
    fn run<'a>(
        &'a self,
        env: &'a Env,
        sink: Option<&'a Arc<ShadowSink>>,
        input: A,
        reports: &'a mut Vec<StageReport>,
    ) -> BoxFuture<'a, Option<C>> {
        Box::pin(async move {
            let middle = self.first.run(env, sink, input, reports).await?;
            self.second.run(env, sink, middle, reports).await
        })
    }
}

/// Where a sequential stage's links run: the stage's name, span and timeout.
pub(crate) struct LinkCtx<'a> {
    pub(crate) stage: &'a str,
    pub(crate) span: &'a Span,
    pub(crate) timeout: Option<std::time::Duration>,
}

/// A bound link (or chain of links) of a sequential stage.
pub(crate) trait LinkChain<In, Out>: Send + Sync {
    fn run<'a>(
        &'a self,
        env: &'a Env,
        ctx: &'a LinkCtx<'a>,
        input: In,
        reports: &'a mut Vec<ModelReport>,
    ) -> BoxFuture<'a, Option<Out>>;
}

impl<T: Send + 'static> LinkChain<T, T> for Start {
    fn run<'a>(
        &'a self,
        _env: &'a Env,
        _ctx: &'a LinkCtx<'a>,
        input: T,
        _reports: &'a mut Vec<ModelReport>,
    ) -> BoxFuture<'a, Option<T>> {
        Box::pin(std::future::ready(Some(input)))
    }
}

/// `first`, then `second`, inside one sequential stage.
pub(crate) struct LinkThen<A, B, C> {
    pub(crate) first: Box<dyn LinkChain<A, B>>,
    pub(crate) second: Box<dyn LinkChain<B, C>>,
}

impl<A: Send + 'static, B: Send + 'static, C: Send + 'static> LinkChain<A, C>
    for LinkThen<A, B, C>
{
    fn run<'a>(
        &'a self,
        env: &'a Env,
        ctx: &'a LinkCtx<'a>,
        input: A,
        reports: &'a mut Vec<ModelReport>,
    ) -> BoxFuture<'a, Option<C>> {
        Box::pin(async move {
            let middle = self.first.run(env, ctx, input, reports).await?;
            self.second.run(env, ctx, middle, reports).await
        })
    }
}

/// One model as a link: runs it on its own deadline and passes its output on.
impl<In: Send + Sync + 'static, Out: Send + 'static> LinkChain<In, Out> for BoundModel<In, Out> {
    fn run<'a>(
        &'a self,
        env: &'a Env,
        ctx: &'a LinkCtx<'a>,
        input: In,
        reports: &'a mut Vec<ModelReport>,
    ) -> BoxFuture<'a, Option<Out>> {
        Box::pin(async move {
            let span = self.span(ctx.span, ctx.stage);
            let input = Arc::new(input);
            let exec = self
                .execute(env, &input, &span, std::time::Instant::now(), ctx.timeout)
                .await;
            drop(input);
            let ran = self.record(ctx.stage, &span, exec, ctx.timeout);
            reports.push(ran.report);
            ran.prediction.map(|p| p.output)
        })
    }
}

/// A stage's models as listed by [`crate::Pipeline::stages`].
pub(crate) struct StageStates {
    pub(crate) name: String,
    pub(crate) kind: StageKind,
    pub(crate) models: Vec<Arc<ModelState>>,
    /// A parallel stage's roles.
    pub(crate) roster: Option<Arc<Roster>>,
}

/// Binds stage definitions to one pipeline while it is built.
pub(crate) struct Binder {
    pub(crate) pipeline: String,
    pub(crate) meter: Meter,
    pub(crate) instruments: Instruments,
    stages: RefCell<Vec<StageStates>>,
    judged: RefCell<Vec<JudgedStage>>,
}

impl Binder {
    pub(crate) fn new(pipeline: String, meter: &Meter) -> Self {
        Self {
            instruments: Instruments::new(meter),
            meter: meter.clone(),
            pipeline,
            stages: RefCell::new(Vec::new()),
            judged: RefCell::new(Vec::new()),
        }
    }

    /// Opens a stage: its name must be a valid label value used once.
    pub(crate) fn begin_stage(&self, name: &str, kind: StageKind) -> Result<(), BuildError> {
        check_name("stage", name)?;
        let mut stages = self.stages.borrow_mut();
        if stages.iter().any(|s| s.name == name) {
            return Err(BuildError::DuplicateStage {
                stage: name.to_owned(),
            });
        }
        stages.push(StageStates {
            name: name.to_owned(),
            kind,
            models: Vec::new(),
            roster: None,
        });
        Ok(())
    }

    /// Closes the stage opened last: it must have a model.
    pub(crate) fn end_stage(&self) -> Result<(), BuildError> {
        match self.stages.borrow().last() {
            Some(s) if s.models.is_empty() => Err(BuildError::EmptyStage {
                stage: s.name.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// Binds a model to the stage opened last.
    pub(crate) fn bind<In, Out>(
        &self,
        candidate: Candidate<In, Out>,
    ) -> Result<BoundModel<In, Out>, BuildError> {
        check_name("model", &candidate.name)?;
        let mut stages = self.stages.borrow_mut();
        let Some(stage) = stages.last_mut() else {
            return Err(BuildError::NoStages {
                pipeline: self.pipeline.clone(),
            });
        };
        if stage.models.iter().any(|m| m.name == candidate.name) {
            return Err(BuildError::DuplicateModel {
                stage: stage.name.clone(),
                model: candidate.name,
            });
        }
        let metrics = ModelInstruments::new(
            &self.instruments,
            &self.pipeline,
            &stage.name,
            &candidate.name,
            candidate.kind != super::call::ModelKind::Step,
            stage.kind == StageKind::Parallel,
        );
        let state = Arc::new(ModelState::new(
            &self.pipeline,
            candidate.name,
            candidate.version,
            candidate.kind,
            candidate.loader,
            &self.instruments.loaded,
        ));
        stage.models.push(Arc::clone(&state));
        Ok(BoundModel {
            call: candidate.call,
            state,
            metrics,
            pace: Pace::default(),
        })
    }

    /// The models of the stage opened last, in binding order.
    pub(crate) fn stage_models(&self) -> Vec<Arc<ModelState>> {
        self.stages
            .borrow()
            .last()
            .map(|s| s.models.clone())
            .unwrap_or_default()
    }

    /// Gives the stage opened last its roles.
    pub(crate) fn set_roster(&self, roster: Arc<Roster>) {
        if let Some(s) = self.stages.borrow_mut().last_mut() {
            s.roster = Some(roster);
        }
    }

    /// Judges the stage opened last (and closed) against ground truth,
    /// measuring its models on `board`.
    pub(crate) fn judge_stage(&self, rule: Rule, board: Arc<Board>) {
        let stages = self.stages.borrow();
        let Some(stage) = stages.last() else { return };
        let models: Vec<String> = stage.models.iter().map(|m| m.name.clone()).collect();
        self.judged.borrow_mut().push(JudgedStage::bind(
            &self.instruments,
            &self.pipeline,
            &stage.name,
            stages.len() - 1,
            rule,
            &models,
            board,
        ));
    }

    pub(crate) fn into_stages(self) -> (Instruments, Vec<StageStates>, Vec<JudgedStage>) {
        (
            self.instruments,
            self.stages.into_inner(),
            self.judged.into_inner(),
        )
    }
}

/// Names are label values: 1 to 64 characters.
pub(crate) fn check_name(what: &'static str, name: &str) -> Result<(), BuildError> {
    if name.is_empty() || name.len() > 64 {
        return Err(BuildError::InvalidName {
            what,
            name: name.to_owned(),
        });
    }
    Ok(())
}
