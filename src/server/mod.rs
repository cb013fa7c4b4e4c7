//! The instrumented HTTP service (cargo feature `server`): any number of
//! named pipelines, each with its own serde input and output, at
//! `POST /v1/pipelines/{name}/runs` (answering the run report, or only the
//! output and ids with `Prefer: return=minimal`), with `GET /v1/pipelines`,
//! `/health`, `/ready` and `/metrics`; HTTP semantic-convention metrics, a server span
//! per request continuing the caller's `traceparent`, JSON errors naming the
//! field, a body limit, a request timeout and graceful shutdown.
//!
//! Run it standalone with [`run`] (or [`Server::serve`]), or mount
//! [`Server::router`] in an existing axum app.

mod admission;
mod auth;
mod endpoint;
mod error;
mod http_metrics;
mod respond;
mod routes;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use opentelemetry::metrics::Meter;
use serde::Serialize;

pub use crate::input::FieldError;
pub use admission::Concurrency;
pub use auth::TokenError;
pub use endpoint::Served;
pub use error::ApiError;

use crate::telemetry::{Telemetry, TelemetryError};
use admission::Admission;
use auth::FeedbackToken;
use endpoint::Endpoint;
use http_metrics::HttpLayer;

/// The run route of every pipeline; `{name}` is the pipeline's name. Served
/// pipelines get a route of their own (`/v1/pipelines/ceiling-layout/runs`),
/// so `http_route` tells them apart; the template answers 404 for others.
pub const RUNS_ROUTE: &str = "/v1/pipelines/{name}/runs";
/// The feedback route of every pipeline: the ground truth of run `{run_id}`.
pub const FEEDBACK_ROUTE: &str = "/v1/pipelines/{name}/runs/{run_id}/feedback";
/// Default largest accepted request body.
pub const BODY_LIMIT_BYTES: usize = 256 * 1024;
/// Default longest a request may take before it is answered with 503.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long in-flight requests may take to finish after a shutdown signal
/// before the server stops anyway (see [`ServerBuilder::shutdown_grace`]).
/// With telemetry's own flush (bounded by the exporter timeout, 10 s by
/// default) it stays under Kubernetes' default 30 s termination grace.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

/// The run route of the pipeline `name`.
pub fn runs_route(name: &str) -> String {
    RUNS_ROUTE.replace("{name}", name)
}

/// The feedback route of the pipeline `name` (with `{run_id}` still a
/// parameter).
pub fn feedback_route(name: &str) -> String {
    FEEDBACK_ROUTE.replace("{name}", name)
}

/// Why a server could not be built or could not serve.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// Two served pipelines share a name.
    #[error("pipeline `{0}` is served twice")]
    DuplicatePipeline(String),
    /// A pipeline name cannot be a URL path segment.
    #[error("pipeline name `{0}` must be letters, digits, `-`, `_` or `.` to be served")]
    InvalidPipelineName(String),
    /// The server has no pipeline to serve.
    #[error("no pipeline to serve")]
    NoPipelines,
    /// The address cannot be bound, or serving failed.
    #[error("cannot serve on {addr}: {source}")]
    Io {
        /// The listen address.
        addr: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// In-flight requests were still running when the shutdown grace period
    /// ended; the server stopped without them.
    #[error(
        "requests still in flight {grace_s} s after the shutdown signal; stopped without them"
    )]
    ShutdownGraceExpired {
        /// The grace period, in seconds.
        grace_s: f64,
    },
    /// The feedback token cannot be used (the message never shows it).
    #[error(transparent)]
    FeedbackToken(#[from] TokenError),
    /// Telemetry could not be flushed at shutdown.
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
}

/// What /ready checks besides the models.
#[derive(Debug, Default)]
pub(crate) struct Readiness {
    draining: AtomicBool,
}

/// Builds a [`Server`].
pub struct ServerBuilder {
    meter: Option<Meter>,
    registry: Option<prometheus::Registry>,
    endpoints: Vec<Arc<dyn Endpoint>>,
    body_limit: usize,
    request_timeout: Duration,
    concurrency: Concurrency,
    shutdown_grace: Duration,
    feedback_token: Option<String>,
}

impl ServerBuilder {
    /// Records HTTP metrics with the meter of `telemetry` and serves its
    /// registry on /metrics.
    #[must_use]
    pub fn telemetry(self, telemetry: &Telemetry) -> Self {
        self.meter(telemetry.meter())
            .registry(telemetry.registry().clone())
    }

    /// Records HTTP metrics with this meter (default: the global meter).
    #[must_use]
    pub fn meter(mut self, meter: Meter) -> Self {
        self.meter = Some(meter);
        self
    }

    /// Serves this registry on /metrics (default: an empty one).
    #[must_use]
    pub fn registry(mut self, registry: prometheus::Registry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Serves a pipeline at `POST /v1/pipelines/{its name}/runs`: a
    /// [`crate::Pipeline`] whose input is deserialisable, or a [`Served`] with
    /// its own request type and validation.
    #[must_use]
    pub fn pipeline<In, Out>(mut self, served: impl Into<Served<In, Out>>) -> Self
    where
        In: Send + Sync + 'static,
        Out: Serialize + Send + Sync + 'static,
    {
        self.endpoints.push(endpoint::erase(served.into()));
        self
    }

    /// Sets the largest accepted request body (default 256 KiB); larger ones
    /// are refused with 413 before they are read whole.
    #[must_use]
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// Sets how long a request may take before it is answered with 503
    /// (default 10 s).
    #[must_use]
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How long in-flight requests may take to finish after the shutdown
    /// signal (default [`SHUTDOWN_GRACE`]); past it, [`Server::serve`] stops
    /// without them and fails with [`ServerError::ShutdownGraceExpired`].
    #[must_use]
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Bounds concurrent pipeline runs (default [`Concurrency::default`]:
    /// four per core running, as many waiting, for at most 1 s). Requests
    /// beyond get 503 `overloaded` with `Retry-After` at once.
    #[must_use]
    pub fn concurrency(mut self, concurrency: Concurrency) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// Requires `Authorization: Bearer <token>` on every feedback route
    /// (`POST /v1/pipelines/{name}/runs/{run_id}/feedback`): without it or
    /// with another token the answer is 401 with the JSON error body. The
    /// token is compared in constant time and never logged. Unset (the
    /// default), anyone who reaches the port may send feedback. The binary
    /// reads it from `PIPELENS_FEEDBACK_TOKEN`.
    #[must_use]
    pub fn feedback_token(mut self, token: impl Into<String>) -> Self {
        self.feedback_token = Some(token.into());
        self
    }

    /// Checks the pipeline names and the feedback token and builds the
    /// server.
    pub fn build(self) -> Result<Server, ServerError> {
        if self.endpoints.is_empty() {
            return Err(ServerError::NoPipelines);
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            let name = e.name();
            if !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return Err(ServerError::InvalidPipelineName(name.to_owned()));
            }
            if self.endpoints[..i].iter().any(|o| o.name() == name) {
                return Err(ServerError::DuplicatePipeline(name.to_owned()));
            }
        }
        let feedback_token = self
            .feedback_token
            .as_deref()
            .map(FeedbackToken::new)
            .transpose()?;
        Ok(Server {
            feedback_token,
            meter: self
                .meter
                .unwrap_or_else(|| opentelemetry::global::meter("pipelens")),
            state: AppState {
                endpoints: Arc::new(self.endpoints),
                registry: self.registry.unwrap_or_default(),
                readiness: Arc::new(Readiness::default()),
            },
            body_limit: self.body_limit,
            request_timeout: self.request_timeout,
            admission: Arc::new(Admission::new(self.concurrency)),
            loading: Arc::new(AtomicBool::new(false)),
            shutdown_grace: self.shutdown_grace,
        })
    }
}

/// Shared state of every handler.
#[derive(Clone)]
pub(crate) struct AppState {
    endpoints: Arc<Vec<Arc<dyn Endpoint>>>,
    registry: prometheus::Registry,
    readiness: Arc<Readiness>,
}

/// Serves named pipelines over HTTP. Build it with [`Server::builder`].
pub struct Server {
    meter: Meter,
    state: AppState,
    body_limit: usize,
    request_timeout: Duration,
    admission: Arc<Admission>,
    loading: Arc<AtomicBool>,
    shutdown_grace: Duration,
    feedback_token: Option<FeedbackToken>,
}

impl Server {
    /// Starts building a server.
    pub fn builder() -> ServerBuilder {
        ServerBuilder {
            meter: None,
            registry: None,
            endpoints: Vec::new(),
            body_limit: BODY_LIMIT_BYTES,
            request_timeout: REQUEST_TIMEOUT,
            concurrency: Concurrency::default(),
            shutdown_grace: SHUTDOWN_GRACE,
            feedback_token: None,
        }
    }

    /// The service's routes with the HTTP layer (span, metrics, timeout) and
    /// the body limit, to serve or to mount (`Router::merge`) in an existing
    /// axum app. Inside a tokio runtime, the first call also starts loading
    /// every model in the background, retrying failed loads with backoff
    /// (1 s doubling to 30 s); /ready answers 503 until all have loaded.
    pub fn router(&self) -> Router {
        self.start_loading();
        let http = Arc::new(HttpLayer::new(&self.meter, self.request_timeout));
        let mut runs = Router::new();
        for endpoint in self.state.endpoints.iter() {
            runs = runs.route(
                &runs_route(endpoint.name()),
                post(routes::create_run).with_state(Arc::clone(endpoint)),
            );
        }
        // Admission runs before the body is read, and only on run routes.
        let runs = runs.route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&self.admission),
            admission::admit,
        ));
        // Feedback is cheap bookkeeping: it is not admitted like a run.
        let mut feedback = Router::new();
        for endpoint in self.state.endpoints.iter() {
            feedback = feedback.route(
                &feedback_route(endpoint.name()),
                post(routes::create_feedback).with_state(Arc::clone(endpoint)),
            );
        }
        // With a token, feedback needs it (checked inside the HTTP layer,
        // so a 401 is counted like any answer).
        if let Some(token) = &self.feedback_token {
            feedback = feedback.route_layer(axum::middleware::from_fn_with_state(
                token.clone(),
                auth::require,
            ));
        }
        Router::new()
            .merge(runs)
            .merge(feedback)
            .route(RUNS_ROUTE, post(routes::unknown_pipeline))
            .route(FEEDBACK_ROUTE, post(routes::unknown_pipeline))
            .route("/v1/pipelines", get(routes::list_pipelines))
            .route("/health", get(routes::health))
            .route("/ready", get(routes::ready))
            .route("/metrics", get(routes::metrics))
            .fallback(routes::not_found)
            .method_not_allowed_fallback(routes::method_not_allowed)
            .layer(DefaultBodyLimit::max(self.body_limit))
            .layer(axum::middleware::from_fn_with_state(
                http,
                http_metrics::observe,
            ))
            .with_state(self.state.clone())
    }

    /// Whether every model of every served pipeline has loaded.
    pub fn is_loaded(&self) -> bool {
        self.state.endpoints.iter().all(|e| e.is_loaded())
    }

    /// Marks the server as draining: /ready turns 503 so load balancers stop
    /// sending traffic while in-flight requests finish.
    pub fn start_draining(&self) {
        self.state.readiness.draining.store(true, Ordering::SeqCst);
    }

    /// Serves on `listener` until `shutdown` resolves, then marks the server
    /// as draining (/ready turns 503), stops accepting connections, closes
    /// idle keep-alive connections and lets in-flight requests finish, for
    /// at most the shutdown grace period.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let addr = listener
            .local_addr()
            .map_or_else(|_| "?".to_owned(), |a| a.to_string());
        let readiness = Arc::clone(&self.state.readiness);
        let grace = self.shutdown_grace;
        let router = self.router();
        let (signalled, on_signal) = tokio::sync::oneshot::channel::<()>();
        let serving = axum::serve(listener, router).with_graceful_shutdown(async move {
            shutdown.await;
            readiness.draining.store(true, Ordering::SeqCst);
            tracing::info!(
                grace_s = grace.as_secs_f64(),
                "shutdown signal received, draining in-flight requests"
            );
            let _ = signalled.send(());
        });
        let grace_expired = async move {
            if on_signal.await.is_err() {
                // The server ended without a signal (an I/O error).
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            served = serving => served.map_err(|source| ServerError::Io { addr, source }),
            () = grace_expired => {
                tracing::error!(
                    grace_s = grace.as_secs_f64(),
                    "shutdown grace period over with requests in flight; stopping without them"
                );
                Err(ServerError::ShutdownGraceExpired { grace_s: grace.as_secs_f64() })
            }
        }
    }

    fn start_loading(&self) {
        if self.loading.swap(true, Ordering::SeqCst) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            self.loading.store(false, Ordering::SeqCst);
            return;
        };
        for endpoint in self.state.endpoints.iter() {
            let endpoint = Arc::clone(endpoint);
            handle.spawn(async move {
                let mut backoff = Duration::from_secs(1);
                while let Err(e) = endpoint.load_missing().await {
                    tracing::warn!(
                        error.message = %e,
                        retry_in_s = backoff.as_secs(),
                        "models not loaded; retrying"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            });
        }
    }
}

/// Serves `server` on `addr` until Ctrl-C or SIGTERM, lets in-flight
/// requests finish, then flushes and shuts down `telemetry` (off the async
/// threads). The standalone way to run a service.
pub async fn run(
    server: Server,
    addr: SocketAddr,
    telemetry: Telemetry,
) -> Result<(), ServerError> {
    let io = |source| ServerError::Io {
        addr: addr.to_string(),
        source,
    };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(io)?;
    let local = listener.local_addr().map_err(io)?;
    let pipelines: Vec<&str> = server.state.endpoints.iter().map(|e| e.name()).collect();
    tracing::info!(address = %local, pipelines = ?pipelines, "pipelens listening");
    let served = server.serve(listener, shutdown_signal()).await;
    let flushed = tokio::task::spawn_blocking(move || telemetry.shutdown())
        .await
        .unwrap_or_else(|e| Err(TelemetryError::Shutdown(e.to_string())));
    served?;
    flushed?;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
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
}
