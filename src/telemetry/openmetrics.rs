//! /metrics in OpenMetrics text 1.0, with exemplars on histogram buckets.
//!
//! `opentelemetry-prometheus` writes the Prometheus text format 0.0.4 only,
//! which has no exemplars. This rewrites that output line by line, so both
//! formats carry exactly the same series and values: counter families lose
//! their `_total` in `# TYPE`/`# HELP` (samples keep it, as OpenMetrics
//! asks), bucket samples gain `# {trace_id="…",span_id="…"} value time`
//! when a kept trace was observed in that bucket, and `# EOF` ends the text.

use std::fmt::Write as _;
use std::time::UNIX_EPOCH;

use super::exemplars::{self, Exemplar};

/// The `Content-Type` of [`encode_openmetrics`]'s output.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether an `Accept` header asks for OpenMetrics (Prometheus' scrapes do
/// by default).
pub fn wants_openmetrics(accept: &str) -> bool {
    accept.split(',').any(|part| {
        let mut params = part.split(';');
        let media = params.next().unwrap_or("").trim();
        let q_zero = params.any(|p| {
            p.trim()
                .strip_prefix("q=")
                .and_then(|q| q.trim().parse::<f64>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        media.eq_ignore_ascii_case("application/openmetrics-text") && !q_zero
    })
}

/// Every metric in `registry` in OpenMetrics text, with the exemplars of
/// kept traces.
pub fn encode_openmetrics(registry: &prometheus::Registry) -> String {
    to_openmetrics(&super::init::encode_metrics(registry))
}

/// Rewrites Prometheus text 0.0.4 into OpenMetrics 1.0.
pub(crate) fn to_openmetrics(text: &str) -> String {
    let with_exemplars = exemplars::any();
    let mut out = String::with_capacity(text.len() + text.len() / 4 + 8);
    // The current histogram series (labels without `le`) and its stored
    // exemplars, and the previous bucket's bound.
    let mut series: Option<(String, Vec<Exemplar>)> = None;
    let mut lower = f64::NEG_INFINITY;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let _ = match kind {
                "counter" => match name.strip_suffix("_total") {
                    Some(base) => writeln!(out, "# TYPE {base} counter"),
                    None => writeln!(out, "# TYPE {name} unknown"),
                },
                _ => writeln!(out, "# TYPE {name} {kind}"),
            };
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let name = name.strip_suffix("_total").unwrap_or(name);
            let _ = writeln!(out, "# HELP {name} {}", help.replace('"', "\\\""));
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        out.push_str(line);
        if with_exemplars {
            if let Some(sample) = Bucket::parse(line) {
                if series.as_ref().map(|(k, _)| k.as_str()) != Some(sample.key.as_str()) {
                    let found = exemplars::of_series(&sample.key);
                    series = Some((sample.key, found));
                    lower = f64::NEG_INFINITY;
                }
                if let Some((_, found)) = &series {
                    let upper = sample.le;
                    if let Some(e) = found
                        .iter()
                        .rev()
                        .find(|e| e.value > lower && e.value <= upper)
                    {
                        write_exemplar(&mut out, e);
                    }
                    lower = upper;
                }
            }
        }
        out.push('\n');
    }
    out.push_str("# EOF\n");
    out
}

fn write_exemplar(out: &mut String, e: &Exemplar) {
    let seconds = e
        .time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let _ = write!(
        out,
        " # {{trace_id=\"{}\",span_id=\"{}\"}} {} {:.3}",
        e.trace_id, e.span_id, e.value, seconds
    );
}

/// A `…_bucket{…,le="…"} n` sample: its series key (name without
/// `_bucket`, labels without `le`) and its upper bound.
struct Bucket {
    key: String,
    le: f64,
}

impl Bucket {
    fn parse(line: &str) -> Option<Self> {
        let open = line.find('{')?;
        let name = line[..open].strip_suffix("_bucket")?;
        let labels = parse_labels(&line[open + 1..])?;
        let mut le = None;
        let rest: Vec<(&str, &str)> = labels
            .iter()
            .filter(|(k, v)| {
                if *k == "le" {
                    le = Some(*v);
                    false
                } else {
                    true
                }
            })
            .map(|(k, v)| (*k, *v))
            .collect();
        let le = match le? {
            "+Inf" => f64::INFINITY,
            v => v.parse().ok()?,
        };
        let mut sorted = rest;
        sorted.sort();
        Some(Self {
            key: exemplars::series_key(name, sorted.into_iter()),
            le,
        })
    }
}

/// The `name="value"` pairs after a `{`, values still escaped, up to the
/// closing `}`.
fn parse_labels(s: &str) -> Option<Vec<(&str, &str)>> {
    let mut out = Vec::new();
    let mut rest = s;
    loop {
        rest = rest.trim_start_matches(',');
        if rest.starts_with('}') {
            return Some(out);
        }
        let eq = rest.find("=\"")?;
        let name = &rest[..eq];
        let body = &rest[eq + 2..];
        let mut end = None;
        let mut escaped = false;
        for (i, c) in body.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => {
                    end = Some(i);
                    break;
                }
                _ => escaped = false,
            }
        }
        let end = end?;
        out.push((name, &body[..end]));
        rest = &body[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP ml_pipeline_runs_total Pipeline runs\n\
# TYPE ml_pipeline_runs_total counter\n\
ml_pipeline_runs_total{outcome=\"success\",pipeline=\"p\"} 3\n\
# HELP ml_pipeline_duration_seconds Run \"duration\"\n\
# TYPE ml_pipeline_duration_seconds histogram\n\
ml_pipeline_duration_seconds_bucket{pipeline=\"p\",le=\"0.1\"} 1\n\
ml_pipeline_duration_seconds_bucket{pipeline=\"p\",le=\"+Inf\"} 3\n\
ml_pipeline_duration_seconds_sum{pipeline=\"p\"} 0.5\n\
ml_pipeline_duration_seconds_count{pipeline=\"p\"} 3\n\
# HELP target_info Target metadata\n\
# TYPE target_info gauge\n\
target_info{service_name=\"a,b=\\\"c}\"} 1\n";

    #[test]
    fn counters_lose_total_in_type_and_help_only_and_eof_ends_it() {
        let om = to_openmetrics(TEXT);
        assert!(om.contains("# TYPE ml_pipeline_runs counter\n"), "{om}");
        assert!(
            om.contains("# HELP ml_pipeline_runs Pipeline runs\n"),
            "{om}"
        );
        assert!(om.contains("\nml_pipeline_runs_total{outcome=\"success\",pipeline=\"p\"} 3\n"));
        assert!(om.contains("# HELP ml_pipeline_duration_seconds Run \\\"duration\\\"\n"));
        assert!(om.ends_with("# EOF\n"));
        let samples = |t: &str| -> Vec<String> {
            t.lines()
                .filter(|l| !l.starts_with('#'))
                .map(|l| l.split(" # ").next().unwrap().to_owned())
                .collect()
        };
        assert_eq!(samples(TEXT), samples(&om), "same samples either way");
    }

    #[test]
    fn bucket_lines_parse_with_escaped_and_awkward_values() {
        let b = Bucket::parse("h_bucket{a=\"x,y\",z=\"q\\\"}\",le=\"0.25\"} 4").unwrap();
        assert_eq!(b.key, "h{a=\"x,y\",z=\"q\\\"}\"}");
        assert_eq!(b.le, 0.25);
        assert!(Bucket::parse("h_sum{a=\"x\"} 4").is_none());
        assert_eq!(
            Bucket::parse("h_bucket{le=\"+Inf\"} 4").unwrap().le,
            f64::INFINITY
        );
    }

    #[test]
    fn accept_headers_choose_the_format() {
        assert!(wants_openmetrics(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
             version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        ));
        assert!(!wants_openmetrics("text/plain;version=0.0.4"));
        assert!(!wants_openmetrics("*/*"));
        assert!(!wants_openmetrics("application/openmetrics-text;q=0"));
    }
}
