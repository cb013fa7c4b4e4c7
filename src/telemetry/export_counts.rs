//! Counts what the OTLP exporters deliver and lose, so a dead Jaeger or Loki
//! shows on /metrics instead of only in the SDK's internal log. Names follow
//! the OpenTelemetry SDK self-observability conventions:
//! `otel.sdk.exporter.span.exported` and `otel.sdk.exporter.log.exported`
//! (`otel_sdk_exporter_span_exported_total` on /metrics), with `error.type`
//! on the batches that failed.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::metrics::{Counter, Meter};
use opentelemetry::KeyValue;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::logs::{LogBatch, LogExporter};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use opentelemetry_sdk::Resource;

use super::queue_gate::Gate;

/// An exporter wrapper that counts items per export outcome.
pub(crate) struct Counted<E> {
    inner: E,
    /// The queue gate in front of the batch processor, told what left.
    gate: Arc<Gate>,
    exported: Counter<u64>,
    /// `otel.component.type`, then the same with each `error.type`.
    ok: [KeyValue; 1],
    failed: [[KeyValue; 2]; 3],
}

impl<E> fmt::Debug for Counted<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Counted")
            .field("component", &self.ok[0].value)
            .finish()
    }
}

impl<E> Counted<E> {
    /// Wraps `inner`; `signal` is `span` or `log`, `component` names the
    /// exporter (`otlp_grpc_span_exporter`, ...).
    pub(crate) fn new(
        inner: E,
        gate: Arc<Gate>,
        meter: &Meter,
        signal: &str,
        component: &'static str,
    ) -> Self {
        let unit = if signal == "span" {
            "{span}"
        } else {
            "{log_record}"
        };
        let exported = meter
            .u64_counter(format!("otel.sdk.exporter.{signal}.exported"))
            .with_unit(unit)
            .with_description("Items the exporter sent; with error.type, the ones it lost")
            .build();
        let component = KeyValue::new("otel.component.type", component);
        let failed = ["timeout", "export_failed", "already_shutdown"]
            .map(|e| [component.clone(), KeyValue::new("error.type", e)]);
        Self {
            inner,
            gate,
            exported,
            ok: [component],
            failed,
        }
    }

    fn count(&self, items: u64, result: &OTelSdkResult) {
        self.gate.handed_to_exporter(items as usize);
        let attrs: &[KeyValue] = match result {
            Ok(()) => &self.ok,
            Err(OTelSdkError::Timeout(_)) => &self.failed[0],
            Err(OTelSdkError::AlreadyShutdown) => &self.failed[2],
            Err(_) => &self.failed[1],
        };
        self.exported.add(items, attrs);
    }
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let items = batch.len() as u64;
        let result = self.inner.export(batch).await;
        self.count(items, &result);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

impl<E: LogExporter> LogExporter for Counted<E> {
    async fn export(&self, batch: LogBatch<'_>) -> OTelSdkResult {
        let items = batch.iter().count() as u64;
        let result = self.inner.export(batch).await;
        self.count(items, &result);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}
