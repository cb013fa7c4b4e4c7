//! Telemetry setup: configuration from the OpenTelemetry environment
//! variables, one [`init`] call that installs logs, traces and metrics, and
//! the guard that flushes them.

mod config;
mod error;
pub(crate) mod exemplars;
#[cfg(feature = "otlp")]
mod export_counts;
mod feedback;
mod init;
mod json;
mod openmetrics;
mod otlp;
mod propagation;
#[cfg(feature = "otlp")]
mod queue_gate;
mod sampling;
mod stdout;

pub use config::{ConfigError, LogFormat, OtlpTarget, Protocol, SamplerConfig, TelemetryConfig};
pub use error::TelemetryError;
pub use init::{
    encode_metrics, init, init_with_writer, metrics_provider, Telemetry, METRICS_CONTENT_TYPE,
};
pub use openmetrics::{encode_openmetrics, wants_openmetrics, OPENMETRICS_CONTENT_TYPE};
pub use propagation::{context_from_headers, trace_headers};
pub use sampling::{HoldLimits, KeepParent, SlowThreshold};
