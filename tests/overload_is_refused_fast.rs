//! Admission control on a real loopback server: beyond the concurrency limit
//! and its short queue, run requests get 503 `overloaded` with `Retry-After`
//! at once (long before the admitted runs finish), counted in the HTTP
//! metrics, while /health and /metrics keep answering; a queued request is
//! served when a slot frees up within its wait.

#[allow(dead_code, unreachable_pub)]
#[path = "../src/bin/pipelens/demo/mod.rs"]
mod demo;
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use pipelens::server::{runs_route, Concurrency, Server};
use pipelens::telemetry::metrics_provider;
use pipelens::{AsyncModel, ModelError, Pipeline, Prediction, Stage};
use support::service::{send, serve, Reply};

/// An async model that waits, like a call to a slow model server.
struct Slow(Duration);

impl AsyncModel<u64, u64> for Slow {
    fn name(&self) -> &str {
        "slow"
    }
    fn version(&self) -> &str {
        "1"
    }
    async fn run(&self, n: &u64) -> Result<Prediction<u64>, ModelError> {
        tokio::time::sleep(self.0).await;
        Ok(Prediction::new(n + 1, 0.9))
    }
}

#[derive(serde::Deserialize)]
struct Job {
    n: u64,
}

async fn start(model_time: Duration, concurrency: Concurrency) -> (SocketAddr, String) {
    let (registry, provider) =
        metrics_provider(opentelemetry_sdk::Resource::builder_empty().build()).unwrap();
    // The provider must outlive the test: the server records through it.
    let provider = Box::leak(Box::new(provider));
    let meter = opentelemetry::metrics::MeterProvider::meter(provider, "test");
    let pipeline = Pipeline::builder("slow")
        .meter(meter.clone())
        .step("unwrap", |job: &Job| Ok(job.n))
        .stage(Stage::parallel("wait").async_model(Slow(model_time)))
        .build()
        .unwrap();
    let server = Server::builder()
        .meter(meter)
        .registry(registry)
        .pipeline(pipelens::server::Served::new(pipeline))
        .concurrency(concurrency)
        .build()
        .unwrap();
    let addr = serve(server).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while send(addr, Method::GET, "/ready", "", &[]).await.status != StatusCode::OK {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (addr, runs_route("slow"))
}

/// Posts a job; the reply and when it arrived.
async fn post(addr: SocketAddr, route: &str) -> (Reply, Instant) {
    let reply = send(
        addr,
        Method::POST,
        route,
        r#"{"n": 1}"#,
        &[("content-type", "application/json")],
    )
    .await;
    (reply, Instant::now())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_limit_and_queue_requests_are_refused_at_once() {
    let model_time = Duration::from_secs(1);
    let (addr, route) = start(
        model_time,
        Concurrency {
            limit: 2,
            queue: 2,
            max_wait: Duration::from_millis(50),
        },
    )
    .await;

    let burst: Vec<_> = (0..12)
        .map(|_| {
            let route = route.clone();
            tokio::spawn(async move { post(addr, &route).await })
        })
        .collect();
    // While both slots are busy, the probes and /metrics still answer.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for path in ["/health", "/metrics"] {
        let reply = send(addr, Method::GET, path, "", &[]).await;
        assert_eq!(reply.status, StatusCode::OK, "{path} under load");
    }
    let probes_done = Instant::now();

    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    for task in burst {
        let (reply, at) = task.await.unwrap();
        match reply.status {
            StatusCode::OK => accepted.push(at),
            StatusCode::SERVICE_UNAVAILABLE => {
                let json = reply.json();
                assert_eq!(json["error"]["code"], "overloaded", "{json}");
                // No tracing subscriber here, so the id is null; the API
                // tests check it is the request's trace id when traced.
                assert!(json["error"].get("trace_id").is_some(), "{json}");
                assert_eq!(reply.headers["retry-after"], "1");
                refused.push(at);
            }
            other => panic!("unexpected {other}: {}", reply.body),
        }
    }
    assert_eq!(accepted.len(), 2, "two slots");
    assert_eq!(refused.len(), 10, "the rest refused");
    // Every refusal (queued ones after their 50 ms wait) came back before
    // any admitted run finished its one-second model call, and so did the
    // probes.
    let first_done = *accepted.iter().min().unwrap();
    assert!(refused.iter().all(|r| *r < first_done));
    assert!(probes_done < first_done);

    // The refusals are in the HTTP metrics under the run route.
    let metrics = send(addr, Method::GET, "/metrics", "", &[]).await.body;
    let refused_count = metrics
        .lines()
        .find(|l| {
            l.starts_with("http_server_request_duration_seconds_count{")
                && l.contains(r#"http_response_status_code="503""#)
                && l.contains(&format!(r#"http_route="{route}""#))
        })
        .unwrap_or_else(|| panic!("no 503 series for {route}:\n{metrics}"));
    assert!(refused_count.ends_with(" 10"), "{refused_count}");

    // Once the slots are free, runs are admitted again.
    let (reply, _) = post(addr, &route).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_request_runs_when_a_slot_frees_within_its_wait() {
    let (addr, route) = start(
        Duration::from_millis(300),
        Concurrency {
            limit: 1,
            queue: 1,
            max_wait: Duration::from_secs(5),
        },
    )
    .await;
    let first = tokio::spawn({
        let route = route.clone();
        async move { post(addr, &route).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = tokio::spawn({
        let route = route.clone();
        async move { post(addr, &route).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    // One running, one queued: a third is refused without waiting.
    let (third, third_at) = post(addr, &route).await;
    assert_eq!(
        third.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        third.body
    );
    let (first, first_at) = first.await.unwrap();
    let (second, second_at) = second.await.unwrap();
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    assert_eq!(second.status, StatusCode::OK, "{}", second.body);
    assert!(third_at < first_at && first_at <= second_at);
}
