//! With the trace and log backends down, requests still succeed and the lost
//! telemetry is counted on /metrics (`otel_sdk_exporter_*_exported_total`
//! with `error_type`), instead of blocking the service.

#[allow(dead_code, unreachable_pub)]
#[path = "../src/bin/pipelens/demo/mod.rs"]
mod demo;
mod support;

use std::sync::Arc;

use hyper::{Method, StatusCode};
use pipelens::faults::Faults;
use pipelens::telemetry;
use support::service::{post_room, send, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_succeed_and_lost_spans_and_logs_are_counted() {
    // A port that was just free: nothing listens there.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let config = support::otlp::export_to(dead);
    let telemetry = Arc::new(telemetry::init_with_writer(&config, std::io::sink).unwrap());
    let service = start(
        &telemetry.meter(),
        telemetry.registry().clone(),
        Faults::none(),
        10,
    )
    .await;
    for _ in 0..5 {
        let reply = post_room(service, r#"{"width": 9, "length": 7}"#, &[]).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    }
    let t = Arc::clone(&telemetry);
    // The exports fail; flush reports it but must not hang past its timeouts.
    let _ = tokio::task::spawn_blocking(move || t.flush())
        .await
        .unwrap();
    let metrics = send(service, Method::GET, "/metrics", "", &[]).await.body;
    for (signal, component) in [
        ("span", "otlp_grpc_span_exporter"),
        ("log", "otlp_http_log_exporter"),
    ] {
        let lost: f64 = metrics
            .lines()
            .filter(|l| {
                l.starts_with(&format!("otel_sdk_exporter_{signal}_exported_total{{"))
                    && l.contains(component)
                    && l.contains("error_type=")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert!(lost > 0.0, "no lost {signal}s counted:\n{metrics}");
    }
    let reply = post_room(service, r#"{"width": 9, "length": 7}"#, &[]).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "still serving after failed exports"
    );
}
