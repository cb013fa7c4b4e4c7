//! One-call telemetry setup: the tracing subscriber (stdout logs, the
//! tracing-opentelemetry span bridge, the OTLP log bridge), the OTel meter
//! provider behind the Prometheus exporter, and the W3C propagator.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use opentelemetry::metrics::{Meter, MeterProvider as _};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge;
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use prometheus::{Encoder as _, TextEncoder};
use tracing_subscriber::filter::{LevelFilter, ParseError, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::Filter;
use tracing_subscriber::layer::{Layered, SubscriberExt as _};
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use super::config::{ConfigError, LogFormat, TelemetryConfig};
use super::error::TelemetryError;
use super::exemplars;
use super::feedback::{Forward, NoFeedback};
use super::json::JsonLayer;
use super::otlp;
use super::sampling;
use super::stdout::{BatchedLines, SharedLines};

/// Targets that must never feed the OTel layers: the exporters' own HTTP and
/// gRPC stacks and the OTel crates' internal logs would otherwise export
/// themselves in a loop. Targets match by prefix.
const OTEL_FEEDBACK_TARGETS: &str =
    "hyper=off,h2=off,tonic=off,tower=off,reqwest=off,opentelemetry=off";

/// The installed telemetry: gives the meter and the /metrics text, and
/// flushes every signal on [`Telemetry::shutdown`] (or on drop).
pub struct Telemetry {
    registry: prometheus::Registry,
    meter_provider: SdkMeterProvider,
    tracer_provider: Option<SdkTracerProvider>,
    logger_provider: Option<SdkLoggerProvider>,
    tracing_enabled: bool,
    shut_down: AtomicBool,
    /// The stdout writer of [`init`], flushed with the rest.
    lines: Option<Arc<BatchedLines>>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("traces_exported", &self.tracer_provider.is_some())
            .field("logs_exported", &self.logger_provider.is_some())
            .field("tracing_enabled", &self.tracing_enabled)
            .finish()
    }
}

/// Sets up telemetry from `config` and installs it globally: the tracing
/// subscriber (stdout), the OTel meter and tracer providers, and the W3C
/// trace-context propagator. Must be called inside a tokio runtime when a
/// gRPC exporter is configured.
/// Console lines carry ANSI colours only when stdout is a terminal.
///
/// Lines reach stdout through a writer thread that takes them in batches
/// (at most 20 ms after they were logged, and at [`Telemetry::flush`] and
/// shutdown): a request never waits for stdout, and lines past 4 MiB
/// waiting (a reader that stopped) are dropped and counted on
/// `pipelens_log_lines_dropped_total`.
pub fn init(config: &TelemetryConfig) -> Result<Telemetry, TelemetryError> {
    use std::io::IsTerminal as _;
    let lines =
        Arc::new(BatchedLines::stdout().map_err(|e| TelemetryError::StdoutWriter(e.to_string()))?);
    let mut telemetry = install(
        config,
        SharedLines(Arc::clone(&lines)),
        std::io::stdout().is_terminal(),
    )?;
    let counted = Arc::downgrade(&lines);
    let _dropped = telemetry
        .meter()
        .u64_observable_counter("pipelens.log.lines.dropped")
        .with_unit("{line}")
        .with_description("Log lines dropped because stdout did not take them (4 MiB were waiting)")
        .with_callback(move |o| {
            if let Some(lines) = counted.upgrade() {
                o.observe(lines.dropped(), &[]);
            }
        })
        .build();
    telemetry.lines = Some(lines);
    Ok(telemetry)
}

/// Like [`init`], with log lines written to `writer` instead of stdout (tests
/// and benchmarks use a buffer or a sink), without ANSI colours.
pub fn init_with_writer<W>(config: &TelemetryConfig, writer: W) -> Result<Telemetry, TelemetryError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    install(config, writer, false)
}

fn install<W>(config: &TelemetryConfig, writer: W, ansi: bool) -> Result<Telemetry, TelemetryError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let resource = Resource::builder()
        .with_service_name(config.service_name.clone())
        .with_attributes(
            config
                .resource_attributes
                .iter()
                .map(|(k, v)| opentelemetry::KeyValue::new(k.clone(), v.clone())),
        )
        .build();
    let (registry, meter_provider) = match &config.metrics {
        None => metrics_provider(resource.clone())?,
        Some(target) => {
            let push = otlp::metric_reader(target, config.metric_interval)?;
            provider_with(resource.clone(), Some(push))?
        }
    };
    let meter = meter_provider.meter("pipelens");

    // One level filter for every layer when stdout and the OTel layers
    // share it (the default): installed once for the whole subscriber, it
    // is decided per callsite and costs nothing per span. Different
    // directives for stdout, or directives with span or field matchers,
    // need a filter per layer. Either way the OTel layers never see the
    // exporters' own spans and events ([`NoFeedback`]).
    let shared = shared_filter(config)?;
    let own_filters = shared.is_none();
    let global = shared.unwrap_or_else(|| Targets::new().with_default(LevelFilter::TRACE));
    let feedback = feedback_excluded();
    let mut layers: Vec<BoxedLayer> = Vec::new();
    let stdout = match config.log_format {
        LogFormat::Json => JsonLayer::new(writer).boxed(),
        LogFormat::Console => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(ansi)
            .event_format(WithTraceId(tracing_subscriber::fmt::format()))
            .boxed(),
    };
    let stdout_directives = config
        .stdout_filter
        .as_deref()
        .unwrap_or(&config.log_filter);
    layers.push(filtered(stdout, own_filters.then_some(stdout_directives))?);
    let otel_directives = own_filters.then_some(config.log_filter.as_str());

    let mut tracer_provider = None;
    let mut logger_provider = None;
    let mut tail: Option<Arc<sampling::State>> = None;
    if !config.sdk_disabled {
        let mut builder = SdkTracerProvider::builder()
            .with_resource(resource.clone())
            .with_sampler(config.sampler.to_sampler());
        if let Some(target) = &config.traces {
            let policy = sampling::Policy {
                ratio: config.traces_keep_ratio,
                keep_parent: config.traces_keep_parent,
                slow: config.traces_keep_slower_than,
                limits: config.traces_hold,
            };
            let export = otlp::span_processor(target, &meter)?;
            let state = sampling::tail_sampling(policy, export, &resource, &meter);
            builder = builder.with_span_processor(sampling::TailSpans(Arc::clone(&state)));
            tail = Some(state);
        }
        let provider = builder.build();
        let tracer = provider.tracer("pipelens");
        // Spans only (`Forward::Spans`): events reach the backends as OTLP
        // log records with the span's ids (below), so copying each one into
        // its span as a span event would double their cost on the hot path.
        // No per-span extras that cost allocations and clock reads on every
        // span and enter/exit, and say little the span names and attributes
        // do not: busy/idle times, thread name and id, source location.
        let bridge = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_location(false);
        layers.push(filtered(
            NoFeedback::new(bridge, feedback.clone(), Forward::Spans),
            otel_directives,
        )?);
        opentelemetry::global::set_tracer_provider(provider.clone());
        tracer_provider = Some(provider);

        if let Some(target) = &config.logs {
            let export = otlp::log_processor(target, &meter)?;
            let builder = SdkLoggerProvider::builder().with_resource(resource.clone());
            let provider = match &tail {
                Some(state) => builder.with_log_processor(state.logs(export, &resource)),
                None => builder.with_log_processor(export),
            }
            .build();
            layers.push(filtered(
                NoFeedback::new(
                    OpenTelemetryTracingBridge::new(&provider),
                    feedback,
                    Forward::Events,
                ),
                otel_directives,
            )?);
            logger_provider = Some(provider);
        }
    }

    tracing_subscriber::registry()
        .with(global)
        .with(layers)
        .try_init()
        .map_err(|e| TelemetryError::SubscriberAlreadySet(e.to_string()))?;
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    if let Some(state) = tail {
        exemplars::install(state);
    }
    opentelemetry::global::set_meter_provider(meter_provider.clone());

    Ok(Telemetry {
        registry,
        meter_provider,
        tracing_enabled: tracer_provider.is_some(),
        tracer_provider,
        logger_provider,
        shut_down: AtomicBool::new(false),
        lines: None,
    })
}

/// The console format with the event's trace id in front, so a console line
/// can be matched with a response's `trace_id` and with the trace in Jaeger.
struct WithTraceId<F>(F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for WithTraceId<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        use opentelemetry::trace::TraceContextExt as _;
        let cx = opentelemetry::Context::current();
        let span = cx.span();
        let sc = span.span_context();
        if sc.is_valid() {
            write!(writer, "trace_id={} ", sc.trace_id())?;
        }
        self.0.format_event(ctx, writer, event)
    }
}

/// A meter provider whose only reader is the Prometheus exporter, registered
/// in a fresh registry. Used by [`init`]; tests use it without a subscriber.
pub fn metrics_provider(
    resource: Resource,
) -> Result<(prometheus::Registry, SdkMeterProvider), TelemetryError> {
    provider_with::<opentelemetry_sdk::metrics::ManualReader>(resource, None)
}

/// A meter provider behind the Prometheus exporter and, if given, a second
/// reader (the OTLP push of batch runs).
fn provider_with<R>(
    resource: Resource,
    push: Option<R>,
) -> Result<(prometheus::Registry, SdkMeterProvider), TelemetryError>
where
    R: opentelemetry_sdk::metrics::reader::MetricReader,
{
    let registry = prometheus::Registry::new();
    let exporter = opentelemetry_prometheus::exporter()
        .with_registry(registry.clone())
        .scope_info_enabled(false)
        .build()
        .map_err(|e| TelemetryError::Prometheus(e.to_string()))?;
    let mut builder = SdkMeterProvider::builder()
        .with_reader(exporter)
        .with_resource(resource);
    if let Some(push) = push {
        builder = builder.with_reader(push);
    }
    Ok((registry, builder.build()))
}

/// Encodes every metric in `registry` in the Prometheus text format 0.0.4.
pub fn encode_metrics(registry: &prometheus::Registry) -> String {
    let mut buf = Vec::with_capacity(16 * 1024);
    // Encoding into a Vec cannot fail on I/O; a malformed family is skipped
    // by the encoder's caller contract, so an error leaves what was written.
    let _ = TextEncoder::new().encode(&registry.gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}

/// The `Content-Type` of [`encode_metrics`]'s output.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A per-layer filter for `RUST_LOG`-syntax directives. Directives that
/// name only targets and levels (the usual case) become a [`Targets`]
/// filter, decided once per callsite and cached; directives with span or
/// field matchers (`[span{field=value}]`) need an [`EnvFilter`], which tracks
/// every span and takes a lock on every enter and exit of every span.
fn directive_filter(directives: &str) -> Result<BoxedFilter, ConfigError> {
    if directives.contains(['[', '{']) {
        let filter = EnvFilter::try_new(directives)
            .map_err(|e| invalid_directives(directives, e.to_string()))?;
        Ok(Box::new(filter))
    } else {
        Ok(Box::new(targets(directives)?))
    }
}

/// `directives` (targets and levels only) as a [`Targets`] filter.
fn targets(directives: &str) -> Result<Targets, ConfigError> {
    directives
        .parse()
        .map_err(|e: ParseError| invalid_directives(directives, e.to_string()))
}

fn invalid_directives(directives: &str, reason: String) -> ConfigError {
    ConfigError {
        variable: "RUST_LOG".to_owned(),
        value: directives.to_owned(),
        reason,
    }
}

/// The subscriber the layers are stacked on: the registry under the
/// global level filter.
type Base = Layered<Targets, Registry>;

/// One layer of the stack.
type BoxedLayer = Box<dyn Layer<Base> + Send + Sync>;

/// A filter of either kind, for one layer.
type BoxedFilter = Box<dyn Filter<Base> + Send + Sync + 'static>;

/// The level filter every layer shares, when they can share one: the
/// stdout filter is unset or the same as `RUST_LOG`, and the directives
/// name only targets and levels.
fn shared_filter(config: &TelemetryConfig) -> Result<Option<Targets>, ConfigError> {
    let same = config
        .stdout_filter
        .as_deref()
        .is_none_or(|f| f == config.log_filter);
    if !same || config.log_filter.contains(['[', '{']) {
        return Ok(None);
    }
    targets(&config.log_filter).map(Some)
}

/// `layer` under a level filter of its own when given `directives`, else
/// as it is (the whole subscriber shares one).
fn filtered<L>(layer: L, directives: Option<&str>) -> Result<BoxedLayer, ConfigError>
where
    L: Layer<Base> + Send + Sync + 'static,
{
    Ok(match directives {
        Some(d) => layer.with_filter(directive_filter(d)?).boxed(),
        None => layer.boxed(),
    })
}

/// Every target but the OTel feedback ones, for [`NoFeedback`].
fn feedback_excluded() -> Targets {
    format!("trace,{OTEL_FEEDBACK_TARGETS}")
        .parse()
        .expect("the feedback directives are valid")
}

impl Telemetry {
    /// The meter pipelines and the HTTP layer record into.
    pub fn meter(&self) -> Meter {
        self.meter_provider.meter("pipelens")
    }

    /// The registry behind /metrics.
    pub fn registry(&self) -> &prometheus::Registry {
        &self.registry
    }

    /// The current metrics in the Prometheus text format.
    pub fn encode_metrics(&self) -> String {
        encode_metrics(&self.registry)
    }

    /// Whether spans are created (false under `OTEL_SDK_DISABLED=true`).
    pub fn tracing_enabled(&self) -> bool {
        self.tracing_enabled
    }

    /// Exports every finished span and log record now instead of at the
    /// next batch tick. Blocks like [`Telemetry::shutdown`].
    pub fn flush(&self) -> Result<(), TelemetryError> {
        let mut errors = Vec::new();
        if let Some(p) = &self.tracer_provider {
            if let Err(e) = p.force_flush() {
                errors.push(format!("traces: {e}"));
            }
        }
        if let Some(p) = &self.logger_provider {
            if let Err(e) = p.force_flush() {
                errors.push(format!("logs: {e}"));
            }
        }
        if let Some(lines) = &self.lines {
            lines.flush();
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(TelemetryError::Flush(errors.join("; ")))
        }
    }

    /// Flushes and shuts down traces, then logs, then metrics. Blocks until
    /// the exporters finish or time out: call it from `spawn_blocking` in
    /// async code. Runs once; later calls return `Ok`.
    pub fn shutdown(&self) -> Result<(), TelemetryError> {
        if self.shut_down.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let mut errors = Vec::new();
        if let Some(p) = &self.tracer_provider {
            if let Err(e) = p.shutdown() {
                errors.push(format!("traces: {e}"));
            }
        }
        if let Some(p) = &self.logger_provider {
            if let Err(e) = p.shutdown() {
                errors.push(format!("logs: {e}"));
            }
        }
        if let Err(e) = self.meter_provider.shutdown() {
            errors.push(format!("metrics: {e}"));
        }
        if let Some(lines) = &self.lines {
            lines.flush();
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(TelemetryError::Shutdown(errors.join("; ")))
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}
