//! The API's one error type: every failure becomes a status code and a JSON
//! body `{"error": {"code", "message", "field"?}}`.

use axum::http::header::{RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use opentelemetry::trace::TraceContextExt as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::input::{FieldError, InputError};
use crate::pipeline::{FeedbackError, RunError};

/// The cause of a 5xx that is a failure of the service, attached to the
/// response for the HTTP layer to log inside the request span (4xx are the
/// caller's fault and are not logged as errors).
#[derive(Debug, Clone)]
pub(crate) struct ServerErrorCause {
    /// What failed: the stage and its models, or the timeout.
    pub(crate) message: String,
    /// Whether the failure already has its ERROR line (a failed run is
    /// logged by the runner as `pipeline failed`, naming the stage and
    /// models), so the HTTP layer does not log it twice.
    pub(crate) logged: bool,
}

/// Marks a 5xx that is an expected answer, not a failure (a `/ready` 503
/// while models load or the server drains): counted, logged at DEBUG only.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Expected;

/// Marks a 503 from admission control, which the HTTP layer counts and logs
/// at DEBUG only: a line per refusal would add load exactly when the service
/// has none to spare.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Refused;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The body is not JSON at all.
    #[error("malformed JSON: {message}")]
    MalformedJson {
        /// The parser's message.
        message: String,
    },
    /// A field is missing, of the wrong type, or fails validation (422).
    #[error("invalid field `{field}`: {message}")]
    InvalidField {
        /// JSON path of the field, such as `obstacles[2].x`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The request has no JSON content type.
    #[error("expected `Content-Type: application/json`")]
    UnsupportedMediaType,
    /// The body could not be read (too large, or the connection broke).
    #[error("{message}")]
    Body {
        /// The status the body rejection carries (413 for too large).
        status: StatusCode,
        /// What happened.
        message: String,
    },
    /// No model of a stage succeeded.
    #[error(transparent)]
    PipelineFailed(#[from] RunError),
    /// The request took longer than the server's request timeout.
    #[error("request took longer than {0:?}")]
    Timeout(std::time::Duration),
    /// The service is shutting down or not ready.
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// Every run slot is busy and the queue is full (503 with
    /// `Retry-After`).
    #[error("too many pipeline runs in progress; retry in {retry_after_s} s")]
    Overloaded {
        /// What the `Retry-After` header says, in seconds.
        retry_after_s: u64,
    },
    /// No such route.
    #[error("no route for this path")]
    NotFound,
    /// No pipeline of this name is served.
    #[error("no pipeline named `{name}`; served: {}", served.join(", "))]
    UnknownPipeline {
        /// The name in the path.
        name: String,
        /// The names that are served.
        served: Vec<String>,
    },
    /// The route exists but not for this method.
    #[error("method not allowed on this path")]
    MethodNotAllowed,
    /// Feedback without the bearer token the server requires (401 with
    /// `WWW-Authenticate: Bearer`).
    #[error("feedback needs the header `Authorization: Bearer <token>` with the server's feedback token")]
    Unauthorized,
    /// Ground truth that cannot be recorded: unknown or expired run (404),
    /// a second truth for the same run (409), a truth the judged stage
    /// cannot use (422 naming the field), or a run store that does not
    /// answer (503 with `Retry-After`: the run may exist).
    #[error(transparent)]
    Feedback(#[from] FeedbackError),
    /// The run succeeded but its report or output could not be written as
    /// JSON (a map with non-string keys, a failing `Serialize` impl).
    #[error("the run's answer could not be written as JSON: {message}")]
    Unserializable {
        /// serde_json's message.
        message: String,
    },
}

impl ApiError {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MalformedJson { .. } => StatusCode::BAD_REQUEST,
            Self::InvalidField { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Body { status, .. } => *status,
            Self::PipelineFailed(_) | Self::Unserializable { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            Self::Timeout(_) | Self::Unavailable(_) | Self::Overloaded { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::NotFound | Self::UnknownPipeline { .. } => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Feedback(e) => match e {
                FeedbackError::AlreadyJudged { .. } => StatusCode::CONFLICT,
                FeedbackError::StoreUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
                e if e.field().is_some() => StatusCode::UNPROCESSABLE_ENTITY,
                _ => StatusCode::NOT_FOUND,
            },
        }
    }

    /// The stable machine-readable code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MalformedJson { .. } => "malformed_json",
            Self::InvalidField { .. } => "invalid_field",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::Body { status, .. } if *status == StatusCode::PAYLOAD_TOO_LARGE => {
                "payload_too_large"
            }
            Self::Body { .. } => "unreadable_body",
            Self::PipelineFailed(_) => "pipeline_failed",
            Self::Unserializable { .. } => "unserializable_output",
            Self::Timeout(_) => "request_timeout",
            Self::Unavailable(_) => "unavailable",
            Self::Overloaded { .. } => "overloaded",
            Self::NotFound => "not_found",
            Self::UnknownPipeline { .. } => "unknown_pipeline",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Unauthorized => "unauthorized",
            Self::Feedback(e) => match e {
                FeedbackError::NotJudged { .. } => "feedback_not_taken",
                FeedbackError::UnknownRun { .. } => "unknown_run",
                FeedbackError::AlreadyJudged { .. } => "duplicate_feedback",
                FeedbackError::StoreUnavailable { .. } => "store_unavailable",
                _ => "invalid_field",
            },
        }
    }
}

impl From<InputError> for ApiError {
    fn from(e: InputError) -> Self {
        match e {
            InputError::Malformed(message) => Self::MalformedJson { message },
            InputError::Field(e) => e.into(),
        }
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        Self::InvalidField {
            field: e.field,
            message: e.message,
        }
    }
}

/// What `Retry-After` says when the run store does not answer: it
/// notices within a second when the store is back.
const STORE_RETRY_AFTER_S: u64 = 5;

/// The trace id of the current span, when it has a valid OTel context.
pub(crate) fn current_trace_id() -> Option<String> {
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut error = json!({ "code": self.code(), "message": self.to_string() });
        match &self {
            Self::InvalidField { field, .. } => {
                error["field"] = json!(field);
            }
            Self::Feedback(e) => {
                if let Some(field) = e.field() {
                    error["field"] = json!(field);
                }
            }
            Self::UnknownPipeline { served, .. } => {
                error["served"] = json!(served);
            }
            Self::PipelineFailed(RunError::StageFailed {
                stage, failures, ..
            }) => {
                error["stage"] = json!(stage);
                error["models"] = json!(failures
                    .iter()
                    .map(|f| json!({"model": f.model, "outcome": f.outcome, "message": f.message}))
                    .collect::<Vec<_>>());
            }
            _ => {}
        }
        // Every error names its trace, so a caller's report can be found in
        // Jaeger and Loki: the run's own, or the request span's.
        let trace_id = match &self {
            Self::PipelineFailed(e) => e.trace_id().map(str::to_owned),
            _ => current_trace_id(),
        };
        error["trace_id"] = json!(trace_id);
        let mut response = (status, Json(json!({ "error": error }))).into_response();
        if let Self::Unauthorized = &self {
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Self::Feedback(FeedbackError::StoreUnavailable { .. }) = &self {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(STORE_RETRY_AFTER_S));
        }
        if let Self::Overloaded { retry_after_s } = &self {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(*retry_after_s));
            response.extensions_mut().insert(Refused);
            return response;
        }
        if status.is_server_error() {
            response.extensions_mut().insert(ServerErrorCause {
                message: self.to_string(),
                logged: matches!(self, Self::PipelineFailed(_)),
            });
        }
        response
    }
}
