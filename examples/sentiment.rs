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

// The pipeline lives in the `pipelens` binary's demo (`pipelens serve`
// serves it beside the ceiling-layout planner); its items are `pub` for the
// modules that include it by path, and the review pool is the load
// generator's alone.
#![allow(unreachable_pub)]

#[allow(dead_code)]
#[path = "../src/bin/pipelens/demo/sentiment/mod.rs"]
mod sentiment;

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
    let scorer = sentiment::start_scorer().await?;
    let pipeline = sentiment::pipeline(telemetry.meter(), scorer)?;
    let server = Server::builder()
        .telemetry(&telemetry)
        .pipeline(sentiment::served(pipeline))
        .build()?;
    server::run(server, addr, telemetry).await?;
    Ok(())
}
