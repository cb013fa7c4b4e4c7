//! `OpenInferenceModel` against a real MLServer (from PyPI, pinned, on
//! loopback) serving the reference scikit-learn model of
//! `scripts/make-models`: answers equal scikit-learn's `predict_proba`; a
//! model the server lacks, or an input declared with the wrong datatype,
//! fails the load step and keeps `/ready` at 503 with the reason in
//! `GET /v1/pipelines`; a 4xx is `invalid_input` with the server's text;
//! the server stopped mid-test gives `unavailable` outcomes, counted, while
//! the other candidate still wins; and MLServer's own span of the request
//! is a child of pipelens' `model.run` span, in the run's trace. The
//! sentiment demo pointed at it runs its `remote_logistic` there, answering
//! as its in-process ONNX candidate does.

#[allow(dead_code, unreachable_pub)]
#[path = "../src/bin/pipelens/demo/mod.rs"]
mod demo;
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use opentelemetry::metrics::Meter;
use pipelens::models::open_inference::{Datatype, InferTensor, OpenInferenceModel};
use pipelens::server::{runs_route, Served, Server};
use pipelens::telemetry::{self, metrics_provider, OtlpTarget, Protocol, TelemetryConfig};
use pipelens::{AsyncModel, Model, ModelError, Pipeline, Prediction, Stage};
use support::mlserver::MlServer;
use support::otlp::{self, attr_str, hex};
use support::python::{reference, texts};
use support::sentiment_features::Features;
use support::service::{send, serve};

const CLASSES: [&str; 3] = ["positive", "negative", "neutral"];

fn remote(base: &str, model: &str, datatype: Datatype) -> OpenInferenceModel<Vec<f32>, String> {
    OpenInferenceModel::new("mlserver", "1", base, model)
        .input("features", datatype, move |row: &Vec<f32>| {
            Ok(match datatype {
                Datatype::Fp64 => {
                    InferTensor::fp64(vec![1, row.len()], row.iter().map(|&v| v.into()).collect())
                }
                _ => InferTensor::fp32(vec![1, row.len()], row.clone()),
            })
        })
        .classifier(
            "predict_proba",
            CLASSES.iter().map(|c| c.to_string()).collect(),
        )
}

/// An in-process candidate that always answers, with little confidence.
struct Fallback;

impl Model<Vec<f32>, String> for Fallback {
    fn name(&self) -> &str {
        "fallback"
    }
    fn version(&self) -> &str {
        "1"
    }
    fn run(&self, _: &Vec<f32>) -> Result<Prediction<String>, ModelError> {
        Ok(Prediction::new("neutral".to_owned(), 0.01))
    }
}

#[derive(serde::Deserialize)]
struct Review {
    text: String,
}

fn pipeline(
    meter: Meter,
    model: OpenInferenceModel<Vec<f32>, String>,
    timeout: Duration,
) -> Pipeline<Review, String> {
    let features = Arc::new(Features::load());
    Pipeline::builder("reviews")
        .meter(meter)
        .step("featurise", move |r: &Review| Ok(features.row(&r.text)))
        .stage(
            Stage::parallel("classify")
                .async_model(model)
                .model(Fallback)
                .timeout(timeout),
        )
        .build()
        .unwrap()
}

async fn served(
    model: OpenInferenceModel<Vec<f32>, String>,
    timeout: Duration,
) -> std::net::SocketAddr {
    let (registry, provider) =
        metrics_provider(opentelemetry_sdk::Resource::builder_empty().build()).unwrap();
    let provider = Box::leak(Box::new(provider));
    let meter = opentelemetry::metrics::MeterProvider::meter(provider, "test");
    let server = Server::builder()
        .meter(meter.clone())
        .registry(registry)
        .pipeline(Served::new(pipeline(meter, model, timeout)))
        .build()
        .unwrap();
    serve(server).await
}

/// The `load_error` of the pipeline's remote model, once its load failed.
async fn load_error(addr: std::net::SocketAddr) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let listed = send(addr, Method::GET, "/v1/pipelines", "", &[])
            .await
            .json();
        let model = &listed["pipelines"][0]["stages"][1]["models"][0];
        if let Some(reason) = model["load_error"].as_str() {
            return reason.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no load error, or the others never loaded: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn post_review(addr: std::net::SocketAddr, text: &str) -> support::service::Reply {
    send(
        addr,
        Method::POST,
        &runs_route("reviews"),
        &serde_json::json!({ "text": text }).to_string(),
        &[("content-type", "application/json")],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_load_checks_errors_and_the_trace_across_the_wire() {
    let (otlp_addr, received) = otlp::start_grpc().await;
    let telemetry = telemetry::init(&TelemetryConfig {
        service_name: "pipelens-mlserver-test".into(),
        traces: Some(OtlpTarget {
            endpoint: format!("http://{otlp_addr}"),
            protocol: Protocol::Grpc,
        }),
        ..TelemetryConfig::default()
    })
    .unwrap();
    let mlserver = MlServer::start(Some(otlp_addr)).await;
    let features = Features::load();

    // Answers equal scikit-learn's predict_proba on the same texts.
    let texts = texts();
    assert!(texts.len() >= 50);
    let (labels, expected) = reference("sklearn", &texts);
    let probabilities = OpenInferenceModel::new("mlserver", "1", &mlserver.base, "sentiment")
        .input("features", Datatype::Fp32, |row: &Vec<f32>| {
            Ok(InferTensor::fp32(vec![1, row.len()], row.clone()))
        })
        .request_output("predict_proba")
        .outputs(|outputs| {
            let p = outputs.f64("predict_proba")?;
            assert_eq!(p.shape, vec![1, 3]);
            Ok(Prediction::new(p.data, 1.0))
        });
    probabilities.load().await.unwrap();
    let classifier = remote(&mlserver.base, "sentiment", Datatype::Fp32);
    classifier.load().await.unwrap();
    for ((text, want), label) in texts.iter().zip(&expected).zip(&labels) {
        let row = features.row(text);
        let got = probabilities.run(&row).await.unwrap().output;
        assert_eq!(got.len(), 3);
        for (g, w) in got.iter().zip(want) {
            assert!(
                (g - w).abs() <= 1e-5,
                "{text:?}: {got:?} vs scikit-learn {want:?}"
            );
        }
        let predicted = classifier.run(&row).await.unwrap();
        assert_eq!(predicted.output, CLASSES[*label as usize], "{text:?}");
        assert!((predicted.confidence - want[*label as usize]).abs() <= 1e-5);
    }

    // The run's trace crosses the wire: MLServer's span of the request is a
    // child of the `model.run` span that sent it.
    let runner = pipeline(
        telemetry.meter(),
        remote(&mlserver.base, "sentiment", Datatype::Fp32),
        Duration::from_secs(5),
    );
    let report = runner
        .run(Review {
            text: "An excellent kettle, really great".into(),
        })
        .await
        .unwrap();
    assert_eq!(report.output, "positive");
    assert_eq!(report.stages[1].selected_model.as_deref(), Some("mlserver"));
    let trace_id = report.trace_id.clone().expect("tracing is on");
    tokio::task::spawn_blocking(move || telemetry.shutdown())
        .await
        .unwrap()
        .unwrap();
    received
        .wait_for(
            "MLServer's span in the run's trace",
            Duration::from_secs(30),
            |r| {
                let spans = r.spans();
                let model_runs: Vec<_> = spans
                    .iter()
                    .filter(|s| {
                        hex(&s.trace_id) == trace_id
                            && s.name == "model.run"
                            && attr_str(&s.attributes, "model.name").as_deref() == Some("mlserver")
                    })
                    .map(|s| s.span_id.clone())
                    .collect();
                spans.iter().any(|s| {
                    hex(&s.trace_id) == trace_id
                        && s.name != "model.run"
                        && model_runs.contains(&s.parent_span_id)
                        && s.name.contains("infer")
                })
            },
        )
        .await;

    // A model the server lacks: the load fails, /ready stays 503 and
    // /v1/pipelines says why.
    let addr = served(
        remote(&mlserver.base, "absent", Datatype::Fp32),
        Duration::from_secs(5),
    )
    .await;
    let reason = load_error(addr).await;
    assert!(
        reason.contains("model `absent`") && reason.contains("404") && reason.contains("not found"),
        "{reason}"
    );
    let ready = send(addr, Method::GET, "/ready", "", &[]).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);

    // An input declared with another datatype than the server's metadata.
    let addr = served(
        remote(&mlserver.base, "sentiment", Datatype::Fp64),
        Duration::from_secs(5),
    )
    .await;
    let reason = load_error(addr).await;
    assert!(
        reason.contains("features FP32") && reason.contains("features FP64"),
        "{reason}"
    );
    assert_eq!(
        send(addr, Method::GET, "/ready", "", &[]).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );

    // A 4xx answer is invalid_input with the server's text: the model is
    // unloaded after the load step succeeded.
    assert_eq!(
        mlserver
            .post("/v2/repository/models/sentiment/unload")
            .await,
        Some(200)
    );
    let error = classifier.run(&features.row("fine")).await.unwrap_err();
    assert_eq!(error.error_type(), "invalid_input", "{error}");
    assert!(
        error.to_string().contains("404") && error.to_string().contains("not found"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_times_out_a_stopped_one_is_unavailable_and_the_other_candidate_wins() {
    let mut mlserver = MlServer::start(None).await;
    let addr = served(
        remote(&mlserver.base, "sentiment", Datatype::Fp32),
        Duration::from_millis(300),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while send(addr, Method::GET, "/ready", "", &[]).await.status != StatusCode::OK {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..3 {
        let reply = post_review(addr, "Terrible, it broke on the first day").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        assert_eq!(reply.json()["output"], "negative", "{}", reply.body);
    }

    // Frozen: the stage timeout cancels the request and the fallback wins;
    // thawed, the same pooled client is served again.
    mlserver.signal(libc::SIGSTOP);
    let started = Instant::now();
    let reply = post_review(addr, "Terrible, it broke on the first day").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.json()["output"], "neutral", "{}", reply.body);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    mlserver.signal(libc::SIGCONT);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let reply = post_review(addr, "Terrible, it broke on the first day").await;
        if reply.json()["output"] == "negative" {
            break;
        }
        assert!(Instant::now() < deadline, "never answered after SIGCONT");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = send(addr, Method::GET, "/metrics", "", &[]).await.body;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("ml_model_executions_total{")
                && l.contains("model_name=\"mlserver\"")
                && l.contains("outcome=\"timeout\"")),
        "{metrics}"
    );

    // Stopped: every remote execution is unavailable, counted, and the
    // fallback wins every run (and the frozen one).
    mlserver.kill();
    let runs = 5;
    for _ in 0..runs {
        let reply = post_review(addr, "Terrible, it broke on the first day").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        assert_eq!(
            reply.json()["output"],
            "neutral",
            "the fallback wins: {}",
            reply.body
        );
    }
    let metrics = send(addr, Method::GET, "/metrics", "", &[]).await.body;
    let unavailable: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("ml_model_errors_total{")
                && l.contains("model_name=\"mlserver\"")
                && l.contains("error_type=\"unavailable\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(unavailable, f64::from(runs), "{metrics}");
    let selected_fallback = metrics.lines().any(|l| {
        l.starts_with("ml_model_selected_total{")
            && l.contains("model_name=\"fallback\"")
            && l.ends_with(&format!(" {}", runs + 1))
    });
    assert!(selected_fallback, "{metrics}");
}

/// The sentiment demo with `--sentiment-model-server`: `remote_logistic` is
/// the reference model behind MLServer and answers what the in-process
/// `onnx_logistic` (its ONNX export) answers, on the same texts; with the
/// server away, only `remote_logistic` is unloaded (`/ready` 503 naming the
/// server) while the other candidates serve every run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sentiment_demo_runs_its_remote_candidate_on_mlserver() {
    use demo::sentiment::{self, Models, Remote};

    async fn demo_service(base: &str) -> std::net::SocketAddr {
        let (registry, provider) =
            metrics_provider(opentelemetry_sdk::Resource::builder_empty().build()).unwrap();
        let provider = Box::leak(Box::new(provider));
        let meter = opentelemetry::metrics::MeterProvider::meter(provider, "test");
        let models = Models::new(Remote::ModelServer(base.to_owned()));
        let pipeline = sentiment::pipeline(meter.clone(), models).unwrap();
        let server = Server::builder()
            .meter(meter)
            .registry(registry)
            .pipeline(sentiment::served(pipeline))
            .build()
            .unwrap();
        serve(server).await
    }
    async fn classify(addr: std::net::SocketAddr, text: &str) -> serde_json::Value {
        let reply = send(
            addr,
            Method::POST,
            &runs_route(sentiment::NAME),
            &serde_json::json!({ "text": text }).to_string(),
            &[("content-type", "application/json")],
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{text}: {}", reply.body);
        reply.json()
    }
    fn candidate<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
        report["stages"][1]["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["model_name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {report}"))
    }

    let mlserver = MlServer::start(None).await;
    let addr = demo_service(&mlserver.base).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while send(addr, Method::GET, "/ready", "", &[]).await.status != StatusCode::OK {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let texts = texts();
    for text in texts.iter().take(20) {
        let report = classify(addr, text).await;
        let (onnx, remote) = (
            candidate(&report, "onnx_logistic"),
            candidate(&report, "remote_logistic"),
        );
        assert_eq!(onnx["outcome"], "success", "{report}");
        assert_eq!(remote["outcome"], "success", "{report}");
        assert_eq!(remote["model_version"], "1", "{report}");
        assert_eq!(onnx["answer"], remote["answer"], "{text}: {report}");
        let (a, b) = (
            onnx["confidence"].as_f64().unwrap(),
            remote["confidence"].as_f64().unwrap(),
        );
        assert!((a - b).abs() < 1e-5, "{text}: onnx {a}, mlserver {b}");
    }
    drop(mlserver);

    // No server: the other three candidates serve; /ready names the reason.
    let dead = format!(
        "http://{}",
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    );
    let addr = demo_service(&dead).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let reason = loop {
        let listed = send(addr, Method::GET, "/v1/pipelines", "", &[])
            .await
            .json();
        let models = listed["pipelines"][0]["stages"][1]["models"]
            .as_array()
            .unwrap()
            .clone();
        let remote = models
            .iter()
            .find(|m| m["name"] == "remote_logistic")
            .unwrap();
        // The others load at their own pace (naive Bayes trains first):
        // wait until they all have, with the remote one's error listed.
        let others_loaded = ["lexicon", "naive_bayes", "onnx_logistic"]
            .iter()
            .all(|other| {
                models
                    .iter()
                    .any(|m| m["name"] == *other && m["loaded"] == true)
            });
        if let (Some(reason), true) = (remote["load_error"].as_str(), others_loaded) {
            break reason.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no load error, or the others never loaded: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(reason.contains(&dead), "{reason}");
    assert_eq!(
        send(addr, Method::GET, "/ready", "", &[]).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let report = classify(addr, "I love this, it is excellent and works great").await;
    assert_eq!(report["output"]["label"], "positive", "{report}");
}
