//! Export recovers by itself: a `pipelens serve` started while its OTLP
//! endpoint refuses connections keeps serving, counts the failed exports on
//! /metrics, and once a collector listens on that endpoint the spans and
//! log records of new runs arrive there, without a restart.

#[allow(dead_code, unreachable_pub)]
#[path = "../src/bin/pipelens/demo/mod.rs"]
mod demo;
mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use support::service::{send, try_send};

const BIN: &str = env!("CARGO_BIN_EXE_pipelens");

async fn run(addr: std::net::SocketAddr) -> String {
    let reply = send(
        addr,
        Method::POST,
        &support::service::ceiling_route(),
        r#"{"width": 9, "length": 7}"#,
        &[("content-type", "application/json")],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    reply.json()["trace_id"].as_str().unwrap().to_owned()
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_and_logs_flow_again_once_the_collector_is_back() {
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (addr, collector) = (free(), free());
    let mut child = Command::new(BIN)
        .args(["serve", "--addr", &addr.to_string()])
        .env("PIPELENS_RUN_STORE", "memory")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector}"))
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .env("OTEL_BSP_SCHEDULE_DELAY", "200")
        .env("OTEL_BLRP_SCHEDULE_DELAY", "200")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    eventually("the service to be ready", async || {
        try_send(addr, Method::GET, "/ready", "", &[])
            .await
            .is_ok_and(|r| r.status == StatusCode::OK)
    })
    .await;

    // The endpoint refuses: runs succeed, failed exports are counted.
    for _ in 0..3 {
        run(addr).await;
    }
    let failed = |metrics: &str| {
        metrics.lines().any(|l| {
            l.starts_with("otel_sdk_exporter_span_exported_total{")
                && l.contains("error_type=")
                && !l.ends_with(" 0")
        })
    };
    eventually("failed span exports on /metrics", async || {
        failed(&send(addr, Method::GET, "/metrics", "", &[]).await.body)
    })
    .await;

    // The collector comes up on that endpoint: new runs arrive there.
    let (_, received) = support::otlp::start_http_at(collector).await;
    let mut traces = Vec::new();
    for _ in 0..3 {
        traces.push(run(addr).await);
    }
    eventually(
        "the new runs' spans and logs at the collector",
        async || {
            let spans = received.spans();
            let arrived = traces.iter().all(|t| {
                spans
                    .iter()
                    .any(|s| s.name == "pipeline.run" && support::otlp::hex(&s.trace_id) == *t)
            });
            arrived
                && received
                    .logs()
                    .iter()
                    .any(|l| support::otlp::body_text(l) == "pipeline completed")
        },
    )
    .await;
    let _ = child.kill();
    let _ = child.wait();
}
