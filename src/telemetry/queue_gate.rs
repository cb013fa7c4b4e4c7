//! Counts every span and log record the batch processors lose to a full
//! queue. The SDK's batch processors drop silently when their queue is full
//! (they log the first drop only), so a gate in front of each one admits at
//! most `max_queue_size` items that the exporter has not yet received and
//! counts the rest as dropped. The inner queue therefore never overflows, and
//! `otel.sdk.processor.{span,log}.processed` accounts for every item: without
//! `error.type` once handed to the exporter, with `error.type=queue_full` when
//! dropped (`otel_sdk_processor_span_processed_total` on /metrics).

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::metrics::{Counter, Meter};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::logs::{LogProcessor, SdkLogRecord};
use opentelemetry_sdk::trace::{Span, SpanData, SpanProcessor};
use opentelemetry_sdk::Resource;

/// The variable and the SDK's default of each signal's queue size.
const SPAN_QUEUE: (&str, usize) = ("OTEL_BSP_MAX_QUEUE_SIZE", 2048);
const LOG_QUEUE: (&str, usize) = ("OTEL_BLRP_MAX_QUEUE_SIZE", 2048);

/// The queue size the SDK's batch processor of `signal` uses: its
/// `OTEL_BSP_MAX_QUEUE_SIZE` / `OTEL_BLRP_MAX_QUEUE_SIZE`, or the default
/// when unset or unusable (as the SDK reads it).
pub(crate) fn queue_size(signal: &str) -> usize {
    let (var, default) = if signal == "span" {
        SPAN_QUEUE
    } else {
        LOG_QUEUE
    };
    std::env::var(var)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

/// How many items are between the gate and the exporter, and the counter
/// of what happened to each.
pub(crate) struct Gate {
    pending: AtomicUsize,
    capacity: usize,
    processed: Counter<u64>,
    handed: [KeyValue; 1],
    dropped: [KeyValue; 2],
}

impl fmt::Debug for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gate")
            .field("pending", &self.pending.load(Ordering::Relaxed))
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl Gate {
    /// A gate for `signal` (`span` or `log`) in front of a queue of
    /// `capacity`, counting on `meter`; `component` names the processor.
    pub(crate) fn new(
        meter: &Meter,
        signal: &str,
        component: &'static str,
        capacity: usize,
    ) -> Arc<Self> {
        let unit = if signal == "span" {
            "{span}"
        } else {
            "{log_record}"
        };
        let processed = meter
            .u64_counter(format!("otel.sdk.processor.{signal}.processed"))
            .with_unit(unit)
            .with_description(
                "Items the batch processor finished with: handed to the exporter, or dropped (error.type)",
            )
            .build();
        let component = KeyValue::new("otel.component.type", component);
        Arc::new(Self {
            pending: AtomicUsize::new(0),
            capacity,
            processed,
            dropped: [component.clone(), KeyValue::new("error.type", "queue_full")],
            handed: [component],
        })
    }

    /// Whether one more item fits; a refused item is counted as dropped.
    fn admit(&self) -> bool {
        if self.pending.fetch_add(1, Ordering::AcqRel) < self.capacity {
            return true;
        }
        self.pending.fetch_sub(1, Ordering::AcqRel);
        self.processed.add(1, &self.dropped);
        false
    }

    /// The exporter received `items` (whatever the export's outcome, which
    /// `otel.sdk.exporter.*.exported` counts): they leave the queue.
    pub(crate) fn handed_to_exporter(&self, items: usize) {
        let _ = self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                Some(p.saturating_sub(items))
            });
        self.processed.add(items as u64, &self.handed);
    }
}

/// A span or log processor behind a [`Gate`].
#[derive(Debug)]
pub(crate) struct Gated<P> {
    inner: P,
    gate: Arc<Gate>,
}

impl<P> Gated<P> {
    /// Puts `inner` behind `gate`.
    pub(crate) fn new(inner: P, gate: Arc<Gate>) -> Self {
        Self { inner, gate }
    }
}

impl<P: SpanProcessor> SpanProcessor for Gated<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.gate.admit() {
            self.inner.on_end(span);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

impl<P: LogProcessor> LogProcessor for Gated<P> {
    fn emit(&self, data: &mut SdkLogRecord, instrumentation: &InstrumentationScope) {
        if self.gate.admit() {
            self.inner.emit(data, instrumentation);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn event_enabled(
        &self,
        level: opentelemetry::logs::Severity,
        target: &str,
        name: Option<&str>,
    ) -> bool {
        self.inner.event_enabled(level, target, name)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::metrics::MeterProvider as _;

    #[test]
    fn the_gate_admits_up_to_capacity_and_counts_every_item() {
        let (registry, provider) =
            crate::telemetry::metrics_provider(Resource::builder_empty().build()).unwrap();
        let gate = Gate::new(&provider.meter("t"), "span", "batching_span_processor", 3);
        let admitted = (0..10).filter(|_| gate.admit()).count();
        assert_eq!(admitted, 3, "three fit in the queue");
        gate.handed_to_exporter(2);
        assert!(gate.admit() && gate.admit(), "two slots freed");
        assert!(!gate.admit());
        let text = crate::telemetry::encode_metrics(&registry);
        let value = |dropped: bool| -> String {
            text.lines()
                .find(|l| {
                    l.starts_with("otel_sdk_processor_span_processed_total{")
                        && l.contains("queue_full") == dropped
                })
                .unwrap_or_else(|| panic!("no series (dropped: {dropped}):\n{text}"))
                .rsplit(' ')
                .next()
                .unwrap()
                .to_owned()
        };
        assert_eq!(value(false), "2", "handed to the exporter");
        assert_eq!(value(true), "8", "7 refused at first, 1 after");
    }
}
