//! The HTTP service: the ceiling-layout pipeline over axum, with /health,
//! /ready and /metrics.

mod error;
mod http_metrics;
mod routes;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use opentelemetry::metrics::Meter;

pub use error::ApiError;
pub use routes::parse_room;

use crate::ceiling::Layout;
use crate::drift::DriftMonitor;
use crate::pipeline::Pipeline;
use http_metrics::HttpLayer;

/// The run route, as it appears in the `http_route` label.
pub const RUNS_ROUTE: &str = "/v1/pipelines/ceiling-layout/runs";
/// Largest accepted request body.
pub const BODY_LIMIT_BYTES: usize = 256 * 1024;
/// Longest a request may take before it is answered with 503.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What /ready checks.
#[derive(Debug, Default)]
pub struct Readiness {
    telemetry_initialised: AtomicBool,
    draining: AtomicBool,
}

impl Readiness {
    /// Readiness with telemetry already initialised (or not).
    pub fn new(telemetry_initialised: bool) -> Self {
        Self {
            telemetry_initialised: AtomicBool::new(telemetry_initialised),
            draining: AtomicBool::new(false),
        }
    }

    /// Marks the server as draining: /ready turns 503 so load balancers stop
    /// sending traffic while in-flight requests finish.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    fn checks(&self, pipeline: &Pipeline<Layout>) -> [(&'static str, bool); 3] {
        [
            ("models_loaded", !pipeline.models().is_empty()),
            (
                "telemetry_initialised",
                self.telemetry_initialised.load(Ordering::SeqCst),
            ),
            ("not_draining", !self.draining.load(Ordering::SeqCst)),
        ]
    }
}

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pipeline: Pipeline<Layout>,
    drift: Arc<DriftMonitor>,
    registry: prometheus::Registry,
    readiness: Arc<Readiness>,
}

impl AppState {
    /// State over a built pipeline, its drift monitor, the metrics registry
    /// served on /metrics, and the readiness flags.
    pub fn new(
        pipeline: Pipeline<Layout>,
        drift: Arc<DriftMonitor>,
        registry: prometheus::Registry,
        readiness: Arc<Readiness>,
    ) -> Self {
        Self {
            pipeline,
            drift,
            registry,
            readiness,
        }
    }
}

/// The service's routes with the HTTP layer (span, metrics, timeout) and the
/// body limit. Tests drive it with `tower::ServiceExt::oneshot`.
pub fn router(state: AppState, meter: &Meter) -> Router {
    let http = Arc::new(HttpLayer::new(meter, REQUEST_TIMEOUT));
    Router::new()
        .route(RUNS_ROUTE, post(routes::create_run))
        .route("/health", get(routes::health))
        .route("/ready", get(routes::ready))
        .route("/metrics", get(routes::metrics))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            http,
            http_metrics::observe,
        ))
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets
/// in-flight requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Resolves on Ctrl-C or SIGTERM, after marking `readiness` as draining.
pub async fn shutdown_signal(readiness: Arc<Readiness>) {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    readiness.start_draining();
    tracing::info!("shutdown signal received, draining in-flight requests");
}
