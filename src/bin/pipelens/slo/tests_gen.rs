//! `promtool test rules` tests for the generated SLO rules: a fast burn that
//! pages in time, a slow burn that opens a ticket, a healthy series and an
//! empty one that fire nothing (and leave a full budget, not NaN).
//!
//! Tests need input series the SLI reads, so they are written for the
//! `sli.pipelens` shortcuts, whose metrics the generator knows; Sloth
//! `events` and `raw` SLIs get rules only (the generator says so). The
//! expected alerts are computed from the counters fed in, with a margin
//! around every threshold so that Prometheus' range boundaries (closed in
//! 2.x, left-open in 3.x) and extrapolation cannot tip a case over.

use std::collections::BTreeMap;

use serde::Serialize;

use super::rules::{self, Severity, PERIOD, SLI_WINDOWS};
use super::sli::{Sli, TestInputs};
use super::spec::{Slo, Spec};

/// A promtool test file.
#[derive(Debug, Serialize)]
pub struct TestFile {
    /// The rule files under test, relative to the test file.
    pub rule_files: Vec<String>,
    /// How often rules are evaluated.
    pub evaluation_interval: String,
    /// The test cases.
    pub tests: Vec<TestCase>,
}

/// One test case: input series and what to expect of them.
#[derive(Debug, Serialize)]
pub struct TestCase {
    /// What the case shows.
    pub name: String,
    /// The time between two input samples.
    pub interval: String,
    /// The input series.
    pub input_series: Vec<InputSeries>,
    /// Expected alerts.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub alert_rule_test: Vec<AlertTest>,
    /// Expected query results.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub promql_expr_test: Vec<ExprTest>,
}

/// An input series and its samples.
#[derive(Debug, Serialize)]
pub struct InputSeries {
    /// Name and labels.
    pub series: String,
    /// One value per interval.
    pub values: String,
}

/// The alerts expected at one time.
#[derive(Debug, Serialize)]
pub struct AlertTest {
    /// When.
    pub eval_time: String,
    /// Which alert.
    pub alertname: String,
    /// The firing instances (none: silent).
    pub exp_alerts: Vec<ExpAlert>,
}

/// One expected firing alert.
#[derive(Debug, Serialize)]
pub struct ExpAlert {
    /// Its labels.
    pub exp_labels: BTreeMap<String, String>,
    /// Its annotations.
    pub exp_annotations: BTreeMap<String, String>,
}

/// A query's expected result at one time.
#[derive(Debug, Serialize)]
pub struct ExprTest {
    /// The query.
    pub expr: String,
    /// When.
    pub eval_time: String,
    /// The samples (none: an empty result).
    pub exp_samples: Vec<ExpSample>,
}

/// One expected sample.
#[derive(Debug, Serialize)]
pub struct ExpSample {
    /// Name and labels.
    pub labels: String,
    /// Its value.
    pub value: f64,
}

/// Events per minute in the tests: enough for the slow burn's error share
/// to be a whole number of events.
fn events_per_minute(share: f64) -> u64 {
    let mut t = 100u64;
    while t < 1_000_000_000 {
        let bad = share * t as f64;
        if (bad - bad.round()).abs() < 1e-6 {
            return t;
        }
        t *= 10;
    }
    t
}

/// Counters fed to the SLI: every minute `per_minute` events, of which the
/// share `bad_share(minute)` are bad.
struct Traffic {
    total: Vec<u64>,
    bad: Vec<u64>,
}

impl Traffic {
    fn new(minutes: u32, per_minute: u64, bad_share: impl Fn(u32) -> f64) -> Self {
        let (mut total, mut bad) = (vec![0], vec![0]);
        for m in 1..=minutes {
            total.push(total[m as usize - 1] + per_minute);
            let b = (bad_share(m) * per_minute as f64).round() as u64;
            bad.push(bad[m as usize - 1] + b);
        }
        Self { total, bad }
    }

    /// The error ratio over `window` minutes at minute `t` (a closed range
    /// of whole-minute samples), if the window holds any event.
    fn ratio(&self, t: u32, window: u32) -> Option<f64> {
        let start = t.saturating_sub(window) as usize;
        let t = t as usize;
        let total = self.total[t] - self.total[start];
        (total > 0).then(|| (self.bad[t] - self.bad[start]) as f64 / total as f64)
    }

    /// The input series for `inputs`.
    fn series(&self, inputs: &TestInputs) -> Vec<InputSeries> {
        let list = |v: Vec<u64>| v.iter().map(u64::to_string).collect::<Vec<_>>().join(" ");
        let good: Vec<u64> = self
            .total
            .iter()
            .zip(&self.bad)
            .map(|(t, b)| t - b)
            .collect();
        let mut out = Vec::new();
        for (series, values) in [
            (&inputs.good, good),
            (&inputs.bad, self.bad.clone()),
            (&inputs.total, self.total.clone()),
        ] {
            if let Some(series) = series {
                out.push(InputSeries {
                    series: series.clone(),
                    values: list(values),
                });
            }
        }
        out
    }
}

/// Minutes in a Prometheus duration of the windows used (`5m`, `1h`, `3d`).
fn minutes(window: &str) -> u32 {
    let (n, unit) = window.split_at(window.len() - 1);
    let n: u32 = n.parse().expect("a window is a number and a unit");
    match unit {
        "m" => n,
        "h" => n * 60,
        "d" => n * 24 * 60,
        _ => unreachable!("windows are in m, h or d"),
    }
}

/// Whether a condition holds, with a margin: `None` when a ratio is too
/// close to its threshold to be sure.
fn above(ratio: Option<f64>, threshold: f64) -> Option<bool> {
    const MARGIN: f64 = 1.3;
    match ratio {
        None => Some(false),
        Some(r) if r > threshold * MARGIN => Some(true),
        Some(r) if r < threshold / MARGIN => Some(false),
        Some(_) => None,
    }
}

/// The enabled alerts that fire at minute `t`, or `None` if unsure.
fn firing(slo: &Slo, traffic: &Traffic, t: u32) -> Option<Vec<Severity>> {
    let budget = slo.budget();
    let mut out = Vec::new();
    for severity in [Severity::Page, Severity::Ticket] {
        let mut fires = false;
        for w in severity.windows() {
            let threshold = w.factor * budget;
            let short = above(traffic.ratio(t, minutes(w.short)), threshold)?;
            let long = above(traffic.ratio(t, minutes(w.long)), threshold)?;
            fires |= short && long;
        }
        if fires && rules::settings(slo, severity).is_some() {
            out.push(severity);
        }
    }
    Some(out)
}

/// The expected alerts for `severities`.
fn expected(spec: &Spec, slo: &Slo, severities: &[Severity], t: u32) -> AlertTest {
    AlertTest {
        eval_time: format!("{t}m"),
        alertname: slo.alert_name.clone(),
        exp_alerts: severities
            .iter()
            .map(|s| {
                let mut labels = rules::series_labels(spec, slo);
                labels.extend(rules::alert_rule_labels(slo, *s));
                ExpAlert {
                    exp_labels: labels,
                    exp_annotations: rules::alert_annotations(spec, slo, *s),
                }
            })
            .collect(),
    }
}

/// `name{labels}` of one of the SLO's recorded series.
fn series_name(spec: &Spec, slo: &Slo, name: &str, window: Option<&str>) -> String {
    let mut labels = rules::series_labels(spec, slo);
    if let Some(w) = window {
        labels.insert("sloth_window".into(), w.into());
    }
    let inner: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    format!("{name}{{{}}}", inner.join(", "))
}

/// The budget checks: the remaining budget (and burn rate) at minute `t`.
fn budget_tests(
    spec: &Spec,
    slo: &Slo,
    t: u32,
    remaining: f64,
    sli_now: Option<f64>,
) -> Vec<ExprTest> {
    let sel = rules::selector(spec, slo);
    let mut tests = vec![
        ExprTest {
            expr: format!("slo:period_error_budget_remaining:ratio{{{sel}}}"),
            eval_time: format!("{t}m"),
            exp_samples: vec![ExpSample {
                labels: series_name(spec, slo, "slo:period_error_budget_remaining:ratio", None),
                value: remaining,
            }],
        },
        ExprTest {
            expr: format!("slo:period_burn_rate:ratio{{{sel}}}"),
            eval_time: format!("{t}m"),
            exp_samples: vec![ExpSample {
                labels: series_name(spec, slo, "slo:period_burn_rate:ratio", None),
                value: 1.0 - remaining,
            }],
        },
    ];
    let five = rules::sli_record(SLI_WINDOWS[0]);
    tests.push(ExprTest {
        expr: format!("{five}{{{sel}}}"),
        eval_time: format!("{t}m"),
        exp_samples: sli_now
            .map(|v| ExpSample {
                labels: series_name(spec, slo, &five, Some(SLI_WINDOWS[0])),
                value: v,
            })
            .into_iter()
            .collect(),
    });
    let period = rules::sli_record(PERIOD);
    tests.push(ExprTest {
        expr: format!("{period}{{{sel}}}"),
        eval_time: format!("{t}m"),
        exp_samples: sli_now
            .map(|v| ExpSample {
                labels: series_name(spec, slo, &period, Some(PERIOD)),
                value: v,
            })
            .into_iter()
            .collect(),
    });
    tests
}

/// The test cases of one SLO, or why it has none.
fn slo_cases(spec: &Spec, slo: &Slo) -> Result<Vec<TestCase>, String> {
    let Sli::Pipelens { inputs, .. } = &slo.sli else {
        return Err("its SLI is a Sloth events or raw query, whose input series the generator cannot make up: write its promtool test by hand".into());
    };
    let templated = [Severity::Page, Severity::Ticket]
        .iter()
        .flat_map(|s| rules::alert_annotations(spec, slo, *s).into_values())
        .any(|a| a.contains("{{"));
    if templated {
        return Err("its annotations are templates, which only Prometheus can expand: write its promtool test by hand".into());
    }
    let budget = slo.budget();
    let slow_share = (2.0 * budget).min(1.0);
    let per_minute = events_per_minute(slow_share);
    let id = &slo.name;
    let mut cases = Vec::new();

    // Fast burn: an hour without errors, then every event fails. The page
    // must fire within minutes (the 1h window needs 14.4 × budget of it).
    let healthy_for = 60;
    let limit = healthy_for + 120;
    let fast = Traffic::new(
        limit,
        per_minute,
        |m| if m > healthy_for { 1.0 } else { 0.0 },
    );
    let before =
        firing(slo, &fast, healthy_for).ok_or("the fast burn is ambiguous before it starts")?;
    let (t, alerts) = (healthy_for + 1..=limit)
        .find_map(|t| {
            firing(slo, &fast, t)
                .filter(|a| a.contains(&Severity::Page) || slo.page.is_none())
                .filter(|a| !a.is_empty())
                .map(|a| (t, a))
        })
        .ok_or("no burn makes it page within two hours (objective too low for a 14.4× burn?)")?;
    let fast = Traffic::new(t, per_minute, |m| if m > healthy_for { 1.0 } else { 0.0 });
    cases.push(TestCase {
        name: format!(
            "{id}: a fast burn (every event failing after an hour without errors) pages {} minutes in",
            t - healthy_for
        ),
        interval: "1m".into(),
        input_series: fast.series(inputs),
        alert_rule_test: vec![
            expected(spec, slo, &before, healthy_for),
            expected(spec, slo, &alerts, t),
        ],
        promql_expr_test: Vec::new(),
    });

    // Slow burn: twice the budget rate, steadily. A ticket, no page.
    let minutes_run = 10;
    let slow = Traffic::new(minutes_run, per_minute, |_| slow_share);
    let alerts = firing(slo, &slow, minutes_run).ok_or("the slow burn is ambiguous")?;
    cases.push(TestCase {
        name: format!(
            "{id}: a slow burn (errors at twice the budget rate) opens a ticket and pages no one"
        ),
        interval: "1m".into(),
        input_series: slow.series(inputs),
        alert_rule_test: vec![expected(spec, slo, &alerts, minutes_run)],
        promql_expr_test: Vec::new(),
    });

    // Healthy: no error at all.
    let healthy = Traffic::new(minutes_run, per_minute, |_| 0.0);
    cases.push(TestCase {
        name: format!("{id}: no errors fire nothing and spend no budget"),
        interval: "1m".into(),
        input_series: healthy.series(inputs),
        alert_rule_test: vec![expected(spec, slo, &[], minutes_run)],
        promql_expr_test: budget_tests(spec, slo, minutes_run, 1.0, Some(0.0)),
    });

    // Empty: no series at all (a service that never got a request).
    cases.push(TestCase {
        name: format!("{id}: no traffic fires nothing, the budget stays full, nothing is NaN"),
        interval: "1m".into(),
        input_series: Vec::new(),
        alert_rule_test: vec![expected(spec, slo, &[], minutes_run)],
        promql_expr_test: budget_tests(spec, slo, minutes_run, 1.0, None),
    });
    Ok(cases)
}

/// The tests of every SLO of `spec`, against `rule_file` (relative to the
/// test file), and a note for each SLO that has none.
pub fn test_file(spec: &Spec, rule_file: &str) -> (TestFile, Vec<String>) {
    let mut tests = Vec::new();
    let mut notes = Vec::new();
    for slo in &spec.slos {
        match slo_cases(spec, slo) {
            Ok(cases) => tests.extend(cases),
            Err(why) => notes.push(format!("SLO {:?} has no generated test: {why}", slo.name)),
        }
    }
    (
        TestFile {
            rule_files: vec![rule_file.to_owned()],
            evaluation_interval: "1m".into(),
            tests,
        },
        notes,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_ratios_count_whole_minutes() {
        let t = Traffic::new(70, 100, |m| if m > 60 { 1.0 } else { 0.0 });
        assert_eq!(t.ratio(60, 5), Some(0.0));
        assert_eq!(t.ratio(65, 5), Some(1.0));
        assert_eq!(t.ratio(66, 60), Some(0.1));
        assert_eq!(t.ratio(0, 5), None);
        assert_eq!(minutes("3d"), 4320);
        assert_eq!(events_per_minute(0.002), 1000);
        assert_eq!(events_per_minute(0.02), 100);
    }

    #[test]
    fn thresholds_have_a_margin() {
        assert_eq!(above(Some(0.02), 0.01), Some(true));
        assert_eq!(above(Some(0.011), 0.01), None);
        assert_eq!(above(Some(0.005), 0.01), Some(false));
        assert_eq!(above(None, 0.01), Some(false));
    }
}
