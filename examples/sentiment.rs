//! Sentiment analysis served by pipelens: `cargo run --example sentiment`,
//! then
//!
//! ```console
//! curl -s localhost:8000/v1/pipelines/sentiment/runs -H 'content-type: application/json' \
//!     -d '{"text": "I love this, it is excellent"}'
//! ```
//!
//! Listens on `PIPELENS_ADDR` (default `127.0.0.1:8000`); telemetry from the
//! usual `OTEL_*` variables, as for `pipelens serve`.

// The pipeline module is `pub` for the tests that include it by path.
#![allow(unreachable_pub)]

#[path = "sentiment/pipeline.rs"]
mod pipeline;

use std::net::SocketAddr;

use pipelens::server::{self, Server};
use pipelens::telemetry::{self, TelemetryConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = match std::env::var("PIPELENS_ADDR") {
        Ok(value) if !value.is_empty() => value
            .parse()
            .map_err(|e| format!("invalid PIPELENS_ADDR={value:?}: {e}"))?,
        _ => SocketAddr::from(([127, 0, 0, 1], 8000)),
    };
    let telemetry = telemetry::init(&TelemetryConfig::from_env()?)?;
    let scorer = pipeline::start_scorer().await?;
    let sentiment = pipeline::pipeline(telemetry.meter(), scorer)?;
    let server = Server::builder()
        .telemetry(&telemetry)
        .pipeline(pipeline::served(sentiment))
        .build()?;
    server::run(server, addr, telemetry).await?;
    Ok(())
}
