//! Runs the real service in-process on a loopback port and talks to it over
//! real HTTP.

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry::metrics::Meter;
use pipelens::faults::Faults;
use pipelens::server::{self, Server};
use pipelens::store::{RunStore, StoreConfig};

use crate::demo::{planner, sentiment};

/// Serves the ceiling-layout pipeline with these faults, recording into
/// `meter` and serving `registry` on /metrics. The drift reference is the
/// first `drift_reference` rooms.
pub async fn start(
    meter: &Meter,
    registry: prometheus::Registry,
    faults: Faults,
    drift_reference: usize,
) -> SocketAddr {
    let faults = Arc::new(faults);
    let pipeline = planner::pipeline(Some(meter.clone()), &faults, drift_reference).unwrap();
    let server = Server::builder()
        .meter(meter.clone())
        .registry(registry)
        .pipeline(planner::served(pipeline))
        .build()
        .unwrap();
    serve(server).await
}

/// A loopback address whose port was free a moment ago.
pub fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Waits until `check` holds, asking every 50 ms; fails naming `what`
/// after `deadline`.
pub async fn wait_for(
    what: &str,
    deadline: std::time::Duration,
    mut check: impl AsyncFnMut() -> bool,
) {
    let start = std::time::Instant::now();
    while !check().await {
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Serves `server` on a loopback port in the background.
pub async fn serve(server: Server) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        server
            .serve(listener, std::future::pending())
            .await
            .unwrap();
    });
    addr
}

/// The run route of the ceiling-layout pipeline.
pub fn ceiling_route() -> String {
    server::runs_route(planner::PIPELINE_NAME)
}

/// One HTTP exchange.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }
}

/// Sends a request to the service.
pub async fn send(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> Reply {
    try_send(addr, method, path, body, headers)
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Sends a request on a new connection; the reply, or why none came
/// (connection refused or closed).
pub async fn try_send(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut builder = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let request = builder
        .body(Full::new(Bytes::from(body.to_owned())))
        .map_err(|e| e.to_string())?;
    let response = client
        .request(request)
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

/// POSTs a room as JSON to the run route.
pub async fn post_room(addr: SocketAddr, body: &str, headers: &[(&str, &str)]) -> Reply {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    send(addr, Method::POST, &ceiling_route(), body, &all).await
}

/// The rooms `metrics_after_a_mix` plans, all of which must succeed.
pub const MIX_ROOMS: usize = 6;

/// Serves the two pipelines `pipelens serve` serves, the ceiling planner
/// with one light candidate always failing (so the error series exist) and
/// the sentiment classifier keeping its judged runs in a run store opened
/// on the same meter, as the binary does (a memory one here, so the
/// `pipelens_run_store_*` series exist); plans `MIX_ROOMS` rooms of
/// different shapes and one bad request, classifies one review and sends
/// its ground truth, and returns the /metrics reply.
pub async fn metrics_after_a_mix() -> Reply {
    let (registry, provider) = pipelens::telemetry::metrics_provider(
        opentelemetry_sdk::Resource::builder()
            .with_service_name("pipelens-test")
            .build(),
    )
    .unwrap();
    let meter = opentelemetry::metrics::MeterProvider::meter(&provider, "test");
    let faults =
        Arc::new(Faults::new(Some(r#"{"light_dense": {"error_rate": 1.0}}"#), None).unwrap());
    let ceiling = planner::pipeline(Some(meter.clone()), &faults, 3).unwrap();
    let scorer = sentiment::start_scorer().await.unwrap();
    let store = RunStore::open(&StoreConfig::memory(), Some(&meter))
        .await
        .unwrap();
    let reviews =
        sentiment::pipeline_with_store(meter.clone(), scorer, sentiment::drift_spec(), Some(store))
            .unwrap();
    let addr = serve(
        Server::builder()
            .meter(meter)
            .registry(registry)
            .pipeline(planner::served(ceiling))
            .pipeline(sentiment::served(reviews))
            .build()
            .unwrap(),
    )
    .await;
    let rooms = [(12, 8), (4, 4), (40, 30), (3, 40), (20, 20), (8, 12)];
    assert_eq!(rooms.len(), MIX_ROOMS);
    for (w, l) in rooms {
        let reply = post_room(addr, &format!(r#"{{"width": {w}, "length": {l}}}"#), &[]).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    }
    let json = [("content-type", "application/json")];
    let review = send(
        addr,
        Method::POST,
        &server::runs_route(sentiment::NAME),
        r#"{"text": "excellent, I love it"}"#,
        &json,
    )
    .await;
    assert_eq!(review.status, StatusCode::OK, "{}", review.body);
    let run_id = review.json()["run_id"].as_str().unwrap().to_owned();
    let judged = send(
        addr,
        Method::POST,
        &format!("/v1/pipelines/{}/runs/{run_id}/feedback", sentiment::NAME),
        r#"{"label": "positive"}"#,
        &json,
    )
    .await;
    assert_eq!(judged.status, StatusCode::OK, "{}", judged.body);
    let bad = post_room(addr, r#"{"width": "x"}"#, &[]).await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    // Drift is computed off the request path and published every second.
    let started = std::time::Instant::now();
    loop {
        let reply = send(addr, Method::GET, "/metrics", "", &[]).await;
        assert_eq!(reply.status, StatusCode::OK);
        if reply.body.contains("ml_feature_drift_psi{")
            || started.elapsed() > std::time::Duration::from_secs(5)
        {
            return reply;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
