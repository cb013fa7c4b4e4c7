//! The `peer` suite's hand-wired service: the fraud-scoring work of
//! `fraud.rs` served with axum and instrumented the way a Rust team would
//! wire it without pipelens: tower-http's `TraceLayer` with an INFO request
//! span (parent taken from `traceparent`), `tracing` spans for featurize,
//! each model and decide, bridged by tracing-opentelemetry to an
//! `SdkTracerProvider` with a batch span processor and the OTLP gRPC span
//! exporter; opentelemetry-prometheus metrics on `/metrics` (per model a
//! duration histogram and a counter, a run-duration histogram); one JSON
//! log line per run on stdout, with its trace id.
//!
//! Started by the bench as `service_load --serve-fraud peer` with:
//! - `BENCH_ADDR`: where to listen;
//! - `BENCH_TELEMETRY`: `on` (default) or `off` (no subscriber, no
//!   providers: the instruments are OpenTelemetry's no-op ones and
//!   `/metrics` is empty);
//! - `OTEL_EXPORTER_OTLP_ENDPOINT`: the OTLP gRPC endpoint (no span export
//!   without it);
//! - `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`: the head sampler, read
//!   by the SDK (default `parentbased_always_on`: keep everything).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use opentelemetry::metrics::{Counter, Histogram};
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry::{global, KeyValue};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use serde_json::json;
use tower_http::trace::TraceLayer;
use tracing::{info, info_span, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;

use crate::fraud::{self, Score, Transaction};

const SERVICE_NAME: &str = "fraud-peer";
/// Histogram buckets in seconds, from 10 µs to 1 s.
const BUCKETS: [f64; 11] = [
    0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0,
];

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Serves until SIGTERM or Ctrl-C, then flushes telemetry.
pub(crate) fn serve(addr: SocketAddr, telemetry_on: bool) -> Result<(), BoxError> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let telemetry = if telemetry_on {
            Some(Telemetry::init()?)
        } else {
            None
        };
        let state = AppState {
            metrics: Arc::new(Metrics::new()),
            registry: telemetry.as_ref().map(|t| t.registry.clone()),
        };
        fraud::models();
        let listener = tokio::net::TcpListener::bind(addr).await?;
        axum::serve(listener, router(state))
            .with_graceful_shutdown(shutdown_signal())
            .await?;
        if let Some(telemetry) = telemetry {
            tokio::task::spawn_blocking(move || telemetry.shutdown()).await?;
        }
        Ok(())
    })
}

/// The providers the process installed.
struct Telemetry {
    tracer: Option<SdkTracerProvider>,
    meter: SdkMeterProvider,
    registry: prometheus::Registry,
}

impl Telemetry {
    fn init() -> Result<Self, BoxError> {
        let resource = Resource::builder().with_service_name(SERVICE_NAME).build();
        global::set_text_map_propagator(TraceContextPropagator::new());

        let tracer = match std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") {
            Ok(endpoint) => {
                let exporter = opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(endpoint)
                    .with_timeout(Duration::from_secs(5))
                    .build()?;
                Some(
                    SdkTracerProvider::builder()
                        .with_batch_exporter(exporter)
                        .with_resource(resource.clone())
                        .build(),
                )
            }
            Err(_) => None,
        };

        let registry = prometheus::Registry::new();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .build()?;
        let meter = SdkMeterProvider::builder()
            .with_reader(exporter)
            .with_resource(resource)
            .build();
        global::set_meter_provider(meter.clone());

        // hyper, h2, tonic and the SDK log through `tracing` too: keep them
        // out of the span bridge, or exporting makes spans of its own.
        let quiet = tracing_subscriber::filter::Targets::new()
            .with_default(tracing::Level::INFO)
            .with_target("hyper", tracing::level_filters::LevelFilter::OFF)
            .with_target("h2", tracing::level_filters::LevelFilter::OFF)
            .with_target("tonic", tracing::level_filters::LevelFilter::OFF)
            .with_target("tower", tracing::level_filters::LevelFilter::OFF)
            .with_target("opentelemetry", tracing::level_filters::LevelFilter::OFF);
        let otel = tracer.as_ref().map(|provider| {
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer(SERVICE_NAME))
                .with_filter(quiet.clone())
        });
        let logs = tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(std::io::stdout)
            .with_filter(quiet);
        tracing_subscriber::registry()
            .with(otel)
            .with(logs)
            .try_init()?;
        Ok(Self {
            tracer,
            meter,
            registry,
        })
    }

    /// Flushes and stops the providers: tracer, then meter. Blocks.
    fn shutdown(self) {
        if let Some(tracer) = self.tracer {
            let _ = tracer.shutdown();
        }
        let _ = self.meter.shutdown();
    }
}

/// The instruments, from the global meter (a no-op one with telemetry off).
struct Metrics {
    model_duration: Histogram<f64>,
    model_predictions: Counter<u64>,
    run_duration: Histogram<f64>,
}

impl Metrics {
    fn new() -> Self {
        let meter = global::meter(SERVICE_NAME);
        Self {
            model_duration: meter
                .f64_histogram("fraud.model.duration")
                .with_unit("s")
                .with_description("How long one model took to score a transaction")
                .with_boundaries(BUCKETS.to_vec())
                .build(),
            model_predictions: meter
                .u64_counter("fraud.model.predictions")
                .with_description("Transactions each model scored")
                .build(),
            run_duration: meter
                .f64_histogram("fraud.run.duration")
                .with_unit("s")
                .with_description("How long a run took, parse to decision")
                .with_boundaries(BUCKETS.to_vec())
                .build(),
        }
    }
}

/// What every handler shares.
#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    registry: Option<prometheus::Registry>,
}

/// The service's routes, with the HTTP trace layer.
fn router(state: AppState) -> Router {
    Router::new()
        .route(fraud::ROUTE, post(run))
        .route("/ready", get(|| async { "ready" }))
        .route("/metrics", get(metrics))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_request(())
                .on_response(|response: &Response, _latency: Duration, span: &Span| {
                    span.record("http.response.status_code", response.status().as_u16());
                }),
        )
        .with_state(state)
}

/// An INFO `http.request` span (tower-http's default is DEBUG), child of
/// the caller's `traceparent` if any.
fn request_span<B>(request: &Request<B>) -> Span {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |p| p.as_str());
    let span = info_span!(
        "http.request",
        otel.name = format_args!("{} {route}", request.method()),
        otel.kind = "server",
        http.request.method = %request.method(),
        http.route = route,
        http.response.status_code = tracing::field::Empty,
    );
    let parent = global::get_text_map_propagator(|p| p.extract(&Headers(request.headers())));
    let _ = span.set_parent(parent);
    span
}

/// Request headers as a propagator reads them.
struct Headers<'a>(&'a HeaderMap);

impl opentelemetry::propagation::Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// `POST /v1/pipelines/fraud/runs`.
async fn run(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let started = Instant::now();
    let transaction = match parse(&headers, &body) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let features = info_span!("featurize").in_scope(|| fraud::featurize(&transaction));
    let models = fraud::models();
    let scores = [
        state.score(fraud::Mlp::NAME, || models.mlp.predict(&features)),
        state.score(fraud::Forest::NAME, || models.forest.predict(&features)),
        state.score(fraud::Neighbours::NAME, || {
            models.neighbours.predict(&features)
        }),
    ];
    let decision = info_span!("decide").in_scope(|| {
        let best = fraud::most_confident(&scores).expect("three scores");
        fraud::decide(&best)
    });
    let elapsed = started.elapsed();
    state.metrics.run_duration.record(
        elapsed.as_secs_f64(),
        &[KeyValue::new("decision", decision.decision)],
    );
    let trace_id = Span::current().context().span().span_context().trace_id();
    info!(
        trace_id = %trace_id,
        decision = decision.decision,
        model = decision.model,
        fraud_probability = decision.fraud_probability,
        duration_ms = elapsed.as_secs_f64() * 1e3,
        "fraud run"
    );
    Json(decision).into_response()
}

impl AppState {
    /// Runs one model in its span, recording its duration and count.
    fn score(&self, model: &'static str, predict: impl FnOnce() -> Score) -> Score {
        let _span = info_span!("model.predict", model).entered();
        let started = Instant::now();
        let score = predict();
        let attributes = [KeyValue::new("model", model)];
        self.metrics
            .model_duration
            .record(started.elapsed().as_secs_f64(), &attributes);
        self.metrics.model_predictions.add(1, &attributes);
        score
    }
}

/// The body as a transaction, or the error naming what is wrong.
fn parse(headers: &HeaderMap, body: &[u8]) -> Result<Transaction, ApiError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json {
        return Err(ApiError::UnsupportedMediaType);
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let transaction: Transaction =
        serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
            if e.inner().is_syntax() || e.inner().is_eof() {
                return ApiError::MalformedJson(e.inner().to_string());
            }
            let message = e.inner().to_string();
            // serde names a missing field only in its message.
            let field = message
                .strip_prefix("missing field `")
                .and_then(|rest| rest.split('`').next())
                .map_or_else(|| e.path().to_string(), str::to_owned);
            ApiError::InvalidField { field, message }
        })?;
    deserializer
        .end()
        .map_err(|e| ApiError::MalformedJson(e.to_string()))?;
    fraud::validate(&transaction).map_err(|e| ApiError::InvalidField {
        field: e.field.to_owned(),
        message: e.message,
    })?;
    Ok(transaction)
}

/// What a run can fail with: the same statuses and body as pipelens gives.
enum ApiError {
    MalformedJson(String),
    InvalidField { field: String, message: String },
    UnsupportedMediaType,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            Self::MalformedJson(message) => (
                StatusCode::BAD_REQUEST,
                json!({"error": {"code": "malformed_json", "message": format!("malformed JSON: {message}")}}),
            ),
            Self::InvalidField { field, message } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"error": {"code": "invalid_field", "message": message, "field": field}}),
            ),
            Self::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                json!({"error": {"code": "unsupported_media_type",
                    "message": "expected `Content-Type: application/json`"}}),
            ),
        };
        (status, Json(body)).into_response()
    }
}

/// `GET /metrics`: the Prometheus text exposition.
async fn metrics(State(state): State<AppState>) -> Response {
    let Some(registry) = state.registry else {
        return StatusCode::NO_CONTENT.into_response();
    };
    let mut body = String::new();
    if let Err(e) = prometheus::TextEncoder::new().encode_utf8(&registry.gather(), &mut body) {
        return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
