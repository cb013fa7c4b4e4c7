//! A batch ends before any scrape, so `pipelens run` with
//! `OTEL_METRICS_EXPORTER=otlp` pushes its metrics over OTLP (as to
//! Prometheus' OTLP receiver): the service's metric names and labels, with
//! the batch's `batch_id` and `service.name` on the resource, delivered by
//! the time the process exits.

#[allow(dead_code, unreachable_pub, missing_docs)]
#[path = "support/otlp.rs"]
mod otlp;

use opentelemetry_proto::tonic::common::v1::{any_value::Value, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::metric::Data;

const BIN: &str = env!("CARGO_BIN_EXE_pipelens");

fn text(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            _ => None,
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_pushes_its_metrics_with_its_batch_id() {
    let (addr, received) = otlp::start_metrics_http().await;

    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("rooms.jsonl");
    std::fs::write(
        &input,
        "{\"width\": 12, \"length\": 8}\n{\"width\": 6, \"length\": 6}\n",
    )
    .unwrap();
    let mut command = std::process::Command::new(BIN);
    command
        .args(["run", "--input", input.to_str().unwrap()])
        .args(["--batch-id", "nightly-42"])
        .env("OTEL_METRICS_EXPORTER", "otlp")
        .env(
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            format!("http://{addr}/api/v1/otlp/v1/metrics"),
        )
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("RUST_LOG");
    let out = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("batch nightly-42: 2 inputs"), "{stderr}");

    // The push at shutdown has arrived by the time the process exited.
    let requests = received.lock().unwrap().clone();
    assert!(!requests.is_empty(), "no metrics pushed");
    let mut executions = 0.0;
    let mut names = std::collections::BTreeSet::new();
    for request in &requests {
        for rm in &request.resource_metrics {
            let resource = &rm.resource.as_ref().unwrap().attributes;
            assert_eq!(text(resource, "batch_id").as_deref(), Some("nightly-42"));
            assert_eq!(text(resource, "service.name").as_deref(), Some("pipelens"));
            for metric in rm.scope_metrics.iter().flat_map(|s| &s.metrics) {
                names.insert(metric.name.clone());
                if metric.name != "ml_model_executions" {
                    continue;
                }
                let Some(Data::Sum(sum)) = &metric.data else {
                    panic!("ml_model_executions is not a sum: {metric:?}");
                };
                assert!(sum.is_monotonic);
                // Cumulative, as Prometheus' OTLP receiver expects.
                assert_eq!(sum.aggregation_temporality, 2);
                for point in &sum.data_points {
                    assert_eq!(
                        text(&point.attributes, "pipeline").as_deref(),
                        Some("ceiling-layout")
                    );
                    if let Some(
                        opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(n),
                    ) = point.value
                    {
                        executions = f64::max(executions, n as f64);
                    }
                }
            }
        }
    }
    for name in [
        "ml_model_executions",
        "ml_model_execution_duration",
        "ml_pipeline_runs",
    ] {
        assert!(
            names.iter().any(|n| n.starts_with(name)),
            "{name} not pushed: {names:?}"
        );
    }
    assert!(
        executions >= 2.0,
        "executions per model series: {executions}"
    );
}
