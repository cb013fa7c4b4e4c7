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
//!
//! The candidates: a lexicon, naive Bayes, the ONNX classifier of
//! `models/sentiment` (run in the process by tract) and `remote_logistic`.
//! With `PIPELENS_SENTIMENT_MODEL_SERVER` set to an Open Inference Protocol
//! server's base URL (MLServer serving `deploy/mlserver`, such as
//! `http://127.0.0.1:8080`), `remote_logistic` calls it; unset, the example
//! starts its own scoring endpoint on a loopback port and says so. Nothing
//! but cargo is needed either way.
//!
//! The challenger in shadow is `majority_vote` in the process, as `pipelens
//! serve` runs it; as for `pipelens serve`, `PIPELENS_SENTIMENT_SHADOW=off`
//! runs none, and `PIPELENS_SENTIMENT_SHADOW=async:20` runs it as an async
//! model that answers 20 ms after it is called (a challenger behind a model
//! server of its own).

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
    let remote = match std::env::var("PIPELENS_SENTIMENT_MODEL_SERVER") {
        Ok(base) if !base.is_empty() => {
            let base = base.trim_end_matches('/').to_owned();
            eprintln!("sentiment: remote_logistic calls the model server at {base}");
            sentiment::Remote::ModelServer(base)
        }
        _ => {
            let scorer = sentiment::start_scorer().await?;
            eprintln!(
                "sentiment: remote_logistic calls the scoring endpoint started at http://{scorer} \
                 (set PIPELENS_SENTIMENT_MODEL_SERVER to use a model server such as MLServer)"
            );
            sentiment::Remote::Scorer(scorer)
        }
    };
    let shadow = match std::env::var("PIPELENS_SENTIMENT_SHADOW") {
        Ok(value) if !value.is_empty() => sentiment::Shadow::parse(&value)
            .map_err(|e| format!("invalid PIPELENS_SENTIMENT_SHADOW={value}: {e}"))?,
        _ => sentiment::Shadow::default(),
    };
    let models = sentiment::Models {
        shadow,
        ..sentiment::Models::new(remote)
    };
    let pipeline = sentiment::pipeline(telemetry.meter(), models)?;
    let server = Server::builder()
        .telemetry(&telemetry)
        .pipeline(sentiment::served(pipeline))
        .build()?;
    server::run(server, addr, telemetry).await?;
    Ok(())
}
