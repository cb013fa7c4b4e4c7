//! `cargo run --example sentiment` as a user runs it: the example binary on
//! a loopback port, exporting to a real OTLP receiver. Its runs classify
//! text, its spans chain from the request down to the remote scorer (which
//! joins the trace through `traceparent`), its `ml_*` series carry
//! `pipeline="sentiment"`, and bad input gets a 4xx naming the field.

#[allow(dead_code, unreachable_pub)]
#[path = "../src/bin/pipelens/demo/mod.rs"]
mod demo;
mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use support::otlp::{attr_str, start_grpc};
use support::service::send;

/// The example's binary, built by `cargo build --examples` (scripts/test)
/// beside this test's own binary.
fn example_binary() -> PathBuf {
    let deps = std::env::current_exe().unwrap();
    let profile = deps.parent().and_then(|d| d.parent()).unwrap();
    let path = profile.join("examples").join("sentiment");
    assert!(
        path.is_file(),
        "{} is missing: build it with `cargo build --examples` (scripts/test does)",
        path.display()
    );
    path
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Kills the example if the test fails before its clean shutdown.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

async fn post_text(addr: SocketAddr, body: &str) -> support::service::Reply {
    send(
        addr,
        Method::POST,
        "/v1/pipelines/sentiment/runs",
        body,
        &[("content-type", "application/json")],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sentiment_example_classifies_traces_and_refuses_bad_input() {
    let (otlp, received) = start_grpc().await;
    let addr = free_port();
    let mut child = Running(
        Command::new(example_binary())
            .env("PIPELENS_ADDR", addr.to_string())
            .env_remove("PIPELENS_SENTIMENT_MODEL_SERVER")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}"))
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
            .env("OTEL_SERVICE_NAME", "sentiment-test")
            .env("PIPELENS_LOG_FORMAT", "json")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    // Ready only once the naive Bayes model has trained and the remote
    // scorer answered its health check.
    let start = Instant::now();
    loop {
        if let Ok(Ok(r)) = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::spawn(async move { send(addr, Method::GET, "/ready", "", &[]).await }),
        )
        .await
        {
            if r.status == StatusCode::OK {
                break;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the example never became ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    for (text, label) in [
        ("I love this, it is excellent and works great", "positive"),
        (
            "This is terrible, I hate it, it broke after a day",
            "negative",
        ),
    ] {
        let reply = post_text(addr, &serde_json::json!({ "text": text }).to_string()).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        let report = reply.json();
        assert_eq!(report["pipeline"], "sentiment");
        assert_eq!(report["output"]["label"], label, "{text}: {report}");
        let score = report["output"]["score"].as_f64().unwrap();
        assert!((-1.0..=1.0).contains(&score), "{report}");
        assert_eq!(report["trace_id"].as_str().unwrap().len(), 32);
        let stages: Vec<&str> = report["stages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["stage"].as_str().unwrap())
            .collect();
        assert_eq!(stages, ["tokenize", "classify", "label"]);
        let candidates: Vec<(&str, &str)> = report["stages"][1]["models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["model_name"].as_str().unwrap(),
                    m["outcome"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            candidates,
            [
                ("lexicon", "success"),
                ("naive_bayes", "success"),
                ("onnx_logistic", "success"),
                ("remote_logistic", "success")
            ]
        );
    }

    // Bad input: (body, status, code, field)
    let cases: &[(&str, u16, &str, Option<&str>)] = &[
        (r#"{"text": "   "}"#, 422, "invalid_field", Some("text")),
        (r#"{"txt": "hello"}"#, 422, "invalid_field", Some("txt")),
        (r#"{}"#, 422, "invalid_field", Some("text")),
        (r#"{"text": 42}"#, 422, "invalid_field", Some("text")),
        (r#"["text"]"#, 422, "invalid_field", Some(".")),
        (r#"{"text": "#, 400, "malformed_json", None),
    ];
    for (body, status, code, field) in cases {
        let reply = post_text(addr, body).await;
        assert_eq!(reply.status.as_u16(), *status, "{body}: {}", reply.body);
        let json = reply.json();
        assert_eq!(json["error"]["code"], *code, "{body}: {json}");
        if let Some(field) = field {
            assert_eq!(json["error"]["field"], *field, "{body}: {json}");
        }
        assert_eq!(
            json["error"]["trace_id"].as_str().map(str::len),
            Some(32),
            "errors name their trace: {json}"
        );
    }
    let long = serde_json::json!({ "text": "a ".repeat(9000) }).to_string();
    let reply = post_text(addr, &long).await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.body
    );

    let metrics = send(addr, Method::GET, "/metrics", "", &[]).await.body;
    for needle in [
        r#"ml_pipeline_runs_total{outcome="success",pipeline="sentiment"} 2"#,
        r#"ml_model_executions_total{model_name="remote_logistic",outcome="success",pipeline="sentiment",stage="classify"} 2"#,
        r#"ml_model_execution_duration_seconds_count{model_name="tokenize",pipeline="sentiment",stage="tokenize"} 2"#,
        r#"ml_model_loaded{model_name="naive_bayes",model_version="1.0.0",pipeline="sentiment"} 1"#,
        r#"ml_model_loaded{model_name="remote_logistic",model_version="1.0.0",pipeline="sentiment"} 1"#,
        r#"ml_model_loaded{model_name="onnx_logistic",model_version="1.0.0",pipeline="sentiment"} 1"#,
        r#"ml_model_executions_total{model_name="onnx_logistic",outcome="success",pipeline="sentiment",stage="classify"} 2"#,
        r#"http_server_request_duration_seconds_count{http_request_method="POST",http_response_status_code="422",http_route="/v1/pipelines/sentiment/runs"} 6"#,
    ] {
        assert!(metrics.contains(needle), "missing {needle}:\n{metrics}");
    }
    assert!(
        metrics
            .lines()
            .filter(|l| l.starts_with("ml_model_executions_total{"))
            .all(|l| l.contains(r#"pipeline="sentiment""#)),
        "every model series names its pipeline"
    );

    // The trace: request → pipeline.run → stage.run → model.run → the
    // scorer's own server span, joined through `traceparent`.
    received
        .wait_for("the remote scorer's spans", Duration::from_secs(20), |r| {
            r.spans()
                .iter()
                .filter(|s| s.name == "scorer.score")
                .count()
                >= 2
        })
        .await;
    let spans = received.spans();
    let by_id = |id: &[u8]| spans.iter().find(|s| s.span_id == id);
    let scorer = spans.iter().find(|s| s.name == "scorer.score").unwrap();
    let model = by_id(&scorer.parent_span_id).expect("the scorer's parent was exported");
    assert_eq!(model.name, "model.run");
    assert_eq!(model.trace_id, scorer.trace_id);
    assert_eq!(
        attr_str(&model.attributes, "model.name").as_deref(),
        Some("remote_logistic")
    );
    assert_eq!(
        attr_str(&model.attributes, "model.kind").as_deref(),
        Some("async")
    );
    let stage = by_id(&model.parent_span_id).unwrap();
    assert_eq!(stage.name, "stage.run");
    let run = by_id(&stage.parent_span_id).unwrap();
    assert_eq!(run.name, "pipeline.run");
    let request = by_id(&run.parent_span_id).unwrap();
    assert_eq!(request.name, "POST /v1/pipelines/sentiment/runs");

    let pid = libc::pid_t::try_from(child.0.id()).unwrap();
    // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the example did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit {status:?}");
}
