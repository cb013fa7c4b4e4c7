//! Models behind a server speaking the Open Inference Protocol (KServe v2)
//! over HTTP/JSON — Triton, KServe, MLServer, OpenVINO Model Server — behind
//! the `open-inference` cargo feature.
//!
//! An [`OpenInferenceModel`] is an [`AsyncModel`]. Its load step asks the
//! server `GET /v2/health/ready`, `GET /v2/models/{name}[/versions/{v}]/ready`
//! and the model's metadata, and checks the declared inputs' names and
//! datatypes against it. Each run posts `{base}/v2/models/{name}[/versions/{v}]/infer`
//! with the run's `traceparent` (from its `model.run` span) on a pooled
//! keep-alive client; dropping the run (the stage timeout) cancels the
//! request. Answers map to outcomes: a 4xx is `invalid_input` (with the
//! server's error text), a 5xx, a refused connection or a transport error is
//! `unavailable`, the stage timeout is `timeout`.
//!
//! ```no_run
//! use pipelens::models::open_inference::{Datatype, InferTensor, OpenInferenceModel};
//!
//! let model: OpenInferenceModel<Vec<f32>, &'static str> =
//!     OpenInferenceModel::new("sentiment_mlserver", "1", "http://127.0.0.1:8080", "sentiment")
//!         .input("features", Datatype::Fp32, |row: &Vec<f32>| {
//!             Ok(InferTensor::fp32(vec![1, row.len()], row.clone()))
//!         })
//!         .classifier("predict_proba", vec!["positive", "negative", "neutral"]);
//! # drop(model);
//! ```

use std::fmt;
use std::marker::PhantomData;
use std::sync::OnceLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::pipeline::{AsyncModel, ModelError, Prediction};

/// The longest part of a server's error text kept in an error message.
const MAX_ERROR_TEXT: usize = 512;

/// Why a remote model could not load or answer. Converted into the runner's
/// [`ModelError`]: a 4xx answer to an inference request becomes
/// [`ModelError::InvalidInput`]; a 5xx, a refused connection or a
/// transport error [`ModelError::Unavailable`]; a missing model or a
/// metadata mismatch [`ModelError::NotLoaded`]; an answer that does not
/// follow the protocol [`ModelError::Computation`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenInferenceError {
    /// The request could not be sent or its answer read (connection refused,
    /// reset, a client timeout).
    #[error("{method} {url}: {reason}")]
    Transport {
        /// `GET` or `POST`.
        method: &'static str,
        /// The URL requested.
        url: String,
        /// What the client reported.
        reason: String,
    },
    /// The server answered a client error (4xx) to an inference request.
    #[error("{url} answered {status}: {message}")]
    Rejected {
        /// The URL requested.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The server's error text.
        message: String,
    },
    /// The server answered a server error (5xx).
    #[error("{url} answered {status}: {message}")]
    ServerError {
        /// The URL requested.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The server's error text.
        message: String,
    },
    /// The server, or the model on it, is not ready (or not there).
    #[error("{what} is not ready: {url} answered {status}: {message}")]
    NotReady {
        /// The server or the model.
        what: String,
        /// The URL requested.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The server's error text.
        message: String,
    },
    /// The model's metadata does not match what was declared.
    #[error("model `{model}` at {base}: {reason}")]
    Metadata {
        /// The server's base URL.
        base: String,
        /// The server's model name.
        model: String,
        /// What does not match.
        reason: String,
    },
    /// An answer that does not follow the protocol.
    #[error("{url}: unexpected answer: {reason}")]
    Protocol {
        /// The URL requested.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl From<OpenInferenceError> for ModelError {
    fn from(error: OpenInferenceError) -> Self {
        let message = error.to_string();
        match error {
            OpenInferenceError::Transport { .. } | OpenInferenceError::ServerError { .. } => {
                ModelError::Unavailable(message)
            }
            OpenInferenceError::Rejected { .. } => ModelError::InvalidInput(message),
            OpenInferenceError::NotReady { .. } | OpenInferenceError::Metadata { .. } => {
                ModelError::NotLoaded(message)
            }
            OpenInferenceError::Protocol { .. } => ModelError::Computation(message),
        }
    }
}

/// A tensor datatype of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Datatype {
    /// `BOOL`.
    Bool,
    /// `INT32`.
    Int32,
    /// `INT64`.
    Int64,
    /// `FP32`.
    Fp32,
    /// `FP64`.
    Fp64,
    /// `BYTES` (strings in JSON).
    Bytes,
}

impl Datatype {
    /// The protocol's name for it, such as `FP32`.
    pub fn as_str(self) -> &'static str {
        match self {
            Datatype::Bool => "BOOL",
            Datatype::Int32 => "INT32",
            Datatype::Int64 => "INT64",
            Datatype::Fp32 => "FP32",
            Datatype::Fp64 => "FP64",
            Datatype::Bytes => "BYTES",
        }
    }
}

impl fmt::Display for Datatype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The elements of an [`InferTensor`], row-major.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
#[non_exhaustive]
pub enum InferData {
    /// `BOOL` elements.
    Bool(Vec<bool>),
    /// `INT32` elements.
    Int32(Vec<i32>),
    /// `INT64` elements.
    Int64(Vec<i64>),
    /// `FP32` elements.
    Fp32(Vec<f32>),
    /// `FP64` elements.
    Fp64(Vec<f64>),
    /// `BYTES` elements, as strings.
    Bytes(Vec<String>),
}

impl InferData {
    fn datatype(&self) -> Datatype {
        match self {
            InferData::Bool(_) => Datatype::Bool,
            InferData::Int32(_) => Datatype::Int32,
            InferData::Int64(_) => Datatype::Int64,
            InferData::Fp32(_) => Datatype::Fp32,
            InferData::Fp64(_) => Datatype::Fp64,
            InferData::Bytes(_) => Datatype::Bytes,
        }
    }
}

/// An input tensor of an inference request: its shape and elements.
#[derive(Debug, Clone, PartialEq)]
pub struct InferTensor {
    shape: Vec<usize>,
    data: InferData,
}

impl InferTensor {
    /// A tensor of `shape` holding `data` (row-major).
    pub fn new(shape: Vec<usize>, data: InferData) -> Self {
        Self { shape, data }
    }

    /// An `FP32` tensor.
    pub fn fp32(shape: Vec<usize>, data: Vec<f32>) -> Self {
        Self::new(shape, InferData::Fp32(data))
    }

    /// An `FP64` tensor.
    pub fn fp64(shape: Vec<usize>, data: Vec<f64>) -> Self {
        Self::new(shape, InferData::Fp64(data))
    }

    /// An `INT64` tensor.
    pub fn int64(shape: Vec<usize>, data: Vec<i64>) -> Self {
        Self::new(shape, InferData::Int64(data))
    }

    /// A `BYTES` tensor of strings.
    pub fn bytes(shape: Vec<usize>, data: Vec<String>) -> Self {
        Self::new(shape, InferData::Bytes(data))
    }

    /// The tensor's shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The tensor's elements.
    pub fn data(&self) -> &InferData {
        &self.data
    }
}

#[derive(Serialize)]
struct RequestInput<'a> {
    name: &'a str,
    shape: &'a [usize],
    datatype: &'static str,
    data: &'a InferData,
}

#[derive(Serialize)]
struct RequestOutput<'a> {
    name: &'a str,
}

#[derive(Serialize)]
struct InferRequest<'a> {
    inputs: Vec<RequestInput<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    outputs: Vec<RequestOutput<'a>>,
}

#[derive(Deserialize)]
struct ResponseOutput {
    name: String,
    #[serde(default)]
    shape: Vec<usize>,
    #[serde(default)]
    datatype: String,
    data: serde_json::Value,
}

#[derive(Deserialize)]
struct InferResponse {
    #[serde(default)]
    model_version: Option<String>,
    outputs: Vec<ResponseOutput>,
}

#[derive(Deserialize)]
struct TensorMetadata {
    name: String,
    datatype: String,
}

#[derive(Deserialize)]
struct ModelMetadata {
    #[serde(default)]
    versions: Option<Vec<String>>,
    #[serde(default)]
    inputs: Option<Vec<TensorMetadata>>,
}

/// The outputs of one inference answer, by name.
#[derive(Debug)]
pub struct InferOutputs {
    url: String,
    model_version: Option<String>,
    outputs: Vec<ResponseOutput>,
}

impl fmt::Debug for ResponseOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseOutput")
            .field("name", &self.name)
            .field("shape", &self.shape)
            .field("datatype", &self.datatype)
            .finish()
    }
}

/// One output tensor, converted: its shape, datatype and elements.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputTensor<T> {
    /// The tensor's shape.
    pub shape: Vec<usize>,
    /// The protocol datatype the server gave, such as `FP64`.
    pub datatype: String,
    /// Its elements, row-major.
    pub data: Vec<T>,
}

impl InferOutputs {
    /// The output names, in the server's order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.outputs.iter().map(|o| o.name.as_str())
    }

    /// The model version the server says answered, if it said.
    pub fn model_version(&self) -> Option<&str> {
        self.model_version.as_deref()
    }

    /// The numeric output `name` as `f64`s (any numeric datatype).
    pub fn f64(&self, name: &str) -> Result<OutputTensor<f64>, ModelError> {
        self.convert(name, serde_json::Value::as_f64)
    }

    /// The integer output `name` as `i64`s.
    pub fn i64(&self, name: &str) -> Result<OutputTensor<i64>, ModelError> {
        self.convert(name, serde_json::Value::as_i64)
    }

    /// The `BYTES` output `name` as strings.
    pub fn strings(&self, name: &str) -> Result<OutputTensor<String>, ModelError> {
        self.convert(name, |v| v.as_str().map(str::to_owned))
    }

    fn convert<T>(
        &self,
        name: &str,
        each: impl Fn(&serde_json::Value) -> Option<T>,
    ) -> Result<OutputTensor<T>, ModelError> {
        let output = self
            .outputs
            .iter()
            .find(|o| o.name == name)
            .ok_or_else(|| OpenInferenceError::Protocol {
                url: self.url.clone(),
                reason: format!(
                    "no output `{name}` (the answer has {:?})",
                    self.names().collect::<Vec<_>>()
                ),
            })?;
        let mut data = Vec::new();
        flatten(&output.data, &mut |v| {
            data.push(each(v).ok_or_else(|| OpenInferenceError::Protocol {
                url: self.url.clone(),
                reason: format!(
                    "output `{name}` ({}) holds {v}, not the element type asked for",
                    output.datatype
                ),
            })?);
            Ok(())
        })?;
        Ok(OutputTensor {
            shape: output.shape.clone(),
            datatype: output.datatype.clone(),
            data,
        })
    }
}

/// Visits the elements of `value`, flattening nested arrays (the protocol
/// sends them flat; some servers nest them by shape).
fn flatten(
    value: &serde_json::Value,
    each: &mut dyn FnMut(&serde_json::Value) -> Result<(), OpenInferenceError>,
) -> Result<(), OpenInferenceError> {
    match value {
        serde_json::Value::Array(items) => items.iter().try_for_each(|v| flatten(v, each)),
        other => each(other),
    }
}

type ToInput<In> = Box<dyn Fn(&In) -> Result<InferTensor, ModelError> + Send + Sync>;
type ToPrediction<Out> =
    Box<dyn Fn(&InferOutputs) -> Result<Prediction<Out>, ModelError> + Send + Sync>;

/// A model behind an Open Inference Protocol (KServe v2) server: an
/// [`AsyncModel<In, Out>`] built from the server's base URL, the server's
/// name for the model (and optionally its version), the conversion of `In`
/// into the request's inputs ([`OpenInferenceModel::input`], one per input,
/// with its datatype) and of the answer's outputs into a
/// [`Prediction<Out>`] ([`OpenInferenceModel::classifier`] or
/// [`OpenInferenceModel::outputs`]).
pub struct OpenInferenceModel<In, Out> {
    name: String,
    version: String,
    base: String,
    remote: String,
    remote_version: Option<String>,
    inputs: Vec<(String, Datatype, ToInput<In>)>,
    requested: Vec<String>,
    outputs: Option<ToPrediction<Out>>,
    client: reqwest::Client,
    served_version: OnceLock<String>,
    _types: PhantomData<fn(&In) -> Out>,
}

impl<In, Out> fmt::Debug for OpenInferenceModel<In, Out> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenInferenceModel")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("base", &self.base)
            .field("remote", &self.remote)
            .field("remote_version", &self.remote_version)
            .finish()
    }
}

impl<In: 'static, Out: 'static> OpenInferenceModel<In, Out> {
    /// A model named `name` (its `model_name` label) at `version` (its
    /// `model_version` label), served as `remote` by the server at `base`
    /// (such as `http://127.0.0.1:8080`). Nothing is sent until the load
    /// step.
    pub fn new(
        name: impl Into<String>,
        version: impl Into<String>,
        base: impl Into<String>,
        remote: impl Into<String>,
    ) -> Self {
        let client = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Self {
            name: name.into(),
            version: version.into(),
            base: base.into().trim_end_matches('/').to_owned(),
            remote: remote.into(),
            remote_version: None,
            inputs: Vec::new(),
            requested: Vec::new(),
            outputs: None,
            client,
            served_version: OnceLock::new(),
            _types: PhantomData,
        }
    }

    /// Asks for this version of the remote model
    /// (`/v2/models/{name}/versions/{v}/…`) instead of the server's default.
    #[must_use]
    pub fn remote_version(mut self, version: impl Into<String>) -> Self {
        self.remote_version = Some(version.into());
        self
    }

    /// Declares the input `name` of datatype `datatype` and how `In` becomes
    /// it. The load step checks names and datatypes against the model's
    /// metadata; a tensor of another datatype is an `invalid_input` outcome.
    #[must_use]
    pub fn input(
        mut self,
        name: impl Into<String>,
        datatype: Datatype,
        to_input: impl Fn(&In) -> Result<InferTensor, ModelError> + Send + Sync + 'static,
    ) -> Self {
        self.inputs
            .push((name.into(), datatype, Box::new(to_input)));
        self
    }

    /// Asks the server for the output `name` (the request's `outputs`);
    /// without any, the server sends its default outputs.
    #[must_use]
    pub fn request_output(mut self, name: impl Into<String>) -> Self {
        self.requested.push(name.into());
        self
    }

    /// How the answer's outputs become the prediction, for any model.
    #[must_use]
    pub fn outputs(
        mut self,
        to_prediction: impl Fn(&InferOutputs) -> Result<Prediction<Out>, ModelError>
            + Send
            + Sync
            + 'static,
    ) -> Self {
        self.outputs = Some(Box::new(to_prediction));
        self
    }

    /// The default for a classifier: asks for the output `probabilities`,
    /// which holds one probability per class for the one input row; the
    /// prediction is the most probable class (the first on ties), with its
    /// probability as the confidence.
    #[must_use]
    pub fn classifier(self, probabilities: impl Into<String>, classes: Vec<Out>) -> Self
    where
        Out: Clone + Send + Sync,
    {
        let output = probabilities.into();
        self.request_output(output.clone()).outputs(move |outputs| {
            let tensor = outputs.f64(&output)?;
            super::most_probable(
                &output,
                &tensor.shape,
                tensor.data.iter().copied(),
                &classes,
            )
        })
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The versions the server listed for the model in its metadata, once
    /// loaded (comma-separated; empty when it listed none).
    pub fn served_version(&self) -> Option<&str> {
        self.served_version.get().map(String::as_str)
    }

    fn model_url(&self) -> String {
        match &self.remote_version {
            Some(v) => format!("{}/v2/models/{}/versions/{v}", self.base, self.remote),
            None => format!("{}/v2/models/{}", self.base, self.remote),
        }
    }

    async fn get(&self, url: String, what: &str) -> Result<String, OpenInferenceError> {
        let response = self
            .client
            .get(&url)
            .headers(trace_headers())
            .send()
            .await
            .map_err(|e| transport("GET", &url, e))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| transport("GET", &url, e))?;
        if status.is_success() {
            Ok(text)
        } else {
            Err(OpenInferenceError::NotReady {
                what: what.to_owned(),
                url,
                status: status.as_u16(),
                message: error_text(&text),
            })
        }
    }

    async fn load_remote(&self) -> Result<(), OpenInferenceError> {
        self.get(
            format!("{}/v2/health/ready", self.base),
            &format!("the server at {}", self.base),
        )
        .await?;
        let model = self.model_url();
        let what = format!("model `{}` at {}", self.remote, self.base);
        self.get(format!("{model}/ready"), &what).await?;
        let text = self.get(model.clone(), &what).await?;
        let metadata: ModelMetadata =
            serde_json::from_str(&text).map_err(|e| OpenInferenceError::Protocol {
                url: model.clone(),
                reason: format!("metadata: {e}"),
            })?;
        let mismatch = |reason: String| OpenInferenceError::Metadata {
            base: self.base.clone(),
            model: self.remote.clone(),
            reason,
        };
        if let Some(served) = metadata.inputs.filter(|i| !i.is_empty()) {
            let found: Vec<String> = served
                .iter()
                .map(|i| format!("{} {}", i.name, i.datatype))
                .collect();
            let declared: Vec<String> = self
                .inputs
                .iter()
                .map(|(n, d, _)| format!("{n} {d}"))
                .collect();
            let mut a = found.clone();
            let mut b = declared.clone();
            a.sort();
            b.sort();
            if a != b {
                return Err(mismatch(format!(
                    "the server's inputs are {found:?}, but {declared:?} were declared"
                )));
            }
        }
        let versions = metadata.versions.unwrap_or_default();
        if let Some(wanted) = &self.remote_version {
            if !versions.is_empty() && !versions.contains(wanted) {
                return Err(mismatch(format!(
                    "version {wanted} asked for, the server has {versions:?}"
                )));
            }
        }
        let served = versions.join(",");
        tracing::info!(
            model_name = %self.name,
            remote_model = %self.remote,
            model_version = %served,
            "remote model ready"
        );
        let _ = self.served_version.set(served);
        Ok(())
    }

    async fn infer(&self, input: &In) -> Result<Prediction<Out>, ModelError> {
        let to_prediction = self.outputs.as_ref().ok_or_else(|| {
            ModelError::NotLoaded(format!(
                "model `{}`: no output conversion declared (call `outputs` or `classifier`)",
                self.remote
            ))
        })?;
        let mut tensors = Vec::with_capacity(self.inputs.len());
        for (name, datatype, to_input) in &self.inputs {
            let tensor = to_input(input)?;
            if tensor.data.datatype() != *datatype {
                return Err(ModelError::InvalidInput(format!(
                    "input `{name}` of model `{}` is {}, declared {datatype}",
                    self.remote,
                    tensor.data.datatype()
                )));
            }
            tensors.push((name, *datatype, tensor));
        }
        let body = InferRequest {
            inputs: tensors
                .iter()
                .map(|(name, datatype, t)| RequestInput {
                    name,
                    shape: &t.shape,
                    datatype: datatype.as_str(),
                    data: &t.data,
                })
                .collect(),
            outputs: self
                .requested
                .iter()
                .map(|name| RequestOutput { name })
                .collect(),
        };
        let url = format!("{}/infer", self.model_url());
        let response = self
            .client
            .post(&url)
            .headers(trace_headers())
            .json(&body)
            .send()
            .await
            .map_err(|e| transport("POST", &url, e))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| transport("POST", &url, e))?;
        if status.is_client_error() {
            return Err(OpenInferenceError::Rejected {
                url,
                status: status.as_u16(),
                message: error_text(&text),
            }
            .into());
        }
        if !status.is_success() {
            return Err(OpenInferenceError::ServerError {
                url,
                status: status.as_u16(),
                message: error_text(&text),
            }
            .into());
        }
        let answer: InferResponse =
            serde_json::from_str(&text).map_err(|e| OpenInferenceError::Protocol {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        to_prediction(&InferOutputs {
            url,
            model_version: answer.model_version,
            outputs: answer.outputs,
        })
    }
}

impl<In: Sync + 'static, Out: Send + 'static> AsyncModel<In, Out> for OpenInferenceModel<In, Out> {
    fn name(&self) -> &str {
        &self.name
    }

    fn version(&self) -> &str {
        &self.version
    }

    async fn load(&self) -> Result<(), ModelError> {
        self.load_remote().await.map_err(ModelError::from)
    }

    async fn run(&self, input: &In) -> Result<Prediction<Out>, ModelError> {
        self.infer(input).await
    }
}

/// The current span's trace context (`traceparent`, `tracestate`) as
/// headers: inside a run, the `model.run` span's.
fn trace_headers() -> reqwest::header::HeaderMap {
    let mut headers = reqwest::header::HeaderMap::new();
    for (name, value) in crate::telemetry::trace_headers() {
        if let (Ok(name), Ok(value)) = (
            reqwest::header::HeaderName::from_bytes(name.as_bytes()),
            reqwest::header::HeaderValue::from_str(&value),
        ) {
            headers.insert(name, value);
        }
    }
    headers
}

fn transport(method: &'static str, url: &str, error: reqwest::Error) -> OpenInferenceError {
    // The URL leads the message already.
    let error = error.without_url();
    let mut reason = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(inner) = source {
        reason.push_str(": ");
        reason.push_str(&inner.to_string());
        source = inner.source();
    }
    OpenInferenceError::Transport {
        method,
        url: url.to_owned(),
        reason,
    }
}

/// The server's error text: the `error` field of a JSON body (KServe v2),
/// or its `detail` (FastAPI's validation errors, as MLServer sends them),
/// else the body,
/// cut to [`MAX_ERROR_TEXT`] bytes.
fn error_text(body: &str) -> String {
    let text = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| match (v.get("error"), v.get("detail")) {
            (Some(serde_json::Value::String(e)), _) => Some(e.clone()),
            (_, Some(detail)) => Some(detail.to_string()),
            _ => None,
        })
        .unwrap_or_else(|| body.trim().to_owned());
    if text.len() <= MAX_ERROR_TEXT {
        return text;
    }
    let mut end = MAX_ERROR_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}
