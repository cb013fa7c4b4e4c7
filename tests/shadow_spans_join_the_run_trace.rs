//! A shadow's `model.run` span is in its run's trace, a child of the
//! stage's span with `model.role = "shadow"`, and does not hold the run's
//! spans open: the run ends when it answers.
//!
//! Alone in its own test binary: tracing caches each callsite's interest
//! process-wide, and a test running beside it on another thread with no
//! subscriber can make it cache "never" for the runner's spans.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanProcessor};
use pipelens::{AsyncModel, Execution, Model, ModelError, Pipeline, Prediction, Stage};
use tracing_subscriber::layer::SubscriberExt as _;

/// Collects every ended span.
#[derive(Debug, Clone, Default)]
struct Collect(Arc<Mutex<Vec<SpanData>>>);

impl SpanProcessor for Collect {
    fn on_start(&self, _: &mut opentelemetry_sdk::trace::Span, _: &opentelemetry::Context) {}
    fn on_end(&self, span: SpanData) {
        self.0.lock().unwrap().push(span);
    }
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }
    fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
        Ok(())
    }
}

struct Quick;

impl Model<u32, u32> for Quick {
    fn name(&self) -> &str {
        "quick"
    }
    fn version(&self) -> &str {
        "1"
    }
    fn run(&self, input: &u32) -> Result<Prediction<u32>, ModelError> {
        Ok(Prediction::new(input + 1, 0.9))
    }
}

/// A challenger that answers 30 ms after it is called.
struct Slow;

impl AsyncModel<u32, u32> for Slow {
    fn name(&self) -> &str {
        "slow"
    }
    fn version(&self) -> &str {
        "1"
    }
    async fn run(&self, input: &u32) -> Result<Prediction<u32>, ModelError> {
        tokio::time::sleep(Duration::from_millis(30)).await;
        Ok(Prediction::new(input + 2, 0.99))
    }
}

/// The `model.run` span of `model`, if it ended.
fn execution<'a>(spans: &'a [SpanData], model: &str) -> Option<&'a SpanData> {
    spans
        .iter()
        .find(|s| s.name == "model.run" && has(s, "model.name", model))
}

fn has(span: &SpanData, key: &str, value: &str) -> bool {
    span.attributes
        .iter()
        .any(|kv| kv.key.as_str() == key && kv.value.as_str() == value)
}

#[tokio::test]
async fn a_shadow_span_joins_the_run_trace_without_holding_the_run_open() {
    let collected = Collect::default();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(collected.clone())
        .build();
    let _subscriber = tracing::subscriber::set_default(
        tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test"))),
    );
    let pipeline = Pipeline::builder("shadowed")
        .execution(Execution::Inline)
        .stage(Stage::parallel("choose").model(Quick).shadow_async(Slow))
        .build()
        .unwrap();
    let report = pipeline.run(1).await.unwrap();
    assert_eq!(report.output, 2, "the candidate serves, the shadow never");
    let deadline = Instant::now() + Duration::from_secs(5);
    let spans = loop {
        let spans = collected.0.lock().unwrap().clone();
        if execution(&spans, "slow").is_some() {
            break spans;
        }
        assert!(Instant::now() < deadline, "the shadow's span never ended");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let find = |name: &str| {
        spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no {name} span"))
    };
    let run = find("pipeline.run");
    let stage = find("stage.run");
    let shadow = execution(&spans, "slow").unwrap();
    let candidate = execution(&spans, "quick").unwrap();
    assert_eq!(
        Some(run.span_context.trace_id().to_string()),
        report.trace_id
    );
    assert_eq!(shadow.span_context.trace_id(), run.span_context.trace_id());
    assert_eq!(shadow.parent_span_id, stage.span_context.span_id());
    assert!(!shadow.parent_span_is_remote);
    assert!(has(shadow, "model.role", "shadow"));
    assert!(!candidate
        .attributes
        .iter()
        .any(|kv| kv.key.as_str() == "model.role"));
    // The run's spans were exported when it answered, before its shadow
    // ended (a span in tracing's tree would have kept them open).
    let position = |span: &SpanData| {
        spans
            .iter()
            .position(|s| s.span_context == span.span_context)
            .unwrap()
    };
    assert!(position(run) < position(shadow));
    assert!(position(stage) < position(shadow));
    // The run ended when it answered, well before its shadow did.
    let run_took = run.end_time.duration_since(run.start_time).unwrap();
    assert!(run.end_time < shadow.end_time);
    assert!(run_took < Duration::from_millis(30), "{run_took:?}");
}
