//! With a durable run store, a pipeline's drift references live in it: the
//! first replica to learn one saves it, a replica that learned another
//! meanwhile adopts the saved one, and a replica started later reads it, so
//! every replica compares its live inputs with the same reference.

#[allow(dead_code, unreachable_pub)]
#[path = "../src/bin/pipelens/demo/mod.rs"]
mod demo;

use std::path::Path;
use std::time::{Duration, Instant};

use demo::sentiment;
use opentelemetry::metrics::MeterProvider as _;
use pipelens::store::{RunStore, StoreConfig};
use pipelens::telemetry::{encode_metrics, metrics_provider};
use pipelens::Pipeline;

/// Runs that form a reference here (200 in the service).
const REFERENCE: usize = 5;

struct Replica {
    registry: prometheus::Registry,
    _provider: opentelemetry_sdk::metrics::SdkMeterProvider,
    reviews: Pipeline<sentiment::Request, sentiment::Sentiment>,
}

/// The sentiment pipeline as `serve` builds it with a SQLite store (its own
/// pool: a process of its own), but for the reference size.
async fn replica(file: &Path, scorer: std::net::SocketAddr) -> Replica {
    let (registry, provider) =
        metrics_provider(opentelemetry_sdk::Resource::builder_empty().build()).unwrap();
    let meter = provider.meter("test");
    let store = RunStore::open(&StoreConfig::sqlite(file), Some(&meter))
        .await
        .unwrap();
    let reviews = sentiment::pipeline_with_store(
        meter,
        scorer,
        sentiment::drift_spec()
            .reference_size(REFERENCE)
            .window_size(REFERENCE)
            .publish_every(Duration::from_millis(50)),
        Some(store),
    )
    .unwrap();
    Replica {
        registry,
        _provider: provider,
        reviews,
    }
}

async fn run(replica: &Replica, words: usize) {
    for i in 0..REFERENCE {
        let text = format!("review {i}: {}", "really good ".repeat(words + i));
        replica
            .reviews
            .run(sentiment::Request { text })
            .await
            .unwrap();
    }
}

/// The text-length PSI `replica` publishes once every sample handed to
/// its drift thread is folded in: the same figure twice, 200 ms apart (it
/// publishes every 50 ms).
async fn psi(replica: &Replica) -> f64 {
    let read = || {
        let text = encode_metrics(&replica.registry);
        text.lines()
            .find(|l| l.starts_with("ml_feature_drift_psi{") && l.contains("text_length"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = None;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = read();
        if now.is_some() && now == last {
            return now.unwrap_or_default();
        }
        assert!(
            Instant::now() < deadline,
            "no settled drift figure:\n{}",
            encode_metrics(&replica.registry)
        );
        last = now;
    }
}

async fn saved_parts(file: &Path) -> Vec<(String, String)> {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", file.display()))
        .await
        .unwrap();
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT pipeline, part FROM pipelens_drift_references ORDER BY part")
            .fetch_all(&pool)
            .await
            .unwrap();
    pool.close().await;
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_compare_with_the_reference_the_first_one_saved() {
    let scorer = sentiment::start_scorer().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pipelens.db");
    let a = replica(&file, scorer).await;
    let b = replica(&file, scorer).await;
    // Both drift threads have looked in the store and found nothing.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A learns from long reviews and saves; B then learns from short ones,
    // finds A's saved and takes it.
    run(&a, 60).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while saved_parts(&file).await.len() < 2 {
        assert!(Instant::now() < deadline, "A's references never saved");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    run(&b, 1).await;

    // The same live reviews on both: the same drift, as both compare with
    // A's reference (B's own would read these mid-length reviews as far
    // less unlike it).
    run(&a, 20).await;
    run(&b, 20).await;
    let (from_a, from_b) = (psi(&a).await, psi(&b).await);
    assert!(
        from_a > 0.1,
        "mid-length reviews drift from long ones: {from_a}"
    );
    assert!((from_a - from_b).abs() < 1e-9, "A {from_a}, B {from_b}");

    // A replica started later reads it at once.
    let c = replica(&file, scorer).await;
    run(&c, 20).await;
    let from_c = psi(&c).await;
    assert!((from_a - from_c).abs() < 1e-9, "A {from_a}, C {from_c}");

    assert_eq!(
        saved_parts(&file).await,
        [
            ("sentiment".to_owned(), "features".to_owned()),
            ("sentiment".to_owned(), "predictions".to_owned())
        ],
        "one reference of each part, the first saved"
    );
}
