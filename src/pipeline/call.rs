//! Type erasure of the model contracts: sync models, async models and
//! function steps become one candidate type a stage can hold side by side.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;

use super::model::{AsyncModel, Model, ModelError, Prediction};

/// A boxed, sendable future.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A synchronous call, erased.
pub(crate) trait SyncCall<In, Out>: Send + Sync + 'static {
    fn call(&self, input: &In) -> Result<Prediction<Out>, ModelError>;
}

/// An asynchronous call, erased.
pub(crate) trait AsyncCall<In, Out>: Send + Sync + 'static {
    fn call<'a>(&'a self, input: &'a In) -> BoxFuture<'a, Result<Prediction<Out>, ModelError>>;
}

/// A load step, erased over the model's input and output types.
pub(crate) trait Load: Send + Sync + 'static {
    fn load(self: Arc<Self>) -> BoxFuture<'static, Result<(), ModelError>>;
}

/// How a candidate runs.
pub(crate) enum Call<In, Out> {
    Sync(Arc<dyn SyncCall<In, Out>>),
    Async(Arc<dyn AsyncCall<In, Out>>),
}

impl<In, Out> Clone for Call<In, Out> {
    fn clone(&self) -> Self {
        match self {
            Self::Sync(c) => Self::Sync(Arc::clone(c)),
            Self::Async(c) => Self::Async(Arc::clone(c)),
        }
    }
}

/// What kind of code a candidate is; the `model.kind` span attribute and the
/// `kind` of `GET /v1/pipelines`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// A [`Model`]: synchronous, run off the async threads.
    Sync,
    /// An [`AsyncModel`]: polled on the calling task.
    Async,
    /// A plain function step: no confidence, no selection.
    Step,
}

impl ModelKind {
    /// The attribute value of this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sync => "sync",
            Self::Async => "async",
            Self::Step => "step",
        }
    }
}

/// A model or step as a stage holds it, before it is bound to a pipeline's
/// instruments.
pub(crate) struct Candidate<In, Out> {
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) kind: ModelKind,
    pub(crate) call: Call<In, Out>,
    pub(crate) loader: Arc<dyn Load>,
}

struct SyncModel<M, In, Out> {
    model: M,
    _types: PhantomData<fn(&In) -> Out>,
}

struct AsyncModelOf<M, In, Out> {
    model: M,
    _types: PhantomData<fn(&In) -> Out>,
}

struct Step<F, In, Out> {
    f: F,
    _types: PhantomData<fn(&In) -> Out>,
}

impl<In: 'static, Out: 'static, M: Model<In, Out>> SyncCall<In, Out> for SyncModel<M, In, Out> {
    fn call(&self, input: &In) -> Result<Prediction<Out>, ModelError> {
        self.model.run(input)
    }
}

impl<In: 'static, Out: 'static, M: Model<In, Out>> Load for SyncModel<M, In, Out> {
    fn load(self: Arc<Self>) -> BoxFuture<'static, Result<(), ModelError>> {
        Box::pin(async move {
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => match handle.spawn_blocking(move || self.model.load()).await {
                    Ok(result) => result,
                    Err(e) => Err(ModelError::NotLoaded(join_error_message(e))),
                },
                Err(_) => self.model.load(),
            }
        })
    }
}

impl<In, Out, M> AsyncCall<In, Out> for AsyncModelOf<M, In, Out>
where
    In: Sync + 'static,
    Out: 'static,
    M: AsyncModel<In, Out>,
{
    fn call<'a>(&'a self, input: &'a In) -> BoxFuture<'a, Result<Prediction<Out>, ModelError>> {
        Box::pin(self.model.run(input))
    }
}

impl<In, Out, M> Load for AsyncModelOf<M, In, Out>
where
    In: 'static,
    Out: 'static,
    M: AsyncModel<In, Out>,
{
    fn load(self: Arc<Self>) -> BoxFuture<'static, Result<(), ModelError>> {
        Box::pin(async move { self.model.load().await })
    }
}

impl<In, Out, F> SyncCall<In, Out> for Step<F, In, Out>
where
    In: 'static,
    Out: 'static,
    F: Fn(&In) -> Result<Out, ModelError> + Send + Sync + 'static,
{
    fn call(&self, input: &In) -> Result<Prediction<Out>, ModelError> {
        (self.f)(input).map(|output| Prediction::new(output, 1.0))
    }
}

/// Steps have nothing to load.
struct NothingToLoad;

impl Load for NothingToLoad {
    fn load(self: Arc<Self>) -> BoxFuture<'static, Result<(), ModelError>> {
        Box::pin(std::future::ready(Ok(())))
    }
}

impl<In: Send + Sync + 'static, Out: Send + 'static> Candidate<In, Out> {
    pub(crate) fn sync(model: impl Model<In, Out>) -> Self {
        let name = model.name().to_owned();
        let version = model.version().to_owned();
        let model = Arc::new(SyncModel {
            model,
            _types: PhantomData,
        });
        Self {
            name,
            version,
            kind: ModelKind::Sync,
            call: Call::Sync(model.clone()),
            loader: model,
        }
    }

    pub(crate) fn asynchronous(model: impl AsyncModel<In, Out>) -> Self {
        let name = model.name().to_owned();
        let version = model.version().to_owned();
        let model = Arc::new(AsyncModelOf {
            model,
            _types: PhantomData,
        });
        Self {
            name,
            version,
            kind: ModelKind::Async,
            call: Call::Async(model.clone()),
            loader: model,
        }
    }

    pub(crate) fn step(
        name: String,
        f: impl Fn(&In) -> Result<Out, ModelError> + Send + Sync + 'static,
    ) -> Self {
        Self {
            name,
            version: String::new(),
            kind: ModelKind::Step,
            call: Call::Sync(Arc::new(Step {
                f,
                _types: PhantomData,
            })),
            loader: Arc::new(NothingToLoad),
        }
    }
}

/// The message of a task that panicked or was cancelled.
pub(crate) fn join_error_message(e: tokio::task::JoinError) -> String {
    if e.is_panic() {
        panic_message(e.into_panic())
    } else {
        "task was cancelled".to_owned()
    }
}

/// The message of a caught panic.
pub(crate) fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
