//! The runner's semantics: selection, failures as outcomes, timeouts, panics,
//! build-time checks, and what each records in the metrics.

use std::time::Duration;

use super::*;
use crate::telemetry::{encode_metrics, metrics_provider};

/// The stages of a test pipeline, parallel or sequential.
macro_rules! stages {
    ($($stage:expr),* $(,)?) => { vec![$(Stage::from($stage)),*] };
}

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

impl Model<Trail, Trail> for TestModel {
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
    pipeline: Pipeline<Trail, Trail>,
}

impl Harness {
    fn new(stages: Vec<Stage<Trail, Trail>>, execution: Execution) -> Result<Self, BuildError> {
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

fn lighting(models: Vec<TestModel>) -> Parallel<Trail, Trail> {
    models
        .into_iter()
        .fold(Stage::parallel("choose"), |s, m| s.model(m))
        // Generous, so a panicking or failing model on a busy machine's
        // blocking pool still reports before the deadline.
        .timeout(Duration::from_millis(500))
}

#[tokio::test]
async fn highest_confidence_wins_and_ties_go_to_the_first_declared() {
    let h = Harness::new(
        stages![lighting(vec![
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
        stages![lighting(vec![
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
            stages![lighting(vec![
                model("errs", Behaviour::Fails),
                model("panics", Behaviour::Panics),
                model("slow", Behaviour::Sleeps(Duration::from_millis(1200))),
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
        stages![lighting(vec![
            model("slow", Behaviour::Sleeps(Duration::from_secs(2))),
            model("fast", Behaviour::Confident(0.7)),
        ])],
        Execution::Offload,
    )
    .unwrap();
    let report = h.pipeline.run(Vec::new()).await.unwrap();
    let slow = &report.stages[0].models[0];
    assert_eq!(slow.outcome, Outcome::Timeout);
    // The stage gave up at its 500 ms deadline instead of waiting 2 s.
    assert!(
        report.duration < Duration::from_millis(1500),
        "{:?}",
        report.duration
    );
}

#[tokio::test]
async fn a_stage_with_no_survivor_fails_the_run_naming_stage_and_models() {
    let h = Harness::new(
        stages![
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
        stages![Stage::sequential("chain")
            .model(model("first", Behaviour::Confident(0.8)))
            .model(model("second", Behaviour::Confident(0.6)))],
        Execution::Offload,
    )
    .unwrap();
    let report = h.pipeline.run(vec!["input".to_owned()]).await.unwrap();
    assert_eq!(report.output, ["input", "first", "second"]);
    assert_eq!(report.stages[0].selected_model.as_deref(), Some("second"));

    let h = Harness::new(
        stages![Stage::sequential("chain")
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
    let empty = Harness::new(stages![Stage::parallel("nothing")], Execution::Inline);
    assert_eq!(
        empty.err(),
        Some(BuildError::EmptyStage {
            stage: "nothing".into()
        })
    );
    let none = Harness::new(stages![], Execution::Inline);
    assert!(matches!(none.err(), Some(BuildError::NoStages { .. })));
    let dup = Harness::new(
        stages![lighting(vec![
            model("twin", Behaviour::Fails),
            model("twin", Behaviour::Fails),
        ])],
        Execution::Inline,
    );
    assert!(matches!(dup.err(), Some(BuildError::DuplicateModel { .. })));
    let dup_stage = Harness::new(
        stages![
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
        stages![lighting(vec![
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

/// An async candidate: sleeps `delay` on the timer, then answers; records
/// whether it was dropped before finishing (cancelled).
struct Remote {
    name: &'static str,
    delay: Duration,
    confidence: f64,
    cancelled: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl AsyncModel<Trail, Trail> for Remote {
    fn name(&self) -> &str {
        self.name
    }
    fn version(&self) -> &str {
        "2.0.0"
    }
    async fn run(&self, input: &Trail) -> Result<Prediction<Trail>, ModelError> {
        struct Flag<'a>(&'a std::sync::atomic::AtomicBool, bool);
        impl Drop for Flag<'_> {
            fn drop(&mut self) {
                if !self.1 {
                    self.0.store(true, std::sync::atomic::Ordering::SeqCst);
                }
            }
        }
        let mut flag = Flag(&self.cancelled, false);
        tokio::time::sleep(self.delay).await;
        flag.1 = true;
        let mut trail = input.clone();
        trail.push(self.name.to_owned());
        Ok(Prediction::new(trail, self.confidence))
    }
}

fn remote(name: &'static str, delay_ms: u64, confidence: f64) -> Remote {
    Remote {
        name,
        delay: Duration::from_millis(delay_ms),
        confidence,
        cancelled: Default::default(),
    }
}

#[tokio::test]
async fn sync_and_async_candidates_compete_and_a_slow_async_one_is_cancelled() {
    for execution in [Execution::Offload, Execution::Inline] {
        let slow = remote("remote_slow", 5_000, 1.0);
        let cancelled = std::sync::Arc::clone(&slow.cancelled);
        let h = Harness::new(
            stages![Stage::parallel("choose")
                .model(model("local", Behaviour::Confident(0.6)))
                .async_model(remote("remote_fast", 10, 0.8))
                .async_model(slow)
                .timeout(Duration::from_millis(200))],
            execution,
        )
        .unwrap();
        let started = std::time::Instant::now();
        let report = h.pipeline.run(Vec::new()).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(2), "{execution:?}");
        let outcomes: Vec<Outcome> = report.stages[0].models.iter().map(|m| m.outcome).collect();
        assert_eq!(
            outcomes,
            [Outcome::Success, Outcome::Success, Outcome::Timeout],
            "{execution:?}"
        );
        assert_eq!(report.output, ["remote_fast"]);
        assert!(
            cancelled.load(std::sync::atomic::Ordering::SeqCst),
            "the timed-out async model was dropped, not left running"
        );
        assert_eq!(
            h.value(
                "ml_model_executions_total",
                &[("model_name", "remote_slow"), ("outcome", "timeout")]
            ),
            Some(1.0)
        );
    }
}

/// Text in, a count of words out, then a label: every stage changes type.
#[tokio::test]
async fn stages_change_type_and_steps_record_duration_without_confidence() {
    struct Sizer;
    impl Model<Vec<String>, usize> for Sizer {
        fn name(&self) -> &str {
            "sizer"
        }
        fn version(&self) -> &str {
            "1"
        }
        fn run(&self, words: &Vec<String>) -> Result<Prediction<usize>, ModelError> {
            Ok(Prediction::new(words.len(), 0.75))
        }
    }
    let (registry, provider) =
        metrics_provider(opentelemetry_sdk::Resource::builder_empty().build()).unwrap();
    let meter = opentelemetry::metrics::MeterProvider::meter(&provider, "test");
    let pipeline: Pipeline<String, &'static str> = Pipeline::builder("words")
        .meter(meter)
        .step("split", |text: &String| {
            Ok(text.split_whitespace().map(str::to_owned).collect())
        })
        .stage(Stage::parallel("size").model(Sizer))
        .stage(
            Stage::sequential("label")
                .step("double", |n: &usize| Ok(n * 2))
                .step("name", |n: &usize| {
                    Ok(if *n > 4 { "long" } else { "short" })
                }),
        )
        .build()
        .unwrap();
    let report = pipeline.run("three little words".to_owned()).await.unwrap();
    assert_eq!(report.output, "long");
    let kinds: Vec<(&str, Option<&str>)> = report
        .stages
        .iter()
        .map(|s| (s.stage.as_str(), s.selected_model.as_deref()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("split", Some("split")),
            ("size", Some("sizer")),
            ("label", Some("name"))
        ]
    );
    assert_eq!(report.stages[0].models[0].confidence, None);
    assert_eq!(report.stages[1].models[0].confidence, Some(0.75));
    let text = encode_metrics(&registry);
    assert!(
        text.contains(r#"ml_model_execution_duration_seconds_count{model_name="split",pipeline="words",stage="split"} 1"#),
        "{text}"
    );
    assert!(
        !text.contains(r#"ml_model_confidence_count{model_name="split""#),
        "steps report no confidence: {text}"
    );
    assert!(
        !text.contains(r#"ml_model_loaded{model_name="split""#),
        "steps are not models"
    );
    let listed: Vec<(String, ModelKind)> = pipeline
        .stages()
        .into_iter()
        .flat_map(|s| s.models.into_iter().map(|m| (m.name, m.kind)))
        .collect();
    assert_eq!(
        listed,
        [
            ("split".to_owned(), ModelKind::Step),
            ("sizer".to_owned(), ModelKind::Sync),
            ("double".to_owned(), ModelKind::Step),
            ("name".to_owned(), ModelKind::Step),
        ]
    );
}

/// A model whose load step fails until `ready` is set.
struct Warming {
    ready: std::sync::Arc<std::sync::atomic::AtomicBool>,
    loads: std::sync::atomic::AtomicUsize,
}

impl Model<Trail, Trail> for Warming {
    fn name(&self) -> &str {
        "warming"
    }
    fn version(&self) -> &str {
        "3.1"
    }
    fn load(&self) -> Result<(), ModelError> {
        self.loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if self.ready.load(std::sync::atomic::Ordering::SeqCst) {
            Ok(())
        } else {
            Err(ModelError::Unavailable("weights not there yet".into()))
        }
    }
    fn run(&self, input: &Trail) -> Result<Prediction<Trail>, ModelError> {
        Ok(Prediction::new(input.clone(), 0.9))
    }
}

#[tokio::test]
async fn model_loaded_is_zero_until_the_load_step_succeeds_and_zero_after_a_failure() {
    let ready = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let h = Harness::new(
        stages![Stage::parallel("choose")
            .model(Warming {
                ready: std::sync::Arc::clone(&ready),
                loads: Default::default(),
            })
            .model(model("steady", Behaviour::Confident(0.5)))],
        Execution::Offload,
    )
    .unwrap();
    let loaded = |h: &Harness, m: &str| h.value("ml_model_loaded", &[("model_name", m)]);
    assert_eq!(loaded(&h, "warming"), Some(0.0), "not loaded before load");
    assert!(!h.pipeline.is_loaded());

    let err = h.pipeline.load().await.unwrap_err();
    assert_eq!(err.failures.len(), 1);
    assert!(err.to_string().contains("warming"), "{err}");
    assert_eq!(loaded(&h, "warming"), Some(0.0));
    assert_eq!(loaded(&h, "steady"), Some(1.0));
    let info = &h.pipeline.stages()[0].models[0];
    assert!(!info.loaded);
    assert!(info.load_error.as_deref().unwrap().contains("weights"));

    // A run does not retry a failed load on the request path: the model is
    // an outcome, the other candidate wins.
    let report = h.pipeline.run(Vec::new()).await.unwrap();
    assert_eq!(report.stages[0].models[0].outcome, Outcome::Error);
    assert_eq!(
        h.value(
            "ml_model_errors_total",
            &[("model_name", "warming"), ("error_type", "not_loaded")]
        ),
        Some(1.0)
    );

    ready.store(true, std::sync::atomic::Ordering::SeqCst);
    h.pipeline.load_missing().await.unwrap();
    assert_eq!(loaded(&h, "warming"), Some(1.0));
    assert!(h.pipeline.is_loaded());

    ready.store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(h.pipeline.load().await.is_err(), "a failed reload");
    assert_eq!(
        loaded(&h, "warming"),
        Some(0.0),
        "0 again after a failed load"
    );
}

#[tokio::test]
async fn model_loaded_keeps_two_pipelines_with_the_same_model_apart() {
    let (registry, provider) =
        metrics_provider(opentelemetry_sdk::Resource::builder_empty().build()).unwrap();
    let meter = opentelemetry::metrics::MeterProvider::meter(&provider, "test");
    let build = |name: &str, ready: bool| {
        Pipeline::<Trail, Trail>::builder(name)
            .meter(meter.clone())
            .stage(Stage::sequential("one").model(Warming {
                ready: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(ready)),
                loads: Default::default(),
            }))
            .build()
            .unwrap()
    };
    let good = build("first", true);
    let bad = build("second", false);
    good.load().await.unwrap();
    assert!(bad.load().await.is_err());

    let text = encode_metrics(&registry);
    for line in [
        r#"ml_model_loaded{model_name="warming",model_version="3.1",pipeline="first"} 1"#,
        r#"ml_model_loaded{model_name="warming",model_version="3.1",pipeline="second"} 0"#,
    ] {
        assert!(text.contains(line), "missing {line}:\n{text}");
    }
}

#[tokio::test]
async fn a_model_that_was_never_loaded_loads_before_its_first_run() {
    let ready = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let h = Harness::new(
        stages![Stage::sequential("one").model(Warming {
            ready,
            loads: Default::default(),
        })],
        Execution::Inline,
    )
    .unwrap();
    assert_eq!(
        h.value("ml_model_loaded", &[("model_name", "warming")]),
        Some(0.0)
    );
    h.pipeline.run(Vec::new()).await.unwrap();
    h.pipeline.run(Vec::new()).await.unwrap();
    assert_eq!(
        h.value(
            "ml_model_loaded",
            &[("model_name", "warming"), ("model_version", "3.1")]
        ),
        Some(1.0)
    );
}

/// An async model whose load takes a while and is counted.
struct SlowLoad(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl AsyncModel<Trail, Trail> for SlowLoad {
    fn name(&self) -> &str {
        "slow_load"
    }
    fn version(&self) -> &str {
        "1"
    }
    async fn load(&self) -> Result<(), ModelError> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(())
    }
    async fn run(&self, input: &Trail) -> Result<Prediction<Trail>, ModelError> {
        Ok(Prediction::new(input.clone(), 0.9))
    }
}

#[tokio::test]
async fn a_background_load_and_a_first_run_racing_load_the_model_once() {
    let loads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = Harness::new(
        stages![Stage::sequential("one").async_model(SlowLoad(std::sync::Arc::clone(&loads)))],
        Execution::Inline,
    )
    .unwrap();
    // The run takes the load lock first; the background load saw the model
    // missing before it got the lock, and must not load it again.
    let (run, load) = tokio::join!(h.pipeline.run(Vec::new()), h.pipeline.load_missing());
    run.unwrap();
    load.unwrap();
    assert_eq!(loads.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(h.pipeline.is_loaded());
}

#[tokio::test]
async fn two_pipelines_with_the_same_model_names_keep_separate_series() {
    let (registry, provider) =
        metrics_provider(opentelemetry_sdk::Resource::builder_empty().build()).unwrap();
    let meter = opentelemetry::metrics::MeterProvider::meter(&provider, "test");
    let build = |name: &str, behaviour| {
        Pipeline::builder(name)
            .meter(meter.clone())
            .stage(Stage::parallel("choose").model(model("twin", behaviour)))
            .build()
            .unwrap()
    };
    let good = build("good", Behaviour::Confident(0.9));
    let bad = build("bad", Behaviour::Fails);
    good.run(Vec::new()).await.unwrap();
    bad.run(Vec::new()).await.unwrap_err();
    let text = encode_metrics(&registry);
    for line in [
        r#"ml_model_executions_total{model_name="twin",outcome="success",pipeline="good",stage="choose"} 1"#,
        r#"ml_model_executions_total{model_name="twin",outcome="error",pipeline="good",stage="choose"} 0"#,
        r#"ml_model_executions_total{model_name="twin",outcome="error",pipeline="bad",stage="choose"} 1"#,
        r#"ml_model_errors_total{error_type="computation",model_name="twin",pipeline="bad"} 1"#,
        r#"ml_model_confidence_score{model_name="twin",pipeline="good"} 0.9"#,
    ] {
        assert!(text.contains(line), "missing {line}:\n{text}");
    }
}

/// An async model that sleeps for the input's first number in
/// milliseconds, counting how many of its runs overlap.
struct Sleepy {
    running: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    most: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl AsyncModel<Trail, Trail> for Sleepy {
    fn name(&self) -> &str {
        "sleepy"
    }
    fn version(&self) -> &str {
        "1"
    }
    async fn run(&self, input: &Trail) -> Result<Prediction<Trail>, ModelError> {
        use std::sync::atomic::Ordering::SeqCst;
        let now = self.running.fetch_add(1, SeqCst) + 1;
        self.most.fetch_max(now, SeqCst);
        let ms: u64 = input[0].parse().unwrap();
        tokio::time::sleep(Duration::from_millis(ms)).await;
        self.running.fetch_sub(1, SeqCst);
        Ok(Prediction::new(input.clone(), 0.9))
    }
}

#[tokio::test]
async fn a_batch_yields_results_in_input_order_with_bounded_concurrency() {
    use futures_util::StreamExt as _;
    let most = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = Harness::new(
        stages![Stage::sequential("nap").async_model(Sleepy {
            running: Default::default(),
            most: std::sync::Arc::clone(&most),
        })],
        Execution::Auto,
    )
    .unwrap();
    // Later inputs finish first; the results still come in input order.
    let naps = [40, 30, 20, 10, 5, 1, 25, 15];
    let inputs = futures_util::stream::iter(naps.map(|ms| vec![ms.to_string()]));
    let results: Vec<_> = h.pipeline.run_batch(inputs, 3).collect().await;
    let order: Vec<String> = results
        .iter()
        .map(|r| r.as_ref().unwrap().output[0].clone())
        .collect();
    assert_eq!(order, naps.map(|ms| ms.to_string()));
    assert_eq!(most.load(std::sync::atomic::Ordering::SeqCst), 3);
}

#[path = "tests_feedback.rs"]
mod feedback;

#[path = "tests_champion.rs"]
mod champion;
