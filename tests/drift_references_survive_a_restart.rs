//! With a drift reference directory (`serve --drift-reference-dir`,
//! `DriftSpec::references_in`), every pipeline keeps its input-feature and
//! prediction references in `{dir}/{pipeline}.json`: learned from the first
//! runs and saved, then read at the next start, so after a restart both
//! pipelines compare their first runs with the saved references at once
//! (a fresh directory has nothing to compare with yet).

#[allow(dead_code, unreachable_pub)]
#[path = "../src/bin/pipelens/demo/mod.rs"]
mod demo;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use demo::{ceiling, planner, sentiment};
use opentelemetry::metrics::MeterProvider as _;
use pipelens::drift::PipelineReferences;
use pipelens::faults::Faults;
use pipelens::telemetry::{encode_metrics, metrics_provider};
use pipelens::Pipeline;

/// Runs that form a reference here (200 in the service).
const REFERENCE: usize = 5;

struct Served {
    registry: prometheus::Registry,
    _provider: opentelemetry_sdk::metrics::SdkMeterProvider,
    ceiling: Pipeline<ceiling::Layout, ceiling::Layout>,
    reviews: Pipeline<sentiment::Request, sentiment::Sentiment>,
}

/// Both pipelines, keeping their references in `dir`, as `serve` builds
/// them but for the reference size.
fn start(dir: &Path, scorer: std::net::SocketAddr) -> Served {
    let (registry, provider) =
        metrics_provider(opentelemetry_sdk::Resource::builder_empty().build()).unwrap();
    let meter = provider.meter("test");
    let ceiling = planner::pipeline_with_reference(
        Some(meter.clone()),
        &Arc::new(Faults::none()),
        REFERENCE,
        planner::References::Dir(dir.to_owned()),
    )
    .unwrap();
    let reviews = sentiment::pipeline_with_drift(
        meter,
        scorer,
        sentiment::drift_spec()
            .reference_size(REFERENCE)
            .window_size(REFERENCE)
            .references_in(dir),
    )
    .unwrap();
    Served {
        registry,
        _provider: provider,
        ceiling,
        reviews,
    }
}

async fn run(served: &Served, n: usize) {
    for i in 0..n {
        let room = planner::room_from_value(serde_json::json!({
            "width": 6 + i, "length": 5 + i % 3
        }))
        .unwrap();
        served
            .ceiling
            .run(ceiling::Layout::empty(room))
            .await
            .unwrap();
        let text = format!("review {i}: {}", "really good ".repeat(i + 1));
        served
            .reviews
            .run(sentiment::Request { text })
            .await
            .unwrap();
    }
}

/// Whether `registry` shows a feature and a prediction drift figure for
/// both pipelines.
fn drift_published(registry: &prometheus::Registry) -> bool {
    let text = encode_metrics(registry);
    ["ml_feature_drift_psi{", "ml_prediction_drift_psi{"]
        .iter()
        .all(|metric| {
            ["ceiling-layout", "sentiment"].iter().all(|pipeline| {
                text.lines().any(|l| {
                    l.starts_with(metric) && l.contains(&format!("pipeline=\"{pipeline}\""))
                })
            })
        })
}

fn both_parts(dir: &Path, pipeline: &str) -> Option<PipelineReferences> {
    let path = PipelineReferences::path(dir, pipeline);
    let references = PipelineReferences::read(&path).ok()?;
    (references.features.is_some() && references.predictions.is_some()).then_some(references)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_both_pipelines_feature_and_prediction_references() {
    let scorer = sentiment::start_scorer().await.unwrap();
    let dir = tempfile::tempdir().unwrap();

    // First start: the references are learned from the first runs and saved.
    let first = start(dir.path(), scorer);
    run(&first, REFERENCE).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let saved = loop {
        if let (Some(c), Some(s)) = (
            both_parts(dir.path(), planner::PIPELINE_NAME),
            both_parts(dir.path(), sentiment::NAME),
        ) {
            break (c, s);
        }
        assert!(Instant::now() < deadline, "references never saved");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for (references, feature, stage) in [
        (&saved.0, "room_width", "lighting"),
        (&saved.1, "text_length", "classify"),
    ] {
        let features = references.features.as_ref().unwrap();
        assert_eq!(features.samples, REFERENCE as u64);
        assert!(features.features.iter().any(|f| f.name == feature));
        let predictions = references.predictions.as_ref().unwrap();
        assert_eq!(predictions.samples, REFERENCE as u64);
        let names: Vec<&str> = predictions
            .features
            .iter()
            .map(|f| f.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                format!("{stage}.confidence"),
                format!("{stage}.selected_model")
            ]
        );
    }
    drop(first);

    // Restart: one run each is compared with the saved references at once.
    let second = start(dir.path(), scorer);
    run(&second, 1).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !drift_published(&second.registry) {
        assert!(
            Instant::now() < deadline,
            "no drift after the restart:\n{}",
            encode_metrics(&second.registry)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Read, not learned again: the files are as they were.
    assert_eq!(
        both_parts(dir.path(), planner::PIPELINE_NAME).as_ref(),
        Some(&saved.0)
    );
    assert_eq!(
        both_parts(dir.path(), sentiment::NAME).as_ref(),
        Some(&saved.1)
    );

    // Without the saved references, one run has nothing to compare with.
    let empty = tempfile::tempdir().unwrap();
    let fresh = start(empty.path(), scorer);
    run(&fresh, 1).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        !encode_metrics(&fresh.registry).contains("_drift_psi{"),
        "a fresh directory already has references"
    );
}

const BIN: &str = env!("CARGO_BIN_EXE_pipelens");

#[test]
fn profile_writes_any_pipelines_features_into_the_directory_and_bad_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let refs = dir.path().join("refs");
    std::fs::create_dir(&refs).unwrap();
    let reviews = dir.path().join("reviews.jsonl");
    let lines: String = (0..50)
        .map(|i| format!("{{\"text\": \"{}\"}}\n", "nice ".repeat(i + 1)))
        .collect();
    std::fs::write(&reviews, lines + "{\"txt\": 1}\n").unwrap();
    let out = std::process::Command::new(BIN)
        .args(["profile", "--pipeline", "sentiment", "--input"])
        .arg(&reviews)
        .arg("--out")
        .arg(&refs)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("line 51"),
        "the bad line is named: {stderr}"
    );
    let written = PipelineReferences::read(&refs.join("sentiment.json")).unwrap();
    let features = written.features.unwrap();
    assert_eq!(features.samples, 50);
    assert_eq!(features.features[0].name, "text_length");
    assert!(written.predictions.is_none(), "learned by the service");

    // A broken file stops `serve` naming the flag; the two reference flags
    // exclude each other.
    std::fs::write(refs.join("ceiling-layout.json"), "{\"features\": 3}").unwrap();
    for (args, names) in [
        (
            vec!["--drift-reference-dir", refs.to_str().unwrap()],
            vec!["--drift-reference-dir", "ceiling-layout.json"],
        ),
        (
            vec![
                "--drift-reference-dir",
                refs.to_str().unwrap(),
                "--drift-reference",
                "x.json",
            ],
            vec!["--drift-reference-dir", "--drift-reference"],
        ),
    ] {
        let out = std::process::Command::new(BIN)
            .args(["serve", "--addr", "127.0.0.1:0"])
            .env("PIPELENS_RUN_STORE", "memory")
            .args(&args)
            .env_remove("PIPELENS_DRIFT_REFERENCE")
            .env_remove("PIPELENS_DRIFT_REFERENCE_DIR")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted");
        for name in names {
            assert!(stderr.contains(name), "{args:?}: {stderr}");
        }
    }
}
