//! OTLP export of spans and log records (cargo feature `otlp`): gRPC or
//! HTTP/protobuf exporters behind the SDK's batch processors, each exporter
//! wrapped so what it delivers and loses is counted on /metrics. Without the
//! feature, configuring an endpoint is an error that says so.

use opentelemetry::metrics::Meter;
use opentelemetry_sdk::logs::BatchLogProcessor;
use opentelemetry_sdk::trace::BatchSpanProcessor;

use super::config::OtlpTarget;
use super::error::TelemetryError;
#[cfg(feature = "otlp")]
use super::queue_gate::{queue_size, Gate, Gated};
#[cfg(feature = "otlp")]
use std::sync::Arc;

#[cfg(feature = "otlp")]
mod exporters {
    use std::time::Duration;

    use opentelemetry_otlp::WithExportConfig as _;

    use super::super::config::{OtlpTarget, Protocol};
    use super::super::error::TelemetryError;

    /// How long one OTLP export may take before it is given up.
    const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

    fn failed(
        signal: &'static str,
        target: &OtlpTarget,
    ) -> impl FnOnce(opentelemetry_otlp::ExporterBuildError) -> TelemetryError {
        let endpoint = target.endpoint.clone();
        move |source| TelemetryError::Exporter {
            signal,
            endpoint,
            source: Box::new(source),
        }
    }

    /// Builds one signal's exporter the same way whatever its type: gRPC
    /// or HTTP/protobuf to the target's endpoint, with the export timeout.
    macro_rules! exporter {
        ($exporter:ty, $signal:literal, $target:expr) => {{
            let target: &OtlpTarget = $target;
            let builder = <$exporter>::builder();
            match target.protocol {
                Protocol::Grpc => builder
                    .with_tonic()
                    .with_endpoint(&target.endpoint)
                    .with_timeout(EXPORT_TIMEOUT)
                    .build(),
                Protocol::HttpProtobuf => builder
                    .with_http()
                    .with_endpoint(&target.endpoint)
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                    .with_timeout(EXPORT_TIMEOUT)
                    .build(),
            }
            .map_err(failed($signal, target))
        }};
    }

    pub(super) fn span_exporter(
        target: &OtlpTarget,
    ) -> Result<opentelemetry_otlp::SpanExporter, TelemetryError> {
        exporter!(opentelemetry_otlp::SpanExporter, "traces", target)
    }

    pub(super) fn log_exporter(
        target: &OtlpTarget,
    ) -> Result<opentelemetry_otlp::LogExporter, TelemetryError> {
        exporter!(opentelemetry_otlp::LogExporter, "logs", target)
    }

    pub(super) fn metric_exporter(
        target: &OtlpTarget,
    ) -> Result<opentelemetry_otlp::MetricExporter, TelemetryError> {
        exporter!(opentelemetry_otlp::MetricExporter, "metrics", target)
    }

    /// The `otel.component.type` of an exporter.
    pub(super) fn component(signal: &str, target: &OtlpTarget) -> &'static str {
        match (signal, target.protocol) {
            ("span", Protocol::Grpc) => "otlp_grpc_span_exporter",
            ("span", Protocol::HttpProtobuf) => "otlp_http_span_exporter",
            (_, Protocol::Grpc) => "otlp_grpc_log_exporter",
            (_, Protocol::HttpProtobuf) => "otlp_http_log_exporter",
        }
    }
}

/// The batch processor that exports spans to `target`, counting what it
/// exports and what it drops. Queue size, batch size and delay follow
/// `OTEL_BSP_*`.
#[cfg(feature = "otlp")]
pub(crate) fn span_processor(
    target: &OtlpTarget,
    meter: &Meter,
) -> Result<Gated<BatchSpanProcessor>, TelemetryError> {
    use super::export_counts::Counted;
    use opentelemetry_sdk::trace::BatchConfigBuilder;
    let exporter = exporters::span_exporter(target)?;
    let component = exporters::component("span", target);
    let capacity = queue_size("span");
    let gate = Gate::new(meter, "span", "batching_span_processor", capacity);
    let exporter = Counted::new(exporter, Arc::clone(&gate), meter, "span", component);
    // The SDK reads the other OTEL_BSP_* variables itself; the queue size
    // is set explicitly so the gate and the queue agree.
    let config = BatchConfigBuilder::default()
        .with_max_queue_size(capacity)
        .build();
    let processor = BatchSpanProcessor::builder(exporter)
        .with_batch_config(config)
        .build();
    Ok(Gated::new(processor, gate))
}

/// The batch processor that exports log records to `target`, counting what
/// it exports and what it drops. Queue size, batch size and delay follow
/// `OTEL_BLRP_*`.
#[cfg(feature = "otlp")]
pub(crate) fn log_processor(
    target: &OtlpTarget,
    meter: &Meter,
) -> Result<Gated<BatchLogProcessor>, TelemetryError> {
    use super::export_counts::Counted;
    use opentelemetry_sdk::logs::BatchConfigBuilder;
    let exporter = exporters::log_exporter(target)?;
    let component = exporters::component("log", target);
    let capacity = queue_size("log");
    let gate = Gate::new(meter, "log", "batching_log_processor", capacity);
    let exporter = Counted::new(exporter, Arc::clone(&gate), meter, "log", component);
    let config = BatchConfigBuilder::default()
        .with_max_queue_size(capacity)
        .build();
    let processor = BatchLogProcessor::builder(exporter)
        .with_batch_config(config)
        .build();
    Ok(Gated::new(processor, gate))
}

/// A reader that pushes every metric to `target` every `interval` (and at
/// shutdown), cumulative as Prometheus' OTLP receiver expects, on a thread
/// of its own.
#[cfg(feature = "otlp")]
pub(crate) fn metric_reader(
    target: &OtlpTarget,
    interval: std::time::Duration,
) -> Result<
    opentelemetry_sdk::metrics::PeriodicReader<opentelemetry_otlp::MetricExporter>,
    TelemetryError,
> {
    let exporter = exporters::metric_exporter(target)?;
    Ok(
        opentelemetry_sdk::metrics::PeriodicReader::builder(exporter)
            .with_interval(interval)
            .build(),
    )
}

/// Without the `otlp` feature there is no exporter to build.
#[cfg(not(feature = "otlp"))]
pub(crate) fn metric_reader(
    target: &OtlpTarget,
    _interval: std::time::Duration,
) -> Result<opentelemetry_sdk::metrics::ManualReader, TelemetryError> {
    Err(TelemetryError::OtlpNotBuilt {
        signal: "metrics",
        endpoint: target.endpoint.clone(),
    })
}

/// Without the `otlp` feature there is no exporter to build.
#[cfg(not(feature = "otlp"))]
pub(crate) fn span_processor(
    target: &OtlpTarget,
    _meter: &Meter,
) -> Result<BatchSpanProcessor, TelemetryError> {
    Err(TelemetryError::OtlpNotBuilt {
        signal: "traces",
        endpoint: target.endpoint.clone(),
    })
}

/// Without the `otlp` feature there is no exporter to build.
#[cfg(not(feature = "otlp"))]
pub(crate) fn log_processor(
    target: &OtlpTarget,
    _meter: &Meter,
) -> Result<BatchLogProcessor, TelemetryError> {
    Err(TelemetryError::OtlpNotBuilt {
        signal: "logs",
        endpoint: target.endpoint.clone(),
    })
}
