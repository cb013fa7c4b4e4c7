//! Tail sampling on hand-made spans and log records, with a processor
//! behind it that collects what would be exported.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use opentelemetry::logs::{LogRecord as _, Severity};
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::logs::{LogProcessor, SdkLogRecord};
use opentelemetry_sdk::trace::{Span, SpanData, SpanEvents, SpanLinks, SpanProcessor};
use opentelemetry_sdk::Resource;

use super::*;

#[derive(Debug, Clone, Default)]
struct Collect(Arc<Mutex<Vec<SpanData>>>);

impl SpanProcessor for Collect {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}
    fn on_end(&self, span: SpanData) {
        self.0.lock().unwrap().push(span);
    }
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }
    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

#[derive(Debug, Clone, Default)]
struct CollectLogs(Arc<Mutex<Vec<SdkLogRecord>>>);

impl LogProcessor for CollectLogs {
    fn emit(&self, data: &mut SdkLogRecord, _scope: &InstrumentationScope) {
        self.0.lock().unwrap().push(data.clone());
    }
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }
}

struct Rig {
    spans: Collect,
    logs: CollectLogs,
    tail: TailSpans,
    tail_logs: TailLogs,
    registry: prometheus::Registry,
    _provider: opentelemetry_sdk::metrics::SdkMeterProvider,
}

fn rig(ratio: f64, slow: SlowThreshold, limits: HoldLimits) -> Rig {
    rig_with(ratio, slow, limits, KeepParent::default())
}

fn rig_with(ratio: f64, slow: SlowThreshold, limits: HoldLimits, keep_parent: KeepParent) -> Rig {
    let (registry, provider) =
        crate::telemetry::metrics_provider(Resource::builder_empty().build()).unwrap();
    let spans = Collect::default();
    let logs = CollectLogs::default();
    let resource = Resource::builder_empty().build();
    let state = tail_sampling(
        Policy {
            ratio,
            keep_parent,
            slow,
            limits,
        },
        spans.clone(),
        &resource,
        &provider.meter("t"),
    );
    let tail_logs = state.logs(logs.clone(), &resource);
    Rig {
        spans,
        logs,
        tail: TailSpans(state),
        tail_logs,
        registry,
        _provider: provider,
    }
}

fn trace(n: u64) -> TraceId {
    TraceId::from_bytes(((u128::from(n) + 1) * 0x9E37_79B9_7F4A_7C15_u128).to_be_bytes())
}

fn span(trace: TraceId, id: u64, parent: u64, millis: u64, error: bool) -> SpanData {
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    SpanData {
        span_context: SpanContext::new(
            trace,
            SpanId::from_bytes(id.to_be_bytes()),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        parent_span_id: if parent == 0 {
            SpanId::INVALID
        } else {
            SpanId::from_bytes(parent.to_be_bytes())
        },
        parent_span_is_remote: false,
        span_kind: SpanKind::Internal,
        name: if parent == 0 {
            "pipeline.run"
        } else {
            "model.run"
        }
        .into(),
        start_time: start,
        end_time: start + Duration::from_millis(millis),
        attributes: vec![KeyValue::new("pipeline.name", "p")],
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: if error {
            Status::error("failed")
        } else {
            Status::Unset
        },
        instrumentation_scope: InstrumentationScope::builder("t").build(),
    }
}

/// A run: two model spans (the first failing if `error`), then the root.
fn run(rig: &Rig, t: TraceId, millis: u64, error: bool) {
    rig.tail.on_end(span(t, 2, 1, 1, error));
    rig.tail.on_end(span(t, 3, 1, 1, false));
    rig.tail.on_end(span(t, 1, 0, millis, false));
}

fn log(rig: &Rig, t: TraceId, severity: Severity) {
    use opentelemetry::logs::{Logger as _, LoggerProvider as _};
    let provider = opentelemetry_sdk::logs::SdkLoggerProvider::builder().build();
    let mut record = provider.logger("t").create_log_record();
    record.set_severity_number(severity);
    record.set_trace_context(t, SpanId::from_bytes([1; 8]), Some(TraceFlags::SAMPLED));
    rig.tail_logs
        .emit(&mut record, &InstrumentationScope::builder("t").build());
}

fn exported(rig: &Rig) -> Vec<SpanData> {
    rig.spans.0.lock().unwrap().clone()
}

fn counted(rig: &Rig, decision: &str, reason: &str) -> u64 {
    let text = crate::telemetry::encode_metrics(&rig.registry);
    text.lines()
        .find(|l| {
            l.starts_with("pipelens_traces_sampled_total{")
                && l.contains(&format!("decision=\"{decision}\""))
                && l.contains(&format!("reason=\"{reason}\""))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {decision}/{reason} series in\n{text}"))
}

fn fixed(ms: u64) -> SlowThreshold {
    SlowThreshold::Duration(Duration::from_millis(ms))
}

#[test]
fn ratio_zero_keeps_every_failed_trace_whole_and_no_healthy_one() {
    let rig = rig(0.0, fixed(10_000), HoldLimits::default());
    for i in 0..50 {
        run(&rig, trace(i), 5, i % 5 == 0);
    }
    let spans = exported(&rig);
    assert_eq!(spans.len(), 10 * 3, "10 failed runs, 3 spans each");
    for s in &spans {
        let n = s.span_context.trace_id();
        let i = (0..50).find(|i| trace(*i) == n).unwrap();
        assert_eq!(i % 5, 0, "only failed runs' spans are exported");
    }
    assert_eq!(counted(&rig, "kept", "error"), 10);
    assert_eq!(counted(&rig, "dropped", "ratio"), 40);
}

#[test]
fn a_slow_run_is_kept_and_a_fast_one_is_not() {
    let rig = rig(0.0, fixed(100), HoldLimits::default());
    run(&rig, trace(1), 150, false);
    run(&rig, trace(2), 50, false);
    let traces: Vec<TraceId> = exported(&rig)
        .iter()
        .map(|s| s.span_context.trace_id())
        .collect();
    assert_eq!(traces, vec![trace(1); 3]);
    assert_eq!(counted(&rig, "kept", "slow"), 1);
}

#[test]
fn logs_follow_their_trace_and_warnings_always_go() {
    let rig = rig(0.0, SlowThreshold::Off, HoldLimits::default());
    log(&rig, trace(1), Severity::Info);
    log(&rig, trace(1), Severity::Warn);
    log(&rig, trace(2), Severity::Info);
    assert_eq!(
        rig.logs.0.lock().unwrap().len(),
        1,
        "the WARN record goes at once, the INFO ones wait"
    );
    run(&rig, trace(1), 1, true);
    run(&rig, trace(2), 1, false);
    // A record after its trace was dropped follows the decision.
    log(&rig, trace(2), Severity::Debug);
    let logs = rig.logs.0.lock().unwrap();
    assert_eq!(logs.len(), 2, "the failed trace's INFO record joins it");
    assert!(logs
        .iter()
        .all(|r| r.trace_context().unwrap().trace_id == trace(1)));
}

#[test]
fn held_traces_are_bounded_and_the_overflow_is_counted() {
    let limits = HoldLimits {
        max_traces: 8,
        max_items_per_trace: 4,
        timeout: Duration::from_secs(3600),
    };
    let rig = rig(0.0, SlowThreshold::Off, limits);
    // Roots that never end: children only.
    for i in 0..100 {
        rig.tail.on_end(span(trace(i), 2, 1, 1, i == 50));
    }
    assert_eq!(rig.tail.0.table.held_count(), 8);
    assert_eq!(
        counted(&rig, "dropped", "overflow") + counted(&rig, "kept", "overflow"),
        92
    );
    assert_eq!(counted(&rig, "kept", "overflow"), 1, "the failed span");
    // Too many spans in one trace: decided at once, the rest follow.
    let t = trace(0);
    for id in 10..20 {
        rig.tail.on_end(span(t, id, 1, 1, false));
    }
    assert!(rig.tail.0.table.held_count() <= 8);
    assert!(
        !rig.tail.0.table.shard(t).held.contains_key(&t),
        "the big trace is no longer held"
    );
}

#[test]
fn a_trace_whose_root_never_ends_is_evicted_after_the_timeout() {
    let limits = HoldLimits {
        max_traces: 100,
        max_items_per_trace: 100,
        timeout: Duration::from_millis(1),
    };
    let rig = rig(0.0, SlowThreshold::Off, limits);
    rig.tail.on_end(span(trace(1), 2, 1, 1, true));
    std::thread::sleep(Duration::from_millis(1100));
    // Any later span in the same shard sweeps it.
    let mut other = 2;
    while trace(other).to_bytes()[15] % 16 != trace(1).to_bytes()[15] % 16 {
        other += 1;
    }
    rig.tail.on_end(span(trace(other), 2, 1, 1, false));
    assert_eq!(counted(&rig, "kept", "evicted"), 1);
    assert_eq!(exported(&rig).len(), 1, "its failed span was exported");
}

#[test]
fn keep_everything_passes_spans_through_and_still_counts_reasons() {
    let rig = rig(1.0, fixed(100), HoldLimits::default());
    rig.tail.on_end(span(trace(1), 2, 1, 1, true));
    assert_eq!(exported(&rig).len(), 1, "not held");
    rig.tail.on_end(span(trace(1), 1, 0, 1, false));
    run(&rig, trace(2), 500, false);
    run(&rig, trace(3), 1, false);
    assert_eq!(exported(&rig).len(), 8);
    assert_eq!(counted(&rig, "kept", "error"), 1);
    assert_eq!(counted(&rig, "kept", "slow"), 1);
    assert_eq!(counted(&rig, "kept", "ratio"), 1);
    assert_eq!(rig.tail.0.table.held_count(), 0);
}

/// Spans through a real tracer whose processor is `rig`'s tail sampler.
fn tracer(
    rig: &Rig,
) -> (
    opentelemetry_sdk::trace::SdkTracerProvider,
    opentelemetry_sdk::trace::SdkTracer,
) {
    use opentelemetry::trace::TracerProvider as _;
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_span_processor(TailSpans(Arc::clone(&rig.tail.0)))
        .build();
    let tracer = provider.tracer("t");
    (provider, tracer)
}

#[test]
fn a_fragment_continuing_an_open_run_is_decided_with_the_run() {
    use opentelemetry::trace::{Span as _, TraceContextExt as _, Tracer as _};
    let rig = rig(0.0, SlowThreshold::Off, HoldLimits::default());
    let (_provider, tracer) = tracer(&rig);
    let mut traces = Vec::new();
    for failed in [false, true] {
        // The run: its root, and a model span under it.
        let run = Context::new().with_span(tracer.start("pipeline.run"));
        let trace = run.span().span_context().trace_id();
        traces.push(trace);
        let model = run.span().span_context().span_id();
        // An endpoint in the same process continues the run's trace from
        // the `traceparent` the model sent: a local root with a sampled
        // remote parent.
        let remote = SpanContext::new(trace, model, TraceFlags::SAMPLED, true, TraceState::NONE);
        let cx = Context::new().with_remote_span_context(remote);
        tracer.start_with_context("scorer.score", &cx).end();
        let mut child = tracer.start_with_context("model.run", &run);
        if failed {
            child.set_status(Status::error("failed"));
        }
        child.end();
        run.span().end();
    }
    let exported = exported(&rig);
    assert!(
        exported
            .iter()
            .all(|s| s.span_context.trace_id() == traces[1]),
        "nothing of the healthy run, its fragment included: {exported:?}"
    );
    let names: Vec<&str> = exported.iter().map(|s| s.name.as_ref()).collect();
    assert_eq!(names.len(), 3, "the failed run whole: {names:?}");
    assert!(names.contains(&"scorer.score"));
    assert_eq!(counted(&rig, "kept", "parent"), 0);
    assert_eq!(counted(&rig, "dropped", "ratio"), 1);
    assert_eq!(counted(&rig, "kept", "error"), 1);
}

/// Five healthy requests from a caller whose `traceparent` is sampled
/// (`01`) with `tracestate` `state`, at ratio 0: how many are kept as
/// `parent` and exported.
/// Serves `count` requests of a caller that sampled them and sent
/// `state`, each a trace of its own from `trace(first)` on: a local root
/// with that remote parent, ended at once.
fn from_caller(rig: &Rig, first: u64, count: u64, state: &TraceState) {
    use opentelemetry::trace::{Span as _, Tracer as _};
    let (_provider, tracer) = tracer(rig);
    for n in first..first + count {
        let remote = SpanContext::new(
            trace(n),
            SpanId::from_bytes(9u64.to_be_bytes()),
            TraceFlags::SAMPLED,
            true,
            state.clone(),
        );
        let cx = Context::new().with_remote_span_context(remote);
        tracer.start_with_context("http.request", &cx).end();
    }
}

fn from_sampled_caller(keep_parent: KeepParent, state: TraceState) -> (u64, usize) {
    let rig = rig_with(0.0, SlowThreshold::Off, HoldLimits::default(), keep_parent);
    from_caller(&rig, 100, 5, &state);
    (counted(&rig, "kept", "parent"), exported(&rig).len())
}

#[test]
fn what_a_sampled_parent_keeps_depends_on_its_threshold_and_the_mode() {
    let ten_percent = TraceState::from_key_value([("ot", "th:e666666666666")]).unwrap();
    let always_on = TraceState::NONE;
    let full = TraceState::from_key_value([("ot", "th:0")]).unwrap();
    // An always-on caller flags every request: nothing kept for it.
    assert_eq!(
        from_sampled_caller(KeepParent::Threshold, always_on.clone()),
        (0, 0)
    );
    assert_eq!(from_sampled_caller(KeepParent::Threshold, full), (0, 0));
    // A caller that sampled at 10% said so: its traces are kept whole.
    assert_eq!(
        from_sampled_caller(KeepParent::Threshold, ten_percent.clone()),
        (5, 5)
    );
    assert_eq!(from_sampled_caller(KeepParent::Always, always_on), (5, 5));
    assert_eq!(from_sampled_caller(KeepParent::Never, ten_percent), (0, 0));
}

#[test]
fn a_callers_explicit_randomness_decides_the_ratio_share() {
    // An always-on caller (sampled, no threshold), so `parent` keeps
    // nothing: only the 10% share decides. Randomness 0xf0… is in it
    // whatever the trace id, 0x10… is not.
    let kept = |rv: &str| {
        let rig = rig(0.1, SlowThreshold::Off, HoldLimits::default());
        let state = TraceState::from_key_value([("ot", format!("rv:{rv}"))]).unwrap();
        from_caller(&rig, 200, 20, &state);
        counted(&rig, "kept", "ratio")
    };
    assert_eq!(kept("f0000000000000"), 20);
    assert_eq!(kept("10000000000000"), 0);
}
