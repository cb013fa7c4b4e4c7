//! Prometheus rules for SLOs, in the shape Sloth generates (same record
//! names and `sloth_*` labels, so Sloth's Grafana dashboards work too):
//! SLI error ratios over every alert window and the 30-day period, the
//! error budget, and multiwindow multi-burn-rate page and ticket alerts.
//!
//! Unlike Sloth's, no rule yields NaN when there is no traffic: an SLI
//! ratio with no events in its window has no sample (so no alert can fire
//! on it, and the period average skips the idle time), and the period burn
//! rate falls back to 0 (a full budget) when there is no sample at all.

use std::collections::BTreeMap;

use serde::Serialize;

use super::sli::Sli;
use super::spec::{round_ratio, AlertSettings, Slo, Spec};

/// The windows an SLI is recorded over for the alerts.
pub const SLI_WINDOWS: [&str; 7] = ["5m", "30m", "1h", "2h", "6h", "1d", "3d"];

/// The SLO period (Sloth's default): budgets are counted over 30 days.
pub const PERIOD: &str = "30d";

/// Days in [`PERIOD`].
pub const PERIOD_DAYS: u32 = 30;

/// One condition of a multiwindow alert: the error ratio over both windows
/// above `factor` times the budget.
#[derive(Debug, Clone, Copy)]
pub struct BurnWindow {
    /// The burn rate: how many times faster than the budget allows.
    pub factor: f64,
    /// The long window, which says the burn is significant.
    pub long: &'static str,
    /// The short window, which says it is still going on.
    pub short: &'static str,
}

/// The page alert's conditions (the Google SRE workbook's): 2% of the budget
/// in an hour, or 5% in six hours.
pub const PAGE: [BurnWindow; 2] = [
    BurnWindow {
        factor: 14.4,
        long: "1h",
        short: "5m",
    },
    BurnWindow {
        factor: 6.0,
        long: "6h",
        short: "30m",
    },
];

/// The ticket alert's conditions: 10% of the budget in a day, or in three
/// days.
pub const TICKET: [BurnWindow; 2] = [
    BurnWindow {
        factor: 3.0,
        long: "1d",
        short: "2h",
    },
    BurnWindow {
        factor: 1.0,
        long: "3d",
        short: "6h",
    },
];

/// Which of the two alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Fast burn: someone must act now.
    Page,
    /// Slow burn: someone must look within a day.
    Ticket,
}

impl Severity {
    /// The `sloth_severity` label value.
    pub fn label(self) -> &'static str {
        match self {
            Severity::Page => "page",
            Severity::Ticket => "ticket",
        }
    }

    /// The alert's conditions.
    pub fn windows(self) -> [BurnWindow; 2] {
        match self {
            Severity::Page => PAGE,
            Severity::Ticket => TICKET,
        }
    }

    /// The `severity` label when the spec sets none.
    fn default_severity(self) -> &'static str {
        match self {
            Severity::Page => "critical",
            Severity::Ticket => "warning",
        }
    }
}

/// A rule file.
#[derive(Debug, Serialize)]
pub struct RuleFile {
    /// Its groups.
    pub groups: Vec<Group>,
}

/// A rule group.
#[derive(Debug, Serialize)]
pub struct Group {
    /// The group's name.
    pub name: String,
    /// Its rules.
    pub rules: Vec<Rule>,
}

/// A recording or alerting rule.
#[derive(Debug, Serialize)]
pub struct Rule {
    /// The recorded series' name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    /// The alert's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alert: Option<String>,
    /// The PromQL expression.
    pub expr: String,
    /// Labels added to the result.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The alert's annotations.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A number as PromQL and YAML show it: `0.001`, `14.4`, `6`.
pub fn num(x: f64) -> String {
    format!("{}", round_ratio(x))
}

/// The name of the SLI error ratio recorded over `window`.
pub fn sli_record(window: &str) -> String {
    format!("slo:sli_error:ratio_rate{window}")
}

/// The matchers that select one SLO's recorded series.
pub fn selector(spec: &Spec, slo: &Slo) -> String {
    format!(
        "sloth_id=\"{}\", sloth_service=\"{}\", sloth_slo=\"{}\"",
        slo.id, spec.service, slo.name
    )
}

/// The labels of every recorded series of an SLO (but `sloth_window`).
pub fn series_labels(spec: &Spec, slo: &Slo) -> BTreeMap<String, String> {
    let mut labels = slo.labels.clone();
    labels.insert("sloth_id".into(), slo.id.clone());
    labels.insert("sloth_service".into(), spec.service.clone());
    labels.insert("sloth_slo".into(), slo.name.clone());
    labels
}

/// The alert's own settings for `severity`, if that alert is enabled.
pub fn settings(slo: &Slo, severity: Severity) -> Option<&AlertSettings> {
    match severity {
        Severity::Page => slo.page.as_ref(),
        Severity::Ticket => slo.ticket.as_ref(),
    }
}

/// The labels the alerting rule adds.
pub fn alert_rule_labels(slo: &Slo, severity: Severity) -> BTreeMap<String, String> {
    let mut labels = slo.alert_labels.clone();
    if let Some(s) = settings(slo, severity) {
        labels.extend(s.labels.clone());
    }
    labels
        .entry("severity".into())
        .or_insert_with(|| severity.default_severity().into());
    labels.insert("sloth_severity".into(), severity.label().into());
    labels
}

/// The alert's annotations: a summary and description written from the
/// SLO, then the spec's own, the alert's last.
pub fn alert_annotations(spec: &Spec, slo: &Slo, severity: Severity) -> BTreeMap<String, String> {
    let budget_pct = num(slo.budget() * 100.0);
    let what = if slo.description.trim().is_empty() {
        format!("SLO {} of {}", slo.name, spec.service)
    } else {
        slo.description.trim().trim_end_matches('.').to_owned()
    };
    let conditions: Vec<String> = severity
        .windows()
        .iter()
        .map(|w| {
            let rate = if w.factor == 1.0 {
                "the budget rate".to_owned()
            } else {
                format!("{} times the budget rate", num(w.factor))
            };
            format!("{rate} over {} (and still over {})", w.long, w.short)
        })
        .collect();
    let fastest = severity.windows()[0].factor;
    let mut annotations = BTreeMap::new();
    annotations.insert(
        "summary".into(),
        format!(
            "{} SLO {}: the error budget burns too fast ({})",
            spec.service,
            slo.name,
            severity.label()
        ),
    );
    annotations.insert(
        "description".into(),
        format!(
            "{what}. Errors run at over {}: at {} times, the {budget_pct}% error budget of {PERIOD_DAYS} days is spent in {} days.",
            conditions.join(", or "),
            num(fastest),
            num((f64::from(PERIOD_DAYS) / fastest * 10.0).round() / 10.0)
        ),
    );
    annotations.extend(slo.alert_annotations.clone());
    if let Some(s) = settings(slo, severity) {
        annotations.extend(s.annotations.clone());
    }
    annotations
}

/// The error ratio of an SLI over `window`, with no sample (rather than
/// NaN) when the window holds no event.
pub fn sli_expr(sli: &Sli, window: &str) -> String {
    match sli {
        Sli::Events { error, total } | Sli::Pipelens { error, total, .. } => {
            let (e, t) = (error.over(window), total.over(window));
            // No bad event yet is 0, not "no data"; no event at all is no
            // sample, never 0/0.
            format!("(\n  ({e})\n  or\n  0 * ({t})\n)\n/\n(({t}) > 0)")
        }
        // NaN >= 0 is false: a NaN ratio (no traffic) leaves no sample.
        Sli::Raw { ratio } => format!("(\n  {}\n) >= 0", ratio.over(window)),
    }
}

/// The rules of every SLO of `spec`.
pub fn rule_file(spec: &Spec) -> RuleFile {
    let mut groups = Vec::new();
    for slo in &spec.slos {
        let sel = selector(spec, slo);
        let labels = series_labels(spec, slo);
        let with = |extra: &[(&str, &str)]| {
            let mut l = labels.clone();
            for (k, v) in extra {
                l.insert((*k).into(), (*v).into());
            }
            l
        };
        let record = |name: String, expr: String, labels| Rule {
            record: Some(name),
            alert: None,
            expr,
            labels,
            annotations: BTreeMap::new(),
        };

        // SLI error ratios.
        let mut sli = Vec::new();
        for w in SLI_WINDOWS {
            sli.push(record(
                sli_record(w),
                sli_expr(&slo.sli, w),
                with(&[("sloth_window", w)]),
            ));
        }
        // The period: the average of the 5m ratios (Sloth's, cheap over 30
        // days); 5-minute windows without traffic have no sample and do not
        // count.
        let five = sli_record(SLI_WINDOWS[0]);
        sli.push(record(
            sli_record(PERIOD),
            format!(
                "sum_over_time({five}{{{sel}}}[{PERIOD}])\n/ ignoring (sloth_window)\ncount_over_time({five}{{{sel}}}[{PERIOD}])"
            ),
            with(&[("sloth_window", PERIOD)]),
        ));
        groups.push(Group {
            name: format!("sloth-slo-sli-recordings-{}", slo.id),
            rules: sli,
        });

        // The objective, the budget and how fast it is spent.
        let budget = num(slo.budget());
        let on = "on (sloth_id, sloth_slo, sloth_service) group_left";
        let meta = vec![
            record(
                "slo:objective:ratio".into(),
                format!("vector({})", num(slo.objective_ratio())),
                labels.clone(),
            ),
            record(
                "slo:error_budget:ratio".into(),
                format!("vector({budget})"),
                labels.clone(),
            ),
            record(
                "slo:time_period:days".into(),
                format!("vector({PERIOD_DAYS})"),
                labels.clone(),
            ),
            record(
                "slo:current_burn_rate:ratio".into(),
                format!("{five}{{{sel}}}\n/ {on}\nslo:error_budget:ratio{{{sel}}}"),
                labels.clone(),
            ),
            // No sample over the whole period (no traffic yet): nothing
            // spent, a burn rate of 0 and a full budget, never NaN.
            record(
                "slo:period_burn_rate:ratio".into(),
                format!(
                    "(\n  sum without (sloth_window) ({}{{{sel}}})\n  or on () vector(0)\n)\n/ {budget}",
                    sli_record(PERIOD)
                ),
                labels.clone(),
            ),
            record(
                "slo:period_error_budget_remaining:ratio".into(),
                format!("1 - slo:period_burn_rate:ratio{{{sel}}}"),
                labels.clone(),
            ),
            record(
                "sloth_slo_info".into(),
                "vector(1)".into(),
                with(&[
                    ("sloth_objective", &num(slo.objective)),
                    ("sloth_spec", super::spec::VERSION),
                    ("sloth_mode", "pipelens-slo-generate"),
                ]),
            ),
        ];
        groups.push(Group {
            name: format!("sloth-slo-meta-recordings-{}", slo.id),
            rules: meta,
        });

        // Multiwindow multi-burn-rate alerts.
        let mut alerts = Vec::new();
        for severity in [Severity::Page, Severity::Ticket] {
            if settings(slo, severity).is_none() {
                continue;
            }
            let clause = |w: &BurnWindow| {
                let above = |window: &str| {
                    format!(
                        "max({}{{{sel}}} > ({} * {budget})) without (sloth_window)",
                        sli_record(window),
                        num(w.factor)
                    )
                };
                format!("(\n    {}\n  and\n    {}\n)", above(w.short), above(w.long))
            };
            let [a, b] = severity.windows();
            alerts.push(Rule {
                record: None,
                alert: Some(slo.alert_name.clone()),
                expr: format!("{}\nor\n{}", clause(&a), clause(&b)),
                labels: alert_rule_labels(slo, severity),
                annotations: alert_annotations(spec, slo, severity),
            });
        }
        if !alerts.is_empty() {
            groups.push(Group {
                name: format!("sloth-slo-alerts-{}", slo.id),
                rules: alerts,
            });
        }
    }
    RuleFile { groups }
}

#[cfg(test)]
mod tests {
    use super::super::{sli, spec};
    use super::*;

    fn spec() -> Spec {
        spec::parse(
            "version: prometheus/v1
service: svc
labels: {team: ml}
slos:
  - name: avail
    objective: 99.9
    sli:
      events:
        error_query: sum(rate(x_total{code=~\"5..\"}[{{.window}}]))
        total_query: sum(rate(x_total[{{.window}}]))
    alerting:
      name: Avail
      page_alert: {labels: {severity: critical}}
      ticket_alert: {disable: true}
",
        )
        .unwrap()
    }

    #[test]
    fn every_window_is_recorded_and_every_rule_is_valid_promql() {
        let file = rule_file(&spec());
        let records: Vec<&str> = file
            .groups
            .iter()
            .flat_map(|g| &g.rules)
            .filter_map(|r| r.record.as_deref())
            .collect();
        for w in SLI_WINDOWS.iter().chain([&PERIOD]) {
            assert!(records.contains(&sli_record(w).as_str()), "{w}");
        }
        for r in file.groups.iter().flat_map(|g| &g.rules) {
            sli::check_promql(&r.expr).unwrap();
        }
    }

    #[test]
    fn a_disabled_ticket_leaves_only_the_page() {
        let file = rule_file(&spec());
        let alerts: Vec<&Rule> = file
            .groups
            .iter()
            .flat_map(|g| &g.rules)
            .filter(|r| r.alert.is_some())
            .collect();
        assert_eq!(alerts.len(), 1);
        let page = alerts[0];
        assert_eq!(page.labels["sloth_severity"], "page");
        assert_eq!(page.labels["severity"], "critical");
        assert!(page
            .expr
            .contains("slo:sli_error:ratio_rate5m{sloth_id=\"svc-avail\""));
        assert!(page.expr.contains("> (14.4 * 0.001)"));
        assert!(page.expr.contains("slo:sli_error:ratio_rate6h"));
        assert!(page.annotations["description"].contains("0.1% error budget of 30 days"));
    }

    #[test]
    fn events_ratios_have_no_nan_and_no_gap_before_the_first_error() {
        let s = spec();
        let expr = sli_expr(&s.slos[0].sli, "1h");
        assert_eq!(
            expr,
            "(\n  (sum(rate(x_total{code=~\"5..\"}[1h])))\n  or\n  0 * (sum(rate(x_total[1h])))\n)\n/\n((sum(rate(x_total[1h]))) > 0)"
        );
    }
}
