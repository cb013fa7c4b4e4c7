//! A pipeline as the server serves it: how a request body becomes the
//! pipeline's input (serde, then the user's own validation), and the run.

use std::sync::Arc;

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::ApiError;
use super::respond::{Answers, Detail};
use futures_util::future::BoxFuture;

use crate::input::{self, FieldError};
use crate::pipeline::{Answer, LoadError, Pipeline, StageInfo};

type Decode<In> = Box<dyn Fn(&[u8]) -> Result<In, ApiError> + Send + Sync>;
type Check<In> = Box<dyn Fn(&In) -> Result<(), FieldError> + Send + Sync>;

/// A pipeline ready to be served at `POST /v1/pipelines/{name}/runs`: how a
/// JSON body becomes its input, and how that input is validated. A
/// [`Pipeline`] whose input is `DeserializeOwned` converts into one directly.
pub struct Served<In, Out> {
    pipeline: Pipeline<In, Out>,
    decode: Decode<In>,
    checks: Vec<Check<In>>,
    answers: Answers,
}

impl<In, Out> Served<In, Out>
where
    In: DeserializeOwned + Send + Sync + 'static,
    Out: Serialize + Send + Sync + 'static,
{
    /// Serves `pipeline`, reading its input straight from the JSON body.
    pub fn new(pipeline: Pipeline<In, Out>) -> Self {
        Self {
            pipeline,
            decode: Box::new(|body| Ok(input::decode_json(body)?)),
            checks: Vec::new(),
            answers: Answers::default(),
        }
    }
}

impl<In, Out> Served<In, Out>
where
    In: Send + Sync + 'static,
    Out: Serialize + Send + Sync + 'static,
{
    /// Serves `pipeline`, reading a request of type `Req` from the JSON body
    /// and converting it into the pipeline's input with `convert` (which
    /// validates it: a [`FieldError`] is answered with 422). For inputs that
    /// are not themselves deserialisable, or whose wire form differs.
    pub fn from_request<Req>(
        pipeline: Pipeline<In, Out>,
        convert: impl Fn(Req) -> Result<In, FieldError> + Send + Sync + 'static,
    ) -> Self
    where
        Req: DeserializeOwned + 'static,
    {
        Self {
            pipeline,
            decode: Box::new(move |body| {
                let request: Req = input::decode_json(body)?;
                convert(request).map_err(ApiError::from)
            }),
            checks: Vec::new(),
            answers: Answers::default(),
        }
    }

    /// Adds a validation of the decoded input, such as a length limit; a
    /// [`FieldError`] is answered with 422 and the pipeline does not run.
    #[must_use]
    pub fn validate(
        mut self,
        check: impl Fn(&In) -> Result<(), FieldError> + Send + Sync + 'static,
    ) -> Self {
        self.checks.push(Box::new(check));
        self
    }
}

impl<In, Out> From<Pipeline<In, Out>> for Served<In, Out>
where
    In: DeserializeOwned + Send + Sync + 'static,
    Out: Serialize + Send + Sync + 'static,
{
    fn from(pipeline: Pipeline<In, Out>) -> Self {
        Self::new(pipeline)
    }
}

/// A served pipeline with its types erased, as the router holds it.
pub(crate) trait Endpoint: Send + Sync {
    fn name(&self) -> &str;
    fn stages(&self) -> Vec<StageInfo>;
    fn is_loaded(&self) -> bool;
    fn load_missing(&self) -> BoxFuture<'_, Result<(), LoadError>>;
    /// Decodes and validates `body`, runs the pipeline, and answers in the
    /// `detail` the caller asked for.
    fn run(&self, body: Bytes, detail: Detail) -> BoxFuture<'_, Result<Response, ApiError>>;
    /// Records the ground truth in `body` for run `run_id`.
    fn feedback<'a>(
        &'a self,
        run_id: &'a str,
        body: &'a [u8],
    ) -> BoxFuture<'a, Result<Response, ApiError>>;
    /// The run store of a judged pipeline.
    fn run_store_status(&self) -> Option<crate::store::StoreStatus>;
}

/// The body of `POST /v1/pipelines/{name}/runs/{run_id}/feedback`: the
/// truth as a `label` or a `value`, and the stage it is for when the
/// pipeline judges more than one.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedbackBody {
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    value: Option<f64>,
    #[serde(default)]
    stage: Option<String>,
}

impl FeedbackBody {
    fn truth(self) -> Result<(Answer, Option<String>), FieldError> {
        match (self.label, self.value) {
            (Some(label), None) => Ok((Answer::Label(label), self.stage)),
            (None, Some(value)) => Ok((Answer::Value(value), self.stage)),
            (Some(_), Some(_)) => Err(FieldError::new(
                "value",
                "give the truth as `label` or `value`, not both",
            )),
            (None, None) => Err(FieldError::new(
                "label",
                "missing: give the truth as `label` (a class) or `value` (a number)",
            )),
        }
    }
}

impl<In, Out> Endpoint for Served<In, Out>
where
    In: Send + Sync + 'static,
    Out: Serialize + Send + Sync + 'static,
{
    fn name(&self) -> &str {
        self.pipeline.name()
    }

    fn stages(&self) -> Vec<StageInfo> {
        self.pipeline.stages()
    }

    fn is_loaded(&self) -> bool {
        self.pipeline.is_loaded()
    }

    fn load_missing(&self) -> BoxFuture<'_, Result<(), LoadError>> {
        Box::pin(self.pipeline.load_missing())
    }

    fn run(&self, body: Bytes, detail: Detail) -> BoxFuture<'_, Result<Response, ApiError>> {
        Box::pin(async move {
            let input = (self.decode)(&body)?;
            drop(body);
            for check in &self.checks {
                check(&input)?;
            }
            let report = self.pipeline.run(input).await?;
            self.answers.run(&report, detail)
        })
    }

    fn feedback<'a>(
        &'a self,
        run_id: &'a str,
        body: &'a [u8],
    ) -> BoxFuture<'a, Result<Response, ApiError>> {
        Box::pin(async move {
            let body: FeedbackBody = input::decode_json(body)?;
            let (truth, stage) = body.truth()?;
            let report = self
                .pipeline
                .feedback(run_id, stage.as_deref(), truth)
                .await?;
            Ok((StatusCode::OK, Json(report)).into_response())
        })
    }

    fn run_store_status(&self) -> Option<crate::store::StoreStatus> {
        self.pipeline.run_store_status()
    }
}

/// Erases a served pipeline.
pub(crate) fn erase<In, Out>(served: Served<In, Out>) -> Arc<dyn Endpoint>
where
    In: Send + Sync + 'static,
    Out: Serialize + Send + Sync + 'static,
{
    Arc::new(served)
}
