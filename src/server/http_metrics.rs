//! The HTTP layer: a server span per request (continuing an incoming W3C
//! `traceparent`), the OTel HTTP server metrics, the request timeout, and
//! logging of service failures inside the request span.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use opentelemetry::metrics::{BoundHistogram, BoundUpDownCounter, Histogram, Meter, UpDownCounter};
use opentelemetry::propagation::Extractor;
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry::KeyValue;
use tracing::level_filters::LevelFilter;
use tracing::{field, Instrument};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::error::{ApiError, Expected, Refused, ServerErrorCause};
use crate::names;
use crate::telemetry::exemplars::{self, Series};

/// Bucket boundaries (seconds) for request durations: the semantic
/// conventions' advice, extended down to 0.5 ms since runs are fast.
const HTTP_DURATION_BUCKETS: [f64; 17] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
    7.5, 10.0,
];

/// Routes that are polled by machines: their spans are DEBUG so a scrape
/// every few seconds does not fill the trace store.
const INFRA_ROUTES: [&str; 3] = ["/metrics", "/health", "/ready"];

/// The HTTP server instruments and the request timeout.
pub(crate) struct HttpLayer {
    duration: Histogram<f64>,
    active: UpDownCounter<i64>,
    /// `active` bound to each method of [`METHODS`] on its first request
    /// (a series appears once its method has been seen).
    active_by_method: [OnceLock<BoundUpDownCounter<i64>>; METHODS.len()],
    timeout: Duration,
    /// Each answer's series built once: by method and status, then route.
    answers: Mutex<HashMap<(&'static str, u16), Routes>>,
}

/// The answers of one method and status, by route.
type Routes = HashMap<Box<str>, Arc<Answer>>;

/// At most this many (method, status, route) series are remembered; the
/// sets are bounded (known methods, matched routes, status codes), so this
/// is a guard: past it, requests record without the cache.
const MAX_ANSWER_SERIES: usize = 1024;

/// The duration histogram bound to one (method, route, status), and its
/// exemplar series: building them took label sorting, hashing and a few
/// allocations per request.
struct Answer {
    duration: BoundHistogram<f64>,
    series: Series,
}

impl HttpLayer {
    pub(crate) fn new(meter: &Meter, timeout: Duration) -> Self {
        Self {
            duration: meter
                .f64_histogram(names::HTTP_SERVER_REQUEST_DURATION)
                .with_unit("s")
                .with_description("Duration of HTTP server requests")
                .with_boundaries(HTTP_DURATION_BUCKETS.to_vec())
                .build(),
            active: meter
                .i64_up_down_counter(names::HTTP_SERVER_ACTIVE_REQUESTS)
                .with_unit("{request}")
                .with_description("Number of active HTTP server requests")
                .build(),
            active_by_method: Default::default(),
            timeout,
            answers: Mutex::new(HashMap::new()),
        }
    }

    /// The in-flight gauge of the method at `index` in [`METHODS`].
    fn active(&self, index: usize) -> &BoundUpDownCounter<i64> {
        self.active_by_method[index].get_or_init(|| {
            self.active
                .bind(&[KeyValue::new(names::HTTP_REQUEST_METHOD, METHODS[index])])
        })
    }

    /// The series of an answer with `status` to `method` on `route` (`""`
    /// when no route matched), built on first use.
    fn answer(&self, method: &'static str, route: &str, status: u16) -> Arc<Answer> {
        let mut answers = self
            .answers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(a) = answers.get(&(method, status)).and_then(|r| r.get(route)) {
            return Arc::clone(a);
        }
        let mut attrs = Vec::with_capacity(3);
        attrs.push(KeyValue::new(names::HTTP_REQUEST_METHOD, method));
        if !route.is_empty() {
            attrs.push(KeyValue::new(names::HTTP_ROUTE, route.to_owned()));
        }
        attrs.push(KeyValue::new(
            names::HTTP_RESPONSE_STATUS_CODE,
            i64::from(status),
        ));
        let answer = Arc::new(Answer {
            duration: self.duration.bind(&attrs),
            series: Series::new(names::PROM_HTTP_SERVER_REQUEST_DURATION, &attrs),
        });
        let known: usize = answers.values().map(HashMap::len).sum();
        if known < MAX_ANSWER_SERIES {
            answers
                .entry((method, status))
                .or_default()
                .insert(route.into(), Arc::clone(&answer));
        }
        answer
    }
}

/// The method label values: the known methods, then `_OTHER`.
const METHODS: [&str; 10] = [
    "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "TRACE", "CONNECT", "_OTHER",
];

/// The method's position in [`METHODS`]: a bounded label value.
fn method_index(method: &Method) -> usize {
    match *method {
        Method::GET => 0,
        Method::POST => 1,
        Method::PUT => 2,
        Method::DELETE => 3,
        Method::HEAD => 4,
        Method::OPTIONS => 5,
        Method::PATCH => 6,
        Method::TRACE => 7,
        Method::CONNECT => 8,
        _ => 9,
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Decrements the in-flight gauge even when the client goes away and the
/// request future is dropped.
struct InFlight<'a>(&'a BoundUpDownCounter<i64>);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.add(-1);
    }
}

/// The W3C Trace Context (level 2) response header naming the request's
/// trace: `00-{trace id}-{span id}-{flags}`.
pub(crate) const TRACERESPONSE: &str = "traceresponse";

fn traceresponse(span: &tracing::Span) -> Option<HeaderValue> {
    let cx = span.context();
    let span_ref = cx.span();
    let sc = span_ref.span_context();
    if !sc.is_valid() {
        return None;
    }
    HeaderValue::from_str(&format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    ))
    .ok()
}

/// The middleware: span, metrics, timeout, 5xx logging, `traceresponse`.
pub(crate) async fn observe(
    State(layer): State<Arc<HttpLayer>>,
    request: Request,
    next: Next,
) -> Response {
    let method_at = method_index(request.method());
    let method = METHODS[method_at];
    let route = request.extensions().get::<MatchedPath>().cloned();
    let route_name = route.as_ref().map_or("", MatchedPath::as_str);
    // The span's name is built only when a subscriber may record it (the
    // max level is OFF without one).
    let span_name: Cow<'_, str> = match &route {
        _ if LevelFilter::current() == LevelFilter::OFF => Cow::Borrowed(""),
        Some(r) => Cow::Owned(format!("{method} {}", r.as_str())),
        None => Cow::Borrowed(method),
    };
    let span = if INFRA_ROUTES.contains(&route_name) {
        tracing::debug_span!(
            "http.request",
            otel.name = &*span_name,
            otel.kind = "server",
            http.request.method = method,
            http.route = route_name,
            http.response.status_code = field::Empty,
            otel.status_code = field::Empty,
        )
    } else {
        tracing::info_span!(
            "http.request",
            otel.name = &*span_name,
            otel.kind = "server",
            http.request.method = method,
            http.route = route_name,
            http.response.status_code = field::Empty,
            otel.status_code = field::Empty,
        )
    };
    let parent = opentelemetry::global::get_text_map_propagator(|p| {
        p.extract(&HeaderExtractor(request.headers()))
    });
    let _ = span.set_parent(parent);

    let active = layer.active(method_at);
    active.add(1);
    let in_flight = InFlight(active);
    let started = Instant::now();
    let mut response =
        match tokio::time::timeout(layer.timeout, next.run(request).instrument(span.clone())).await
        {
            Ok(response) => response,
            Err(_) => ApiError::Timeout(layer.timeout).into_response(),
        };
    drop(in_flight);

    let status = response.status();
    let seconds = started.elapsed().as_secs_f64();
    let answer = layer.answer(method, route_name, status.as_u16());
    answer.duration.record(seconds);
    if exemplars::active() {
        exemplars::offer(&answer.series, seconds, &span);
    }

    span.record("http.response.status_code", status.as_u16());
    if let Some(value) = traceresponse(&span) {
        response.headers_mut().insert(TRACERESPONSE, value);
    }
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    log_answer(&span, status, &response, route_name);
    response
}

/// Logs an error answer inside the request span. Expected answers — 4xx
/// (the caller's fault), a `/ready` 503 while models load or the server
/// drains, a 503 `overloaded` refusal — are DEBUG lines: they are counted on
/// `http_server_request_duration_seconds` and are not failures. A 5xx that
/// is a failure of the service is one ERROR line saying what failed; a
/// failed run already has its `pipeline failed` line from the runner, in the
/// same trace, so it gets no second one.
fn log_answer(span: &tracing::Span, status: StatusCode, response: &Response, route: &str) {
    if !status.is_client_error() && !status.is_server_error() {
        return;
    }
    let extensions = response.extensions();
    let cause = extensions.get::<ServerErrorCause>();
    let expected = status.is_client_error()
        || extensions.get::<Refused>().is_some()
        || extensions.get::<Expected>().is_some();
    span.in_scope(|| match cause {
        Some(cause) if cause.logged => {}
        Some(cause) => tracing::error!(
            http.response.status_code = status.as_u16(),
            error.message = cause.message.as_str(),
            "request failed"
        ),
        None if expected => tracing::debug!(
            http.response.status_code = status.as_u16(),
            "request answered with an error status"
        ),
        None => tracing::error!(
            http.response.status_code = status.as_u16(),
            error.message = %format_args!("route `{route}` answered {status} without a cause"),
            "request failed"
        ),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_series_is_built_once_and_the_cache_is_bounded() {
        let (registry, provider) = crate::telemetry::metrics_provider(
            opentelemetry_sdk::Resource::builder()
                .with_service_name("test")
                .build(),
        )
        .unwrap();
        let layer = HttpLayer::new(
            &opentelemetry::metrics::MeterProvider::meter(&provider, "test"),
            Duration::from_secs(1),
        );
        let first = layer.answer("POST", "/v1/pipelines/a/runs", 200);
        assert!(Arc::ptr_eq(
            &first,
            &layer.answer("POST", "/v1/pipelines/a/runs", 200)
        ));
        assert!(!Arc::ptr_eq(
            &first,
            &layer.answer("POST", "/v1/pipelines/a/runs", 422)
        ));
        first.duration.record(0.002);
        layer.answer("GET", "", 404).duration.record(0.001);
        for i in 0..MAX_ANSWER_SERIES + 10 {
            layer
                .answer("GET", &format!("/r{i}"), 200)
                .duration
                .record(0.001);
        }
        let known: usize = layer
            .answers
            .lock()
            .unwrap()
            .values()
            .map(HashMap::len)
            .sum();
        assert_eq!(known, MAX_ANSWER_SERIES);
        let text = crate::telemetry::encode_metrics(&registry);
        for needle in [
            r#"http_server_request_duration_seconds_count{http_request_method="POST",http_response_status_code="200",http_route="/v1/pipelines/a/runs""#,
            r#"http_server_request_duration_seconds_count{http_request_method="GET",http_response_status_code="404""#,
            // Past the cache's bound, answers are still recorded.
            &format!(
                r#"http_server_request_duration_seconds_count{{http_request_method="GET",http_response_status_code="200",http_route="/r{}""#,
                MAX_ANSWER_SERIES + 9
            ),
        ] {
            assert!(text.contains(needle), "missing {needle}");
        }
    }
}
