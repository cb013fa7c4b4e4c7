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

/// Value classes per octave: each series keeps its newest exemplar per
/// class, so every histogram bucket (bounds 2 to 2.5 apart) finds a recent
/// one of its own. Keeping the newest few of the whole series instead
/// loses a slow run's exemplar to the next fast ones within milliseconds
/// under load (900 kept traces a second at 5%).
const CLASSES_PER_OCTAVE: f64 = 4.0;
/// Most classes a series keeps (16 octaves, from 15 µs to 1 s, say); past
/// that the oldest exemplar goes.
const MAX_CLASSES: usize = 64;

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
static STORE: Mutex<BTreeMap<Arc<str>, Recent>> = Mutex::new(BTreeMap::new());

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
            .or_insert_with(Recent::default)
            .push(o.exemplar);
    }
}

/// The exemplars of the series `key` (as [`series_key`] writes it), newest
/// last.
pub(crate) fn of_series(key: &str) -> Vec<Exemplar> {
    let store = STORE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    store.get(key).map(Recent::ordered).unwrap_or_default()
}

/// Whether any series has exemplars (lets /metrics skip the lookups).
pub(crate) fn any() -> bool {
    !STORE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .is_empty()
}

/// The newest exemplar of each value class of one series.
#[derive(Debug, Default)]
struct Recent {
    by_class: BTreeMap<i32, Exemplar>,
}

impl Recent {
    fn push(&mut self, e: Exemplar) {
        self.by_class.insert(class_of(e.value), e);
        if self.by_class.len() > MAX_CLASSES {
            let oldest = self
                .by_class
                .iter()
                .min_by_key(|(_, e)| e.time)
                .map(|(c, _)| *c);
            if let Some(c) = oldest {
                self.by_class.remove(&c);
            }
        }
    }

    /// Oldest first.
    fn ordered(&self) -> Vec<Exemplar> {
        let mut out: Vec<Exemplar> = self.by_class.values().copied().collect();
        out.sort_by_key(|e| e.time);
        out
    }
}

/// The class of an observed `value`: a quarter of an octave. Zero,
/// negative and non-finite values share one class.
fn class_of(value: f64) -> i32 {
    if value > 0.0 && value.is_finite() {
        // |log2| of an f64 is under 1075: the product fits an i32.
        (value.log2() * CLASSES_PER_OCTAVE).floor() as i32
    } else {
        i32::MIN
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

    fn at(value: f64, second: u64) -> Exemplar {
        Exemplar {
            trace_id: TraceId::from(u128::from(second) + 1),
            span_id: SpanId::from(second + 1),
            value,
            time: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(second),
        }
    }

    #[test]
    fn a_slow_exemplar_outlives_any_number_of_fast_ones() {
        let mut r = Recent::default();
        r.push(at(0.2, 0));
        for i in 1..=1000 {
            r.push(at(0.001 + (i % 3) as f64 * 1e-5, i));
        }
        let kept = r.ordered();
        assert!(
            kept.iter().any(|e| e.value == 0.2),
            "the 200 ms run's exemplar is still there: {kept:?}"
        );
        assert_eq!(
            kept.last().map(|e| e.time),
            Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000)),
            "newest last"
        );
        assert!(kept.len() <= 3, "fast ones share a class: {}", kept.len());
    }

    #[test]
    fn each_histogram_bucket_finds_an_exemplar_of_its_own() {
        // The bounds of `ml_model_execution_duration_seconds`' first
        // buckets: every bucket an observation fell in has one.
        let bounds = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01];
        let mut r = Recent::default();
        let mut second = 0;
        for _ in 0..50 {
            for w in bounds.windows(2) {
                second += 1;
                r.push(at((w[0] + w[1]) / 2.0, second));
            }
        }
        let kept = r.ordered();
        for w in bounds.windows(2) {
            assert!(
                kept.iter().any(|e| e.value > w[0] && e.value <= w[1]),
                "no exemplar in ({}, {}]: {kept:?}",
                w[0],
                w[1]
            );
        }
    }

    #[test]
    fn a_series_keeps_a_bounded_number_of_classes_dropping_the_oldest() {
        let mut r = Recent::default();
        for i in 0..(MAX_CLASSES as u64 * 3) {
            r.push(at(1e-6 * 1.25f64.powi(i as i32), i));
        }
        let kept = r.ordered();
        assert_eq!(kept.len(), MAX_CLASSES);
        assert_eq!(
            kept[0].time,
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(MAX_CLASSES as u64 * 2),
            "the oldest went first"
        );
        assert_eq!(class_of(0.0), class_of(-1.0));
        assert_eq!(class_of(f64::NAN), class_of(0.0));
    }
}
