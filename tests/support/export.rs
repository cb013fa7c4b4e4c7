//! The end-to-end export check shared by the gRPC and HTTP tests: a request
//! with a W3C traceparent goes through the real service, and its spans and
//! logs arrive at a real OTLP receiver with the right shape.

use std::sync::Arc;
use std::time::Duration;

use hyper::{Method, StatusCode};
use pipelens::faults::Faults;
use pipelens::telemetry::{self, LogFormat, OtlpTarget, Protocol, TelemetryConfig};

use super::captured::Captured;
use super::otlp::{self, attr_str, body_text, hex, start_grpc, start_http};
use super::service::{post_room, send, start};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN_ID: &str = "00f067aa0ba902b7";

pub async fn spans_and_logs_arrive(protocol: Protocol) {
    let (addr, received) = match protocol {
        Protocol::Grpc => otlp::start_grpc().await,
        Protocol::HttpProtobuf => otlp::start_http().await,
    };
    let endpoint = |path: &str| match protocol {
        Protocol::Grpc => format!("http://{addr}"),
        Protocol::HttpProtobuf => format!("http://{addr}{path}"),
    };
    let config = TelemetryConfig {
        service_name: "pipelens-export-test".into(),
        log_format: LogFormat::Json,
        traces: Some(OtlpTarget {
            endpoint: endpoint("/v1/traces"),
            protocol,
        }),
        logs: Some(OtlpTarget {
            endpoint: endpoint("/v1/logs"),
            protocol,
        }),
        ..TelemetryConfig::default()
    };
    let stdout = Captured::default();
    let writer = stdout.clone();
    let telemetry = Arc::new(telemetry::init_with_writer(&config, move || writer.clone()).unwrap());
    let service = start(
        &telemetry.meter(),
        telemetry.registry().clone(),
        Faults::new(Some(r#"{"light_perimeter": {"error_rate": 1.0}}"#), None).unwrap(),
        10,
    )
    .await;
    // As a load balancer would: no traffic before /ready, so every model
    // loads in its own start-up trace, never inside the run's.
    let start_wait = std::time::Instant::now();
    while send(service, Method::GET, "/ready", "", &[]).await.status != StatusCode::OK {
        assert!(
            start_wait.elapsed() < Duration::from_secs(10),
            "never ready"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let traceparent = format!("00-{TRACE_ID}-{CLIENT_SPAN_ID}-01");
    let reply = post_room(
        service,
        r#"{"width": 12, "length": 8, "obstacles": [{"x": 3, "y": 4}]}"#,
        &[("traceparent", &traceparent)],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(
        reply.json()["trace_id"],
        TRACE_ID,
        "the run continues the caller's trace"
    );

    let t = Arc::clone(&telemetry);
    tokio::task::spawn_blocking(move || t.shutdown())
        .await
        .unwrap()
        .unwrap();
    received
        .wait_for(
            "13 spans and the model logs",
            Duration::from_secs(20),
            |r| r.spans().len() >= 13 && r.logs().len() >= 6,
        )
        .await;

    let all = received.spans();
    // Each model's load step is a trace of its own, at start-up.
    let loads = all.iter().filter(|s| s.name == "model.load").count();
    assert_eq!(loads, 5, "one model.load span per model");
    let spans: Vec<_> = all.into_iter().filter(|s| s.name != "model.load").collect();
    let named = |name: &str| -> Vec<_> { spans.iter().filter(|s| s.name == name).collect() };
    for span in &spans {
        assert_eq!(
            hex(&span.trace_id),
            TRACE_ID,
            "span {} left the trace",
            span.name
        );
    }
    let request = named("POST /v1/pipelines/ceiling-layout/runs");
    assert_eq!(
        request.len(),
        1,
        "one server span: {:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    assert_eq!(
        hex(&request[0].parent_span_id),
        CLIENT_SPAN_ID,
        "server span is the caller's child"
    );
    let pipeline = named("pipeline.run");
    assert_eq!(pipeline.len(), 1);
    assert_eq!(pipeline[0].parent_span_id, request[0].span_id);
    assert_eq!(
        attr_str(&pipeline[0].attributes, "pipeline.name").as_deref(),
        Some("ceiling-layout")
    );
    let stages = named("stage.run");
    assert_eq!(stages.len(), 2);
    for stage in &stages {
        assert_eq!(
            stage.parent_span_id, pipeline[0].span_id,
            "stage under pipeline"
        );
    }
    let models = named("model.run");
    assert_eq!(models.len(), 5);
    for model in &models {
        assert!(
            stages.iter().any(|s| s.span_id == model.parent_span_id),
            "model span under a stage"
        );
        assert_eq!(
            attr_str(&model.attributes, "model.version").as_deref(),
            Some("1.0.0")
        );
    }
    let failed = models
        .iter()
        .find(|m| attr_str(&m.attributes, "model.name").as_deref() == Some("light_perimeter"))
        .unwrap();
    assert_eq!(
        attr_str(&failed.attributes, "model.outcome").as_deref(),
        Some("error")
    );
    assert_eq!(
        attr_str(&failed.attributes, "error.type").as_deref(),
        Some("injected_fault")
    );
    let status = failed
        .status
        .as_ref()
        .expect("failed model span has a status");
    assert_eq!(status.code, 2, "STATUS_CODE_ERROR");
    let ok = models
        .iter()
        .find(|m| attr_str(&m.attributes, "model.name").as_deref() == Some("air_supply"))
        .unwrap();
    let confidence: f64 = attr_str(&ok.attributes, "model.confidence")
        .unwrap()
        .parse()
        .unwrap();
    assert!((0.0..=1.0).contains(&confidence));

    let logs = received.logs();
    let bodies: Vec<String> = logs.iter().map(body_text).collect();
    // At the default INFO level a run logs one summary line plus its
    // failures; per-model success lines are DEBUG.
    for expected in ["model failed", "pipeline completed"] {
        assert!(
            bodies.iter().any(|b| b == expected),
            "no `{expected}` log in {bodies:?}"
        );
    }
    for debug_only in ["pipeline started", "model completed", "model selected"] {
        assert!(
            !bodies.iter().any(|b| b == debug_only),
            "`{debug_only}` is DEBUG, yet exported at INFO: {bodies:?}"
        );
    }
    let summary = logs
        .iter()
        .find(|r| body_text(r) == "pipeline completed")
        .unwrap();
    assert_eq!(summary.severity_text, "INFO");
    let selected = attr_str(&summary.attributes, "pipeline.selected").unwrap_or_default();
    assert!(
        selected.starts_with("lighting=light_"),
        "the summary names the lighting champion: {selected:?}"
    );
    // `model loaded` lines belong to each model's own `model.load` trace.
    for record in logs.iter().filter(|r| {
        let body = body_text(r);
        (body.starts_with("model") || body.starts_with("pipeline")) && body != "model loaded"
    }) {
        assert_eq!(
            hex(&record.trace_id),
            TRACE_ID,
            "log `{}` carries the trace id",
            body_text(record)
        );
        assert_eq!(record.span_id.len(), 8);
    }
    let failure = logs
        .iter()
        .find(|r| body_text(r) == "model failed")
        .unwrap();
    // A failed model is an outcome (its stage may still serve): WARN.
    assert_eq!(failure.severity_text, "WARN");
    assert_eq!(
        attr_str(&failure.attributes, "model.name").as_deref(),
        Some("light_perimeter")
    );
    assert!(
        received
            .service_names
            .lock()
            .unwrap()
            .iter()
            .all(|n| n == "pipelens-export-test"),
        "service.name on the resource"
    );

    let stdout = stdout.text();
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let completed = lines
        .iter()
        .find(|l| l["message"] == "pipeline completed")
        .expect("a JSON `pipeline completed` line");
    assert_eq!(completed["trace_id"], TRACE_ID);
    assert_eq!(completed["level"], "INFO");
    assert_eq!(completed["pipeline.name"], "ceiling-layout");
    assert!(completed["pipeline.selected"]
        .as_str()
        .unwrap()
        .starts_with("lighting=light_"));
    assert_eq!(completed["span_id"].as_str().unwrap().len(), 16);
    assert_eq!(
        lines
            .iter()
            .filter(|l| l["level"] == "INFO" && l["trace_id"] == TRACE_ID)
            .count(),
        1,
        "one INFO line per successful run: {lines:?}"
    );
}

/// Exports at `RUST_LOG=trace` (stdout at `stdout_filter`, if given) and
/// checks that the exporters' own spans and events reach stdout but never
/// the OTLP receivers.
pub async fn exporters_stay_out_of_otlp(stdout_filter: Option<&str>) {
    // Spans over gRPC (tonic, h2, tower), logs over HTTP (reqwest, hyper).
    let (grpc, traces) = start_grpc().await;
    let (http, logs) = start_http().await;
    let config = TelemetryConfig {
        log_format: LogFormat::Json,
        // The receivers run in this process: their axum server would log
        // each export it receives, and that is not the exporters' feedback.
        log_filter: "trace,axum=off".to_owned(),
        stdout_filter: stdout_filter.map(str::to_owned),
        ..otlp::export_split(grpc, http)
    };
    let stdout = Captured::default();
    let writer = stdout.clone();
    let telemetry = Arc::new(telemetry::init_with_writer(&config, move || writer.clone()).unwrap());

    for round in 0..3 {
        {
            let span = tracing::info_span!("app.work", round);
            let _entered = span.enter();
            tracing::info!(round, "app line");
            let pool = tracing::debug_span!(target: "hyper::client::pool", "pool.checkout");
            let _pool = pool.enter();
            tracing::debug!(target: "hyper::client", "connected");
            tracing::trace!(target: "opentelemetry_sdk::trace", "batch queued");
        }
        // Let the batch processors export (and their HTTP and gRPC clients
        // log at TRACE) between rounds.
        let t = Arc::clone(&telemetry);
        tokio::task::spawn_blocking(move || t.flush())
            .await
            .unwrap()
            .unwrap();
    }
    traces
        .wait_for("3 app spans", Duration::from_secs(20), |r| {
            r.spans().len() >= 3
        })
        .await;
    logs.wait_for("3 app logs", Duration::from_secs(20), |r| {
        r.logs().len() >= 3
    })
    .await;
    let t = Arc::clone(&telemetry);
    tokio::task::spawn_blocking(move || t.shutdown())
        .await
        .unwrap()
        .unwrap();

    let spans: Vec<String> = traces.spans().into_iter().map(|s| s.name).collect();
    assert_eq!(
        spans,
        vec!["app.work"; 3],
        "only the application's spans are exported"
    );
    let logs: Vec<String> = logs.logs().iter().map(body_text).collect();
    assert_eq!(
        logs,
        vec!["app line"; 3],
        "only the application's events are exported"
    );

    let lines = stdout.lines();
    let has = |target: &str, message: &str| {
        lines
            .iter()
            .any(|l| l["target"] == target && l["message"] == message)
    };
    assert!(
        has("hyper::client", "connected"),
        "stdout keeps every target"
    );
    assert!(has("opentelemetry_sdk::trace", "batch queued"));
    assert!(lines.iter().any(|l| l["message"] == "app line"));
    let exporter_lines = lines
        .iter()
        .filter(|l| {
            let target = l["target"].as_str().unwrap_or_default();
            ["h2", "tonic", "tower", "hyper_util", "reqwest"]
                .iter()
                .any(|t| target.starts_with(t))
        })
        .count();
    assert!(
        exporter_lines > 0,
        "the exporters logged at TRACE while exporting (else this test proves nothing)"
    );
}
