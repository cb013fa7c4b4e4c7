//! The SLO spec: Sloth's `prometheus/v1` format, read strictly (unknown
//! fields are errors), plus an `sli.pipelens` block of shortcuts for
//! pipelens' own metrics, validated into [`Slo`]s ready to generate from.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_yaml_ng::Value;

use super::sli::{self, Sli};

/// The only spec version read: Sloth's.
pub const VERSION: &str = "prometheus/v1";

/// Why a spec was refused. Every message names where: the top-level field,
/// or the SLO and its field.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The text is not YAML at all.
    #[error("the spec is not valid YAML: {0}")]
    NotYaml(String),
    /// A top-level field is wrong.
    #[error("{field}: {message}")]
    Spec {
        /// The field, such as `version`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// A field of one SLO is wrong.
    #[error("SLO {slo:?}: {field}: {message}")]
    Slo {
        /// The SLO's name (or `slos[i]` when it has none).
        slo: String,
        /// The field within the SLO, such as `objective` or
        /// `sli.events.error_query`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
}

/// The spec's top level, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecFile {
    version: String,
    service: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// Sloth's SLO plugins: not supported, refused with a clear message.
    #[serde(default)]
    slo_plugins: Option<Value>,
    #[serde(default)]
    slos: Vec<Value>,
}

/// One SLO, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SloFile {
    name: String,
    #[serde(default)]
    description: String,
    objective: f64,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    sli: SliFile,
    alerting: AlertingFile,
    #[serde(default)]
    plugins: Option<Value>,
}

/// The SLI block: exactly one of its kinds.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SliFile {
    #[serde(default)]
    events: Option<EventsFile>,
    #[serde(default)]
    raw: Option<RawFile>,
    #[serde(default)]
    plugin: Option<Value>,
    #[serde(default)]
    pipelens: Option<sli::PipelensSli>,
}

/// Sloth's events SLI: bad events over all events, each a query with a
/// `{{.window}}` placeholder.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsFile {
    error_query: String,
    total_query: String,
}

/// Sloth's raw SLI: a query of the error ratio itself.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    error_ratio_query: String,
}

/// The alerting block.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertingFile {
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    page_alert: AlertFile,
    #[serde(default)]
    ticket_alert: AlertFile,
}

/// The page or ticket alert's own settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertFile {
    #[serde(default)]
    disable: bool,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// A validated spec.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The service the SLOs belong to.
    pub service: String,
    /// The SLOs, in the spec's order.
    pub slos: Vec<Slo>,
}

/// A validated SLO.
#[derive(Debug, Clone)]
pub struct Slo {
    /// `{service}-{name}`, Sloth's `sloth_id`.
    pub id: String,
    /// The SLO's name.
    pub name: String,
    /// What it promises, in words.
    pub description: String,
    /// The objective in percent, in (0, 100).
    pub objective: f64,
    /// Labels of every rule: the spec's, then the SLO's.
    pub labels: BTreeMap<String, String>,
    /// How the error ratio is measured.
    pub sli: Sli,
    /// The alerts' name.
    pub alert_name: String,
    /// Labels of both alerts.
    pub alert_labels: BTreeMap<String, String>,
    /// Annotations of both alerts.
    pub alert_annotations: BTreeMap<String, String>,
    /// The page alert, unless disabled.
    pub page: Option<AlertSettings>,
    /// The ticket alert, unless disabled.
    pub ticket: Option<AlertSettings>,
}

/// Labels and annotations of the page or the ticket alert.
#[derive(Debug, Clone, Default)]
pub struct AlertSettings {
    /// Its own labels, over the alerting block's.
    pub labels: BTreeMap<String, String>,
    /// Its own annotations, over the alerting block's.
    pub annotations: BTreeMap<String, String>,
}

impl Slo {
    /// The error budget: the share of events allowed to fail, in (0, 1).
    pub fn budget(&self) -> f64 {
        round_ratio(1.0 - self.objective / 100.0)
    }

    /// The objective as a ratio, in (0, 1).
    pub fn objective_ratio(&self) -> f64 {
        round_ratio(self.objective / 100.0)
    }
}

/// `x` rounded to 12 decimals, so that 1 - 0.999 is 0.001 and not
/// 0.0010000000000000009.
pub fn round_ratio(x: f64) -> f64 {
    (x * 1e12).round() / 1e12
}

/// Whether `name` is a valid Prometheus label name.
fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Reads and validates a spec.
pub fn parse(text: &str) -> Result<Spec, SpecError> {
    let value: Value =
        serde_yaml_ng::from_str(text).map_err(|e| SpecError::NotYaml(e.to_string()))?;
    let file: SpecFile = serde_path_to_error::deserialize(value).map_err(|e| SpecError::Spec {
        field: e.path().to_string(),
        message: e.inner().to_string(),
    })?;
    let top = |field: &str, message: String| SpecError::Spec {
        field: field.to_owned(),
        message,
    };
    if file.version != VERSION {
        return Err(top(
            "version",
            format!("{:?} is not supported; use {VERSION:?}", file.version),
        ));
    }
    if file.service.trim().is_empty() {
        return Err(top("service", "must not be empty".to_owned()));
    }
    if file.slo_plugins.is_some() {
        return Err(top(
            "slo_plugins",
            "Sloth plugins are not supported by pipelens".to_owned(),
        ));
    }
    check_labels(&file.labels).map_err(|m| top("labels", m))?;
    if file.slos.is_empty() {
        return Err(top("slos", "declares no SLO".to_owned()));
    }
    let mut names = BTreeSet::new();
    let mut slos = Vec::new();
    for (i, value) in file.slos.into_iter().enumerate() {
        let label = value["name"]
            .as_str()
            .map_or_else(|| format!("slos[{i}]"), str::to_owned);
        let err = |field: &str, message: String| SpecError::Slo {
            slo: label.clone(),
            field: field.to_owned(),
            message,
        };
        let slo: SloFile = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            err(
                if path == "." { "(slo)" } else { &path },
                e.inner().to_string(),
            )
        })?;
        let slo = validate(&file.service, &file.labels, slo, &err)?;
        if !names.insert(slo.name.clone()) {
            return Err(err("name", "another SLO has the same name".to_owned()));
        }
        slos.push(slo);
    }
    Ok(Spec {
        service: file.service,
        slos,
    })
}

/// Label names must be valid and not the generator's own `sloth_*`.
fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), String> {
    for name in labels.keys() {
        if !is_label_name(name) {
            return Err(format!("{name:?} is not a valid label name"));
        }
        if name.starts_with("sloth_") {
            return Err(format!("{name:?}: sloth_* labels are set by the generator"));
        }
    }
    Ok(())
}

/// Validates one SLO.
fn validate(
    service: &str,
    spec_labels: &BTreeMap<String, String>,
    slo: SloFile,
    err: &dyn Fn(&str, String) -> SpecError,
) -> Result<Slo, SpecError> {
    let name_ok = !slo.name.is_empty()
        && slo
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if !name_ok {
        return Err(err(
            "name",
            "must be letters, digits, '-', '_' or '.'".to_owned(),
        ));
    }
    if !(slo.objective.is_finite() && slo.objective > 0.0 && slo.objective < 100.0) {
        return Err(err(
            "objective",
            format!(
                "must be a percentage in (0, 100) exclusive, got {}",
                slo.objective
            ),
        ));
    }
    if slo.plugins.is_some() {
        return Err(err(
            "plugins",
            "Sloth plugins are not supported by pipelens".to_owned(),
        ));
    }
    check_labels(&slo.labels).map_err(|m| err("labels", m))?;
    let kinds = [
        slo.sli.events.is_some(),
        slo.sli.raw.is_some(),
        slo.sli.plugin.is_some(),
        slo.sli.pipelens.is_some(),
    ];
    if kinds.iter().filter(|k| **k).count() != 1 {
        return Err(err(
            "sli",
            "needs exactly one of events, raw or pipelens".to_owned(),
        ));
    }
    let sli = if let Some(events) = slo.sli.events {
        let error =
            sli::window_query(&events.error_query).map_err(|m| err("sli.events.error_query", m))?;
        let total =
            sli::window_query(&events.total_query).map_err(|m| err("sli.events.total_query", m))?;
        Sli::Events { error, total }
    } else if let Some(raw) = slo.sli.raw {
        let ratio = sli::window_query(&raw.error_ratio_query)
            .map_err(|m| err("sli.raw.error_ratio_query", m))?;
        Sli::Raw { ratio }
    } else if let Some(p) = slo.sli.pipelens {
        p.into_sli().map_err(|(field, m)| err(&field, m))?
    } else {
        return Err(err(
            "sli.plugin",
            "Sloth SLI plugins are not supported by pipelens".to_owned(),
        ));
    };
    let alerting = slo.alerting;
    let alert_name_ok = is_label_name(&alerting.name);
    if !alert_name_ok {
        return Err(err(
            "alerting.name",
            format!(
                "{:?} is not a valid alert name (letters, digits, '_')",
                alerting.name
            ),
        ));
    }
    check_labels(&alerting.labels).map_err(|m| err("alerting.labels", m))?;
    for (field, alert) in [
        ("alerting.page_alert.labels", &alerting.page_alert),
        ("alerting.ticket_alert.labels", &alerting.ticket_alert),
    ] {
        check_labels(&alert.labels).map_err(|m| err(field, m))?;
    }
    let settings = |a: AlertFile| {
        (!a.disable).then_some(AlertSettings {
            labels: a.labels,
            annotations: a.annotations,
        })
    };
    let mut labels = spec_labels.clone();
    labels.extend(slo.labels);
    Ok(Slo {
        id: format!("{service}-{}", slo.name),
        name: slo.name,
        description: slo.description,
        objective: slo.objective,
        labels,
        sli,
        alert_name: alerting.name,
        alert_labels: alerting.labels,
        alert_annotations: alerting.annotations,
        page: settings(alerting.page_alert),
        ticket: settings(alerting.ticket_alert),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid spec with one SLO whose body is `slo` (indented under `- `).
    fn with_slo(slo: &str) -> String {
        let body: String = slo
            .lines()
            .enumerate()
            .map(|(i, l)| {
                if i == 0 {
                    format!("  - {l}\n")
                } else {
                    format!("    {l}\n")
                }
            })
            .collect();
        format!("version: prometheus/v1\nservice: svc\nslos:\n{body}")
    }

    const EVENTS: &str = "name: avail
objective: 99.9
sli:
  events:
    error_query: sum(rate(x_total{code=~\"5..\"}[{{.window}}]))
    total_query: sum(rate(x_total[{{.window}}]))
alerting:
  name: Avail";

    #[test]
    fn a_sloth_events_spec_is_read() {
        let spec = parse(&with_slo(EVENTS)).unwrap();
        assert_eq!(spec.service, "svc");
        let slo = &spec.slos[0];
        assert_eq!(slo.id, "svc-avail");
        assert_eq!(slo.budget(), 0.001);
        assert_eq!(slo.objective_ratio(), 0.999);
        assert!(slo.page.is_some() && slo.ticket.is_some());
    }

    /// Each broken spec is refused naming the SLO and the field.
    #[test]
    fn invalid_specs_name_the_slo_and_the_field() {
        let cases: &[(&str, &str, &str)] = &[
            ("objective: 99.9", "objective: 100", "objective"),
            ("objective: 99.9", "objective: 0", "objective"),
            (
                "objective: 99.9",
                "objective: 99.9\nobjectiv: 1",
                "objectiv",
            ),
            (
                "total_query: sum(rate(x_total[{{.window}}]))",
                "total_query: sum(rate(x_total[{{.window}}])",
                "sli.events.total_query",
            ),
            (
                "error_query: sum(rate(x_total{code=~\"5..\"}[{{.window}}]))",
                "error_query: sum(rate(x_total{code=~\"5..\"}[5m]))",
                "sli.events.error_query",
            ),
            (
                "    total_query: sum(rate(x_total[{{.window}}]))",
                "    total_query: sum(rate(x_total[{{.window}}]))\n    extra: 1",
                "sli.events",
            ),
            ("name: Avail", "name: Avail-alert", "alerting.name"),
        ];
        for (from, to, field) in cases {
            assert!(EVENTS.contains(from), "{from}");
            let text = with_slo(&EVENTS.replace(from, to));
            let e = parse(&text).expect_err(to).to_string();
            assert!(
                e.starts_with("SLO \"avail\": ") && e.contains(field),
                "{to}: {e}"
            );
        }
    }

    #[test]
    fn latency_thresholds_must_be_bucket_boundaries() {
        let slo = "name: fast
objective: 99
sli:
  pipelens:
    latency: {pipeline: p, threshold_seconds: 0.3}
alerting:
  name: Fast";
        let e = parse(&with_slo(slo)).unwrap_err().to_string();
        assert!(
            e.contains("\"fast\"") && e.contains("sli.pipelens.latency.threshold_seconds"),
            "{e}"
        );
        assert!(parse(&with_slo(&slo.replace("0.3", "0.25"))).is_ok());
    }

    #[test]
    fn top_level_mistakes_name_the_field() {
        let e = parse("version: prometheus/v2\nservice: s\nslos: []")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("version:"), "{e}");
        let e = parse("version: prometheus/v1\nservice: s\nslo: []")
            .unwrap_err()
            .to_string();
        assert!(e.contains("slo"), "{e}");
        let two = with_slo(EVENTS)
            + &with_slo(EVENTS).replace("version: prometheus/v1\nservice: svc\nslos:\n", "");
        let e = parse(&two).unwrap_err().to_string();
        assert!(e.contains("\"avail\": name"), "{e}");
    }
}
