//! With an OTLP endpoint that accepts connections and never answers, the
//! batch queues fill up. Requests still succeed at once, and every span and
//! log record that did not fit is counted on /metrics
//! (`otel_sdk_processor_{span,log}_processed_total{error_type="queue_full"}`),
//! with the queue sizes from `OTEL_BSP_MAX_QUEUE_SIZE` and
//! `OTEL_BLRP_MAX_QUEUE_SIZE`. One test per binary: it sets those variables
//! for the whole process.

#[allow(dead_code, unreachable_pub)]
#[path = "../src/bin/pipelens/demo/mod.rs"]
mod demo;
mod support;

use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use pipelens::faults::Faults;
use pipelens::telemetry;
use support::service::{post_room, send, start};

const QUEUE: usize = 8;
const RUNS: usize = 20;
/// Spans of one request at least: the server span, `pipeline.run`, two
/// `stage.run` and five `model.run`.
const SPANS_PER_RUN: usize = 9;

fn counter(metrics: &str, name: &str, dropped: bool) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with(&format!("{name}{{"))
                && l.contains(r#"error_type="queue_full""#) == dropped
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_item_a_full_queue_drops_is_counted() {
    // Accepts TCP connections and never answers: each export hangs until
    // its timeout, so nothing leaves the queue meanwhile.
    let blackhole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = blackhole.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in blackhole.incoming().flatten() {
            held.push(stream);
        }
    });
    for (var, value) in [
        ("OTEL_BSP_MAX_QUEUE_SIZE", QUEUE.to_string()),
        ("OTEL_BLRP_MAX_QUEUE_SIZE", QUEUE.to_string()),
        ("OTEL_BSP_SCHEDULE_DELAY", "60000".to_owned()),
        ("OTEL_BLRP_SCHEDULE_DELAY", "60000".to_owned()),
    ] {
        std::env::set_var(var, value);
    }
    let config = support::otlp::export_to(addr);
    // Never shut down: its flush would wait on the silent endpoint.
    let telemetry: &'static telemetry::Telemetry = Box::leak(Box::new(
        telemetry::init_with_writer(&config, std::io::sink).unwrap(),
    ));
    let service = start(
        &telemetry.meter(),
        telemetry.registry().clone(),
        Faults::none(),
        10,
    )
    .await;

    let started = Instant::now();
    for _ in 0..RUNS {
        let reply = post_room(service, r#"{"width": 9, "length": 7}"#, &[]).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "{RUNS} runs took {took:?}: the request path waited on the exporter"
    );

    let metrics = send(service, Method::GET, "/metrics", "", &[]).await.body;
    let spans_dropped = counter(&metrics, "otel_sdk_processor_span_processed_total", true);
    let spans_handed = counter(&metrics, "otel_sdk_processor_span_processed_total", false);
    let logs_dropped = counter(&metrics, "otel_sdk_processor_log_processed_total", true);
    // Nothing reached the exporter yet (its first export is still hanging),
    // so all but the queue's QUEUE spans were dropped, and counted.
    assert_eq!(spans_handed, 0.0, "{metrics}");
    assert!(
        spans_dropped >= (RUNS * SPANS_PER_RUN - QUEUE) as f64,
        "{spans_dropped} spans counted as dropped; expected at least {}:\n{metrics}",
        RUNS * SPANS_PER_RUN - QUEUE
    );
    // One INFO line per run at least (plus the models' `model loaded`).
    assert!(
        logs_dropped >= (RUNS - QUEUE) as f64,
        "{logs_dropped} log records counted as dropped:\n{metrics}"
    );
}
