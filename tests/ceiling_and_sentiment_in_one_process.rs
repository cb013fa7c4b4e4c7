//! Two pipelines from two domains served by one process through the public
//! API: each at its own route with its own input type, listed by
//! `GET /v1/pipelines`, with separate `ml_*` series, and /ready waiting for
//! the models of both.

#[allow(dead_code, unreachable_pub)]
#[path = "../src/bin/pipelens/demo/mod.rs"]
mod demo;
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use demo::sentiment;
use hyper::{Method, StatusCode};
use pipelens::faults::Faults;
use pipelens::server::Server;
use pipelens::telemetry::metrics_provider;
use support::service::{post_room, send, serve};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_server_serves_the_ceiling_and_sentiment_pipelines() {
    let (registry, provider) =
        metrics_provider(opentelemetry_sdk::Resource::builder_empty().build()).unwrap();
    let meter = opentelemetry::metrics::MeterProvider::meter(&provider, "test");
    let ceiling =
        demo::planner::pipeline(Some(meter.clone()), &Arc::new(Faults::none()), 10).unwrap();
    let scorer = sentiment::start_scorer().await.unwrap();
    let text = sentiment::pipeline(meter.clone(), scorer).unwrap();
    let server = Server::builder()
        .meter(meter)
        .registry(registry)
        .pipeline(demo::planner::served(ceiling))
        .pipeline(sentiment::served(text))
        .build()
        .unwrap();
    let addr = serve(server).await;

    let start = Instant::now();
    while send(addr, Method::GET, "/ready", "", &[]).await.status != StatusCode::OK {
        assert!(start.elapsed() < Duration::from_secs(20), "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let listed = send(addr, Method::GET, "/v1/pipelines", "", &[])
        .await
        .json();
    let names: Vec<&str> = listed["pipelines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ceiling-layout", "sentiment"]);
    let sentiment_models: Vec<(&str, &str, bool, &str)> = listed["pipelines"][1]["stages"][1]
        ["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap(),
                m["kind"].as_str().unwrap(),
                m["loaded"].as_bool().unwrap(),
                m["role"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        sentiment_models,
        [
            ("lexicon", "sync", true, "candidate"),
            ("naive_bayes", "sync", true, "candidate"),
            ("onnx_logistic", "sync", true, "candidate"),
            ("remote_logistic", "async", true, "candidate"),
            ("majority_vote", "sync", true, "shadow"),
        ]
    );

    let room = post_room(addr, r#"{"width": 12, "length": 8}"#, &[]).await;
    assert_eq!(room.status, StatusCode::OK, "{}", room.body);
    assert_eq!(room.json()["pipeline"], "ceiling-layout");
    let review = send(
        addr,
        Method::POST,
        "/v1/pipelines/sentiment/runs",
        r#"{"text": "excellent, I love it"}"#,
        &[("content-type", "application/json")],
    )
    .await;
    assert_eq!(review.status, StatusCode::OK, "{}", review.body);
    let review = review.json();
    assert_eq!(review["output"]["label"], "positive");

    // The sentiment classifiers are judged against ground truth sent later;
    // the ceiling planner judges nothing, so it takes none.
    let feedback = |name: &str, run: &serde_json::Value| {
        format!(
            "/v1/pipelines/{name}/runs/{}/feedback",
            run["run_id"].as_str().unwrap()
        )
    };
    let judged = send(
        addr,
        Method::POST,
        &feedback("sentiment", &review),
        r#"{"label": "positive"}"#,
        &[("content-type", "application/json")],
    )
    .await;
    assert_eq!(judged.status, StatusCode::OK, "{}", judged.body);
    assert_eq!(judged.json()["stage"], "classify", "{}", judged.body);
    let refused = send(
        addr,
        Method::POST,
        &feedback("ceiling-layout", &room.json()),
        r#"{"label": "positive"}"#,
        &[("content-type", "application/json")],
    )
    .await;
    assert_eq!(refused.status, StatusCode::NOT_FOUND, "{}", refused.body);
    assert_eq!(refused.json()["error"]["code"], "feedback_not_taken");

    // A room sent to the sentiment route is that pipeline's bad input.
    let wrong = send(
        addr,
        Method::POST,
        "/v1/pipelines/sentiment/runs",
        r#"{"width": 12, "length": 8}"#,
        &[("content-type", "application/json")],
    )
    .await;
    assert_eq!(wrong.status, StatusCode::UNPROCESSABLE_ENTITY);
    let unknown = send(
        addr,
        Method::POST,
        "/v1/pipelines/translation/runs",
        "{}",
        &[("content-type", "application/json")],
    )
    .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.json()["error"]["code"], "unknown_pipeline");

    let metrics = send(addr, Method::GET, "/metrics", "", &[]).await.body;
    for needle in [
        r#"ml_pipeline_runs_total{outcome="success",pipeline="ceiling-layout"} 1"#,
        r#"ml_pipeline_runs_total{outcome="success",pipeline="sentiment"} 1"#,
        r#"ml_model_selected_total{model_name="light_dense",pipeline="ceiling-layout",stage="lighting"}"#,
        r#"ml_model_executions_total{model_name="lexicon",outcome="success",pipeline="sentiment",stage="classify"} 1"#,
        r#"http_route="/v1/pipelines/ceiling-layout/runs""#,
        r#"http_route="/v1/pipelines/sentiment/runs""#,
        r#"http_route="/v1/pipelines/{name}/runs""#,
        r#"ml_model_feedback_total{model_name="lexicon",outcome="correct",pipeline="sentiment",stage="classify"} 1"#,
        r#"ml_pipeline_feedback_total{outcome="correct",pipeline="sentiment",stage="classify"} 1"#,
    ] {
        assert!(metrics.contains(needle), "missing {needle}:\n{metrics}");
    }
}
