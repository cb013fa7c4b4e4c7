//! Why telemetry could not be set up or shut down.

use super::config::ConfigError;

/// Why telemetry could not be set up or shut down.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// A configuration value is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// An OTLP exporter could not be built.
    #[error("cannot build the OTLP {signal} exporter for {endpoint}: {source}")]
    Exporter {
        /// `traces` or `logs`.
        signal: &'static str,
        /// The endpoint it was meant for.
        endpoint: String,
        /// The exporter's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// OTLP export is configured but pipelens was built without its `otlp`
    /// feature.
    #[error("OTLP {signal} export to {endpoint} is configured, but pipelens was built without its `otlp` feature")]
    OtlpNotBuilt {
        /// `traces` or `logs`.
        signal: &'static str,
        /// The configured endpoint.
        endpoint: String,
    },
    /// The Prometheus exporter could not be built or registered.
    #[error("cannot set up the Prometheus exporter: {0}")]
    Prometheus(String),
    /// A global tracing subscriber is already installed.
    #[error("a global tracing subscriber is already installed: {0}")]
    SubscriberAlreadySet(String),
    /// The thread that writes log lines to stdout could not start.
    #[error("cannot start the stdout log writer: {0}")]
    StdoutWriter(String),
    /// Flushing a provider failed.
    #[error("telemetry flush failed: {0}")]
    Flush(String),
    /// Shutting down a provider failed.
    #[error("telemetry shutdown failed: {0}")]
    Shutdown(String),
}
