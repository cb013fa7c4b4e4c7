//! Three candidate models with fixed results in one parallel stage, served
//! by pipelens: the pipelens side of `cargo bench --bench service_load --
//! --suite python`, whose other side is the same pipeline on the seeds'
//! FastAPI stack (`bench/python/app.py`). The models answer in nanoseconds,
//! so what is measured is the framework and its telemetry.
//!
//! ```console
//! $ cargo build --release --example fixed_three
//! $ BENCH_ADDR=127.0.0.1:18082 target/release/examples/fixed_three &
//! $ curl -s 127.0.0.1:18082/v1/pipelines/fixed/runs -H 'content-type: application/json' \
//!     -d '{"features": [0.1, 0.5, 0.9, 1.3]}'
//! ```
//!
//! Environment:
//! - `BENCH_ADDR`: where to listen (default `127.0.0.1:18082`).
//! - `BENCH_TELEMETRY`: `on` (default): telemetry as `pipelens serve` has it
//!   (the `OTEL_*` variables; JSON log lines on stdout unless
//!   `PIPELENS_LOG_FORMAT` says otherwise; traces and logs over OTLP when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` is set). `off`: no telemetry at all —
//!   telemetry is not initialised, so there is no tracing subscriber, no
//!   tracer and no meter provider (the runner and the HTTP layer record into
//!   OpenTelemetry's no-op global meter), and /metrics is empty.

use std::net::SocketAddr;

use pipelens::server::{self, FieldError, Served, Server};
use pipelens::telemetry::{self, LogFormat, TelemetryConfig};
use pipelens::{Execution, Model, ModelError, Pipeline, Prediction, Stage};
use serde::{Deserialize, Serialize};

/// The pipeline's name: `POST /v1/pipelines/fixed/runs`.
const NAME: &str = "fixed";
/// The most features a request may carry.
const MAX_FEATURES: usize = 64;
const DEFAULT_ADDR: &str = "127.0.0.1:18082";

/// The request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Features {
    features: Vec<f64>,
}

/// The run's output: the champion's label and confidence, and its name.
#[derive(Debug, Clone, Serialize)]
struct Choice {
    label: &'static str,
    confidence: f64,
    model: &'static str,
}

/// A candidate that always gives the same answer.
struct Fixed {
    name: &'static str,
    label: &'static str,
    confidence: f64,
}

impl Model<Features, Choice> for Fixed {
    fn name(&self) -> &str {
        self.name
    }
    fn version(&self) -> &str {
        "1.0.0"
    }
    fn run(&self, _features: &Features) -> Result<Prediction<Choice>, ModelError> {
        let choice = Choice {
            label: self.label,
            confidence: self.confidence,
            model: self.name,
        };
        Ok(Prediction::new(choice, self.confidence))
    }
}

/// The pipeline: one parallel stage of three candidates, highest confidence
/// wins (the same numbers as `bench/python/app.py`). The models run inline:
/// they take nanoseconds, far less than a hop to the blocking pool.
fn pipeline(
    meter: Option<opentelemetry::metrics::Meter>,
) -> Result<Served<Features, Choice>, pipelens::BuildError> {
    let mut builder = Pipeline::builder(NAME).execution(Execution::Inline).stage(
        Stage::parallel("candidates")
            .model(Fixed {
                name: "a",
                label: "cat",
                confidence: 0.91,
            })
            .model(Fixed {
                name: "b",
                label: "cat",
                confidence: 0.84,
            })
            .model(Fixed {
                name: "c",
                label: "dog",
                confidence: 0.55,
            }),
    );
    if let Some(meter) = meter {
        builder = builder.meter(meter);
    }
    Ok(Served::new(builder.build()?).validate(validate))
}

/// 1 to 64 finite numbers. (JSON has no NaN or infinity, and serde_json
/// rejects `1e999` as malformed, so the finiteness check is a safeguard.)
fn validate(input: &Features) -> Result<(), FieldError> {
    let n = input.features.len();
    if n == 0 || n > MAX_FEATURES {
        return Err(FieldError::new(
            "features",
            format!("must hold 1 to {MAX_FEATURES} numbers, not {n}"),
        ));
    }
    match input.features.iter().position(|x| !x.is_finite()) {
        Some(i) => Err(FieldError::new(
            format!("features[{i}]"),
            "must be a finite number",
        )),
        None => Ok(()),
    }
}

/// `BENCH_TELEMETRY`: `on` (default) or `off`.
fn telemetry_on() -> Result<bool, String> {
    match std::env::var("BENCH_TELEMETRY") {
        Err(_) => Ok(true),
        Ok(value) => match value.trim().to_ascii_lowercase().as_str() {
            "" | "on" => Ok(true),
            "off" => Ok(false),
            _ => Err(format!(
                "invalid BENCH_TELEMETRY={value:?}: expected on or off"
            )),
        },
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::var("BENCH_ADDR")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_ADDR.to_owned());
    let addr: SocketAddr = addr
        .trim()
        .parse()
        .map_err(|e| format!("invalid BENCH_ADDR={addr:?}: {e}"))?;

    if !telemetry_on()? {
        // No telemetry::init: nothing is installed, and every span, event
        // and metric of the runner and the HTTP layer is a no-op.
        let server = Server::builder().pipeline(pipeline(None)?).build()?;
        let listener = tokio::net::TcpListener::bind(addr).await?;
        server.serve(listener, server::shutdown_signal()).await?;
        return Ok(());
    }

    let mut config = TelemetryConfig::from_env()?;
    if std::env::var_os("PIPELENS_LOG_FORMAT").is_none() {
        // As deployed: JSON lines, one per run at INFO.
        config.log_format = LogFormat::Json;
    }
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        config.service_name = "fixed-three".to_owned();
    }
    let telemetry = telemetry::init(&config)?;
    let server = Server::builder()
        .telemetry(&telemetry)
        .pipeline(pipeline(Some(telemetry.meter()))?)
        .build()?;
    server::run(server, addr, telemetry).await?;
    Ok(())
}
