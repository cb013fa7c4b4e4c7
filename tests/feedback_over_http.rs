//! Ground truth over HTTP: a run's id in its response, then
//! `POST /v1/pipelines/{name}/runs/{run_id}/feedback` judged per model, with
//! 404 for unknown or expired runs, 409 for a second truth, 422 naming the
//! field for bodies the judge cannot use, and one bounded `http_route`.

#[allow(dead_code, unreachable_pub)]
#[path = "../src/bin/pipelens/demo/mod.rs"]
mod demo;
mod support;

use std::time::Duration;

use hyper::{Method, StatusCode};
use pipelens::server::Server;
use pipelens::telemetry::metrics_provider;
use pipelens::{Judge, Model, ModelError, Pipeline, Prediction, Stage};
use support::service::{send, serve, Reply};

#[derive(serde::Deserialize)]
struct Pet {
    name: String,
}

/// Says `cat` for names starting with `c`, else `dog`.
struct Initial;
impl Model<Pet, String> for Initial {
    fn name(&self) -> &str {
        "initial"
    }
    fn version(&self) -> &str {
        "1"
    }
    fn run(&self, pet: &Pet) -> Result<Prediction<String>, ModelError> {
        let label = if pet.name.starts_with('c') {
            "cat"
        } else {
            "dog"
        };
        Ok(Prediction::new(label.to_owned(), 0.9))
    }
}

/// Always says `dog`, less sure.
struct Dogs;
impl Model<Pet, String> for Dogs {
    fn name(&self) -> &str {
        "dogs"
    }
    fn version(&self) -> &str {
        "1"
    }
    fn run(&self, _: &Pet) -> Result<Prediction<String>, ModelError> {
        Ok(Prediction::new("dog".to_owned(), 0.4))
    }
}

const JSON: &[(&str, &str)] = &[("content-type", "application/json")];

async fn post(addr: std::net::SocketAddr, path: &str, body: &str) -> Reply {
    send(addr, Method::POST, path, body, JSON).await
}

fn feedback_path(run_id: &str) -> String {
    format!("/v1/pipelines/pets/runs/{run_id}/feedback")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_is_judged_per_model_and_bad_feedback_is_refused() {
    let (registry, provider) =
        metrics_provider(opentelemetry_sdk::Resource::builder_empty().build()).unwrap();
    let meter = opentelemetry::metrics::MeterProvider::meter(&provider, "test");
    let pets: Pipeline<Pet, String> = Pipeline::builder("pets")
        .meter(meter.clone())
        .feedback_retention(1000, Duration::from_millis(1500))
        .stage(
            Stage::parallel("classify")
                .model(Initial)
                .model(Dogs)
                .judge(Judge::label(|label: &String| label.clone())),
        )
        .build()
        .unwrap();
    let server = Server::builder()
        .meter(meter)
        .registry(registry)
        .pipeline(pets)
        .build()
        .unwrap();
    let addr = serve(server).await;

    let run = post(addr, "/v1/pipelines/pets/runs", r#"{"name": "cleo"}"#).await;
    assert_eq!(run.status, StatusCode::OK, "{}", run.body);
    let run = run.json();
    let run_id = run["run_id"].as_str().unwrap().to_owned();
    assert_eq!(run_id.len(), 32, "{run}");
    assert_eq!(run["stages"][0]["models"][0]["answer"], "cat");
    assert_eq!(run["stages"][0]["models"][1]["answer"], "dog");

    // Bodies the judge cannot use: 422 naming the field, and the run keeps
    // waiting for its truth.
    for (body, field) in [
        (r#"{}"#, "label"),
        (r#"{"label": "cat", "value": 1}"#, "value"),
        (r#"{"label": 5}"#, "label"),
        (r#"{"value": 1.5}"#, "label"),
        (r#"{"label": "cat", "stage": "nope"}"#, "stage"),
        (r#"{"label": "cat", "why": "x"}"#, "why"),
    ] {
        let reply = post(addr, &feedback_path(&run_id), body).await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {}",
            reply.body
        );
        assert_eq!(
            reply.json()["error"]["field"],
            field,
            "{body}: {}",
            reply.body
        );
    }
    let reply = post(addr, &feedback_path(&run_id), "{").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.body);
    let reply = send(
        addr,
        Method::POST,
        &feedback_path(&run_id),
        r#"{"label": "cat"}"#,
        &[],
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // The truth: a cat. `initial` (served) was right, `dogs` wrong.
    let judged = post(addr, &feedback_path(&run_id), r#"{"label": "cat"}"#).await;
    assert_eq!(judged.status, StatusCode::OK, "{}", judged.body);
    let judged = judged.json();
    assert_eq!(judged["selected_model"], "initial");
    assert_eq!(judged["selected_correct"], true);
    assert_eq!(judged["models"][1]["model_name"], "dogs");
    assert_eq!(judged["models"][1]["correct"], false);

    let again = post(addr, &feedback_path(&run_id), r#"{"label": "cat"}"#).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.body);
    assert_eq!(again.json()["error"]["code"], "duplicate_feedback");

    for unknown in ["0123456789abcdef0123456789abcdef", "not-a-run-id"] {
        let reply = post(addr, &feedback_path(unknown), r#"{"label": "cat"}"#).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.body);
        assert_eq!(reply.json()["error"]["code"], "unknown_run");
    }
    let reply = post(
        addr,
        &format!("/v1/pipelines/nope/runs/{run_id}/feedback"),
        r#"{"label": "cat"}"#,
    )
    .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.json()["error"]["code"], "unknown_pipeline");

    // Past the retention window the run is forgotten.
    let late = post(addr, "/v1/pipelines/pets/runs", r#"{"name": "rex"}"#)
        .await
        .json();
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let reply = post(
        addr,
        &feedback_path(late["run_id"].as_str().unwrap()),
        r#"{"label": "dog"}"#,
    )
    .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.body);

    let metrics = send(addr, Method::GET, "/metrics", "", &[]).await.body;
    let value = |name: &str, labels: &[&str]| -> Option<f64> {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && labels.iter().all(|p| l.contains(p)))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    };
    let judged = |model: &str, outcome: &str| {
        value(
            "ml_model_feedback_total",
            &[
                "pipeline=\"pets\"",
                &format!("model_name=\"{model}\""),
                &format!("outcome=\"{outcome}\""),
            ],
        )
    };
    assert_eq!(judged("initial", "correct"), Some(1.0), "{metrics}");
    assert_eq!(judged("dogs", "incorrect"), Some(1.0));
    assert_eq!(judged("dogs", "correct"), Some(0.0));
    assert_eq!(
        value("ml_pipeline_feedback_total", &["outcome=\"correct\""]),
        Some(1.0)
    );
    // Every run id lands on one route label.
    let routes: std::collections::BTreeSet<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("http_server_request_duration_seconds_count"))
        .filter_map(|l| l.split("http_route=\"").nth(1)?.split('"').next())
        .filter(|r| r.contains("feedback"))
        .collect();
    assert_eq!(
        routes.into_iter().collect::<Vec<_>>(),
        [
            "/v1/pipelines/pets/runs/{run_id}/feedback",
            "/v1/pipelines/{name}/runs/{run_id}/feedback"
        ]
    );
}
