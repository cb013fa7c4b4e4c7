//! One decision per local trace: the sentiment pipeline's remote candidate
//! calls a scoring endpoint in the same process, which continues the run's
//! trace from `traceparent` (a local root with a sampled remote parent).
//! At a keep ratio of 0 that fragment is decided with its run: no healthy
//! run is exported, its fragment included, none is counted as `parent`,
//! and a run with a failed model is exported whole, fragment and all.
//!
//! One test in its own binary: telemetry is process-global.

#[allow(dead_code, unreachable_pub)]
#[path = "../src/bin/pipelens/demo/mod.rs"]
mod demo;
mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use demo::sentiment;
use hyper::Method;
use pipelens::faults::Faults;
use pipelens::server::{self, Server};
use pipelens::telemetry::{self, Protocol, SlowThreshold, TelemetryConfig};
use support::otlp::{self, hex, Received};
use support::service::{send, serve, Reply};

/// The trace id the service answered with (`traceresponse`).
fn trace_of(reply: &Reply) -> String {
    let v = reply.headers["traceresponse"].to_str().unwrap();
    v.split('-').nth(1).unwrap().to_owned()
}

/// `pipelens_traces_sampled_total{decision, reason}` now.
async fn counted(addr: std::net::SocketAddr, decision: &str, reason: &str) -> u64 {
    let text = send(addr, Method::GET, "/metrics", "", &[]).await.body;
    let wanted = format!("decision=\"{decision}\"");
    let why = format!("reason=\"{reason}\"");
    text.lines()
        .find(|l| {
            l.starts_with("pipelens_traces_sampled_total{")
                && l.contains(&wanted)
                && l.contains(&why)
        })
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0, |v| v.parse::<f64>().unwrap() as u64)
}

/// Posts a review; the trace id of its run.
async fn review(addr: std::net::SocketAddr) -> String {
    let r = send(
        addr,
        Method::POST,
        &server::runs_route(sentiment::NAME),
        r#"{"text": "a wonderful, moving film"}"#,
        &[("content-type", "application/json")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    trace_of(&r)
}

fn names_in(received: &Received, trace: &str) -> Vec<String> {
    received
        .spans()
        .iter()
        .filter(|s| hex(&s.trace_id) == trace)
        .map(|s| s.name.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scorer_fragment_is_decided_with_its_run() {
    let (otlp_addr, received) = otlp::start_grpc().await;
    let endpoint = format!("http://{otlp_addr}");
    let config = TelemetryConfig {
        traces: Some(telemetry::OtlpTarget {
            endpoint,
            protocol: Protocol::Grpc,
        }),
        traces_keep_ratio: 0.0,
        traces_keep_slower_than: SlowThreshold::Off,
        ..TelemetryConfig::default()
    };
    let telemetry = telemetry::init_with_writer(&config, std::io::sink).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let faults_file = dir.path().join("faults.json");
    std::fs::write(&faults_file, "{}").unwrap();
    let faults = Arc::new(Faults::new(None, Some(&faults_file)).unwrap());
    let models = sentiment::Models {
        faults: Arc::clone(&faults),
        shadow: sentiment::Shadow::Off,
        ..sentiment::Models::from(sentiment::start_scorer().await.unwrap())
    };
    let pipeline = sentiment::pipeline(telemetry.meter(), models).unwrap();
    pipeline.load().await.unwrap();
    let server = Server::builder()
        .telemetry(&telemetry)
        .pipeline(sentiment::served(pipeline))
        .build()
        .unwrap();
    let addr = serve(server).await;
    let parent_before = counted(addr, "kept", "parent").await;
    let dropped_before = counted(addr, "dropped", "ratio").await;
    let mut healthy = Vec::new();
    for _ in 0..20 {
        healthy.push(review(addr).await);
    }
    // A model fails: the run is served by the others, its trace kept.
    std::fs::write(&faults_file, r#"{"lexicon": {"error_rate": 1.0}}"#).unwrap();
    assert!(faults.reload().unwrap());
    let mut failed = Vec::new();
    for _ in 0..3 {
        failed.push(review(addr).await);
    }
    telemetry.flush().unwrap();
    received
        .wait_for("the failed runs' traces", Duration::from_secs(20), |r| {
            let got: BTreeSet<String> = r.spans().iter().map(|s| hex(&s.trace_id)).collect();
            failed.iter().all(|t| got.contains(t))
        })
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    telemetry.flush().unwrap();

    for t in &healthy {
        let names = names_in(&received, t);
        assert!(names.is_empty(), "healthy run {t} exported: {names:?}");
    }
    for t in &failed {
        let names = names_in(&received, t);
        for name in ["pipeline.run", "stage.run", "scorer.score"] {
            assert!(
                names.iter().any(|n| n == name),
                "run {t} lacks {name}: {names:?}"
            );
        }
    }
    assert_eq!(
        counted(addr, "kept", "parent").await - parent_before,
        0,
        "a fragment's sampled parent keeps nothing"
    );
    assert_eq!(counted(addr, "dropped", "ratio").await - dropped_before, 20);
    assert!(counted(addr, "kept", "error").await >= 3);
}
