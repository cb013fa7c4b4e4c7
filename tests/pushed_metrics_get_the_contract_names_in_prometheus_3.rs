//! Batch runs push their metrics over OTLP, and Prometheus 3's OTLP receiver
//! names them with its default translation, `UnderscoreEscapingWithSuffixes`:
//! every character a Prometheus name cannot hold becomes `_` (runs of `_`
//! collapse), the unit becomes a suffix (`s` → `_seconds`, `By` → `_bytes`,
//! `x/y` → `_x_per_y`; units in braces such as `{request}` are dropped), a
//! monotonic sum ends in `_total`, a gauge of unit `1` in `_ratio`. No
//! Prometheus 3 can be installed here, so this pins that translation
//! instead: a table holds the translation below to Prometheus' own cases
//! (those of prometheus/otlptranslator's `normalizeName`), and
//! every instrument a real batch pushes (name, unit, kind,
//! attributes, as received on an OTLP endpoint) translates to the contract
//! name and labels the dashboards and rules use, with `batch_id` promoted
//! (`otlp.promote_resource_attributes` in prometheus/prometheus.yml) and
//! `job`/`instance` from `service.name`/`service.instance.id`.

#[allow(dead_code, unreachable_pub, missing_docs)]
#[path = "support/otlp.rs"]
mod otlp;
use std::collections::{BTreeMap, BTreeSet};

use opentelemetry_proto::tonic::common::v1::{any_value::Value, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::Metric;
use pipelens::names;

const BIN: &str = env!("CARGO_BIN_EXE_pipelens");

/// What Prometheus' translation distinguishes of an OTLP metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Gauge,
    MonotonicSum,
    NonMonotonicSum,
    Histogram,
}

/// Prometheus' unit names (`unitMap` of prometheus/otlptranslator).
fn main_unit(unit: &str) -> &str {
    match unit {
        "d" => "days",
        "h" => "hours",
        "min" => "minutes",
        "s" => "seconds",
        "ms" => "milliseconds",
        "us" => "microseconds",
        "ns" => "nanoseconds",
        "By" => "bytes",
        "KiBy" => "kibibytes",
        "MiBy" => "mebibytes",
        "GiBy" => "gibibytes",
        "TiBy" => "tibibytes",
        "KBy" => "kilobytes",
        "MBy" => "megabytes",
        "GBy" => "gigabytes",
        "TBy" => "terabytes",
        "m" => "meters",
        "V" => "volts",
        "A" => "amperes",
        "J" => "joules",
        "W" => "watts",
        "g" => "grams",
        "Cel" => "celsius",
        "Hz" => "hertz",
        "1" => "",
        "%" => "percent",
        other => other,
    }
}

/// Prometheus' "per" unit names (`perUnitMap`).
fn per_unit(unit: &str) -> &str {
    match unit {
        "s" => "second",
        "m" => "minute",
        "h" => "hour",
        "d" => "day",
        "w" => "week",
        "mo" => "month",
        "y" => "year",
        other => other,
    }
}

/// Splits on every character a Prometheus name cannot hold, and on `_`, so
/// runs of them collapse.
fn tokens(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == ':'))
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Prometheus 3's default OTLP metric name (`UnderscoreEscapingWithSuffixes`).
fn prometheus_name(name: &str, unit: &str, kind: Kind) -> String {
    let mut name_tokens = tokens(name);
    let (main, per) = unit.split_once('/').unwrap_or((unit, ""));
    let (main, per) = (main.trim(), per.trim());
    if !main.is_empty() && !main.contains(['{', '}']) {
        let suffix = tokens(main_unit(main)).join("_");
        if !suffix.is_empty() && !name_tokens.contains(&suffix) {
            name_tokens.push(suffix);
        }
    }
    if !per.is_empty() && !per.contains(['{', '}']) {
        let suffix = tokens(per_unit(per)).join("_");
        if !suffix.is_empty() && !name_tokens.contains(&suffix) {
            name_tokens.push("per".to_owned());
            name_tokens.push(suffix);
        }
    }
    if kind == Kind::MonotonicSum {
        name_tokens.retain(|t| t != "total");
        name_tokens.push("total".to_owned());
    }
    if unit == "1" && kind == Kind::Gauge {
        name_tokens.retain(|t| t != "ratio");
        name_tokens.push("ratio".to_owned());
    }
    let joined = name_tokens.join("_");
    if joined.starts_with(|c: char| c.is_ascii_digit()) {
        format!("_{joined}")
    } else {
        joined
    }
}

/// Prometheus 3's label name for an attribute key: invalid characters
/// become `_`.
fn prometheus_label(key: &str) -> String {
    key.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

#[test]
fn the_translation_follows_prometheus_own_cases() {
    for (name, unit, kind, expected) in [
        (
            "http.server.request.duration",
            "s",
            Kind::Histogram,
            "http_server_request_duration_seconds",
        ),
        (
            "http.server.active_requests",
            "{request}",
            Kind::NonMonotonicSum,
            "http_server_active_requests",
        ),
        (
            "requests",
            "{request}",
            Kind::MonotonicSum,
            "requests_total",
        ),
        (
            "process.network.io",
            "By",
            Kind::MonotonicSum,
            "process_network_io_bytes_total",
        ),
        (
            "system.memory.utilization",
            "1",
            Kind::Gauge,
            "system_memory_utilization_ratio",
        ),
        ("cpu.ratio", "1", Kind::Gauge, "cpu_ratio"),
        ("hits", "1", Kind::MonotonicSum, "hits_total"),
        ("speed", "m/s", Kind::Gauge, "speed_meters_per_second"),
        ("latency_seconds", "s", Kind::Histogram, "latency_seconds"),
        ("errors__total", "", Kind::MonotonicSum, "errors_total"),
        ("2xx.responses", "", Kind::Gauge, "_2xx_responses"),
    ] {
        assert_eq!(
            prometheus_name(name, unit, kind),
            expected,
            "{name} ({unit}, {kind:?})"
        );
    }
    assert_eq!(
        prometheus_label("http.request.method"),
        "http_request_method"
    );
}

/// Every instrument pipelens records, with its unit and kind as the code
/// declares them, beside the name the dashboards and rules use.
const INSTRUMENTS: &[(&str, &str, Kind, &str)] = &[
    (names::MODEL_ROLE, "", Kind::Gauge, names::MODEL_ROLE),
    (
        names::STAGE_CHAMPION,
        "",
        Kind::Gauge,
        names::STAGE_CHAMPION,
    ),
    (
        names::CHAMPION_CHANGES,
        "",
        Kind::MonotonicSum,
        names::PROM_CHAMPION_CHANGES,
    ),
    (
        names::MODEL_MEASURED_ACCURACY,
        "",
        Kind::Gauge,
        names::MODEL_MEASURED_ACCURACY,
    ),
    (
        names::MODEL_MEASURED_ERROR,
        "",
        Kind::Gauge,
        names::MODEL_MEASURED_ERROR,
    ),
    (
        names::MODEL_MEASURED_ANSWERS,
        "",
        Kind::Gauge,
        names::MODEL_MEASURED_ANSWERS,
    ),
    (
        names::MODEL_OUTPERFORMS_CHAMPION,
        "",
        Kind::Gauge,
        names::MODEL_OUTPERFORMS_CHAMPION,
    ),
    (
        names::SHADOW_SKIPPED,
        "",
        Kind::MonotonicSum,
        names::PROM_SHADOW_SKIPPED,
    ),
    (
        names::MODEL_PROMOTIONS,
        "",
        Kind::MonotonicSum,
        names::PROM_MODEL_PROMOTIONS,
    ),
    (
        names::MODEL_EXECUTIONS,
        "",
        Kind::MonotonicSum,
        names::PROM_MODEL_EXECUTIONS,
    ),
    (
        names::MODEL_EXECUTION_DURATION,
        "s",
        Kind::Histogram,
        names::PROM_MODEL_EXECUTION_DURATION,
    ),
    (
        names::MODEL_CONFIDENCE_SCORE,
        "",
        Kind::Gauge,
        names::MODEL_CONFIDENCE_SCORE,
    ),
    (
        names::MODEL_CONFIDENCE,
        "",
        Kind::Histogram,
        names::MODEL_CONFIDENCE,
    ),
    (
        names::MODEL_SELECTED,
        "",
        Kind::MonotonicSum,
        names::PROM_MODEL_SELECTED,
    ),
    (
        names::COMPONENTS_PLACED,
        "",
        Kind::MonotonicSum,
        names::PROM_COMPONENTS_PLACED,
    ),
    (
        names::PIPELINE_RUNS,
        "",
        Kind::MonotonicSum,
        names::PROM_PIPELINE_RUNS,
    ),
    (
        names::PIPELINE_DURATION,
        "s",
        Kind::Histogram,
        names::PROM_PIPELINE_DURATION,
    ),
    (
        names::MODEL_ERRORS,
        "",
        Kind::MonotonicSum,
        names::PROM_MODEL_ERRORS,
    ),
    (names::MODEL_LOADED, "", Kind::Gauge, names::MODEL_LOADED),
    (
        names::FEATURE_DRIFT_PSI,
        "",
        Kind::Gauge,
        names::FEATURE_DRIFT_PSI,
    ),
    (
        names::PREDICTION_DRIFT_PSI,
        "",
        Kind::Gauge,
        names::PREDICTION_DRIFT_PSI,
    ),
    (
        names::FEATURE_DRIFT_SAMPLES_DROPPED,
        "",
        Kind::MonotonicSum,
        "ml_feature_drift_samples_dropped_total",
    ),
    (
        names::MODEL_FEEDBACK,
        "",
        Kind::MonotonicSum,
        names::PROM_MODEL_FEEDBACK,
    ),
    (
        names::PIPELINE_FEEDBACK,
        "",
        Kind::MonotonicSum,
        names::PROM_PIPELINE_FEEDBACK,
    ),
    (
        names::MODEL_ABSOLUTE_ERROR,
        "",
        Kind::Histogram,
        names::MODEL_ABSOLUTE_ERROR,
    ),
    (
        names::HTTP_SERVER_REQUEST_DURATION,
        "s",
        Kind::Histogram,
        names::PROM_HTTP_SERVER_REQUEST_DURATION,
    ),
    (
        names::HTTP_SERVER_ACTIVE_REQUESTS,
        "{request}",
        Kind::NonMonotonicSum,
        names::PROM_HTTP_SERVER_ACTIVE_REQUESTS,
    ),
];

#[test]
fn every_instrument_translates_to_its_contract_name() {
    for (otel, unit, kind, prom) in INSTRUMENTS {
        assert_eq!(prometheus_name(otel, unit, *kind), *prom, "{otel}");
    }
    // The table covers the whole contract.
    for (prom, _) in names::PROM_CONTRACT {
        assert!(
            INSTRUMENTS.iter().any(|(_, _, _, p)| p == prom),
            "{prom} is not in the table"
        );
    }
}

fn text(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            _ => None,
        }
    })
}

/// The kind of a received metric and the attribute keys of its points.
fn kind_and_keys(metric: &Metric) -> (Kind, BTreeSet<String>) {
    fn keys<'a>(points: impl Iterator<Item = &'a [KeyValue]>) -> BTreeSet<String> {
        points.flatten().map(|kv| kv.key.clone()).collect()
    }
    match metric.data.as_ref().expect("metric data") {
        Data::Gauge(g) => (
            Kind::Gauge,
            keys(g.data_points.iter().map(|p| p.attributes.as_slice())),
        ),
        Data::Sum(s) => (
            if s.is_monotonic {
                Kind::MonotonicSum
            } else {
                Kind::NonMonotonicSum
            },
            keys(s.data_points.iter().map(|p| p.attributes.as_slice())),
        ),
        Data::Histogram(h) => (
            Kind::Histogram,
            keys(h.data_points.iter().map(|p| p.attributes.as_slice())),
        ),
        other => panic!("{}: unexpected data {other:?}", metric.name),
    }
}

/// The `promote_resource_attributes` of prometheus/prometheus.yml.
fn promoted() -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/prometheus/prometheus.yml");
    let config: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    config["otlp"]["promote_resource_attributes"]
        .as_sequence()
        .expect("prometheus.yml has no otlp.promote_resource_attributes")
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_batch_lands_under_the_contract_names_with_batch_id() {
    let (addr, received) = otlp::start_metrics_http().await;

    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("rooms.jsonl");
    std::fs::write(
        &input,
        "{\"width\": 12, \"length\": 8}\n{\"width\": 6, \"length\": 6}\n{\"width\": 9, \"length\": 5}\n",
    )
    .unwrap();
    let mut command = std::process::Command::new(BIN);
    command
        .args(["run", "--input", input.to_str().unwrap()])
        .args(["--batch-id", "nightly-7", "--shard", "1/2"])
        .env("OTEL_METRICS_EXPORTER", "otlp")
        .env(
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            format!("http://{addr}/api/v1/otlp/v1/metrics"),
        )
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_RESOURCE_ATTRIBUTES")
        .env_remove("JOB_COMPLETION_INDEX")
        .env_remove("RUST_LOG");
    let out = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");

    let promoted = promoted();
    assert!(promoted.iter().any(|a| a == "batch_id"), "{promoted:?}");
    let requests = received.lock().unwrap().clone();
    assert!(!requests.is_empty(), "no metrics pushed");
    // Prometheus name -> label names, as Prometheus 3 would store them.
    let mut series: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for rm in requests.iter().flat_map(|r| &r.resource_metrics) {
        let resource = &rm.resource.as_ref().unwrap().attributes;
        // job and instance come from service.name and service.instance.id;
        // promoted attributes become labels of every series.
        let mut resource_labels = BTreeSet::new();
        assert_eq!(text(resource, "service.name").as_deref(), Some("pipelens"));
        resource_labels.insert("job".to_owned());
        assert_eq!(
            text(resource, "service.instance.id").as_deref(),
            Some("nightly-7-shard-1"),
            "a shard has an instance of its own"
        );
        resource_labels.insert("instance".to_owned());
        for attr in &promoted {
            if text(resource, attr).is_some() {
                resource_labels.insert(prometheus_label(attr));
            }
        }
        assert_eq!(text(resource, "batch_id").as_deref(), Some("nightly-7"));
        assert_eq!(text(resource, "batch_shard").as_deref(), Some("1/2"));
        for metric in rm.scope_metrics.iter().flat_map(|s| &s.metrics) {
            if metric.name.starts_with("otel.sdk.") {
                continue; // telemetry's own health, not part of the contract
            }
            let (kind, keys) = kind_and_keys(metric);
            let Some((_, unit, declared, prom)) =
                INSTRUMENTS.iter().find(|(otel, ..)| *otel == metric.name)
            else {
                panic!(
                    "{} is pushed but not in the table: add it with its contract name",
                    metric.name
                );
            };
            assert_eq!(metric.unit, *unit, "{}: unit", metric.name);
            assert_eq!(kind, *declared, "{}: kind", metric.name);
            let name = prometheus_name(&metric.name, &metric.unit, kind);
            assert_eq!(name, *prom, "{}", metric.name);
            let labels = series.entry(name).or_default();
            labels.extend(keys.iter().map(|k| prometheus_label(k)));
            labels.extend(resource_labels.iter().cloned());
        }
    }
    for (prom, labels) in names::PROM_CONTRACT {
        let Some(got) = series.get(*prom) else {
            assert!(
                prom.starts_with("http_") || prom.contains("feedback") || prom.contains("drift"),
                "{prom} was not pushed by the batch"
            );
            continue;
        };
        let mut expected: BTreeSet<String> = labels.iter().map(|l| (*l).to_owned()).collect();
        // A shard's series also carry its batch_shard (a whole batch's do not).
        expected.extend(["job", "instance", "batch_id", "batch_shard"].map(str::to_owned));
        assert_eq!(got, &expected, "{prom}: labels in Prometheus 3");
    }
    for name in [
        names::PROM_PIPELINE_RUNS,
        names::PROM_MODEL_EXECUTIONS,
        names::PROM_PIPELINE_DURATION,
        names::MODEL_LOADED,
    ] {
        assert!(series.contains_key(name), "{name} not pushed: {series:?}");
    }
}
