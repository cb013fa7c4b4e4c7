//! Bad input, exhaustively: generated bodies, content types, methods and
//! paths through the generic server's input path never panic and always get
//! a 4xx JSON error that names the problem (the field, for a body that
//! parses); an oversized body is refused before it is read whole; and
//! thousands of distinct paths, methods and bodies leave the set of series
//! on /metrics exactly as it was.

#[allow(dead_code, unreachable_pub)]
#[path = "../src/bin/pipelens/demo/mod.rs"]
mod demo;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::Router;
use demo::planner;
use http_body_util::BodyExt as _;
use hyper::body::{Bytes, Frame};
use hyper::{Method, Request, StatusCode};
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use pipelens::faults::Faults;
use pipelens::server::Server;
use pipelens::telemetry::{encode_metrics, metrics_provider};
use proptest::prelude::*;
use proptest::strategy::ValueTree as _;
use proptest::test_runner::{Config, TestRunner};
use tower::ServiceExt as _;

/// The ceiling-layout service's router, its registry and the provider that
/// keeps its instruments alive.
struct Service {
    router: Router,
    registry: prometheus::Registry,
    _provider: SdkMeterProvider,
}

fn service(runtime: &tokio::runtime::Runtime) -> Service {
    let _guard = runtime.enter();
    let (registry, provider) =
        metrics_provider(opentelemetry_sdk::Resource::builder_empty().build()).unwrap();
    let meter = provider.meter("test");
    let faults = Arc::new(Faults::none());
    let pipeline = planner::pipeline(Some(meter.clone()), &faults, 10).unwrap();
    let server = Server::builder()
        .meter(meter)
        .registry(registry.clone())
        .pipeline(planner::served(pipeline))
        .build()
        .unwrap();
    Service {
        router: server.router(),
        registry,
        _provider: provider,
    }
}

fn run_route() -> String {
    pipelens::server::runs_route(planner::PIPELINE_NAME)
}

/// One exchange through the router; the status and the body.
async fn exchange(
    router: &Router,
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: Body,
) -> (StatusCode, Bytes) {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(ct) = content_type {
        request = request.header("content-type", ct);
    }
    let response = router
        .clone()
        .oneshot(request.body(body).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, bytes)
}

/// Asserts an error response: 4xx, a JSON body with `error.code` and a
/// non-empty `error.message`; returns the error object.
fn client_error(status: StatusCode, body: &[u8], what: &str) -> serde_json::Value {
    assert!(
        status.is_client_error(),
        "{what}: {status} {}",
        String::from_utf8_lossy(body)
    );
    let json: serde_json::Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {}", String::from_utf8_lossy(body)));
    let error = &json["error"];
    assert!(error["code"].is_string(), "{what}: {json}");
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: {json}"
    );
    error.clone()
}

/// Any JSON value, nested a few levels.
fn any_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        ".{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-z]{1,8}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A valid room with one field replaced by a bad value; the body and the
/// field the error must name (or name a path inside).
fn room_with_one_bad_field() -> impl Strategy<Value = (String, String)> {
    let bad = prop_oneof![
        Just(serde_json::json!("twelve")),
        Just(serde_json::json!(-3)),
        Just(serde_json::json!(2.5)),
        Just(serde_json::json!(null)),
        Just(serde_json::json!(1e12)),
        Just(serde_json::json!([1, 2])),
        Just(serde_json::json!({"x": 1})),
        Just(serde_json::json!(true)),
    ];
    (2u32..40, 2u32..40, 0usize..4, 0usize..6, bad).prop_map(|(w, l, n, which, bad)| {
        let obstacles: Vec<serde_json::Value> = (0..n)
            .map(|i| serde_json::json!({"x": i as u32 % w, "y": (i as u32 * 7) % l}))
            .collect();
        let mut room = serde_json::json!({"width": w, "length": l, "obstacles": obstacles});
        let field = match (which, n) {
            (0, _) => "width".to_owned(),
            (1, _) => "length".to_owned(),
            (2, _) => "obstacles".to_owned(),
            (3 | 4, 0) => "width".to_owned(),
            (3, _) => format!("obstacles[{}].x", n - 1),
            _ if n > 0 => format!("obstacles[{}].y", n - 1),
            _ => "width".to_owned(),
        };
        match field.as_str() {
            "width" | "length" | "obstacles" => room[field.as_str()] = bad,
            f if f.ends_with(".x") => room["obstacles"][n - 1]["x"] = bad,
            _ => room["obstacles"][n - 1]["y"] = bad,
        }
        (room.to_string(), field)
    })
}

/// A request method: the standard ones and arbitrary extension tokens.
fn any_method() -> impl Strategy<Value = Method> {
    prop_oneof![
        Just(Method::GET),
        Just(Method::POST),
        Just(Method::PUT),
        Just(Method::DELETE),
        Just(Method::PATCH),
        Just(Method::OPTIONS),
        "[A-Z]{3,10}".prop_map(|m| Method::from_bytes(m.as_bytes()).unwrap()),
    ]
}

/// A path of 1–4 segments of URL-safe characters, sometimes under the
/// pipelines prefix.
fn any_path() -> impl Strategy<Value = String> {
    (
        any::<bool>(),
        prop::collection::vec("[A-Za-z0-9._~-]{1,12}", 1..4),
    )
        .prop_map(|(under_pipelines, segments)| {
            let tail = segments.join("/");
            if under_pipelines {
                format!("/v1/pipelines/{tail}")
            } else {
                format!("/{tail}")
            }
        })
}

fn cases(n: u32) -> TestRunner {
    TestRunner::new(Config {
        cases: n,
        failure_persistence: None,
        ..Config::default()
    })
}

#[test]
fn any_body_and_content_type_gets_a_4xx_json_error_never_a_panic() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let service = service(&runtime);
    let route = run_route();
    let content_type = prop_oneof![
        Just(Some("application/json")),
        Just(Some("application/json; charset=utf-8")),
        Just(Some("text/plain")),
        Just(None),
    ];
    let body = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        any_json().prop_map(|v| v.to_string().into_bytes()),
    ];
    cases(400)
        .run(&(body, content_type), |(body, content_type)| {
            let (status, reply) = runtime.block_on(exchange(
                &service.router,
                Method::POST,
                &route,
                content_type,
                Body::from(body.clone()),
            ));
            let what = format!("{content_type:?} {:?}", String::from_utf8_lossy(&body));
            let error = client_error(status, &reply, &what);
            if status == StatusCode::UNPROCESSABLE_ENTITY {
                prop_assert!(error["field"].is_string(), "{what}: {error}");
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn a_room_with_one_bad_field_gets_422_naming_that_field() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let service = service(&runtime);
    let route = run_route();
    cases(300)
        .run(&room_with_one_bad_field(), |(body, field)| {
            let (status, reply) = runtime.block_on(exchange(
                &service.router,
                Method::POST,
                &route,
                Some("application/json"),
                Body::from(body.clone()),
            ));
            prop_assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{}", body);
            let error = client_error(status, &reply, &body);
            // The field itself, or a more precise path inside it
            // (`obstacles[0]` when `obstacles` became `[1, 2]`).
            let named = error["field"].as_str().unwrap_or_default();
            prop_assert!(
                named.starts_with(field.as_str()),
                "{} named {}",
                body,
                named
            );
            Ok(())
        })
        .unwrap();
}

#[test]
fn any_method_and_path_gets_json_never_a_5xx() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let service = service(&runtime);
    cases(400)
        .run(&(any_method(), any_path()), |(method, path)| {
            let (status, reply) = runtime.block_on(exchange(
                &service.router,
                method.clone(),
                &path,
                Some("application/json"),
                Body::from("{}"),
            ));
            let what = format!("{method} {path}");
            prop_assert!(!status.is_server_error(), "{}: {}", what, status);
            if !status.is_success() {
                client_error(status, &reply, &what);
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn an_oversized_body_is_refused_before_it_is_read_whole() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let service = service(&runtime);
    // A 64 MiB body streamed in 64 KiB chunks, with no length announced:
    // the server can only refuse it by reading, and must stop early.
    let pulled = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&pulled);
    let chunk = Bytes::from(vec![b' '; 64 * 1024]);
    let stream = futures_util::stream::iter((0..1024).map(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
        Ok::<_, std::io::Error>(Frame::data(chunk.clone()))
    }));
    let body = Body::new(http_body_util::StreamBody::new(stream));
    let (status, reply) = runtime.block_on(exchange(
        &service.router,
        Method::POST,
        &run_route(),
        Some("application/json"),
        body,
    ));
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    client_error(status, &reply, "64 MiB body");
    let read = pulled.load(Ordering::SeqCst) * 64 * 1024;
    assert!(
        read <= pipelens::server::BODY_LIMIT_BYTES + 128 * 1024,
        "read {read} bytes of a body over the {} byte limit",
        pipelens::server::BODY_LIMIT_BYTES
    );
}

/// Every series on /metrics, without its value.
fn series(registry: &prometheus::Registry) -> BTreeSet<String> {
    encode_metrics(registry)
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.rsplit_once(' ').map_or(l, |(s, _)| s).to_owned())
        .collect()
}

#[test]
fn thousands_of_distinct_paths_methods_and_bodies_add_no_series() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let service = service(&runtime);
    let route = run_route();
    let room = r#"{"width": 12, "length": 8, "obstacles": [{"x": 3, "y": 4}]}"#;
    let bodies: [(Option<&str>, &str); 5] = [
        (Some("application/json"), room),
        (Some("application/json"), r#"{"width": 12, "length": "#),
        (
            Some("application/json"),
            r#"{"width": "twelve", "length": 8}"#,
        ),
        (Some("text/plain"), room),
        (None, room),
    ];
    let methods = [
        "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "BREW",
    ];
    let paths = [
        "/health",
        "/ready",
        "/metrics",
        "/v1/pipelines",
        route.as_str(),
        "/v1/pipelines/nope/runs",
        "/nowhere",
    ];
    // Warm-up: every method on every kind of path with every kind of body,
    // one oversized body, and /metrics itself, so each bounded label value
    // has its series before the count is taken.
    runtime.block_on(async {
        for method in methods {
            for path in paths {
                for (content_type, body) in bodies {
                    let method = Method::from_bytes(method.as_bytes()).unwrap();
                    exchange(
                        &service.router,
                        method,
                        path,
                        content_type,
                        Body::from(body),
                    )
                    .await;
                }
            }
        }
        let big = vec![b' '; pipelens::server::BODY_LIMIT_BYTES + 1];
        exchange(
            &service.router,
            Method::POST,
            &route,
            Some("application/json"),
            Body::from(big),
        )
        .await;
    });
    let before = series(&service.registry);
    assert!(
        before
            .iter()
            .any(|s| s.starts_with("http_server_request_duration_seconds_count")),
        "no HTTP series after the warm-up: {before:?}"
    );

    // Then 3000 requests, every path distinct, methods drawn from the
    // standard ones and arbitrary extension tokens, bodies of every kind.
    let mut runner = cases(1);
    let strategy = (any_method(), any_path(), 0usize..5, any::<u32>());
    runtime.block_on(async {
        for i in 0..3000u32 {
            let (method, path, body, salt) = strategy.new_tree(&mut runner).unwrap().current();
            let path = match i % 3 {
                0 => format!("{path}/{i}-{salt}"),
                1 => format!("/v1/pipelines/{i}-{salt}/runs"),
                _ => format!("{path}?q={i}-{salt}"),
            };
            let (content_type, body) = bodies[body];
            exchange(
                &service.router,
                method,
                &path,
                content_type,
                Body::from(body),
            )
            .await;
        }
    });
    let after = series(&service.registry);
    let added: Vec<&String> = after.difference(&before).collect();
    assert!(added.is_empty(), "new series: {added:#?}");
}
