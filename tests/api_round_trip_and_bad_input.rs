//! The HTTP API against the real server on a loopback port: a run's report
//! round trip, and every kind of bad input answered with a 4xx JSON error
//! that names the field — never a panic or a 500.

#[allow(dead_code, unreachable_pub)]
#[path = "../src/bin/pipelens/demo/mod.rs"]
mod demo;
mod support;

use hyper::{Method, StatusCode};
use pipelens::faults::Faults;
use pipelens::telemetry::metrics_provider;
use support::service::{post_room, send, start};

async fn service() -> (
    std::net::SocketAddr,
    opentelemetry_sdk::metrics::SdkMeterProvider,
) {
    let (registry, provider) =
        metrics_provider(opentelemetry_sdk::Resource::builder_empty().build()).unwrap();
    let meter = opentelemetry::metrics::MeterProvider::meter(&provider, "test");
    let addr = start(&meter, registry, Faults::none(), 10).await;
    (addr, provider)
}

#[tokio::test]
async fn a_room_comes_back_planned_with_its_report() {
    let (addr, _provider) = service().await;
    let reply = post_room(
        addr,
        r#"{"width": 12, "length": 8, "obstacles": [{"x": 3, "y": 4}]}"#,
        &[],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let report = reply.json();
    assert_eq!(report["pipeline"], "ceiling-layout");
    let stages = report["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 2);
    assert_eq!(stages[0]["stage"], "lighting");
    assert_eq!(stages[0]["kind"], "parallel");
    let candidates: Vec<&str> = stages[0]["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["model_name"].as_str().unwrap())
        .collect();
    assert_eq!(
        candidates,
        ["light_dense", "light_sparse", "light_perimeter"]
    );
    let selected = stages[0]["selected_model"].as_str().unwrap();
    let best = stages[0]["models"]
        .as_array()
        .unwrap()
        .iter()
        .max_by(|a, b| {
            a["confidence"]
                .as_f64()
                .partial_cmp(&b["confidence"].as_f64())
                .unwrap()
        })
        .unwrap();
    assert_eq!(selected, best["model_name"], "highest confidence wins");
    assert_eq!(stages[1]["stage"], "fixtures");
    assert_eq!(stages[1]["selected_model"], "smoke_detector");
    for m in stages.iter().flat_map(|s| s["models"].as_array().unwrap()) {
        assert_eq!(m["outcome"], "success");
        let c = m["confidence"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&c), "{m}");
        assert!(m["duration_seconds"].as_f64().unwrap() >= 0.0);
    }
    let output = &report["output"];
    assert_eq!(output["room"]["width"], 12);
    let lights = output["lights"].as_array().unwrap();
    assert!(!lights.is_empty());
    assert!(
        !lights.iter().any(|c| c["x"] == 3 && c["y"] == 4),
        "no light on the obstacle"
    );
    assert!(!output["smoke_detectors"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn prefer_return_minimal_answers_the_output_without_the_stages() {
    let (addr, _provider) = service().await;
    let room = r#"{"width": 12, "length": 8, "obstacles": [{"x": 3, "y": 4}]}"#;
    let full = post_room(addr, room, &[]).await;
    let minimal = post_room(addr, room, &[("prefer", "return=minimal")]).await;
    assert_eq!(minimal.status, StatusCode::OK, "{}", minimal.body);
    assert_eq!(minimal.headers["preference-applied"], "return=minimal");
    assert_eq!(minimal.headers["content-type"], "application/json");
    assert!(full.headers.get("preference-applied").is_none());
    let (full, minimal_body) = (full.json(), minimal.json());
    let mut keys: Vec<&str> = minimal_body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "duration_seconds",
            "output",
            "pipeline",
            "run_id",
            "trace_id"
        ]
    );
    assert_eq!(minimal_body["pipeline"], "ceiling-layout");
    assert_eq!(minimal_body["run_id"].as_str().unwrap().len(), 32);
    assert_ne!(minimal_body["run_id"], full["run_id"]);
    assert!(minimal_body["duration_seconds"].as_f64().unwrap() > 0.0);
    // The same room is planned the same way whatever the answer's detail.
    assert_eq!(minimal_body["output"], full["output"]);
    assert!(minimal.body.len() < full.to_string().len());

    // An error is answered the same with or without the preference.
    let bad = post_room(addr, r#"{"width": 12}"#, &[("prefer", "return=minimal")]).await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.body);
    assert_eq!(bad.json()["error"]["field"], "length");
    assert!(bad.headers.get("preference-applied").is_none());
}

#[tokio::test]
async fn bad_input_gets_a_4xx_naming_the_field() {
    let (addr, _provider) = service().await;
    // (body, status, error code, field)
    let cases: &[(&str, u16, &str, Option<&str>)] = &[
        (r#"{"width": 12, "length": "#, 400, "malformed_json", None),
        ("not json at all", 400, "malformed_json", None),
        (
            r#"{"width": 12, "length": 8} trailing"#,
            400,
            "malformed_json",
            None,
        ),
        (
            r#"{"width": "twelve", "length": 8}"#,
            422,
            "invalid_field",
            Some("width"),
        ),
        (
            r#"{"width": 12.5, "length": 8}"#,
            422,
            "invalid_field",
            Some("width"),
        ),
        (
            r#"{"width": -1, "length": 8}"#,
            422,
            "invalid_field",
            Some("width"),
        ),
        (r#"{"length": 8}"#, 422, "invalid_field", Some("width")),
        (r#"{"width": 8}"#, 422, "invalid_field", Some("length")),
        (
            r#"{"width": 0, "length": 8}"#,
            422,
            "invalid_field",
            Some("width"),
        ),
        (
            r#"{"width": 1000000, "length": 1000000}"#,
            422,
            "invalid_field",
            Some("width"),
        ),
        (
            r#"{"width": 12, "length": 99999999999}"#,
            422,
            "invalid_field",
            Some("length"),
        ),
        (
            r#"{"width": 5, "length": 5, "obstacles": [{"x": 9, "y": 1}]}"#,
            422,
            "invalid_field",
            Some("obstacles[0].x"),
        ),
        (
            r#"{"width": 5, "length": 5, "obstacles": [{"x": 1, "y": 1}, {"x": 1, "y": 7}]}"#,
            422,
            "invalid_field",
            Some("obstacles[1].y"),
        ),
        (
            r#"{"width": 5, "length": 5, "obstacles": [{"x": 1}]}"#,
            422,
            "invalid_field",
            Some("obstacles[0].y"),
        ),
        (
            r#"{"width": 5, "length": 5, "obstacles": {"x": 1}}"#,
            422,
            "invalid_field",
            Some("obstacles"),
        ),
        (
            r#"{"width": 5, "length": 5, "color": "red"}"#,
            422,
            "invalid_field",
            Some("color"),
        ),
        (r#"[12, 8]"#, 422, "invalid_field", Some(".")),
        ("null", 422, "invalid_field", Some(".")),
    ];
    for (body, status, code, field) in cases {
        let reply = post_room(addr, body, &[]).await;
        assert_eq!(reply.status.as_u16(), *status, "{body} -> {}", reply.body);
        let json = reply.json();
        assert_eq!(json["error"]["code"], *code, "{body} -> {json}");
        if let Some(field) = field {
            assert_eq!(json["error"]["field"], *field, "{body} -> {json}");
        }
        assert!(!json["error"]["message"].as_str().unwrap().is_empty());
    }
}

#[tokio::test]
async fn wrong_content_type_oversized_body_and_unknown_routes_are_4xx_json() {
    let (addr, _provider) = service().await;
    let reply = send(
        addr,
        Method::POST,
        &support::service::ceiling_route(),
        r#"{"width": 4, "length": 4}"#,
        &[("content-type", "text/plain")],
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(reply.json()["error"]["code"], "unsupported_media_type");

    let huge = format!(
        r#"{{"width": 4, "length": 4, "pad": "{}"}}"#,
        "x".repeat(pipelens::server::BODY_LIMIT_BYTES + 10)
    );
    let reply = post_room(addr, &huge, &[]).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.json()["error"]["code"], "payload_too_large");

    let reply = send(addr, Method::GET, "/v1/nothing", "", &[]).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.json()["error"]["code"], "not_found");

    let reply = send(
        addr,
        Method::GET,
        &support::service::ceiling_route(),
        "",
        &[],
    )
    .await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.json()["error"]["code"], "method_not_allowed");
}

#[tokio::test]
async fn health_and_readiness_answer_json() {
    let (addr, _provider) = service().await;
    let health = send(addr, Method::GET, "/health", "", &[]).await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.json()["status"], "ok");
    // Models load in the background once the server starts: until they
    // have, /ready is a 503 naming the check and the models not loaded yet.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let ready = loop {
        let ready = send(addr, Method::GET, "/ready", "", &[]).await;
        if ready.status == StatusCode::OK {
            break ready;
        }
        assert_eq!(
            ready.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            ready.body
        );
        let json = ready.json();
        assert_eq!(json["checks"]["models_loaded"], false, "{json}");
        assert!(
            !json["models_not_loaded"].as_array().unwrap().is_empty(),
            "{json}"
        );
        assert!(std::time::Instant::now() < deadline, "never ready: {json}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let json = ready.json();
    assert_eq!(json["checks"]["models_loaded"], true);
    assert_eq!(json["checks"]["not_draining"], true);
    assert_eq!(json["failing"].as_array().unwrap().len(), 0);
}
