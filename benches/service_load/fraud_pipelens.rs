//! The `peer` suite's pipelens side: the fraud-scoring work of `fraud.rs`
//! as a pipelens pipeline, through the public API only (a `featurize`
//! step, a parallel stage of the three models whose most confident answer
//! wins, a `decide` step), served as `examples/fixed_three.rs` serves its
//! pipeline.
//!
//! Started by the bench as `service_load --serve-fraud pipelens` with:
//! - `BENCH_ADDR`: where to listen;
//! - `BENCH_TELEMETRY`: `on` (default): telemetry from the environment as
//!   `pipelens serve` has it (`OTEL_*`, `PIPELENS_TRACES_KEEP_RATIO` for tail
//!   sampling, JSON log lines unless `PIPELENS_LOG_FORMAT` says otherwise);
//!   `off`: `telemetry::init` is never called.

use std::net::SocketAddr;

use pipelens::server::{self, FieldError, Served, Server};
use pipelens::telemetry::{self, LogFormat, TelemetryConfig};
use pipelens::{Model, ModelError, Pipeline, Prediction, Stage};

use crate::fraud::{self, Decision, Features, Score, Transaction};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One of the three models of `fraud.rs`, as a pipelens model.
struct Scorer {
    name: &'static str,
    predict: fn(&fraud::Models, &Features) -> Score,
}

impl Model<Features, Score> for Scorer {
    fn name(&self) -> &str {
        self.name
    }
    fn version(&self) -> &str {
        "1.0.0"
    }
    fn run(&self, features: &Features) -> Result<Prediction<Score>, ModelError> {
        let score = (self.predict)(fraud::models(), features);
        Ok(Prediction::new(score, score.confidence))
    }
}

/// featurize → the three models, most confident wins → decide.
fn pipeline(
    meter: Option<opentelemetry::metrics::Meter>,
) -> Result<Served<Transaction, Decision>, pipelens::BuildError> {
    let mut builder = Pipeline::builder(fraud::NAME);
    if let Some(meter) = meter {
        builder = builder.meter(meter);
    }
    let pipeline = builder
        .step("featurize", |t: &Transaction| Ok(fraud::featurize(t)))
        .stage(
            Stage::parallel("score")
                .model(Scorer {
                    name: fraud::Mlp::NAME,
                    predict: |m, x| m.mlp.predict(x),
                })
                .model(Scorer {
                    name: fraud::Forest::NAME,
                    predict: |m, x| m.forest.predict(x),
                })
                .model(Scorer {
                    name: fraud::Neighbours::NAME,
                    predict: |m, x| m.neighbours.predict(x),
                }),
        )
        .step("decide", |s: &Score| Ok(fraud::decide(s)))
        .build()?;
    Ok(Served::new(pipeline).validate(|t: &Transaction| {
        fraud::validate(t).map_err(|e| FieldError::new(e.field, e.message))
    }))
}

/// Serves until SIGTERM or Ctrl-C, then drains and flushes telemetry.
pub(crate) fn serve(addr: SocketAddr, telemetry_on: bool) -> Result<(), BoxError> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        fraud::models();
        if !telemetry_on {
            let server = Server::builder().pipeline(pipeline(None)?).build()?;
            let listener = tokio::net::TcpListener::bind(addr).await?;
            server.serve(listener, server::shutdown_signal()).await?;
            return Ok(());
        }
        let mut config = TelemetryConfig::from_env()?;
        if std::env::var_os("PIPELENS_LOG_FORMAT").is_none() {
            config.log_format = LogFormat::Json;
        }
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            config.service_name = "fraud-pipelens".to_owned();
        }
        let telemetry = telemetry::init(&config)?;
        let server = Server::builder()
            .telemetry(&telemetry)
            .pipeline(pipeline(Some(telemetry.meter()))?)
            .build()?;
        server::run(server, addr, telemetry).await?;
        Ok(())
    })
}
