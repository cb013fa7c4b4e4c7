//! The runner's semantics: selection, failures as outcomes, timeouts, panics,
//! build-time checks, and what each records in the metrics.

use std::time::Duration;

use super::*;
use crate::telemetry::{encode_metrics, metrics_provider};

/// Input and output of the test pipelines: the models that touched the value.
type Trail = Vec<String>;

enum Behaviour {
    Confident(f64),
    Fails,
    Panics,
    Sleeps(Duration),
}

struct TestModel {
    name: &'static str,
    behaviour: Behaviour,
}

fn model(name: &'static str, behaviour: Behaviour) -> TestModel {
    TestModel { name, behaviour }
}

impl Model<Trail> for TestModel {
    fn name(&self) -> &str {
        self.name
    }
    fn version(&self) -> &str {
        "1.2.3"
    }
    fn run(&self, input: &Trail) -> Result<Prediction<Trail>, ModelError> {
        let mut trail = input.clone();
        trail.push(self.name.to_owned());
        match self.behaviour {
            Behaviour::Confident(c) => Ok(Prediction::new(trail, c).with_component("widget", 2)),
            Behaviour::Fails => Err(ModelError::Computation("no solution".into())),
            Behaviour::Panics => panic!("model {} exploded", self.name),
            Behaviour::Sleeps(d) => {
                std::thread::sleep(d);
                Ok(Prediction::new(trail, 0.99))
            }
        }
    }
}

struct Harness {
    registry: prometheus::Registry,
    _provider: opentelemetry_sdk::metrics::SdkMeterProvider,
    pipeline: Pipeline<Trail>,
}

impl Harness {
    fn new(stages: Vec<Stage<Trail>>, execution: Execution) -> Result<Self, BuildError> {
        let (registry, provider) =
            metrics_provider(opentelemetry_sdk::Resource::builder_empty().build()).unwrap();
        let meter = opentelemetry::metrics::MeterProvider::meter(&provider, "test");
        let mut builder = Pipeline::builder("test-pipeline")
            .meter(meter)
            .execution(execution);
        for s in stages {
            builder = builder.stage(s);
        }
        Ok(Self {
            registry,
            pipeline: builder.build()?,
            _provider: provider,
        })
    }

    /// The value of the series `name{labels}` (labels in any order), if present.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let text = encode_metrics(&self.registry);
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            .find(|l| {
                labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }
}

fn lighting(models: Vec<TestModel>) -> Stage<Trail> {
    models
        .into_iter()
        .fold(Stage::parallel("choose"), |s, m| s.model(m))
        .timeout(Duration::from_millis(200))
}

#[tokio::test]
async fn highest_confidence_wins_and_ties_go_to_the_first_declared() {
    let h = Harness::new(
        vec![lighting(vec![
            model("low", Behaviour::Confident(0.3)),
            model("high", Behaviour::Confident(0.9)),
            model("also_high", Behaviour::Confident(0.9)),
        ])],
        Execution::Offload,
    )
    .unwrap();
    let report = h.pipeline.run(Vec::new()).await.unwrap();
    assert_eq!(report.output, vec!["high".to_owned()]);
    assert_eq!(report.stages[0].selected_model.as_deref(), Some("high"));
    assert_eq!(report.stages[0].models.len(), 3);
    assert_eq!(
        h.value(
            "ml_model_selected_total",
            &[("model_name", "high"), ("stage", "choose")]
        ),
        Some(1.0)
    );
    assert_eq!(
        h.value("ml_model_selected_total", &[("model_name", "low")]),
        Some(0.0),
        "counters start at 0"
    );
    assert_eq!(
        h.value("ml_model_confidence_score", &[("model_name", "low")]),
        Some(0.3)
    );
    assert_eq!(
        h.value(
            "ml_components_placed_total",
            &[("model_name", "high"), ("component_type", "widget")]
        ),
        Some(2.0)
    );
    assert_eq!(
        h.value(
            "ml_pipeline_runs_total",
            &[("pipeline", "test-pipeline"), ("outcome", "success")]
        ),
        Some(1.0)
    );
    assert_eq!(
        h.value(
            "ml_model_loaded",
            &[("model_name", "also_high"), ("model_version", "1.2.3")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn first_success_policy_takes_declaration_order() {
    let h = Harness::new(
        vec![lighting(vec![
            model("broken", Behaviour::Fails),
            model("modest", Behaviour::Confident(0.2)),
            model("great", Behaviour::Confident(0.95)),
        ])
        .select(SelectionPolicy::FirstSuccess)],
        Execution::Inline,
    )
    .unwrap();
    let report = h.pipeline.run(Vec::new()).await.unwrap();
    assert_eq!(report.stages[0].selected_model.as_deref(), Some("modest"));
}

#[tokio::test]
async fn failing_panicking_and_slow_candidates_are_outcomes_and_survivors_compete() {
    for execution in [Execution::Offload, Execution::Inline] {
        let h = Harness::new(
            vec![lighting(vec![
                model("errs", Behaviour::Fails),
                model("panics", Behaviour::Panics),
                model("slow", Behaviour::Sleeps(Duration::from_millis(600))),
                model("survivor", Behaviour::Confident(0.5)),
            ])],
            execution,
        )
        .unwrap();
        let report = h.pipeline.run(Vec::new()).await.unwrap();
        let outcomes: Vec<Outcome> = report.stages[0].models.iter().map(|m| m.outcome).collect();
        assert_eq!(
            outcomes,
            [
                Outcome::Error,
                Outcome::Panic,
                Outcome::Timeout,
                Outcome::Success
            ],
            "{execution:?}"
        );
        let panic = &report.stages[0].models[1];
        assert!(
            panic
                .error
                .as_deref()
                .unwrap()
                .contains("model panics exploded"),
            "{panic:?}"
        );
        assert_eq!(report.stages[0].selected_model.as_deref(), Some("survivor"));
        for (model, outcome, error_type) in [
            ("errs", "error", "computation"),
            ("panics", "panic", "panic"),
            ("slow", "timeout", "timeout"),
        ] {
            assert_eq!(
                h.value(
                    "ml_model_executions_total",
                    &[("model_name", model), ("outcome", outcome)]
                ),
                Some(1.0),
                "{model} {execution:?}"
            );
            assert_eq!(
                h.value(
                    "ml_model_errors_total",
                    &[("model_name", model), ("error_type", error_type)]
                ),
                Some(1.0),
                "{model} {execution:?}"
            );
        }
    }
}

#[tokio::test]
async fn offloaded_timeout_does_not_wait_for_the_slow_model() {
    let h = Harness::new(
        vec![lighting(vec![
            model("slow", Behaviour::Sleeps(Duration::from_secs(2))),
            model("fast", Behaviour::Confident(0.7)),
        ])],
        Execution::Offload,
    )
    .unwrap();
    let report = h.pipeline.run(Vec::new()).await.unwrap();
    let slow = &report.stages[0].models[0];
    assert_eq!(slow.outcome, Outcome::Timeout);
    // The stage gave up at its 200 ms deadline instead of waiting 2 s.
    assert!(
        report.duration < Duration::from_millis(1500),
        "{:?}",
        report.duration
    );
}

#[tokio::test]
async fn a_stage_with_no_survivor_fails_the_run_naming_stage_and_models() {
    let h = Harness::new(
        vec![
            lighting(vec![
                model("errs", Behaviour::Fails),
                model("panics", Behaviour::Panics),
            ]),
            Stage::sequential("never").model(model("unreached", Behaviour::Confident(1.0))),
        ],
        Execution::Offload,
    )
    .unwrap();
    let err = h.pipeline.run(Vec::new()).await.unwrap_err();
    let RunError::StageFailed {
        stage,
        failures,
        stages,
        ..
    } = &err;
    assert_eq!(stage, "choose");
    let names: Vec<&str> = failures.iter().map(|f| f.model.as_str()).collect();
    assert_eq!(names, ["errs", "panics"]);
    assert_eq!(stages.len(), 1);
    let message = err.to_string();
    assert!(
        message.contains("`choose`") && message.contains("errs") && message.contains("panics"),
        "{message}"
    );
    assert_eq!(
        h.value("ml_pipeline_runs_total", &[("outcome", "failure")]),
        Some(1.0)
    );
    assert_eq!(
        h.value(
            "ml_model_executions_total",
            &[("model_name", "unreached"), ("outcome", "success")]
        ),
        Some(0.0)
    );
}

#[tokio::test]
async fn sequential_models_see_the_previous_output_and_a_failure_stops_the_chain() {
    let h = Harness::new(
        vec![Stage::sequential("chain")
            .model(model("first", Behaviour::Confident(0.8)))
            .model(model("second", Behaviour::Confident(0.6)))],
        Execution::Offload,
    )
    .unwrap();
    let report = h.pipeline.run(vec!["input".to_owned()]).await.unwrap();
    assert_eq!(report.output, ["input", "first", "second"]);
    assert_eq!(report.stages[0].selected_model.as_deref(), Some("second"));

    let h = Harness::new(
        vec![Stage::sequential("chain")
            .model(model("first", Behaviour::Fails))
            .model(model("second", Behaviour::Confident(0.6)))],
        Execution::Inline,
    )
    .unwrap();
    let RunError::StageFailed {
        failures, stages, ..
    } = h.pipeline.run(Vec::new()).await.unwrap_err();
    assert_eq!(failures.len(), 1);
    assert_eq!(
        stages[0].models.len(),
        1,
        "second must not run after first failed"
    );
}

#[test]
fn build_rejects_empty_and_ambiguous_pipelines() {
    let empty = Harness::new(vec![Stage::parallel("nothing")], Execution::Inline);
    assert_eq!(
        empty.err(),
        Some(BuildError::EmptyStage {
            stage: "nothing".into()
        })
    );
    let none = Harness::new(vec![], Execution::Inline);
    assert!(matches!(none.err(), Some(BuildError::NoStages { .. })));
    let dup = Harness::new(
        vec![lighting(vec![
            model("twin", Behaviour::Fails),
            model("twin", Behaviour::Fails),
        ])],
        Execution::Inline,
    );
    assert!(matches!(dup.err(), Some(BuildError::DuplicateModel { .. })));
    let dup_stage = Harness::new(
        vec![
            lighting(vec![model("a", Behaviour::Fails)]),
            lighting(vec![model("b", Behaviour::Fails)]),
        ],
        Execution::Inline,
    );
    assert!(matches!(
        dup_stage.err(),
        Some(BuildError::DuplicateStage { .. })
    ));
}

#[tokio::test]
async fn confidence_outside_the_unit_interval_is_clamped() {
    let h = Harness::new(
        vec![lighting(vec![
            model("over", Behaviour::Confident(1.7)),
            model("nan", Behaviour::Confident(f64::NAN)),
        ])],
        Execution::Inline,
    )
    .unwrap();
    let report = h.pipeline.run(Vec::new()).await.unwrap();
    assert_eq!(report.stages[0].models[0].confidence, Some(1.0));
    assert_eq!(report.stages[0].models[1].confidence, Some(0.0));
}
