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

    pub(super) fn span_exporter(
        target: &OtlpTarget,
    ) -> Result<opentelemetry_otlp::SpanExporter, TelemetryError> {
        let builder = opentelemetry_otlp::SpanExporter::builder();
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
        .map_err(failed("traces", target))
    }

    pub(super) fn log_exporter(
        target: &OtlpTarget,
    ) -> Result<opentelemetry_otlp::LogExporter, TelemetryError> {
        let builder = opentelemetry_otlp::LogExporter::builder();
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
        .map_err(failed("logs", target))
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

/// The batch processor that exports spans to `target`, counting them.
#[cfg(feature = "otlp")]
pub(crate) fn span_processor(
    target: &OtlpTarget,
    meter: &Meter,
) -> Result<BatchSpanProcessor, TelemetryError> {
    use super::export_counts::Counted;
    let exporter = exporters::span_exporter(target)?;
    let component = exporters::component("span", target);
    Ok(BatchSpanProcessor::builder(Counted::new(exporter, meter, "span", component)).build())
}

/// The batch processor that exports log records to `target`, counting them.
#[cfg(feature = "otlp")]
pub(crate) fn log_processor(
    target: &OtlpTarget,
    meter: &Meter,
) -> Result<BatchLogProcessor, TelemetryError> {
    use super::export_counts::Counted;
    let exporter = exporters::log_exporter(target)?;
    let component = exporters::component("log", target);
    Ok(BatchLogProcessor::builder(Counted::new(exporter, meter, "log", component)).build())
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
