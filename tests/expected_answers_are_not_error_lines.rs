//! The log of a service at INFO holds ERROR lines for failures only: a
//! service whose model loads slowly (so `/ready` answers 503 for a while),
//! that answers 4xx to bad requests and 503 `overloaded` beyond its
//! admission limit, and that fails one run writes exactly one ERROR line,
//! the failed run's, naming its stage.

#[allow(dead_code, unreachable_pub)]
#[path = "../src/bin/pipelens/demo/mod.rs"]
mod demo;
mod support;

use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use pipelens::server::{runs_route, Concurrency, Served, Server};
use pipelens::telemetry::metrics_provider;
use pipelens::{AsyncModel, ModelError, Pipeline, Prediction, Stage};
use support::captured::Captured;
use support::service::{send, serve};

/// Takes a while to load; then waits `n` ms per run and fails when `n` is 0.
struct Slow;

impl AsyncModel<u64, u64> for Slow {
    fn name(&self) -> &str {
        "slow"
    }
    fn version(&self) -> &str {
        "1"
    }
    async fn load(&self) -> Result<(), ModelError> {
        tokio::time::sleep(Duration::from_millis(400)).await;
        Ok(())
    }
    async fn run(&self, n: &u64) -> Result<Prediction<u64>, ModelError> {
        if *n == 0 {
            return Err(ModelError::Computation("nothing to wait for".into()));
        }
        tokio::time::sleep(Duration::from_millis(*n)).await;
        Ok(Prediction::new(*n, 0.9))
    }
}

#[derive(serde::Deserialize)]
struct Job {
    n: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_failed_run_is_an_error_line() {
    let log = Captured::default();
    let writer = log.clone();
    tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .init();

    let (registry, provider) =
        metrics_provider(opentelemetry_sdk::Resource::builder_empty().build()).unwrap();
    let provider = Box::leak(Box::new(provider));
    let meter = opentelemetry::metrics::MeterProvider::meter(provider, "test");
    let pipeline = Pipeline::builder("waits")
        .meter(meter.clone())
        .step("unwrap", |job: &Job| Ok(job.n))
        .stage(Stage::parallel("wait").async_model(Slow))
        .build()
        .unwrap();
    let server = Server::builder()
        .meter(meter)
        .registry(registry)
        .pipeline(Served::new(pipeline))
        .concurrency(Concurrency {
            limit: 1,
            queue: 0,
            max_wait: Duration::from_millis(10),
        })
        .build()
        .unwrap();
    let addr = serve(server).await;
    let route = runs_route("waits");
    let json = [("content-type", "application/json")];

    // Not ready while the model loads: 503, then 200.
    let mut not_ready = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match send(addr, Method::GET, "/ready", "", &[]).await.status {
            StatusCode::OK => break,
            StatusCode::SERVICE_UNAVAILABLE => not_ready += 1,
            other => panic!("/ready answered {other}"),
        }
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(not_ready > 0, "/ready never answered 503 while loading");

    // The caller's faults: 400, 422, 404.
    for (path, body, status) in [
        (route.as_str(), "{", StatusCode::BAD_REQUEST),
        (
            route.as_str(),
            r#"{"n": "x"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/v1/pipelines/nope/runs",
            r#"{"n": 1}"#,
            StatusCode::NOT_FOUND,
        ),
    ] {
        let reply = send(addr, Method::POST, path, body, &json).await;
        assert_eq!(reply.status, status, "{path} {body}: {}", reply.body);
    }

    // One slot, no queue: a second run while the first waits is refused.
    let first = tokio::spawn({
        let route = route.clone();
        async move { send(addr, Method::POST, &route, r#"{"n": 1500}"#, &json).await }
    });
    // Let it take the slot first: a probe in flight when it arrives would
    // have it refused instead.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let reply = send(addr, Method::POST, &route, r#"{"n": 1}"#, &json).await;
        if reply.status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(
                reply.json()["error"]["code"],
                "overloaded",
                "{}",
                reply.body
            );
            break;
        }
        assert!(Instant::now() < deadline, "never refused: {}", reply.body);
    }
    assert_eq!(first.await.unwrap().status, StatusCode::OK);

    // The one failure of the service: no model of stage `wait` succeeded.
    let failed = send(addr, Method::POST, &route, r#"{"n": 0}"#, &json).await;
    assert_eq!(
        failed.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{}",
        failed.body
    );

    let lines = log.lines();
    let errors: Vec<&serde_json::Value> = lines.iter().filter(|l| l["level"] == "ERROR").collect();
    assert_eq!(errors.len(), 1, "exactly one ERROR line: {errors:#?}");
    let error = errors[0];
    assert_eq!(error["fields"]["message"], "pipeline failed", "{error}");
    assert_eq!(error["fields"]["stage.name"], "wait", "{error}");
    let message = error["fields"]["error.message"].as_str().unwrap();
    assert!(
        message.contains("stage `wait`") && message.contains("slow"),
        "the message names the stage and its model: {message}"
    );
    // Every answer, expected or not, is counted.
    let metrics = send(addr, Method::GET, "/metrics", "", &[]).await.body;
    for (route, status) in [
        ("/ready", "503"),
        (route.as_str(), "400"),
        (route.as_str(), "422"),
        (route.as_str(), "503"),
        (route.as_str(), "500"),
    ] {
        assert!(
            metrics.lines().any(
                |l| l.starts_with("http_server_request_duration_seconds_count{")
                    && l.contains(&format!(r#"http_response_status_code="{status}""#))
                    && l.contains(&format!(r#"http_route="{route}""#))
            ),
            "{route} {status} not counted:\n{metrics}"
        );
    }
}
