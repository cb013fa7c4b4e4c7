//! Service level indicators: Sloth's `events` and `raw` queries with their
//! `{{.window}}` placeholder, and the `sli.pipelens` shortcuts that turn
//! pipelens' own metrics into such queries.

use serde::Deserialize;

/// Bucket boundaries of `ml_pipeline_duration_seconds` (the library's
/// `DURATION_BUCKETS`; `tests/slo_rules_are_generated.rs` holds this list
/// to a live /metrics). A latency threshold must be one of them: a
/// histogram can only count the events at or under a boundary.
pub const DURATION_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Bucket boundaries of `ml_model_confidence` (the library's
/// `CONFIDENCE_BUCKETS`, checked the same way).
pub const CONFIDENCE_BUCKETS: [f64; 10] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];

/// Sloth's window placeholder.
const PLACEHOLDER: &str = "{{.window}}";

/// A PromQL query with a `{{.window}}` placeholder for the range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowQuery(String);

impl WindowQuery {
    /// The query over `window` (a Prometheus duration such as `5m`).
    pub fn over(&self, window: &str) -> String {
        self.0.trim().replace(PLACEHOLDER, window)
    }
}

/// Checks that `query` has the window placeholder and parses as PromQL.
pub fn window_query(query: &str) -> Result<WindowQuery, String> {
    // Sloth's templates also accept spaces inside the braces.
    let normalized = query.replace("{{ .window }}", PLACEHOLDER);
    if !normalized.contains(PLACEHOLDER) {
        return Err(format!(
            "has no {PLACEHOLDER} placeholder for the range: {:?}",
            query.trim()
        ));
    }
    let q = WindowQuery(normalized);
    check_promql(&q.over("5m"))?;
    Ok(q)
}

/// Whether `expr` parses as PromQL; the parser's message otherwise.
pub fn check_promql(expr: &str) -> Result<(), String> {
    promql_parser::parser::parse(expr)
        .map(|_| ())
        .map_err(|e| format!("is not valid PromQL ({e}): {:?}", expr.trim()))
}

/// How an SLO measures its error ratio.
#[derive(Debug, Clone)]
pub enum Sli {
    /// Bad events over all events.
    Events {
        /// Bad events per second over the window.
        error: WindowQuery,
        /// All events per second over the window.
        total: WindowQuery,
    },
    /// The error ratio itself.
    Raw {
        /// The error ratio over the window.
        ratio: WindowQuery,
    },
    /// A pipelens shortcut: events queries on pipelens' metrics, and the
    /// series a test can feed them.
    Pipelens {
        /// Bad events per second over the window.
        error: WindowQuery,
        /// All events per second over the window.
        total: WindowQuery,
        /// The input series for a promtool test.
        inputs: TestInputs,
    },
}

/// Series (name and labels) that, fed with counter values, drive a pipelens
/// SLI: `good` counts good events, `bad` bad ones, `total` all of them.
/// Each is optional; the SLI's queries read exactly the ones given.
#[derive(Debug, Clone)]
pub struct TestInputs {
    /// A series counting the good events.
    pub good: Option<String>,
    /// A series counting the bad events.
    pub bad: Option<String>,
    /// A series counting every event.
    pub total: Option<String>,
}

/// The `sli.pipelens` block: exactly one shortcut.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelensSli {
    /// The scrape job of the service (default `pipelens`).
    #[serde(default = "default_job")]
    job: String,
    /// Run requests answered without a 5xx.
    #[serde(default)]
    availability: Option<PipelineOnly>,
    /// Runs that took at most `threshold_seconds`.
    #[serde(default)]
    latency: Option<Latency>,
    /// Runs that succeeded.
    #[serde(default)]
    success: Option<PipelineOnly>,
    /// Model outputs with a confidence above `min`.
    #[serde(default)]
    confidence: Option<Confidence>,
    /// Served answers of a judged stage that matched their ground truth.
    #[serde(default)]
    accuracy: Option<Accuracy>,
}

/// The default scrape job.
fn default_job() -> String {
    "pipelens".to_owned()
}

/// A shortcut that only needs the pipeline.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PipelineOnly {
    pipeline: String,
}

/// The latency shortcut.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Latency {
    pipeline: String,
    threshold_seconds: f64,
}

/// The confidence shortcut.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Confidence {
    pipeline: String,
    min: f64,
    /// Only these models' outputs (default: every model of the pipeline).
    #[serde(default)]
    models: Vec<String>,
}

/// The accuracy shortcut.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Accuracy {
    pipeline: String,
    /// Only this judged stage (default: every judged stage of the pipeline).
    #[serde(default)]
    stage: Option<String>,
}

/// Whether `v` can sit in a PromQL string literal as it is.
fn plain_label_value(v: &str) -> bool {
    !v.is_empty() && !v.contains(['"', '\\', '\n'])
}

/// `le` as the Prometheus exporter writes it (`0.25`, `1`).
fn le(bound: f64) -> String {
    format!("{bound}")
}

impl PipelensSli {
    /// The SLI, or (field, message) for what is wrong.
    pub fn into_sli(self) -> Result<Sli, (String, String)> {
        let field = |f: &str| format!("sli.pipelens.{f}");
        let set = [
            self.availability.is_some(),
            self.latency.is_some(),
            self.success.is_some(),
            self.confidence.is_some(),
            self.accuracy.is_some(),
        ];
        if set.iter().filter(|s| **s).count() != 1 {
            return Err((
                "sli.pipelens".to_owned(),
                "needs exactly one of availability, latency, success, confidence or accuracy"
                    .to_owned(),
            ));
        }
        let job = self.job;
        if !plain_label_value(&job) {
            return Err((field("job"), format!("{job:?} is not a plain label value")));
        }
        let check_pipeline = |kind: &str, p: &str| {
            if plain_label_value(p) && !p.contains('/') {
                Ok(())
            } else {
                Err((
                    field(&format!("{kind}.pipeline")),
                    format!("{p:?} is not a pipeline name"),
                ))
            }
        };
        let q = |s: String| WindowQuery(s);
        if let Some(a) = self.availability {
            check_pipeline("availability", &a.pipeline)?;
            let sel = format!(
                "job=\"{job}\", http_route=\"/v1/pipelines/{}/runs\"",
                a.pipeline
            );
            let metric = "http_server_request_duration_seconds_count";
            return Ok(Sli::Pipelens {
                error: q(format!(
                    "sum(rate({metric}{{{sel}, http_response_status_code=~\"5..\"}}[{PLACEHOLDER}]))"
                )),
                total: q(format!("sum(rate({metric}{{{sel}}}[{PLACEHOLDER}]))")),
                inputs: TestInputs {
                    good: Some(format!(
                        "{metric}{{{sel}, http_request_method=\"POST\", http_response_status_code=\"200\"}}"
                    )),
                    bad: Some(format!(
                        "{metric}{{{sel}, http_request_method=\"POST\", http_response_status_code=\"503\"}}"
                    )),
                    total: None,
                },
            });
        }
        if let Some(s) = self.success {
            check_pipeline("success", &s.pipeline)?;
            let sel = format!("job=\"{job}\", pipeline=\"{}\"", s.pipeline);
            return Ok(Sli::Pipelens {
                error: q(format!(
                    "sum(rate(ml_pipeline_runs_total{{{sel}, outcome=\"failure\"}}[{PLACEHOLDER}]))"
                )),
                total: q(format!(
                    "sum(rate(ml_pipeline_runs_total{{{sel}}}[{PLACEHOLDER}]))"
                )),
                inputs: TestInputs {
                    good: Some(format!(
                        "ml_pipeline_runs_total{{{sel}, outcome=\"success\"}}"
                    )),
                    bad: Some(format!(
                        "ml_pipeline_runs_total{{{sel}, outcome=\"failure\"}}"
                    )),
                    total: None,
                },
            });
        }
        if let Some(a) = self.accuracy {
            check_pipeline("accuracy", &a.pipeline)?;
            let mut sel = format!("job=\"{job}\", pipeline=\"{}\"", a.pipeline);
            if let Some(stage) = &a.stage {
                if !plain_label_value(stage) {
                    return Err((
                        field("accuracy.stage"),
                        format!("{stage:?} is not a stage name"),
                    ));
                }
                sel.push_str(&format!(", stage=\"{stage}\""));
            }
            let metric = "ml_pipeline_feedback_total";
            return Ok(Sli::Pipelens {
                error: q(format!(
                    "sum(rate({metric}{{{sel}, outcome=\"incorrect\"}}[{PLACEHOLDER}]))"
                )),
                total: q(format!("sum(rate({metric}{{{sel}}}[{PLACEHOLDER}]))")),
                inputs: TestInputs {
                    good: Some(format!("{metric}{{{sel}, outcome=\"correct\"}}")),
                    bad: Some(format!("{metric}{{{sel}, outcome=\"incorrect\"}}")),
                    total: None,
                },
            });
        }
        if let Some(l) = self.latency {
            check_pipeline("latency", &l.pipeline)?;
            if !DURATION_BUCKETS.contains(&l.threshold_seconds) {
                return Err((
                    field("latency.threshold_seconds"),
                    format!(
                        "{} is not a bucket boundary of ml_pipeline_duration_seconds; use one of {:?}",
                        l.threshold_seconds, DURATION_BUCKETS
                    ),
                ));
            }
            let sel = format!("job=\"{job}\", pipeline=\"{}\"", l.pipeline);
            let bucket = format!(
                "ml_pipeline_duration_seconds_bucket{{{sel}, le=\"{}\"}}",
                le(l.threshold_seconds)
            );
            let count = format!("ml_pipeline_duration_seconds_count{{{sel}}}");
            return Ok(Sli::Pipelens {
                error: q(format!(
                    "sum(rate({count}[{PLACEHOLDER}])) - sum(rate({bucket}[{PLACEHOLDER}]))"
                )),
                total: q(format!("sum(rate({count}[{PLACEHOLDER}]))")),
                inputs: TestInputs {
                    good: Some(bucket),
                    bad: None,
                    total: Some(count),
                },
            });
        }
        let c = self.confidence.expect("one shortcut is set");
        check_pipeline("confidence", &c.pipeline)?;
        // A boundary below 1: at 1 every output would be "at or below".
        if !CONFIDENCE_BUCKETS.contains(&c.min) || c.min >= 1.0 {
            return Err((
                field("confidence.min"),
                format!(
                    "{} is not a bucket boundary of ml_model_confidence below 1; use one of {:?}",
                    c.min,
                    &CONFIDENCE_BUCKETS[..CONFIDENCE_BUCKETS.len() - 1]
                ),
            ));
        }
        for m in &c.models {
            if !plain_label_value(m) || m.contains(['|', '.', '*']) {
                return Err((
                    field("confidence.models"),
                    format!("{m:?} is not a model name"),
                ));
            }
        }
        let mut sel = format!("job=\"{job}\", pipeline=\"{}\"", c.pipeline);
        if !c.models.is_empty() {
            sel.push_str(&format!(", model_name=~\"{}\"", c.models.join("|")));
        }
        let model = c.models.first().map_or("model", String::as_str);
        let test_sel = format!(
            "job=\"{job}\", pipeline=\"{}\", model_name=\"{model}\"",
            c.pipeline
        );
        Ok(Sli::Pipelens {
            error: q(format!(
                "sum(rate(ml_model_confidence_bucket{{{sel}, le=\"{}\"}}[{PLACEHOLDER}]))",
                le(c.min)
            )),
            total: q(format!(
                "sum(rate(ml_model_confidence_count{{{sel}}}[{PLACEHOLDER}]))"
            )),
            inputs: TestInputs {
                good: None,
                bad: Some(format!(
                    "ml_model_confidence_bucket{{{test_sel}, le=\"{}\"}}",
                    le(c.min)
                )),
                total: Some(format!("ml_model_confidence_count{{{test_sel}}}")),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_queries_need_the_placeholder_and_valid_promql() {
        let q = window_query("sum(rate(x[{{ .window }}]))").unwrap();
        assert_eq!(q.over("1h"), "sum(rate(x[1h]))");
        assert!(window_query("sum(rate(x[5m]))")
            .unwrap_err()
            .contains("placeholder"));
        assert!(window_query("sum(rate(x[{{.window}}])")
            .unwrap_err()
            .contains("not valid PromQL"));
    }

    #[test]
    fn shortcuts_read_the_contract_metrics() {
        let yaml = "latency: {pipeline: ceiling-layout, threshold_seconds: 0.25}";
        let p: PipelensSli = serde_yaml_ng::from_str(yaml).unwrap();
        let Sli::Pipelens { error, total, .. } = p.into_sli().unwrap() else {
            panic!("not a pipelens SLI")
        };
        assert_eq!(
            error.over("5m"),
            "sum(rate(ml_pipeline_duration_seconds_count{job=\"pipelens\", pipeline=\"ceiling-layout\"}[5m])) \
             - sum(rate(ml_pipeline_duration_seconds_bucket{job=\"pipelens\", pipeline=\"ceiling-layout\", le=\"0.25\"}[5m]))"
        );
        assert!(total
            .over("5m")
            .starts_with("sum(rate(ml_pipeline_duration_seconds_count{"));
        check_promql(&error.over("30d")).unwrap();
    }

    #[test]
    fn shortcut_mistakes_name_their_field() {
        for (yaml, field) in [
            (
                "confidence: {pipeline: p, min: 0.65}",
                "sli.pipelens.confidence.min",
            ),
            (
                "confidence: {pipeline: p, min: 1.0}",
                "sli.pipelens.confidence.min",
            ),
            (
                "success: {pipeline: \"a\\\"b\"}",
                "sli.pipelens.success.pipeline",
            ),
            ("{}", "sli.pipelens"),
        ] {
            let p: PipelensSli = serde_yaml_ng::from_str(yaml).unwrap();
            assert_eq!(p.into_sli().unwrap_err().0, field, "{yaml}");
        }
    }
}
