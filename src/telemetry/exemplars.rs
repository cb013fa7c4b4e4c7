//! Exemplars for the latency histograms: the trace id and span id of a
//! recent observation in each bucket, written on /metrics in OpenMetrics.
//!
//! The OTel Rust SDK collects no exemplars, so pipelens keeps its own. An
//! observation is only *offered*: tail sampling holds it with its trace and
//! stores it here when (and only if) that trace is kept and exported, so an
//! exemplar never points at a dropped trace. Storing takes a lock that is
//! only tried, never waited for: a busy store loses an exemplar, never a
//! request's time.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use opentelemetry::trace::{SpanId, TraceContextExt as _, TraceId};
use opentelemetry::KeyValue;

/// How many recent exemplars each series keeps (spread over its buckets
/// when /metrics is written).
const PER_SERIES: usize = 16;

/// One histogram series that can carry exemplars: its Prometheus name and
/// label set, as /metrics writes them.
#[derive(Debug, Clone)]
pub(crate) struct Series {
    key: Arc<str>,
}

impl Series {
    /// The series `name` (the Prometheus name, `ml_pipeline_duration_seconds`)
    /// with `attrs`, whose names are sanitised as the Prometheus exporter
    /// does.
    pub(crate) fn new(name: &str, attrs: &[KeyValue]) -> Self {
        let mut labels: Vec<(String, String)> = attrs
            .iter()
            .map(|kv| (sanitize(kv.key.as_str()), kv.value.as_str().into_owned()))
            .collect();
        labels.sort();
        Self {
            key: series_key(name, labels.iter().map(|(k, v)| (k.as_str(), v.as_str()))).into(),
        }
    }
}

/// `name{a="x",b="y"}` with labels in the given order (sorted by name).
pub(crate) fn series_key<'a>(
    name: &str,
    labels: impl Iterator<Item = (&'a str, &'a str)>,
) -> String {
    let mut key = String::with_capacity(64);
    key.push_str(name);
    key.push('{');
    for (i, (k, v)) in labels.enumerate() {
        if i > 0 {
            key.push(',');
        }
        key.push_str(k);
        key.push_str("=\"");
        key.push_str(v);
        key.push('"');
    }
    key.push('}');
    key
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// One stored exemplar.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Exemplar {
    pub(crate) trace_id: TraceId,
    pub(crate) span_id: SpanId,
    pub(crate) value: f64,
    pub(crate) time: SystemTime,
}

/// An exemplar waiting for its trace's decision.
#[derive(Debug, Clone)]
pub(crate) struct Offered {
    pub(crate) series: Arc<str>,
    pub(crate) exemplar: Exemplar,
}

/// Where offered exemplars go: the tail sampler, which keeps them with
/// their trace until it is decided.
pub(crate) trait Offer: Send + Sync {
    /// Holds `offered` until its trace is decided (or stores it at once if
    /// the trace is already kept).
    fn offer(&self, offered: Offered);
}

static SINK: OnceLock<Arc<dyn Offer>> = OnceLock::new();
static STORE: Mutex<BTreeMap<Arc<str>, Ring>> = Mutex::new(BTreeMap::new());

/// Installs the process's exemplar sink (done once by telemetry setup).
pub(crate) fn install(sink: Arc<dyn Offer>) {
    let _ = SINK.set(sink);
}

/// Whether observations are offered at all (a tail sampler is installed).
#[cfg(feature = "server")]
pub(crate) fn active() -> bool {
    SINK.get().is_some()
}

/// Offers an observation of `value` in `series`, made inside `span`.
/// Does nothing without trace export or when the span is not sampled.
pub(crate) fn offer(series: &Series, value: f64, span: &tracing::Span) {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let Some(sink) = SINK.get() else {
        return;
    };
    let cx = span.context();
    let otel = cx.span();
    let sc = otel.span_context();
    if !sc.is_valid() || !sc.is_sampled() {
        return;
    }
    sink.offer(Offered {
        series: Arc::clone(&series.key),
        exemplar: Exemplar {
            trace_id: sc.trace_id(),
            span_id: sc.span_id(),
            value,
            time: SystemTime::now(),
        },
    });
}

/// Stores exemplars of kept traces. Tries the lock once: under contention
/// the exemplars are lost, the caller never waits.
pub(crate) fn store(offered: impl IntoIterator<Item = Offered>) {
    let Ok(mut store) = STORE.try_lock() else {
        return;
    };
    for o in offered {
        store
            .entry(o.series)
            .or_insert_with(Ring::default)
            .push(o.exemplar);
    }
}

/// The exemplars of the series `key` (as [`series_key`] writes it), newest
/// last.
pub(crate) fn of_series(key: &str) -> Vec<Exemplar> {
    let store = STORE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    store.get(key).map(Ring::ordered).unwrap_or_default()
}

/// Whether any series has exemplars (lets /metrics skip the lookups).
pub(crate) fn any() -> bool {
    !STORE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .is_empty()
}

/// The last [`PER_SERIES`] exemplars of one series.
#[derive(Debug, Default)]
struct Ring {
    items: Vec<Exemplar>,
    next: usize,
}

impl Ring {
    fn push(&mut self, e: Exemplar) {
        if self.items.len() < PER_SERIES {
            self.items.push(e);
        } else {
            self.items[self.next] = e;
        }
        self.next = (self.next + 1) % PER_SERIES;
    }

    fn ordered(&self) -> Vec<Exemplar> {
        if self.items.len() < PER_SERIES {
            return self.items.clone();
        }
        let mut out = self.items[self.next..].to_vec();
        out.extend_from_slice(&self.items[..self.next]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_keys_sort_and_sanitise_labels_as_the_exporter_does() {
        let s = Series::new(
            "http_server_request_duration_seconds",
            &[
                KeyValue::new("http.route", "/v1/x"),
                KeyValue::new("http.request.method", "POST"),
                KeyValue::new("http.response.status_code", 200),
            ],
        );
        assert_eq!(
            &*s.key,
            "http_server_request_duration_seconds{http_request_method=\"POST\",\
             http_response_status_code=\"200\",http_route=\"/v1/x\"}"
        );
    }

    #[test]
    fn a_ring_keeps_the_newest_in_order() {
        let mut r = Ring::default();
        for i in 0..40u64 {
            r.push(Exemplar {
                trace_id: TraceId::from(u128::from(i) + 1),
                span_id: SpanId::from(i + 1),
                value: i as f64,
                time: SystemTime::UNIX_EPOCH,
            });
        }
        let values: Vec<f64> = r.ordered().iter().map(|e| e.value).collect();
        assert_eq!(values, (24..40).map(|i| i as f64).collect::<Vec<_>>());
    }
}
