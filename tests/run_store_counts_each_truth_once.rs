//! Property: two processes sharing one durable store (here two stores with
//! pools of their own on one SQLite file, as two replicas on one host
//! would) count every recorded truth exactly once, whatever the
//! interleaving of runs and feedback, races included: each run's first
//! truth is judged (wherever the run was made), every later one is a
//! duplicate, and no run is ever unknown.

use std::time::Duration;

use opentelemetry::metrics::MeterProvider as _;
use pipelens::store::{RunStore, StoreConfig};
use pipelens::telemetry::metrics_provider;
use pipelens::{FeedbackError, Judge, Model, ModelError, Pipeline, Prediction, Stage};
use proptest::prelude::*;

/// Says whether a number is even, with a confidence that depends on it.
struct Parity(&'static str, u64);
impl Model<u64, String> for Parity {
    fn name(&self) -> &str {
        self.0
    }
    fn version(&self) -> &str {
        "1"
    }
    fn run(&self, n: &u64) -> Result<Prediction<String>, ModelError> {
        let label = if (n + self.1) % 2 == 0 { "even" } else { "odd" };
        Ok(Prediction::new(
            label.to_owned(),
            0.5 + (n % 7) as f64 / 20.0,
        ))
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// A run on process 0 or 1.
    Run(usize),
    /// A truth for the k-th run (modulo), posted to one process.
    Truth(usize, usize),
    /// The same truth for the k-th run posted to both at once.
    Race(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..2usize).prop_map(Op::Run),
        3 => (0..2usize, 0..64usize).prop_map(|(p, k)| Op::Truth(p, k)),
        2 => (0..64usize).prop_map(Op::Race),
    ]
}

struct Process {
    pipeline: Pipeline<u64, String>,
    registry: prometheus::Registry,
    _provider: opentelemetry_sdk::metrics::SdkMeterProvider,
}

impl Process {
    async fn start(file: &std::path::Path) -> Self {
        let (registry, provider) =
            metrics_provider(opentelemetry_sdk::Resource::builder_empty().build()).unwrap();
        let meter = provider.meter("test");
        let store = RunStore::open(&StoreConfig::sqlite(file), Some(&meter))
            .await
            .unwrap();
        let pipeline = Pipeline::builder("parity")
            .meter(meter)
            .run_store(store)
            .stage(
                Stage::parallel("guess")
                    .model(Parity("straight", 0))
                    .model(Parity("contrary", 1))
                    .judge(Judge::label(|label: &String| label.clone())),
            )
            .build()
            .unwrap();
        Self {
            pipeline,
            registry,
            _provider: provider,
        }
    }

    /// Truths counted for the served answers.
    fn counted(&self) -> u64 {
        self.registry
            .gather()
            .iter()
            .filter(|f| f.name() == "ml_pipeline_feedback_total")
            .flat_map(|f| f.get_metric())
            .map(|m| m.get_counter().get_value() as u64)
            .sum()
    }
}

fn truth(n: u64) -> pipelens::Answer {
    pipelens::Answer::Label(if n % 2 == 0 { "even" } else { "odd" }.to_owned())
}

async fn play(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("runs.db");
    let processes = [Process::start(&file).await, Process::start(&file).await];
    let mut runs: Vec<(String, u64)> = Vec::new();
    let mut judged = std::collections::HashSet::new();
    let mut accepted = 0u64;
    for (i, op) in ops.into_iter().enumerate() {
        match op {
            Op::Run(p) => {
                let n = i as u64 * 31 + 7;
                let report = processes[p].pipeline.run(n).await.unwrap();
                runs.push((report.run_id, n));
            }
            Op::Truth(_, _) | Op::Race(_) if runs.is_empty() => {}
            Op::Truth(p, k) => {
                let (id, n) = &runs[k % runs.len()];
                let result = processes[p].pipeline.feedback(id, None, truth(*n)).await;
                if judged.insert(id.clone()) {
                    prop_assert!(result.is_ok(), "first truth of {id}: {result:?}");
                    accepted += 1;
                } else {
                    prop_assert!(
                        matches!(result, Err(FeedbackError::AlreadyJudged { .. })),
                        "second truth of {id}: {result:?}"
                    );
                }
            }
            Op::Race(k) => {
                let (id, n) = &runs[k % runs.len()];
                let (a, b) = tokio::join!(
                    processes[0].pipeline.feedback(id, None, truth(*n)),
                    processes[1].pipeline.feedback(id, None, truth(*n)),
                );
                let oks = u64::from(a.is_ok()) + u64::from(b.is_ok());
                for r in [&a, &b] {
                    prop_assert!(
                        r.is_ok() || matches!(r, Err(FeedbackError::AlreadyJudged { .. })),
                        "{r:?}"
                    );
                }
                let first = judged.insert(id.clone());
                prop_assert_eq!(oks, u64::from(first), "{:?} / {:?}", a, b);
                accepted += oks;
            }
        }
    }
    let counted = processes[0].counted() + processes[1].counted();
    prop_assert_eq!(counted, accepted);
    prop_assert_eq!(accepted, judged.len() as u64);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn every_recorded_truth_is_counted_exactly_once(ops in prop::collection::vec(op(), 1..40)) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(60), play(ops))
                .await
                .expect("a case took more than a minute")
        })?;
    }
}
