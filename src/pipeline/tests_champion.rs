//! Champion and challengers: selection by measured accuracy, shadows off the
//! request path, and promotion of a shadow that measurably beats the
//! champion.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing_subscriber::layer::SubscriberExt as _;

use super::{Harness, Trail};
use crate::pipeline::*;

/// A label model that is right for the inputs whose number `i` has
/// `i % 10 < right_of_10`, with a fixed confidence. Its answer is the last
/// element of its output: `right` or `wrong`.
struct Scripted {
    name: &'static str,
    confidence: f64,
    right_of_10: u64,
}

fn scripted(name: &'static str, confidence: f64, right_of_10: u64) -> Scripted {
    Scripted {
        name,
        confidence,
        right_of_10,
    }
}

fn number(input: &Trail) -> u64 {
    input.first().and_then(|s| s.parse().ok()).unwrap_or(0)
}

impl Model<Trail, Trail> for Scripted {
    fn name(&self) -> &str {
        self.name
    }
    fn version(&self) -> &str {
        "1"
    }
    fn run(&self, input: &Trail) -> Result<Prediction<Trail>, ModelError> {
        let right = number(input) % 10 < self.right_of_10;
        let mut out = input.clone();
        out.push(if right { "right" } else { "wrong" }.to_owned());
        Ok(Prediction::new(out, self.confidence))
    }
}

/// An async shadow that waits `delay` (or panics) before answering right.
struct Slow {
    name: &'static str,
    delay: Duration,
    panics: bool,
    started: Arc<AtomicUsize>,
}

impl AsyncModel<Trail, Trail> for Slow {
    fn name(&self) -> &str {
        self.name
    }
    fn version(&self) -> &str {
        "1"
    }
    async fn run(&self, input: &Trail) -> Result<Prediction<Trail>, ModelError> {
        self.started.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        assert!(!self.panics, "shadow {} exploded", self.name);
        let mut out = input.clone();
        out.push("right".to_owned());
        Ok(Prediction::new(out, 0.99))
    }
}

fn slow(name: &'static str, delay_ms: u64) -> (Slow, Arc<AtomicUsize>) {
    let started = Arc::new(AtomicUsize::new(0));
    (
        Slow {
            name,
            delay: Duration::from_millis(delay_ms),
            panics: false,
            started: Arc::clone(&started),
        },
        started,
    )
}

fn last(trail: &Trail) -> String {
    trail.last().cloned().unwrap_or_default()
}

/// Counts INFO events by message.
#[derive(Clone, Default)]
struct Messages(Arc<Mutex<Vec<String>>>);

impl Messages {
    fn count(&self, message: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|m| *m == message)
            .count()
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Messages {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Message(Option<String>);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                if f.name() == "message" {
                    self.0 = Some(format!("{v:?}"));
                }
            }
        }
        let mut m = Message(None);
        event.record(&mut m);
        if let Some(m) = m.0 {
            self.0.lock().unwrap().push(m);
        }
    }
}

/// Runs input `i`, waits for the stage's shadows (if any) to have answered
/// `shadow_runs` times in all, then sends the truth `right`.
async fn run_and_judge(h: &Harness, i: u64, wait_for: Option<(&str, f64)>) -> RunReport<Trail> {
    let report = h.pipeline.run(vec![i.to_string()]).await.unwrap();
    if let Some((shadow, executions)) = wait_for {
        settle(h, shadow, executions).await;
    }
    h.pipeline
        .feedback(&report.run_id, None, Answer::Label("right".into()))
        .await
        .unwrap();
    report
}

/// Waits (at most 5 s) until `model` has executed `n` times.
async fn settle(h: &Harness, model: &str, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let done: f64 = ["success", "error", "panic", "timeout"]
            .iter()
            .filter_map(|o| {
                h.value(
                    "ml_model_executions_total",
                    &[("model_name", model), ("outcome", o)],
                )
            })
            .sum();
        if done >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{model} executed {done} times, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn measured_accuracy_serves_the_more_accurate_model_once_both_are_measured() {
    let messages = Messages::default();
    let _log =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(messages.clone()));
    let policy = MeasuredAccuracy::default().window(100).min_judged(20);
    let stage = Stage::parallel("choose")
        // A is sure of itself and right 60% of the time; B is modest and
        // right 90% of the time.
        .model(scripted("a", 0.9, 6))
        .model(scripted("b", 0.5, 9))
        .select(policy)
        .judge(Judge::label(last));
    let h = Harness::new(vec![stage.into()], Execution::Inline).unwrap();
    let changes = || h.value("ml_champion_changes_total", &[("stage", "choose")]);
    assert_eq!(changes(), Some(0.0));
    for i in 0..20 {
        let r = run_and_judge(&h, i, None).await;
        assert_eq!(
            r.stages[0].selected_model.as_deref(),
            Some("a"),
            "run {i}: confidence decides before the minimum"
        );
    }
    // 20 judged answers each: B's lower bound (0.70) is above A's (0.39).
    for i in 20..120 {
        let r = run_and_judge(&h, i, None).await;
        assert_eq!(r.stages[0].selected_model.as_deref(), Some("b"), "run {i}");
    }
    assert_eq!(changes(), Some(1.0), "one change: none → b");
    assert_eq!(messages.count("champion changed"), 1);
    let champion = |m: &str| h.value("ml_stage_champion", &[("model_name", m)]);
    assert_eq!((champion("a"), champion("b")), (Some(0.0), Some(1.0)));
    let accuracy = |m: &str, bound: &str| {
        h.value(
            "ml_model_measured_accuracy",
            &[("model_name", m), ("bound", bound)],
        )
        .unwrap()
    };
    assert!((accuracy("a", "estimate") - 0.6).abs() < 1e-9);
    assert!((accuracy("b", "estimate") - 0.9).abs() < 1e-9);
    assert!(accuracy("b", "lower") > accuracy("a", "upper"));
    assert_eq!(
        h.value("ml_model_measured_answers", &[("model_name", "b")]),
        Some(100.0),
        "the window holds the last 100"
    );
}

/// A value model answering `value + offset(i)`: its answer is the number in
/// the last element.
struct Valued {
    name: &'static str,
    confidence: f64,
    /// Absolute error by `i % 4`.
    errors: [f64; 4],
}

impl Model<Trail, Trail> for Valued {
    fn name(&self) -> &str {
        self.name
    }
    fn version(&self) -> &str {
        "1"
    }
    fn run(&self, input: &Trail) -> Result<Prediction<Trail>, ModelError> {
        let i = number(input);
        let mut out = input.clone();
        out.push((100.0 + self.errors[(i % 4) as usize]).to_string());
        Ok(Prediction::new(out, self.confidence))
    }
}

#[tokio::test]
async fn value_judges_serve_the_lower_mean_absolute_error() {
    let stage = Stage::parallel("estimate")
        .model(Valued {
            name: "rough",
            confidence: 0.9,
            errors: [4.0, 6.0, 5.0, 5.0],
        })
        .model(Valued {
            name: "fine",
            confidence: 0.2,
            errors: [0.5, 1.5, 1.0, 1.0],
        })
        .select(MeasuredAccuracy::default().window(200).min_judged(30))
        .judge(Judge::value(|t: &Trail| last(t).parse().unwrap_or(f64::NAN)).tolerance(2.0));
    let h = Harness::new(vec![stage.into()], Execution::Inline).unwrap();
    let mut served = Vec::new();
    for i in 0..80u64 {
        let r = h.pipeline.run(vec![i.to_string()]).await.unwrap();
        served.push(r.stages[0].selected_model.clone().unwrap());
        h.pipeline
            .feedback(&r.run_id, None, Answer::Value(100.0))
            .await
            .unwrap();
    }
    assert!(served[..30].iter().all(|m| m == "rough"), "{served:?}");
    assert!(served[30..].iter().all(|m| m == "fine"), "{served:?}");
    let error = |m: &str| {
        h.value(
            "ml_model_measured_error",
            &[("model_name", m), ("bound", "estimate")],
        )
        .unwrap()
    };
    assert!((error("rough") - 5.0).abs() < 1e-9);
    assert!((error("fine") - 1.0).abs() < 1e-9);
    assert_eq!(
        h.value("ml_champion_changes_total", &[("stage", "estimate")]),
        Some(1.0)
    );
}

#[tokio::test]
async fn measured_accuracy_needs_a_judge_and_a_stage_needs_a_candidate() {
    let unjudged = Stage::parallel("choose")
        .model(scripted("a", 0.9, 6))
        .select(MeasuredAccuracy::default());
    assert!(matches!(
        Harness::new(vec![unjudged.into()], Execution::Inline).err(),
        Some(BuildError::MeasuredWithoutJudge { .. })
    ));
    let (shadow, _) = slow("s", 1);
    let only_shadows = Stage::parallel("choose").shadow_async(shadow);
    assert!(matches!(
        Harness::new(vec![only_shadows.into()], Execution::Inline).err(),
        Some(BuildError::OnlyShadows { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_shadow_never_delays_the_response_and_is_judged_afterwards() {
    let (shadow, started) = slow("shadow", 50);
    let stage = Stage::parallel("choose")
        .model(scripted("a", 0.9, 6))
        .shadow_async(shadow)
        .judge(Judge::label(last));
    let h = Harness::new(vec![stage.into()], Execution::Inline).unwrap();
    let report = h.pipeline.run(vec!["7".into()]).await.unwrap();
    // The response came back while the shadow was still sleeping.
    assert_eq!(
        h.value(
            "ml_model_executions_total",
            &[("model_name", "shadow"), ("outcome", "success")]
        ),
        Some(0.0)
    );
    assert_eq!(report.stages[0].models.len(), 1, "shadows are not served");
    assert_eq!(report.stages[0].selected_model.as_deref(), Some("a"));
    let listed = h.pipeline.stages();
    let roles: Vec<(String, Option<Role>)> = listed[0]
        .models
        .iter()
        .map(|m| (m.name.clone(), m.role))
        .collect();
    assert_eq!(
        roles,
        [
            ("a".to_owned(), Some(Role::Candidate)),
            ("shadow".to_owned(), Some(Role::Shadow))
        ]
    );
    assert_eq!(
        h.value(
            "ml_model_role",
            &[("model_name", "shadow"), ("role", "shadow")]
        ),
        Some(1.0)
    );
    // The truth comes at once: it waits for the run's shadow, in flight.
    let verdict = h
        .pipeline
        .feedback(&report.run_id, None, Answer::Label("right".into()))
        .await
        .unwrap();
    let judged: Vec<(&str, bool)> = verdict
        .models
        .iter()
        .map(|j| (j.model_name.as_str(), j.correct))
        .collect();
    // Input 7: A (right for 0..6) is wrong, the shadow is right.
    assert_eq!(judged, [("a", false), ("shadow", true)]);
    assert_eq!(started.load(Ordering::SeqCst), 1);
    assert_eq!(verdict.selected_model.as_deref(), Some("a"));
    assert_eq!(
        h.value(
            "ml_model_feedback_total",
            &[("model_name", "shadow"), ("outcome", "correct")]
        ),
        Some(1.0)
    );
    assert_eq!(
        h.value("ml_model_selected_total", &[("model_name", "shadow")]),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_shadows_are_bounded_and_skips_are_counted() {
    let (shadow, started) = slow("shadow", 300);
    let stage = Stage::parallel("choose")
        .model(scripted("a", 0.9, 6))
        .shadow_async(shadow)
        .max_pending_shadows(2);
    let h = Harness::new(vec![stage.into()], Execution::Inline).unwrap();
    for i in 0..5 {
        h.pipeline.run(vec![i.to_string()]).await.unwrap();
    }
    assert_eq!(
        h.value("ml_shadow_skipped_total", &[("model_name", "shadow")]),
        Some(3.0)
    );
    settle(&h, "shadow", 2.0).await;
    assert_eq!(started.load(Ordering::SeqCst), 2);
    // The slots are given back: the next run's shadow executes.
    h.pipeline.run(vec!["9".into()]).await.unwrap();
    settle(&h, "shadow", 3.0).await;
    assert_eq!(
        h.value("ml_shadow_skipped_total", &[("model_name", "shadow")]),
        Some(3.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_that_panics_or_times_out_leaves_runs_untouched() {
    let (mut panics, _) = slow("panics", 1);
    panics.panics = true;
    let (late, _) = slow("late", 400);
    let stage = Stage::parallel("choose")
        .model(scripted("a", 0.9, 6))
        .shadow_async(panics)
        .shadow_async(late)
        .timeout(Duration::from_millis(100))
        .judge(Judge::label(last));
    let h = Harness::new(vec![stage.into()], Execution::Inline).unwrap();
    for i in 0..3 {
        let r = h.pipeline.run(vec![i.to_string()]).await.unwrap();
        assert_eq!(r.output.last().map(String::as_str), Some("right"));
        assert_eq!(r.stages[0].selected_model.as_deref(), Some("a"));
    }
    settle(&h, "panics", 3.0).await;
    settle(&h, "late", 3.0).await;
    let executions = |m: &str, o: &str| {
        h.value(
            "ml_model_executions_total",
            &[("model_name", m), ("outcome", o)],
        )
    };
    assert_eq!(executions("panics", "panic"), Some(3.0));
    assert_eq!(executions("late", "timeout"), Some(3.0));
    assert_eq!(executions("a", "success"), Some(3.0));
    assert_eq!(
        h.value(
            "ml_pipeline_runs_total",
            &[("pipeline", "test-pipeline"), ("outcome", "success")]
        ),
        Some(3.0)
    );
}

fn promoting(shadow_right_of_10: u64) -> Harness {
    let stage = Stage::parallel("choose")
        .model(scripted("a", 0.9, 6))
        .shadow(scripted("challenger", 0.1, shadow_right_of_10))
        .select(MeasuredAccuracy::default().window(100).min_judged(20))
        .promote_shadows()
        .judge(Judge::label(last));
    Harness::new(vec![stage.into()], Execution::Inline).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_better_by_the_bound_is_promoted_exactly_once() {
    let h = promoting(10);
    let promotions = || h.value("ml_model_promotions_total", &[("model_name", "challenger")]);
    assert_eq!(promotions(), Some(0.0));
    let mut promoted_at = None;
    for i in 0..120u64 {
        let executions = if promoted_at.is_some() {
            None
        } else {
            Some(("challenger", i as f64 + 1.0))
        };
        run_and_judge(&h, i, executions).await;
        if promoted_at.is_none() && promotions() == Some(1.0) {
            promoted_at = Some(i);
        }
    }
    let at = promoted_at.expect("the challenger was never promoted");
    // 20 answers: the challenger's lower bound (0.84) is above A's upper
    // bound (0.78) from the first moment both are measured.
    assert!(at < 40, "promoted after {at} judged runs");
    assert_eq!(promotions(), Some(1.0), "exactly once");
    let roles: Vec<Option<Role>> = h.pipeline.stages()[0]
        .models
        .iter()
        .map(|m| m.role)
        .collect();
    assert_eq!(roles, [Some(Role::Candidate), Some(Role::Candidate)]);
    assert_eq!(
        h.value(
            "ml_model_role",
            &[("model_name", "challenger"), ("role", "shadow")]
        ),
        Some(0.0)
    );
    // Now a serving candidate, and the champion: it is served.
    let r = h.pipeline.run(vec!["8".into()]).await.unwrap();
    assert_eq!(r.stages[0].models.len(), 2);
    assert_eq!(r.stages[0].selected_model.as_deref(), Some("challenger"));
    assert_eq!(
        h.value("ml_stage_champion", &[("model_name", "challenger")]),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_not_better_by_the_bound_is_never_promoted() {
    // 70% against 60%: better, but not measurably over 100 answers.
    let h = promoting(7);
    for i in 0..200u64 {
        run_and_judge(&h, i, Some(("challenger", i as f64 + 1.0))).await;
    }
    assert_eq!(
        h.value("ml_model_promotions_total", &[("model_name", "challenger")]),
        Some(0.0)
    );
    assert_eq!(
        h.value(
            "ml_model_outperforms_champion",
            &[("model_name", "challenger")]
        ),
        Some(0.0)
    );
    let r = h.pipeline.run(vec!["1".into()]).await.unwrap();
    assert_eq!(r.stages[0].models.len(), 1, "still a shadow");
}
