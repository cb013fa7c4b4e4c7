//! Ground truth after the run: answers remembered per run id, judged once,
//! counted per model and for the served answer, forgotten past retention.

use std::time::Duration;

use super::{lighting, model, Behaviour, Harness, Trail};
use crate::pipeline::*;
use crate::telemetry::metrics_provider;

/// The answer of a test candidate: the last model that touched the trail.
fn last(trail: &Trail) -> String {
    trail.last().cloned().unwrap_or_default()
}

fn judged(models: Vec<super::TestModel>) -> Stage<Trail, Trail> {
    lighting(models).judge(Judge::label(last)).into()
}

fn three() -> Vec<super::TestModel> {
    vec![
        model("low", Behaviour::Confident(0.3)),
        model("high", Behaviour::Confident(0.9)),
        model("broken", Behaviour::Fails),
    ]
}

#[tokio::test]
async fn every_candidate_is_judged_once_and_the_served_answer_is_counted() {
    let h = Harness::new(vec![judged(three())], Execution::Inline).unwrap();
    let report = h.pipeline.run(Vec::new()).await.unwrap();
    assert_eq!(report.run_id.len(), 32);
    assert!(report.run_id.bytes().all(|b| b.is_ascii_hexdigit()));
    let answers: Vec<Option<Answer>> = report.stages[0]
        .models
        .iter()
        .map(|m| m.answer.clone())
        .collect();
    assert_eq!(
        answers,
        [
            Some(Answer::Label("low".into())),
            Some(Answer::Label("high".into())),
            None
        ]
    );
    // Counters exist at 0 before any feedback, so rate() sees them.
    let count = |m: &str, o: &str| {
        h.value(
            "ml_model_feedback_total",
            &[("stage", "choose"), ("model_name", m), ("outcome", o)],
        )
    };
    assert_eq!(count("low", "incorrect"), Some(0.0));

    // The truth is "low": the served answer (high) was wrong.
    let verdict = h
        .pipeline
        .feedback(&report.run_id, None, Answer::Label("low".into()))
        .await
        .unwrap();
    assert_eq!(verdict.selected_model.as_deref(), Some("high"));
    assert_eq!(verdict.selected_correct, Some(false));
    let judged: Vec<(&str, bool)> = verdict
        .models
        .iter()
        .map(|j| (j.model_name.as_str(), j.correct))
        .collect();
    assert_eq!(
        judged,
        [("low", true), ("high", false)],
        "the failed model gave no answer"
    );
    assert_eq!(count("low", "correct"), Some(1.0));
    assert_eq!(count("high", "incorrect"), Some(1.0));
    assert_eq!(count("high", "correct"), Some(0.0));
    assert_eq!(count("broken", "correct"), Some(0.0));
    assert_eq!(count("broken", "incorrect"), Some(0.0));
    assert_eq!(
        h.value(
            "ml_pipeline_feedback_total",
            &[("stage", "choose"), ("outcome", "incorrect")]
        ),
        Some(1.0)
    );
    assert_eq!(
        h.value(
            "ml_pipeline_feedback_total",
            &[("stage", "choose"), ("outcome", "correct")]
        ),
        Some(0.0)
    );

    // Once per run and stage.
    let again = h
        .pipeline
        .feedback(&report.run_id, Some("choose"), Answer::Label("low".into()))
        .await;
    assert!(
        matches!(again, Err(FeedbackError::AlreadyJudged { .. })),
        "{again:?}"
    );
    assert_eq!(
        count("low", "correct"),
        Some(1.0),
        "a duplicate counts nothing"
    );
}

#[tokio::test]
async fn bad_feedback_is_refused_naming_what_is_wrong() {
    let h = Harness::new(vec![judged(three())], Execution::Inline).unwrap();
    let run = h.pipeline.run(Vec::new()).await.unwrap().run_id;
    let label = || Answer::Label("high".into());
    for unknown in [
        "0".repeat(32),
        "f".repeat(31),
        "G".repeat(32),
        String::new(),
    ] {
        let e = h
            .pipeline
            .feedback(&unknown, None, label())
            .await
            .unwrap_err();
        assert!(
            matches!(e, FeedbackError::UnknownRun { .. }),
            "{unknown}: {e:?}"
        );
        assert_eq!(e.field(), None);
    }
    let fresh = "0123456789abcdef0123456789abcdef";
    assert!(matches!(
        h.pipeline.feedback(fresh, None, label()).await,
        Err(FeedbackError::UnknownRun { .. })
    ));
    let e = h
        .pipeline
        .feedback(&run, None, Answer::Value(1.0))
        .await
        .unwrap_err();
    assert_eq!(e.field(), Some("label"), "{e}");
    let e = h
        .pipeline
        .feedback(&run, Some("nope"), label())
        .await
        .unwrap_err();
    assert_eq!(e.field(), Some("stage"), "{e}");
    // None of these used the run up: the truth is still taken.
    assert!(h.pipeline.feedback(&run, None, label()).await.is_ok());

    let plain = Harness::new(vec![lighting(three()).into()], Execution::Inline).unwrap();
    let run = plain.pipeline.run(Vec::new()).await.unwrap().run_id;
    assert!(matches!(
        plain.pipeline.feedback(&run, None, label()).await,
        Err(FeedbackError::NotJudged { .. })
    ));
}

#[tokio::test]
async fn two_judged_stages_need_the_stage_named() {
    let second = Stage::parallel("again")
        .model(model("again_a", Behaviour::Confident(0.5)))
        .judge(Judge::label(last));
    let h = Harness::new(vec![judged(three()), second.into()], Execution::Inline).unwrap();
    assert_eq!(h.pipeline.judged_stages(), ["choose", "again"]);
    let run = h.pipeline.run(Vec::new()).await.unwrap().run_id;
    let e = h
        .pipeline
        .feedback(&run, None, Answer::Label("x".into()))
        .await
        .unwrap_err();
    assert!(matches!(e, FeedbackError::StageRequired { .. }), "{e:?}");
    assert_eq!(e.field(), Some("stage"));
    let verdict = h
        .pipeline
        .feedback(&run, Some("again"), Answer::Label("again_a".into()))
        .await
        .unwrap();
    assert_eq!(verdict.selected_correct, Some(true));
    // The other stage still awaits its truth.
    assert!(h
        .pipeline
        .feedback(&run, Some("choose"), Answer::Label("high".into()))
        .await
        .is_ok());
}

/// A regression candidate: always answers `self.0`.
struct Guess(&'static str, f64);

impl Model<f64, f64> for Guess {
    fn name(&self) -> &str {
        self.0
    }
    fn version(&self) -> &str {
        "1"
    }
    fn run(&self, _: &f64) -> Result<Prediction<f64>, ModelError> {
        Ok(Prediction::new(self.1, 0.5))
    }
}

fn regression(runs: usize, retention: Duration) -> (prometheus::Registry, Pipeline<f64, f64>) {
    let (registry, provider) =
        metrics_provider(opentelemetry_sdk::Resource::builder_empty().build()).unwrap();
    let meter = opentelemetry::metrics::MeterProvider::meter(&provider, "test");
    std::mem::forget(provider);
    let pipeline = Pipeline::builder("regression")
        .meter(meter)
        .execution(Execution::Inline)
        .feedback_retention(runs, retention)
        .stage(
            Stage::parallel("price")
                .model(Guess("close", 103.0))
                .model(Guess("far", 130.0))
                .judge(
                    Judge::value(|v: &f64| *v)
                        .tolerance(1.0)
                        .relative_tolerance(0.05),
                ),
        )
        .build()
        .unwrap();
    (registry, pipeline)
}

#[tokio::test]
async fn values_are_judged_within_tolerance_and_their_errors_recorded() {
    let (registry, pipeline) = regression(100, Duration::from_secs(60));
    let run = pipeline.run(0.0).await.unwrap().run_id;
    let e = pipeline
        .feedback(&run, None, Answer::Value(f64::INFINITY))
        .await
        .unwrap_err();
    assert_eq!(e.field(), Some("value"));
    let e = pipeline
        .feedback(&run, None, Answer::Label("100".into()))
        .await
        .unwrap_err();
    assert_eq!(e.field(), Some("value"));
    // Truth 100: |103 - 100| = 3 ≤ 5% of 100; |130 - 100| = 30 is not.
    let verdict = pipeline
        .feedback(&run, None, Answer::Value(100.0))
        .await
        .unwrap();
    let judged: Vec<(bool, Option<f64>)> = verdict
        .models
        .iter()
        .map(|j| (j.correct, j.absolute_error))
        .collect();
    assert_eq!(judged, [(true, Some(3.0)), (false, Some(30.0))]);
    assert_eq!(
        verdict.selected_model.as_deref(),
        Some("close"),
        "ties go to the first"
    );
    let text = crate::telemetry::encode_metrics(&registry);
    let line = |name: &str, labels: &[&str]| {
        text.lines()
            .find(|l| l.starts_with(name) && labels.iter().all(|p| l.contains(p)))
            .unwrap_or_else(|| panic!("no {name}{labels:?} in\n{text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        line("ml_model_absolute_error_sum", &["model_name=\"far\""]),
        "30"
    );
    assert_eq!(
        line(
            "ml_model_absolute_error_bucket",
            &["le=\"5\"", "model_name=\"close\""]
        ),
        "1"
    );
    assert_eq!(
        line(
            "ml_model_absolute_error_bucket",
            &["le=\"25\"", "model_name=\"far\""]
        ),
        "0"
    );
}

#[tokio::test]
async fn runs_are_forgotten_past_retention_or_capacity() {
    let (_, pipeline) = regression(100, Duration::from_millis(50));
    let run = pipeline.run(0.0).await.unwrap().run_id;
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert!(matches!(
        pipeline.feedback(&run, None, Answer::Value(100.0)).await,
        Err(FeedbackError::UnknownRun { .. })
    ));

    // Room for one run per shard: 300 later runs push the first one out
    // (unless none of them landed in its shard: odds (15/16)^300 ≈ 4e-9).
    let (_, pipeline) = regression(1, Duration::from_secs(3600));
    let first = pipeline.run(0.0).await.unwrap().run_id;
    let mut last = String::new();
    for _ in 0..300 {
        last = pipeline.run(0.0).await.unwrap().run_id;
    }
    assert!(matches!(
        pipeline.feedback(&first, None, Answer::Value(100.0)).await,
        Err(FeedbackError::UnknownRun { .. })
    ));
    assert!(pipeline
        .feedback(&last, None, Answer::Value(100.0))
        .await
        .is_ok());
}

/// Answers its input with confidence equal to the input (`eager`) or a
/// steady 0.5 (`steady`).
struct Echo(&'static str);

impl Model<f64, f64> for Echo {
    fn name(&self) -> &str {
        self.0
    }
    fn version(&self) -> &str {
        "1"
    }
    fn run(&self, x: &f64) -> Result<Prediction<f64>, ModelError> {
        let confidence = if self.0 == "eager" { *x } else { 0.5 };
        Ok(Prediction::new(*x, confidence))
    }
}

#[tokio::test]
async fn prediction_drift_follows_the_selected_confidence_and_model() {
    let (registry, provider) =
        metrics_provider(opentelemetry_sdk::Resource::builder_empty().build()).unwrap();
    let meter = opentelemetry::metrics::MeterProvider::meter(&provider, "test");
    let pipeline = Pipeline::builder("echo")
        .meter(meter)
        .execution(Execution::Inline)
        .stage(
            Stage::parallel("pick")
                .model(Echo("eager"))
                .model(Echo("steady")),
        )
        .drift(
            crate::DriftSpec::new(
                vec![crate::Feature {
                    name: "x",
                    edges: vec![0.5],
                }],
                |x: &f64| vec![*x],
            )
            .reference_size(20)
            .window_size(20)
            .publish_every(Duration::from_millis(10)),
        )
        .build()
        .unwrap();
    let psi = |signal: &str| -> Option<f64> {
        crate::telemetry::encode_metrics(&registry)
            .lines()
            .find(|l| {
                l.starts_with("ml_prediction_drift_psi{")
                    && l.contains("stage=\"pick\"")
                    && l.contains(&format!("signal=\"{signal}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    };
    // Reference: `eager` wins at 0.9. Live, as long as it still does, no drift.
    for _ in 0..30 {
        pipeline.run(0.9).await.unwrap();
    }
    let settle = || tokio::time::sleep(Duration::from_millis(50));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while ["confidence", "selected_model"]
        .iter()
        .any(|s| psi(s).is_none())
        && std::time::Instant::now() < deadline
    {
        settle().await;
    }
    assert_eq!(psi("confidence"), Some(0.0));
    assert_eq!(psi("selected_model"), Some(0.0));
    // Then `steady` wins at 0.5: both distributions moved.
    for _ in 0..20 {
        pipeline.run(0.2).await.unwrap();
    }
    // Every live sample sits in a bin that was empty in the reference:
    // ln(1 / 0.0001) = 9.21 for the move out of the old bin and into the new.
    // The drift thread folds the samples in on its own time: wait until the
    // whole live window has moved (or the deadline).
    let moved = 2.0 * (1.0 - 1e-4) * (1.0f64 / 1e-4).ln();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while ["confidence", "selected_model"]
        .iter()
        .any(|s| (psi(s).unwrap_or(0.0) - moved).abs() > 1e-6)
        && std::time::Instant::now() < deadline
    {
        settle().await;
    }
    for signal in ["confidence", "selected_model"] {
        let value = psi(signal).unwrap();
        assert!((value - moved).abs() < 1e-6, "{signal}: {value} vs {moved}");
    }
    drop(provider);
}
