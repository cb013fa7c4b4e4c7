//! With a feedback token set (`Server::builder().feedback_token(..)`, the
//! binary's `PIPELENS_FEEDBACK_TOKEN`), feedback needs
//! `Authorization: Bearer <token>`: 401 with the JSON error body without it
//! or with another token, 200 with it, every answer counted on the HTTP
//! metrics, runs still open, and the token in no log line.

#[allow(dead_code, unreachable_pub)]
#[path = "../src/bin/pipelens/demo/mod.rs"]
mod demo;
mod support;

use hyper::{Method, StatusCode};
use pipelens::server::{feedback_route, Server, ServerError, TokenError};
use pipelens::telemetry::metrics_provider;
use pipelens::{Judge, Model, ModelError, Pipeline, Prediction, Stage};
use support::captured::Captured;
use support::service::{send, serve};

const TOKEN: &str = "fb-7f3c9a1e5d2b";

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

fn pets(meter: &opentelemetry::metrics::Meter) -> Pipeline<Pet, String> {
    Pipeline::builder("pets")
        .meter(meter.clone())
        .stage(
            Stage::parallel("classify")
                .model(Initial)
                .judge(Judge::label(|label: &String| label.clone())),
        )
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_needs_the_bearer_token_and_runs_do_not() {
    let log = Captured::default();
    let writer = log.clone();
    tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .init();

    let (registry, provider) =
        metrics_provider(opentelemetry_sdk::Resource::builder_empty().build()).unwrap();
    let provider = Box::leak(Box::new(provider));
    let meter = opentelemetry::metrics::MeterProvider::meter(provider, "test");
    let server = Server::builder()
        .meter(meter.clone())
        .registry(registry)
        .pipeline(pets(&meter))
        .feedback_token(TOKEN)
        .build()
        .unwrap();
    let addr = serve(server).await;
    let json = ("content-type", "application/json");

    // Runs need no token.
    let run = send(
        addr,
        Method::POST,
        "/v1/pipelines/pets/runs",
        r#"{"name": "cleo"}"#,
        &[json],
    )
    .await;
    assert_eq!(run.status, StatusCode::OK, "{}", run.body);
    let run_id = run.json()["run_id"].as_str().unwrap().to_owned();
    let path = format!("/v1/pipelines/pets/runs/{run_id}/feedback");
    let truth = r#"{"label": "cat"}"#;

    let wrong = format!("Bearer {TOKEN}x");
    let basic = format!("Basic {TOKEN}");
    for auth in [
        None,
        Some("Bearer nope"),
        Some(wrong.as_str()),
        Some(basic.as_str()),
    ] {
        let mut headers = vec![json];
        headers.extend(auth.map(|a| ("authorization", a)));
        let reply = send(addr, Method::POST, &path, truth, &headers).await;
        assert_eq!(
            reply.status,
            StatusCode::UNAUTHORIZED,
            "{auth:?}: {}",
            reply.body
        );
        assert_eq!(
            reply.json()["error"]["code"],
            "unauthorized",
            "{}",
            reply.body
        );
        assert!(
            reply.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains("Authorization: Bearer"),
            "{}",
            reply.body
        );
        assert_eq!(reply.headers["www-authenticate"], "Bearer");
        assert!(!reply.body.contains(TOKEN), "{}", reply.body);
    }

    // The refusals did not take the run's truth: with the token it is judged.
    let bearer = format!("Bearer {TOKEN}");
    let judged = send(
        addr,
        Method::POST,
        &path,
        truth,
        &[json, ("authorization", &bearer)],
    )
    .await;
    assert_eq!(judged.status, StatusCode::OK, "{}", judged.body);
    assert_eq!(judged.json()["selected_correct"], true, "{}", judged.body);

    let metrics = send(addr, Method::GET, "/metrics", "", &[]).await.body;
    let count = |status: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("http_server_request_duration_seconds_count{")
                    && l.contains(&format!(r#"http_route="{}""#, feedback_route("pets")))
                    && l.contains(&format!(r#"http_response_status_code="{status}""#))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
    };
    assert_eq!(count("401"), Some(4), "{metrics}");
    assert_eq!(count("200"), Some(1), "{metrics}");
    assert!(
        metrics.contains(
            r#"ml_pipeline_feedback_total{outcome="correct",pipeline="pets",stage="classify"} 1"#
        ),
        "{metrics}"
    );

    let logged = log.text();
    assert!(
        logged.contains("http.request"),
        "the requests were logged at TRACE"
    );
    assert!(
        !logged.contains(TOKEN),
        "the token is in the log:\n{logged}"
    );
}

#[test]
fn an_unusable_token_is_refused_at_build_without_showing_it() {
    let (_, provider) =
        metrics_provider(opentelemetry_sdk::Resource::builder_empty().build()).unwrap();
    let meter = opentelemetry::metrics::MeterProvider::meter(&provider, "test");
    for (token, expected) in [
        ("", TokenError::Empty),
        ("has space", TokenError::NotSendable),
    ] {
        let Err(err) = Server::builder()
            .meter(meter.clone())
            .pipeline(pets(&meter))
            .feedback_token(token)
            .build()
        else {
            panic!("{token:?} accepted");
        };
        assert!(
            matches!(err, ServerError::FeedbackToken(e) if e == expected),
            "{token:?}: {err}"
        );
        assert!(token.is_empty() || !err.to_string().contains(token));
    }
}
