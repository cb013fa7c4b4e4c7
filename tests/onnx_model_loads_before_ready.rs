//! An `OnnxModel` served over HTTP: its file is read in the model's load
//! step, so `/ready` answers 503 — and `GET /v1/pipelines` names the missing
//! file — until the file is there and loads; then runs answer the ONNX
//! classifier's label and `ml_model_loaded` is 1.

#[allow(dead_code, unreachable_pub)]
#[path = "../src/bin/pipelens/demo/mod.rs"]
mod demo;
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use pipelens::models::onnx::{OnnxModel, Tensor};
use pipelens::server::{runs_route, Served, Server};
use pipelens::telemetry::metrics_provider;
use pipelens::{Pipeline, Stage};
use support::python::{reference, texts};
use support::sentiment_features::Features;
use support::service::{send, serve};

#[derive(serde::Deserialize)]
struct Review {
    text: String,
}

const CLASSES: [&str; 3] = ["positive", "negative", "neutral"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_stays_503_until_the_onnx_file_has_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.onnx");
    let features = Arc::new(Features::load());
    let (registry, provider) =
        metrics_provider(opentelemetry_sdk::Resource::builder_empty().build()).unwrap();
    let provider = Box::leak(Box::new(provider));
    let meter = opentelemetry::metrics::MeterProvider::meter(provider, "test");
    let model: OnnxModel<Vec<f32>, &str> = OnnxModel::new("sentiment_onnx", "1.0.0", &path)
        .input("features", |row: &Vec<f32>| {
            Ok(Tensor::f32(vec![1, row.len()], row.clone()))
        })
        .classifier("probabilities", CLASSES.to_vec());
    let row_of = features.clone();
    let pipeline = Pipeline::builder("reviews")
        .meter(meter.clone())
        .step("featurise", move |r: &Review| Ok(row_of.row(&r.text)))
        .stage(Stage::parallel("classify").model(model))
        .step("label", |label: &&str| Ok(label.to_string()))
        .build()
        .unwrap();
    let server = Server::builder()
        .meter(meter)
        .registry(registry)
        .pipeline(Served::new(pipeline))
        .build()
        .unwrap();
    let addr = serve(server).await;

    // The file is not there: the load fails, naming it, and is retried.
    let deadline = Instant::now() + Duration::from_secs(10);
    let reason = loop {
        let listed = send(addr, Method::GET, "/v1/pipelines", "", &[])
            .await
            .json();
        let model = &listed["pipelines"][0]["stages"][1]["models"][0];
        if let Some(reason) = model["load_error"].as_str() {
            break reason.to_owned();
        }
        assert!(Instant::now() < deadline, "no load error: {listed}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        reason.contains("cannot read ONNX model") && reason.contains(&path.display().to_string()),
        "{reason}"
    );
    let ready = send(addr, Method::GET, "/ready", "", &[]).await;
    assert_eq!(
        ready.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        ready.body
    );
    let metrics = send(addr, Method::GET, "/metrics", "", &[]).await.body;
    assert!(
        metrics.lines().any(|l| l.starts_with("ml_model_loaded{")
            && l.contains("model_name=\"sentiment_onnx\"")
            && l.ends_with(" 0")),
        "{metrics}"
    );

    // The file arrives: the next retry loads it.
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/models/sentiment/model.onnx"),
        &path,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while send(addr, Method::GET, "/ready", "", &[]).await.status != StatusCode::OK {
        assert!(
            Instant::now() < deadline,
            "never ready after the file arrived"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = send(addr, Method::GET, "/metrics", "", &[]).await.body;
    assert!(
        metrics.lines().any(|l| l.starts_with("ml_model_loaded{")
            && l.contains("model_name=\"sentiment_onnx\"")
            && l.ends_with(" 1")),
        "{metrics}"
    );

    // Served answers are onnxruntime's classes.
    let texts: Vec<String> = texts().into_iter().take(12).collect();
    let (labels, _) = reference("onnx", &texts);
    for (text, label) in texts.iter().zip(labels) {
        let body = serde_json::json!({ "text": text }).to_string();
        let reply = send(
            addr,
            Method::POST,
            &runs_route("reviews"),
            &body,
            &[("content-type", "application/json")],
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        assert_eq!(reply.json()["output"], CLASSES[label as usize], "{text:?}");
    }
}
