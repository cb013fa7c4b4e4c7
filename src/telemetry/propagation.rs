//! W3C trace context across process boundaries: the headers an outbound call
//! from a model carries so the model server joins the run's trace, and the
//! parent context a downstream service reads from them.

use std::collections::HashMap;

use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The trace-context headers (`traceparent`, and `tracestate` when set) of
/// the current span, to add to an outbound request. Inside a model's `run`
/// the current span is its `model.run` span, so the callee's spans become
/// its children. Empty when tracing is off or no propagator is installed
/// ([`crate::telemetry::init`] installs the W3C one).
///
/// ```
/// let mut request = Vec::<(String, String)>::new(); // your HTTP client's headers
/// for (name, value) in pipelens::telemetry::trace_headers() {
///     request.push((name, value));
/// }
/// ```
pub fn trace_headers() -> Vec<(String, String)> {
    let cx = tracing::Span::current().context();
    let mut headers = HashMap::new();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut headers));
    headers.into_iter().collect()
}

/// The remote parent carried by incoming request headers (lower-case names),
/// for a downstream service built without the pipelens server: pass it to
/// `tracing_opentelemetry::OpenTelemetrySpanExt::set_parent` on the
/// handler's span.
pub fn context_from_headers(headers: &HashMap<String, String>) -> opentelemetry::Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(headers))
}
