//! Handlers: run the pipeline, health, readiness, metrics.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::AppState;
use crate::ceiling::{Cell, Layout, Room};
use crate::planner;
use crate::telemetry::{encode_metrics, METRICS_CONTENT_TYPE};

/// The body of `POST /v1/pipelines/ceiling-layout/runs`, in grid cells.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoomRequest {
    width: u32,
    length: u32,
    #[serde(default)]
    obstacles: Vec<CellRequest>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CellRequest {
    x: u32,
    y: u32,
}

/// Parses and validates the JSON body of a run request into a room, naming
/// the offending field on error.
pub fn parse_room(body: &[u8]) -> Result<Room, ApiError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| ApiError::MalformedJson {
            message: e.to_string(),
        })?;
    if !value.is_object() {
        return Err(ApiError::InvalidField {
            field: ".".to_owned(),
            message: "expected a JSON object with width, length and obstacles".to_owned(),
        });
    }
    let request: RoomRequest = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        // A missing field is reported at its parent; name the field itself
        // so the caller knows what to fix.
        let field = named_field(&message)
            .map(|f| {
                if path == "." {
                    f.to_owned()
                } else {
                    format!("{path}.{f}")
                }
            })
            .unwrap_or(path);
        ApiError::InvalidField { field, message }
    })?;
    let obstacles = request
        .obstacles
        .into_iter()
        .map(|c| Cell::new(c.x, c.y))
        .collect();
    Room::new(request.width, request.length, obstacles).map_err(|e| ApiError::InvalidField {
        field: e.field(),
        message: e.to_string(),
    })
}

/// The field named in serde's "missing field `x`".
fn named_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.split('`').next()
}

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

/// `POST /v1/pipelines/ceiling-layout/runs`: plans the ceiling of the room in
/// the body and returns the run report.
pub(crate) async fn create_run(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    if !is_json(&headers) {
        return Err(ApiError::UnsupportedMediaType);
    }
    let body = body.map_err(|e| ApiError::Body {
        status: e.status(),
        message: e.body_text(),
    })?;
    let room = parse_room(&body)?;
    state.drift.observe(&planner::features(&room));
    let report = state.pipeline.run(Layout::empty(room)).await?;
    Ok((StatusCode::OK, Json(report)).into_response())
}

/// `GET /health`: the process is up and serving.
pub(crate) async fn health() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /ready`: 200 when models are loaded, telemetry is initialised and the
/// server is not draining; 503 naming the failing checks otherwise.
pub(crate) async fn ready(State(state): State<AppState>) -> Response {
    let checks = state.readiness.checks(&state.pipeline);
    let failing: Vec<&str> = checks
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(name, _)| *name)
        .collect();
    let body = json!({
        "status": if failing.is_empty() { "ready" } else { "not_ready" },
        "checks": checks.iter().map(|(n, ok)| (n.to_string(), json!(ok))).collect::<serde_json::Map<_, _>>(),
        "failing": failing,
    });
    let status = if failing.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// `GET /metrics`: every metric in the Prometheus text format.
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    let text = tokio::task::spawn_blocking(move || encode_metrics(&state.registry))
        .await
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], text).into_response()
}

/// Any other path.
pub(crate) async fn not_found() -> ApiError {
    ApiError::NotFound
}

/// A known path with the wrong method.
pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
