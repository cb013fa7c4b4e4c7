//! Telemetry configuration, read from the OpenTelemetry environment variables
//! and `PIPELENS_LOG_FORMAT`, or set explicitly.
//!
//! Precedence: a value set on [`TelemetryConfig`] wins over the environment;
//! a signal-specific variable (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) wins over
//! the generic one (`OTEL_EXPORTER_OTLP_ENDPOINT`); with nothing set, OTLP
//! export is off and only stdout logs and /metrics are on.

use std::collections::HashMap;

use opentelemetry_sdk::trace::Sampler;

use super::sampling::{HoldLimits, KeepParent, SlowThreshold};

/// How log events are printed on stdout.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Console,
    /// One JSON object per line, with `trace_id` and `span_id`.
    Json,
}

/// The OTLP wire protocol of one signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP over gRPC (usually port 4317).
    Grpc,
    /// OTLP over HTTP with protobuf bodies (usually port 4318).
    HttpProtobuf,
}

/// Where and how one signal is exported over OTLP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpTarget {
    /// Full endpoint URL; for HTTP it includes the signal path (`/v1/traces`).
    pub endpoint: String,
    /// Wire protocol.
    pub protocol: Protocol,
}

/// A configuration value that cannot be used, named by its variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {variable}={value:?}: {reason}")]
pub struct ConfigError {
    /// The environment variable (or setting) at fault.
    pub variable: String,
    /// The rejected value.
    pub value: String,
    /// What is expected instead.
    pub reason: String,
}

/// Everything [`crate::telemetry::init`] needs.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// `service.name` of every signal (`OTEL_SERVICE_NAME`, default `pipelens`).
    pub service_name: String,
    /// Stdout log format (`PIPELENS_LOG_FORMAT`: `console` or `json`).
    pub log_format: LogFormat,
    /// Event and span filter in `RUST_LOG` syntax (default `info`, with the
    /// OTel crates' own start-up chatter at `warn`).
    pub log_filter: String,
    /// A stricter filter for the stdout lines only, if set: spans and OTLP
    /// log records keep `log_filter`. Batch runs use it to keep one line per
    /// run off the terminal while the traces and logs still reach the
    /// backends.
    pub stdout_filter: Option<String>,
    /// OTLP trace export, if any.
    pub traces: Option<OtlpTarget>,
    /// OTLP log export, if any.
    pub logs: Option<OtlpTarget>,
    /// OTLP metric push, if any: only with `OTEL_METRICS_EXPORTER=otlp`
    /// (the default, `prometheus`, is the pull endpoint /metrics, which
    /// stays on either way). For batch jobs, which end before a scrape.
    pub metrics: Option<OtlpTarget>,
    /// How often pushed metrics are exported (`OTEL_METRIC_EXPORT_INTERVAL`
    /// in milliseconds, default 60 s); shutdown pushes a last time.
    pub metric_interval: std::time::Duration,
    /// Resource attributes added to every signal, beside
    /// `OTEL_RESOURCE_ATTRIBUTES` (a batch's `batch_id`).
    pub resource_attributes: Vec<(String, String)>,
    /// Root sampler (`OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`,
    /// default `parentbased_always_on`).
    pub sampler: SamplerConfig,
    /// `OTEL_SDK_DISABLED=true`: no spans, no OTLP export; stdout logs and
    /// /metrics stay on because the service's health depends on them.
    pub sdk_disabled: bool,
    /// Tail sampling: the random share of the traces that are neither
    /// failed, slow nor sampled upstream (`PIPELENS_TRACES_KEEP_RATIO`,
    /// 0.0–1.0, default 1.0: keep everything). Applies after the head
    /// sampler ([`TelemetryConfig::sampler`]) and only to exported traces.
    pub traces_keep_ratio: f64,
    /// Tail sampling: runs slower than this are kept
    /// (`PIPELENS_TRACES_KEEP_SLOWER_THAN`: `250ms`, `1s`, `p99`, `p95` or
    /// `off`; default `p99`, each pipeline's own recent 99th percentile).
    pub traces_keep_slower_than: SlowThreshold,
    /// Tail sampling: what an upstream's sampled flag keeps
    /// (`PIPELENS_TRACES_KEEP_PARENT`: `threshold`, the default, `always`
    /// or `never`; see [`KeepParent`]).
    pub traces_keep_parent: KeepParent,
    /// Tail sampling: how much is held while traces run
    /// (`PIPELENS_TRACES_MAX_HELD`, `PIPELENS_TRACES_MAX_SPANS`,
    /// `PIPELENS_TRACES_HOLD_TIMEOUT`).
    pub traces_hold: HoldLimits,
}

/// A sampler named as `OTEL_TRACES_SAMPLER` names them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerConfig {
    /// `always_on`
    AlwaysOn,
    /// `always_off`
    AlwaysOff,
    /// `traceidratio` with its ratio.
    TraceIdRatio(f64),
    /// `parentbased_always_on` (the default).
    ParentBasedAlwaysOn,
    /// `parentbased_always_off`
    ParentBasedAlwaysOff,
    /// `parentbased_traceidratio` with its ratio.
    ParentBasedTraceIdRatio(f64),
}

impl SamplerConfig {
    pub(crate) fn to_sampler(self) -> Sampler {
        match self {
            Self::AlwaysOn => Sampler::AlwaysOn,
            Self::AlwaysOff => Sampler::AlwaysOff,
            Self::TraceIdRatio(r) => Sampler::TraceIdRatioBased(r),
            Self::ParentBasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            Self::ParentBasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
            Self::ParentBasedTraceIdRatio(r) => {
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(r)))
            }
        }
    }
}

impl Default for TelemetryConfig {
    /// The embedded default: console logs at `info`, /metrics on, no OTLP.
    fn default() -> Self {
        Self {
            service_name: "pipelens".to_owned(),
            log_format: LogFormat::Console,
            log_filter: "info,opentelemetry=warn".to_owned(),
            stdout_filter: None,
            traces: None,
            logs: None,
            metrics: None,
            metric_interval: std::time::Duration::from_secs(60),
            resource_attributes: Vec::new(),
            sampler: SamplerConfig::ParentBasedAlwaysOn,
            sdk_disabled: false,
            traces_keep_ratio: 1.0,
            traces_keep_slower_than: SlowThreshold::default(),
            traces_keep_parent: KeepParent::default(),
            traces_hold: HoldLimits::default(),
        }
    }
}

impl TelemetryConfig {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(&std::env::vars().collect())
    }

    /// Reads the configuration from a map of variables (the environment, in
    /// tests a literal map). Empty values count as unset, as the spec asks.
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let get = |k: &str| vars.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
        let mut config = Self::default();
        if let Some(name) = get("OTEL_SERVICE_NAME") {
            config.service_name = name.to_owned();
        }
        if let Some(format) = get("PIPELENS_LOG_FORMAT") {
            config.log_format = match format.to_ascii_lowercase().as_str() {
                "json" => LogFormat::Json,
                "console" | "text" | "pretty" => LogFormat::Console,
                _ => {
                    return Err(invalid(
                        "PIPELENS_LOG_FORMAT",
                        format,
                        "expected json or console",
                    ))
                }
            };
        }
        if let Some(filter) = get("RUST_LOG") {
            config.log_filter = filter.to_owned();
        }
        if let Some(disabled) = get("OTEL_SDK_DISABLED") {
            config.sdk_disabled = parse_bool("OTEL_SDK_DISABLED", disabled)?;
        }
        config.sampler = sampler_from(get("OTEL_TRACES_SAMPLER"), get("OTEL_TRACES_SAMPLER_ARG"))?;
        config.traces = otlp_target(&get, "TRACES", "OTEL_TRACES_EXPORTER", "/v1/traces")?;
        tail_sampling_from(&get, &mut config)?;
        config.logs = otlp_target(&get, "LOGS", "OTEL_LOGS_EXPORTER", "/v1/logs")?;
        config.metrics = match get("OTEL_METRICS_EXPORTER") {
            None | Some("prometheus") | Some("none") => None,
            Some("otlp") => Some(
                otlp_target(&get, "METRICS", "OTEL_METRICS_EXPORTER", "/v1/metrics")?.ok_or_else(
                    || {
                        invalid(
                            "OTEL_METRICS_EXPORTER",
                            "otlp",
                            "needs OTEL_EXPORTER_OTLP_METRICS_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT",
                        )
                    },
                )?,
            ),
            Some(other) => {
                return Err(invalid(
                    "OTEL_METRICS_EXPORTER",
                    other,
                    "expected prometheus, otlp or none",
                ))
            }
        };
        if let Some(ms) = get("OTEL_METRIC_EXPORT_INTERVAL") {
            config.metric_interval = match ms.parse::<u64>() {
                Ok(ms) if ms > 0 => std::time::Duration::from_millis(ms),
                _ => {
                    return Err(invalid(
                        "OTEL_METRIC_EXPORT_INTERVAL",
                        ms,
                        "expected a positive number of milliseconds",
                    ))
                }
            };
        }
        Ok(config)
    }
}

/// Reads the `PIPELENS_TRACES_*` tail-sampling variables into `config`.
fn tail_sampling_from<'a>(
    get: &impl Fn(&str) -> Option<&'a str>,
    config: &mut TelemetryConfig,
) -> Result<(), ConfigError> {
    const RATIO: &str = "PIPELENS_TRACES_KEEP_RATIO";
    const SLOWER: &str = "PIPELENS_TRACES_KEEP_SLOWER_THAN";
    if let Some(r) = get(RATIO) {
        config.traces_keep_ratio = match r.parse::<f64>() {
            Ok(r) if (0.0..=1.0).contains(&r) => r,
            _ => return Err(invalid(RATIO, r, "expected a ratio between 0.0 and 1.0")),
        };
    }
    if let Some(t) = get(SLOWER) {
        config.traces_keep_slower_than =
            SlowThreshold::parse(t).map_err(|reason| invalid(SLOWER, t, &reason))?;
    }
    const PARENT: &str = "PIPELENS_TRACES_KEEP_PARENT";
    if let Some(p) = get(PARENT) {
        config.traces_keep_parent =
            KeepParent::parse(p).map_err(|reason| invalid(PARENT, p, &reason))?;
    }
    let positive = |var: &str| -> Result<Option<u64>, ConfigError> {
        get(var)
            .map(|v| match v.parse::<u64>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(invalid(var, v, "expected a positive whole number")),
            })
            .transpose()
    };
    if let Some(n) = positive("PIPELENS_TRACES_MAX_HELD")? {
        config.traces_hold.max_traces = n as usize;
    }
    if let Some(n) = positive("PIPELENS_TRACES_MAX_SPANS")? {
        config.traces_hold.max_items_per_trace = n as usize;
    }
    if let Some(n) = positive("PIPELENS_TRACES_HOLD_TIMEOUT")? {
        config.traces_hold.timeout = std::time::Duration::from_secs(n);
    }
    Ok(())
}

fn invalid(variable: &str, value: &str, reason: &str) -> ConfigError {
    ConfigError {
        variable: variable.to_owned(),
        value: value.to_owned(),
        reason: reason.to_owned(),
    }
}

fn parse_bool(variable: &str, value: &str) -> Result<bool, ConfigError> {
    match value.to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(invalid(variable, value, "expected true or false")),
    }
}

fn sampler_from(name: Option<&str>, arg: Option<&str>) -> Result<SamplerConfig, ConfigError> {
    let ratio = || -> Result<f64, ConfigError> {
        match arg {
            None => Ok(1.0),
            Some(a) => match a.parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                _ => Err(invalid(
                    "OTEL_TRACES_SAMPLER_ARG",
                    a,
                    "expected a ratio between 0 and 1",
                )),
            },
        }
    };
    Ok(match name.map(str::to_ascii_lowercase).as_deref() {
        None | Some("parentbased_always_on") => SamplerConfig::ParentBasedAlwaysOn,
        Some("always_on") => SamplerConfig::AlwaysOn,
        Some("always_off") => SamplerConfig::AlwaysOff,
        Some("traceidratio") => SamplerConfig::TraceIdRatio(ratio()?),
        Some("parentbased_always_off") => SamplerConfig::ParentBasedAlwaysOff,
        Some("parentbased_traceidratio") => SamplerConfig::ParentBasedTraceIdRatio(ratio()?),
        Some(_) => {
            return Err(invalid(
                "OTEL_TRACES_SAMPLER",
                name.unwrap_or_default(),
                "expected always_on, always_off, traceidratio, parentbased_always_on, \
                 parentbased_always_off or parentbased_traceidratio",
            ))
        }
    })
}

/// Resolves one signal's OTLP target: signal-specific variables first, then
/// the generic ones; `OTEL_<SIGNAL>_EXPORTER=none` turns the signal off.
fn otlp_target<'a>(
    get: &impl Fn(&str) -> Option<&'a str>,
    signal: &str,
    exporter_var: &str,
    http_path: &str,
) -> Result<Option<OtlpTarget>, ConfigError> {
    match get(exporter_var) {
        None | Some("otlp") => {}
        Some("none") => return Ok(None),
        Some(other) => return Err(invalid(exporter_var, other, "expected otlp or none")),
    }
    let protocol_var = format!("OTEL_EXPORTER_OTLP_{signal}_PROTOCOL");
    let (protocol_name, protocol_source) = match get(&protocol_var) {
        Some(p) => (p, protocol_var.as_str()),
        None => (
            get("OTEL_EXPORTER_OTLP_PROTOCOL").unwrap_or("http/protobuf"),
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
    };
    let protocol = match protocol_name {
        "grpc" => Protocol::Grpc,
        "http/protobuf" => Protocol::HttpProtobuf,
        other => {
            return Err(invalid(
                protocol_source,
                other,
                "expected grpc or http/protobuf",
            ))
        }
    };
    let specific_var = format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT");
    let (endpoint, var) = if let Some(e) = get(&specific_var) {
        (e.to_owned(), specific_var)
    } else if let Some(e) = get("OTEL_EXPORTER_OTLP_ENDPOINT") {
        let e = match protocol {
            Protocol::Grpc => e.to_owned(),
            Protocol::HttpProtobuf => format!("{}{http_path}", e.trim_end_matches('/')),
        };
        (e, "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned())
    } else {
        return Ok(None);
    };
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
        return Err(invalid(
            &var,
            &endpoint,
            "expected a URL starting with http:// or https://",
        ));
    }
    Ok(Some(OtlpTarget { endpoint, protocol }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Result<TelemetryConfig, ConfigError> {
        TelemetryConfig::from_vars(
            &pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn metrics_are_pushed_only_when_asked_for() {
        let c = config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")]).unwrap();
        assert_eq!(c.metrics, None, "the generic endpoint alone keeps pull");
        let c = config(&[
            ("OTEL_METRICS_EXPORTER", "otlp"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "5000"),
        ])
        .unwrap();
        assert_eq!(c.metrics.unwrap().endpoint, "http://c:4318/v1/metrics");
        assert_eq!(c.metric_interval, std::time::Duration::from_secs(5));
        let c = config(&[
            ("OTEL_METRICS_EXPORTER", "otlp"),
            (
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                "http://prometheus:9090/api/v1/otlp/v1/metrics",
            ),
        ])
        .unwrap();
        assert_eq!(
            c.metrics.unwrap().endpoint,
            "http://prometheus:9090/api/v1/otlp/v1/metrics"
        );
        for (pairs, variable) in [
            (
                vec![("OTEL_METRICS_EXPORTER", "otlp")],
                "OTEL_METRICS_EXPORTER",
            ),
            (
                vec![("OTEL_METRICS_EXPORTER", "statsd")],
                "OTEL_METRICS_EXPORTER",
            ),
            (
                vec![("OTEL_METRIC_EXPORT_INTERVAL", "soon")],
                "OTEL_METRIC_EXPORT_INTERVAL",
            ),
        ] {
            assert_eq!(config(&pairs).unwrap_err().variable, variable);
        }
    }

    #[test]
    fn nothing_set_is_the_embedded_default() {
        let c = config(&[]).unwrap();
        assert_eq!(c.service_name, "pipelens");
        assert_eq!(c.log_format, LogFormat::Console);
        assert_eq!(c.traces, None);
        assert_eq!(c.logs, None);
        assert_eq!(c.sampler, SamplerConfig::ParentBasedAlwaysOn);
        assert!(!c.sdk_disabled);
    }

    #[test]
    fn generic_http_endpoint_gets_the_signal_path() {
        let c = config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")]).unwrap();
        assert_eq!(
            c.traces.unwrap().endpoint,
            "http://collector:4318/v1/traces"
        );
        assert_eq!(c.logs.unwrap().endpoint, "http://collector:4318/v1/logs");
    }

    #[test]
    fn signal_specific_variables_split_traces_and_logs() {
        let c = config(&[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://jaeger:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
            (
                "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
                "http://loki:3100/otlp/v1/logs",
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ])
        .unwrap();
        assert_eq!(
            c.traces,
            Some(OtlpTarget {
                endpoint: "http://jaeger:4317".into(),
                protocol: Protocol::Grpc
            })
        );
        assert_eq!(
            c.logs,
            Some(OtlpTarget {
                endpoint: "http://loki:3100/otlp/v1/logs".into(),
                protocol: Protocol::HttpProtobuf
            })
        );
    }

    #[test]
    fn exporter_none_turns_a_signal_off() {
        let c = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_LOGS_EXPORTER", "none"),
        ])
        .unwrap();
        assert!(c.traces.is_some());
        assert!(c.logs.is_none());
    }

    #[test]
    fn bad_values_name_their_variable() {
        let cases = [
            ("PIPELENS_LOG_FORMAT", "xml"),
            ("OTEL_SDK_DISABLED", "yes"),
            ("OTEL_TRACES_SAMPLER", "sometimes"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("PIPELENS_TRACES_KEEP_RATIO", "1.5"),
            ("PIPELENS_TRACES_KEEP_RATIO", "some"),
            ("PIPELENS_TRACES_KEEP_SLOWER_THAN", "fast"),
            ("PIPELENS_TRACES_KEEP_PARENT", "sometimes"),
            ("PIPELENS_TRACES_MAX_HELD", "0"),
            ("PIPELENS_TRACES_MAX_SPANS", "-1"),
            ("PIPELENS_TRACES_HOLD_TIMEOUT", "soon"),
        ];
        for (var, value) in cases {
            let err = config(&[
                (var, value),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ])
            .unwrap_err();
            assert_eq!(err.variable, var, "{err}");
            assert!(err.to_string().contains(var), "{err}");
        }
        let err = config(&[
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "1.5"),
        ])
        .unwrap_err();
        assert_eq!(err.variable, "OTEL_TRACES_SAMPLER_ARG");
        let err = config(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "jaeger:4317")]).unwrap_err();
        assert_eq!(err.variable, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    }

    #[test]
    fn tail_sampling_is_read_and_keeps_everything_by_default() {
        let d = config(&[]).unwrap();
        assert_eq!(d.traces_keep_ratio, 1.0);
        assert_eq!(d.traces_keep_slower_than, SlowThreshold::Quantile(0.99));
        assert_eq!(d.traces_keep_parent, KeepParent::Threshold);
        let always = config(&[("PIPELENS_TRACES_KEEP_PARENT", "always")]).unwrap();
        assert_eq!(always.traces_keep_parent, KeepParent::Always);
        let c = config(&[
            ("PIPELENS_TRACES_KEEP_RATIO", "0.1"),
            ("PIPELENS_TRACES_KEEP_SLOWER_THAN", "250ms"),
            ("PIPELENS_TRACES_MAX_HELD", "100"),
            ("PIPELENS_TRACES_MAX_SPANS", "64"),
            ("PIPELENS_TRACES_HOLD_TIMEOUT", "5"),
        ])
        .unwrap();
        assert_eq!(c.traces_keep_ratio, 0.1);
        assert_eq!(
            c.traces_keep_slower_than,
            SlowThreshold::Duration(std::time::Duration::from_millis(250))
        );
        assert_eq!(
            c.traces_hold,
            HoldLimits {
                max_traces: 100,
                max_items_per_trace: 64,
                timeout: std::time::Duration::from_secs(5),
            }
        );
    }

    #[test]
    fn sampler_and_service_name_are_read() {
        let c = config(&[
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ("OTEL_SERVICE_NAME", "planner"),
            ("PIPELENS_LOG_FORMAT", "JSON"),
            ("OTEL_SDK_DISABLED", "true"),
        ])
        .unwrap();
        assert_eq!(c.sampler, SamplerConfig::ParentBasedTraceIdRatio(0.25));
        assert_eq!(c.service_name, "planner");
        assert_eq!(c.log_format, LogFormat::Json);
        assert!(c.sdk_disabled);
    }
}
