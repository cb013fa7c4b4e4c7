//! Handlers: run a pipeline, list pipelines, health, readiness, metrics.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest as _, Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::endpoint::Endpoint;
use super::error::{ApiError, Expected};
use super::respond::Detail;
use super::AppState;
use crate::telemetry::{
    encode_metrics, encode_openmetrics, wants_openmetrics, METRICS_CONTENT_TYPE,
    OPENMETRICS_CONTENT_TYPE,
};

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|mime| {
            let mime = mime.trim().to_ascii_lowercase();
            mime == "application/json"
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        })
        .unwrap_or(false)
}

/// `POST /v1/pipelines/{name}/runs` of a served pipeline: decodes and
/// validates the body, runs the pipeline and returns its report (or, with
/// `Prefer: return=minimal`, its summary).
pub(crate) async fn create_run(
    State(endpoint): State<Arc<dyn Endpoint>>,
    request: Request,
) -> Result<Response, ApiError> {
    let detail = Detail::of(request.headers());
    endpoint.run(json_body(request).await?, detail).await
}

/// A JSON request's body, or why it cannot be read: 415 for another
/// content type (before the body is read), the body rejection's own status
/// (413, 400) otherwise. The headers are read in place, not copied.
async fn json_body(request: Request) -> Result<Bytes, ApiError> {
    if !is_json(request.headers()) {
        return Err(ApiError::UnsupportedMediaType);
    }
    Bytes::from_request(request, &())
        .await
        .map_err(|e| ApiError::Body {
            status: e.status(),
            message: e.body_text(),
        })
}

/// `POST /v1/pipelines/{name}/runs/{run_id}/feedback` of a served
/// pipeline: records the ground truth of one of its runs.
pub(crate) async fn create_feedback(
    State(endpoint): State<Arc<dyn Endpoint>>,
    Path(run_id): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let body = json_body(request).await?;
    endpoint.feedback(&run_id, &body).await
}

/// `POST /v1/pipelines/{name}/runs` for a name that is not served.
pub(crate) async fn unknown_pipeline(
    State(state): State<AppState>,
    Path(params): Path<std::collections::HashMap<String, String>>,
) -> ApiError {
    let name = params.get("name").cloned().unwrap_or_default();
    ApiError::UnknownPipeline {
        name,
        served: state
            .endpoints
            .iter()
            .map(|e| e.name().to_owned())
            .collect(),
    }
}

/// `GET /v1/pipelines`: every served pipeline with its stages, models,
/// versions and load state, and the run store of each judged one (its
/// backend and whether it answers).
pub(crate) async fn list_pipelines(State(state): State<AppState>) -> Json<serde_json::Value> {
    let pipelines: Vec<serde_json::Value> = state
        .endpoints
        .iter()
        .map(|e| {
            json!({
                "name": e.name(),
                "route": super::runs_route(e.name()),
                "loaded": e.is_loaded(),
                "stages": e.stages(),
                "run_store": e.run_store_status(),
            })
        })
        .collect();
    Json(json!({ "pipelines": pipelines }))
}

/// `GET /health`: the process is up and serving.
pub(crate) async fn health() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /ready`: 200 when every model of every pipeline has loaded and the
/// server is not draining; 503 naming the failing checks and the models that
/// have not loaded otherwise.
pub(crate) async fn ready(State(state): State<AppState>) -> Response {
    let not_loaded: Vec<String> = state
        .endpoints
        .iter()
        .flat_map(|e| {
            let pipeline = e.name().to_owned();
            e.stages().into_iter().flat_map(move |s| {
                let pipeline = pipeline.clone();
                s.models
                    .into_iter()
                    .filter(|m| !m.loaded)
                    .map(move |m| format!("{pipeline}/{}", m.name))
            })
        })
        .collect();
    let checks = [
        ("models_loaded", not_loaded.is_empty()),
        (
            "not_draining",
            !state.readiness.draining.load(Ordering::SeqCst),
        ),
    ];
    let failing: Vec<&str> = checks
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(name, _)| *name)
        .collect();
    let body = json!({
        "status": if failing.is_empty() { "ready" } else { "not_ready" },
        "checks": checks.iter().map(|(n, ok)| (n.to_string(), json!(ok))).collect::<serde_json::Map<_, _>>(),
        "failing": failing,
        "models_not_loaded": not_loaded,
    });
    if failing.is_empty() {
        return (StatusCode::OK, Json(body)).into_response();
    }
    // Not ready is an answer, not a failure: a probe polls it every few
    // seconds while models load or the server drains.
    let mut response = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    response.extensions_mut().insert(Expected);
    response
}

/// `GET /metrics`: every metric in OpenMetrics text with exemplars when
/// the scraper accepts it (Prometheus does by default), else in the
/// Prometheus text format 0.0.4. Same series and values either way.
pub(crate) async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(wants_openmetrics);
    let text = tokio::task::spawn_blocking(move || {
        if openmetrics {
            encode_openmetrics(&state.registry)
        } else {
            encode_metrics(&state.registry)
        }
    })
    .await
    .unwrap_or_default();
    let content_type = if openmetrics {
        OPENMETRICS_CONTENT_TYPE
    } else {
        METRICS_CONTENT_TYPE
    };
    ([(header::CONTENT_TYPE, content_type)], text).into_response()
}

/// Any other path.
pub(crate) async fn not_found() -> ApiError {
    ApiError::NotFound
}

/// A known path with the wrong method.
pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
