//! Tail sampling in the process: each local trace's spans and log records
//! are held until its local root ends (`http.request` in the server,
//! `pipeline.run` in-process and in batch runs), then exported whole or
//! dropped whole.
//!
//! A trace is kept when any span in it has error status, when the run was
//! slower than the threshold (fixed, or the root's own recent quantile),
//! when the incoming `traceparent` was sampled, or when its trace id falls
//! in the random share of the rest. WARN and ERROR log records are always
//! exported at once; other records follow their trace. Held traces and
//! items per trace are bounded; a trace decided early is counted as
//! `overflow` or `evicted`. Every decision is counted on
//! `pipelens_traces_sampled_total{decision, reason}`.
//!
//! With a keep ratio of 1 (the default) nothing is held: spans and records
//! are exported as they end and only the decisions are counted.

mod policy;
mod quantile;
mod table;

use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use opentelemetry::logs::Severity;
use opentelemetry::metrics::{BoundCounter, Meter};
use opentelemetry::trace::{SpanId, Status, TraceContextExt as _, TraceId};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::logs::{LogProcessor, SdkLogRecord};
use opentelemetry_sdk::trace::{Span, SpanData, SpanProcessor};
use opentelemetry_sdk::Resource;

pub(crate) use policy::{Decision, Reason, DECISIONS};
pub use policy::{HoldLimits, KeepParent, SlowThreshold};

use super::exemplars::{self, Offer, Offered};
use policy::{in_ratio, in_ratio_of};
use quantile::Quantiles;
use table::{Held, Placed, Table};

/// The settings of tail sampling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Policy {
    pub(crate) ratio: f64,
    pub(crate) keep_parent: KeepParent,
    pub(crate) slow: SlowThreshold,
    pub(crate) limits: HoldLimits,
}

/// What tail sampling shares between its span and log processors and the
/// exemplar hook.
pub(crate) struct State {
    policy: Policy,
    pass_through: bool,
    table: Table,
    quantiles: Option<Mutex<Quantiles>>,
    spans: Box<dyn SpanProcessor>,
    logs: OnceLock<Arc<dyn LogProcessor>>,
    /// An empty record, left in the SDK's hands when a record is taken to
    /// be held (tail sampling is the logger provider's only processor, so
    /// nothing reads the record after it).
    blank: SdkLogRecord,
    counts: Vec<BoundCounter<u64>>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TailSampling")
            .field("policy", &self.policy)
            .field("held", &self.table.held_count())
            .finish()
    }
}

/// Builds tail sampling in front of `spans` (the export processor, given
/// `resource` here since it is shared), counting on `meter`.
pub(crate) fn tail_sampling<P: SpanProcessor + 'static>(
    policy: Policy,
    mut spans: P,
    resource: &Resource,
    meter: &Meter,
) -> Arc<State> {
    spans.set_resource(resource);
    let counter = meter
        .u64_counter("pipelens.traces.sampled")
        .with_unit("{trace}")
        .with_description(
            "Local traces decided by tail sampling: kept (exported whole) or dropped, and why",
        )
        .build();
    let counts = DECISIONS
        .iter()
        .map(|d| {
            counter.bind(&[
                KeyValue::new("decision", if d.keep { "kept" } else { "dropped" }),
                KeyValue::new("reason", d.reason.as_str()),
            ])
        })
        .collect();
    let quantiles = match policy.slow {
        SlowThreshold::Quantile(q) => Some(Mutex::new(Quantiles::new(q))),
        _ => None,
    };
    let state = Arc::new(State {
        pass_through: policy.ratio >= 1.0,
        table: Table::new(policy.limits.max_traces),
        quantiles,
        policy,
        spans: Box::new(spans),
        logs: OnceLock::new(),
        blank: blank_record(),
        counts,
    });
    let weak: Weak<State> = Arc::downgrade(&state);
    let _gauge = meter
        .u64_observable_gauge("pipelens.traces.held")
        .with_unit("{trace}")
        .with_description("Local traces held by tail sampling until their root ends")
        .with_callback(move |o| {
            if let Some(s) = weak.upgrade() {
                o.observe(s.table.held_count() as u64, &[]);
            }
        })
        .build();
    state
}

/// The span processor: give it to the tracer provider.
#[derive(Debug)]
pub(crate) struct TailSpans(pub(crate) Arc<State>);

/// The log processor in front of `inner`: give it to the logger provider.
#[derive(Debug)]
pub(crate) struct TailLogs(Arc<State>);

impl State {
    /// Routes log records through tail sampling to `inner` (given `resource`
    /// here since it is shared).
    pub(crate) fn logs<L: LogProcessor + 'static>(
        self: &Arc<Self>,
        mut inner: L,
        resource: &Resource,
    ) -> TailLogs {
        inner.set_resource(resource);
        let _ = self.logs.set(Arc::new(inner));
        TailLogs(Arc::clone(self))
    }

    fn count(&self, d: Decision) {
        self.counts[d.index()].add(1);
    }

    /// Exports what `held` holds if `keep`, else drops it.
    fn flush(&self, held: Held, keep: bool) {
        if !keep {
            return;
        }
        for span in held.spans {
            self.spans.on_end(span);
        }
        if let Some(logs) = self.logs.get() {
            for (mut record, scope) in held.logs {
                logs.emit(&mut record, &scope);
            }
        }
        if !held.exemplars.is_empty() {
            exemplars::store(held.exemplars);
        }
    }

    /// Decides `trace` early (`Overflow`, `Evicted`), remembers, counts
    /// and flushes it.
    fn decide_early(&self, trace: TraceId, held: Held, reason: Reason) {
        let d = Decision::early(reason, held.error, in_ratio(trace, self.policy.ratio));
        self.table.shard(trace).remember(trace, d.keep);
        self.count(d);
        self.flush(held, d.keep);
    }

    /// Decides the traces of `trace`'s shard that waited too long.
    fn sweep(&self, trace: TraceId) {
        let now = Instant::now();
        let Some(deadline) = now.checked_sub(self.policy.limits.timeout) else {
            return;
        };
        let expired = self.table.shard(trace).expired(now, deadline);
        self.table.released(expired.len());
        for (t, held) in expired {
            self.decide_early(t, held, Reason::Evicted);
        }
    }

    /// Whether the root ran slower than the threshold (feeding the
    /// adaptive quantile either way).
    fn slow(&self, root: &SpanData, held: Option<&Held>) -> bool {
        let took = root
            .end_time
            .duration_since(root.start_time)
            .unwrap_or(Duration::ZERO);
        match self.policy.slow {
            SlowThreshold::Off => false,
            SlowThreshold::Duration(d) => took > d,
            SlowThreshold::Quantile(_) => {
                let key = quantile_key(root, held);
                self.quantiles.as_ref().is_some_and(|q| {
                    q.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .observe(&key, took.as_secs_f64())
                })
            }
        }
    }

    /// The decision for a trace whose local root just ended.
    fn decide_root(&self, root: &SpanData, held: Option<&Held>) -> Decision {
        let slow = self.slow(root, held);
        let error = is_error(root) || held.is_some_and(|h| h.error);
        let parent = held.is_some_and(|h| h.parent_sampled);
        if error {
            Decision::kept(Reason::Error)
        } else if slow {
            Decision::kept(Reason::Slow)
        } else if parent {
            Decision::kept(Reason::Parent)
        } else if in_ratio_of(
            root.span_context.trace_id(),
            root.span_context.trace_state(),
            self.policy.ratio,
        ) {
            Decision::kept(Reason::Ratio)
        } else {
            Decision::dropped(Reason::Ratio)
        }
    }

    fn root_ended(&self, root: SpanData) {
        let trace = root.span_context.trace_id();
        let mut held = self.table.take(&mut self.table.shard(trace), trace);
        let d = self.decide_root(&root, held.as_ref());
        self.count(d);
        if self.pass_through {
            self.spans.on_end(root);
            return;
        }
        {
            // Spans that arrived while deciding join the trace; later ones
            // follow the remembered decision.
            let mut shard = self.table.shard(trace);
            shard.remember(trace, d.keep);
            if let Some(late) = self.table.take(&mut shard, trace) {
                match &mut held {
                    Some(h) => h.merge(late),
                    None => held = Some(late),
                }
            }
        }
        if let Some(h) = held {
            self.flush(h, d.keep);
        }
        if d.keep {
            self.spans.on_end(root);
        }
    }

    fn span_ended(&self, span: SpanData) {
        let trace = span.span_context.trace_id();
        let error = is_error(&span);
        if self.pass_through {
            if error {
                self.mark(trace, |h| h.error = true);
            }
            self.spans.on_end(span);
            return;
        }
        let limit = self.policy.limits.max_items_per_trace;
        let mut over = false;
        let mut shard = self.table.shard(trace);
        match self.table.place(&mut shard, trace, span, |h, s| {
            h.error |= error;
            h.spans.push(s);
            over = h.items() > limit;
        }) {
            Placed::Held { created } => {
                self.decide_if_over(shard, trace, over);
                // Once per trace, not per span: a shard is swept whenever
                // a new trace lands in it.
                if created {
                    self.sweep(trace);
                }
            }
            Placed::Decided(keep, span) => {
                drop(shard);
                if keep {
                    self.spans.on_end(span);
                }
            }
            Placed::Full(span) => {
                drop(shard);
                let mut h = Held::new(Instant::now());
                h.error = error;
                h.spans.push(span);
                self.decide_early(trace, h, Reason::Overflow);
                self.sweep(trace);
            }
        }
    }

    /// Decides `trace` at once if placing an item made it hold more than
    /// allowed (`over`, seen while placing it).
    fn decide_if_over(&self, mut shard: MutexGuard<'_, table::Shard>, trace: TraceId, over: bool) {
        let taken = over.then(|| self.table.take(&mut shard, trace)).flatten();
        drop(shard);
        if let Some(h) = taken {
            self.decide_early(trace, h, Reason::Overflow);
        }
    }

    /// Sets a flag on `trace`'s held entry (made if there is room).
    /// Flags are all pass-through mode holds, so they also sweep: a flagged
    /// trace whose root never ends is still bounded in time, without a
    /// sweep on every root.
    fn mark(&self, trace: TraceId, set: impl FnOnce(&mut Held)) {
        {
            let mut shard = self.table.shard(trace);
            let _ = self.table.place(&mut shard, trace, (), |h, ()| set(h));
        }
        self.sweep(trace);
    }

    fn log(&self, record: &mut SdkLogRecord, scope: &InstrumentationScope) {
        let Some(inner) = self.logs.get() else {
            return;
        };
        let always = record
            .severity_number()
            .is_some_and(|s| s >= Severity::Warn);
        let trace = record
            .trace_context()
            .map(|tc| (tc.trace_id, tc.trace_flags.is_none_or(|f| f.is_sampled())));
        let (trace, sampled) = match trace {
            Some(t) if !always && !self.pass_through => t,
            _ => {
                inner.emit(record, scope);
                return;
            }
        };
        if !sampled {
            // Head sampling dropped the trace: its records go with it.
            return;
        }
        let limit = self.policy.limits.max_items_per_trace;
        let mut over = false;
        let mut shard = self.table.shard(trace);
        let item = (std::mem::replace(record, self.blank.clone()), scope.clone());
        match self.table.place(&mut shard, trace, item, |h, item| {
            h.logs.push(item);
            over = h.items() > limit;
        }) {
            Placed::Held { .. } => self.decide_if_over(shard, trace, over),
            Placed::Decided(keep, (mut record, scope)) => {
                drop(shard);
                if keep {
                    inner.emit(&mut record, &scope);
                }
            }
            Placed::Full(item) => {
                drop(shard);
                let mut h = Held::new(Instant::now());
                h.logs.push(item);
                self.decide_early(trace, h, Reason::Overflow);
            }
        }
    }

    /// Decides every held trace (at shutdown: their roots will not end).
    fn evict_all(&self) {
        for i in 0..Table::SHARDS {
            let drained: Vec<(TraceId, Held)> = self.table.lock_index(i).held.drain().collect();
            self.table.released(drained.len());
            for (t, h) in drained {
                self.decide_early(t, h, Reason::Evicted);
            }
        }
    }
}

/// An empty log record: the SDK makes them only through a logger.
fn blank_record() -> SdkLogRecord {
    use opentelemetry::logs::{Logger as _, LoggerProvider as _};
    opentelemetry_sdk::logs::SdkLoggerProvider::builder()
        .build()
        .logger("pipelens")
        .create_log_record()
}

fn is_error(span: &SpanData) -> bool {
    matches!(span.status, Status::Error { .. })
}

/// A local root: no parent in this process.
fn is_local_root(span: &SpanData) -> bool {
    span.parent_span_id == SpanId::INVALID || span.parent_span_is_remote
}

/// The root's name and the pipeline it ran, if any span says.
fn quantile_key(root: &SpanData, held: Option<&Held>) -> String {
    let pipeline = |s: &SpanData| {
        s.attributes
            .iter()
            .find(|kv| kv.key.as_str() == "pipeline.name")
            .map(|kv| kv.value.as_str().into_owned())
    };
    let found = pipeline(root).or_else(|| held.and_then(|h| h.spans.iter().find_map(pipeline)));
    match found {
        Some(p) => format!("{}|{p}", root.name),
        None => root.name.to_string(),
    }
}

impl Offer for State {
    fn offer(&self, offered: Offered) {
        if self.pass_through {
            exemplars::store([offered]);
            return;
        }
        let trace = offered.exemplar.trace_id;
        let mut shard = self.table.shard(trace);
        if let Placed::Decided(true, o) = self
            .table
            .place(&mut shard, trace, offered, |h, o| h.add_exemplar(o))
        {
            drop(shard);
            exemplars::store([o]);
        }
    }
}

impl SpanProcessor for TailSpans {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.0.spans.on_start(span, cx);
        let has_parent = cx.has_active_span();
        let parent_ref = cx.span();
        let parent = parent_ref.span_context();
        if has_parent && !parent.is_remote() {
            return;
        }
        // A local root. One of a trace whose root is open here already is
        // a fragment of it (an in-process endpoint the run called with its
        // `traceparent`): decided with the run, whatever its parent says.
        use opentelemetry::trace::Span as _;
        let trace = span.span_context().trace_id();
        let fragment = self
            .0
            .table
            .shard(trace)
            .root_started(trace, self.0.table.max_open());
        if has_parent
            && !fragment
            && parent.is_sampled()
            && self.0.policy.keep_parent.keeps(parent.trace_state())
        {
            self.0.mark(parent.trace_id(), |h| h.parent_sampled = true);
        }
    }

    fn on_end(&self, span: SpanData) {
        if !is_local_root(&span) {
            self.0.span_ended(span);
            return;
        }
        let trace = span.span_context.trace_id();
        let fragment = self.0.table.shard(trace).root_ended(trace);
        if fragment {
            self.0.span_ended(span);
        } else {
            self.0.root_ended(span);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.spans.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.evict_all();
        self.0.spans.shutdown_with_timeout(timeout)
    }
}

impl LogProcessor for TailLogs {
    fn emit(&self, data: &mut SdkLogRecord, instrumentation: &InstrumentationScope) {
        self.0.log(data, instrumentation);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.logs.get().map_or(Ok(()), |l| l.force_flush())
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0
            .logs
            .get()
            .map_or(Ok(()), |l| l.shutdown_with_timeout(timeout))
    }

    fn event_enabled(&self, level: Severity, target: &str, name: Option<&str>) -> bool {
        self.0
            .logs
            .get()
            .is_none_or(|l| l.event_enabled(level, target, name))
    }
}

#[cfg(test)]
mod tests;
