//! `pipelens slo generate` is the only author of the SLO rules and their
//! tests:
//!
//! - the checked-in `prometheus/rules/slos.yml` and
//!   `prometheus/tests/slos_test.yml` are exactly what the generator writes
//!   for `prometheus/slos.yaml` (regenerate with the command in the failure);
//! - the generated rules pass `promtool check rules` and the generated tests
//!   pass `promtool test rules`;
//! - a plain Sloth spec (Sloth's own getting-started example) generates
//!   valid rules;
//! - invalid specs are refused, naming the SLO and the field;
//! - the bucket boundaries the generator accepts for latency and confidence
//!   thresholds are the ones the service really exports on /metrics.
//!
//! A missing promtool fails the test with the command that installs it.

#[allow(dead_code, unreachable_pub)]
#[path = "../src/bin/pipelens/demo/mod.rs"]
mod demo;
#[allow(dead_code, unreachable_pub)]
#[path = "../src/bin/pipelens/slo/sli.rs"]
mod sli;
mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use support::service::metrics_after_a_mix;
use support::stack::{read, repo, require_tool, run};

/// The spec, as given to the generator (relative to the repository root:
/// the generated files name it in their header).
const SPEC: &str = "prometheus/slos.yaml";

/// The command that regenerates the checked-in files.
const REGENERATE: &str = "cargo run -- slo generate --spec prometheus/slos.yaml --out prometheus";

/// Runs `pipelens slo generate` from the repository root: (success, output).
fn generate(spec: &Path, out: &Path) -> (bool, String) {
    run(Command::new(env!("CARGO_BIN_EXE_pipelens"))
        .current_dir(repo())
        .args(["slo", "generate", "--spec"])
        .arg(spec)
        .arg("--out")
        .arg(out))
}

/// The first line where two texts differ, for the failure message.
fn first_difference(expected: &str, actual: &str) -> String {
    for (i, (e, a)) in expected.lines().zip(actual.lines()).enumerate() {
        if e != a {
            return format!("line {}:\n  checked in: {e}\n  generated:  {a}", i + 1);
        }
    }
    format!(
        "one is a prefix of the other ({} vs {} lines)",
        expected.lines().count(),
        actual.lines().count()
    )
}

#[test]
fn the_checked_in_rules_and_tests_are_the_generators_output() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = generate(Path::new(SPEC), dir.path());
    assert!(ok, "pipelens slo generate failed on {SPEC}:\n{out}");
    for file in ["rules/slos.yml", "tests/slos_test.yml"] {
        let generated = std::fs::read_to_string(dir.path().join(file)).unwrap();
        let checked_in = read(Path::new("prometheus").join(file));
        assert!(
            generated == checked_in,
            "prometheus/{file} is not what `pipelens slo generate` writes for {SPEC}: regenerate it \
             with\n  {REGENERATE}\nFirst difference: {}",
            first_difference(&checked_in, &generated)
        );
    }
}

#[test]
fn the_generated_rules_are_valid_and_their_tests_pass() {
    let promtool = require_tool(&["promtool"]);
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = generate(Path::new(SPEC), dir.path());
    assert!(ok, "{out}");
    let (ok, out) = run(Command::new(&promtool)
        .args(["check", "rules"])
        .arg(dir.path().join("rules/slos.yml")));
    assert!(ok, "promtool check rules on the generated rules:\n{out}");
    let (ok, out) = run(Command::new(&promtool).current_dir(dir.path()).args([
        "test",
        "rules",
        "tests/slos_test.yml",
    ]));
    assert!(ok, "promtool test rules on the generated tests:\n{out}");
    assert!(out.contains("SUCCESS"), "{out}");
    // Every SLO of the spec has its four cases, the page firing in time.
    let tests = std::fs::read_to_string(dir.path().join("tests/slos_test.yml")).unwrap();
    let spec = read(SPEC);
    let slos = spec.matches("\n  - name: ").count();
    assert!(slos >= 4, "the demo spec declares {slos} SLOs");
    for case in [
        "a fast burn",
        "a slow burn",
        "no errors fire nothing",
        "no traffic fires nothing",
    ] {
        assert_eq!(tests.matches(case).count(), slos, "{case}");
    }
}

/// Sloth's own getting-started example (`examples/getting-started.yml` of
/// slok/sloth), as a user would bring it.
const SLOTH_GETTING_STARTED: &str = r##"version: "prometheus/v1"
service: "myservice"
labels:
  owner: "myteam"
  repo: "myorg/myservice"
  tier: "2"
slos:
  # We allow failing (5xx and 429) 1 request every 1000 requests (99.9%).
  - name: "requests-availability"
    objective: 99.9
    description: "Common SLO based on availability for HTTP request responses."
    sli:
      events:
        error_query: sum(rate(http_request_duration_seconds_count{job="myservice",code=~"(5..|429)"}[{{.window}}]))
        total_query: sum(rate(http_request_duration_seconds_count{job="myservice"}[{{.window}}]))
    alerting:
      name: MyServiceHighErrorRate
      labels:
        category: "availability"
      annotations:
        # Overwrite default Sloth SLO alert summmary on ticket and page alerts.
        summary: "High error rate on 'myservice' requests responses"
      page_alert:
        labels:
          severity: pageteam
          routing_key: myteam
      ticket_alert:
        labels:
          severity: "slack"
          slack_channel: "#alerts-myteam"
"##;

#[test]
fn a_plain_sloth_spec_generates_valid_rules() {
    let promtool = require_tool(&["promtool"]);
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("sloth.yml");
    std::fs::write(&spec, SLOTH_GETTING_STARTED).unwrap();
    let out_dir = dir.path().join("out");
    let (ok, out) = generate(&spec, &out_dir);
    assert!(ok, "{out}");
    assert!(
        out.contains("\"requests-availability\" has no generated test"),
        "the generator should say it wrote no test for an events SLI:\n{out}"
    );
    let rules = std::fs::read_to_string(out_dir.join("rules/slos.yml")).unwrap();
    for expected in [
        "record: slo:sli_error:ratio_rate5m",
        "record: slo:sli_error:ratio_rate30d",
        "record: slo:period_error_budget_remaining:ratio",
        "alert: MyServiceHighErrorRate",
        "severity: pageteam",
        "slack_channel: '#alerts-myteam'",
        "sloth_id: myservice-requests-availability",
    ] {
        assert!(rules.contains(expected), "no {expected:?} in:\n{rules}");
    }
    let (ok, out) = run(Command::new(&promtool)
        .args(["check", "rules"])
        .arg(out_dir.join("rules/slos.yml")));
    assert!(ok, "{out}");
}

#[test]
fn invalid_specs_are_refused_naming_the_slo_and_the_field() {
    let spec = read(SPEC);
    let dir = tempfile::tempdir().unwrap();
    // (what to replace in the demo spec, with what, the SLO and field named)
    let cases: &[(&str, &str, &str, &str)] = &[
        ("objective: 99.9\n", "objective: 99.9\n    objectve: 99\n", "run-api-availability", "objectve"),
        ("objective: 99.5\n", "objective: 100\n", "run-success", "objective"),
        ("objective: 99\n", "objective: 0\n", "run-latency", "objective"),
        ("objective: 95\n", "objective: -5\n", "model-confidence", "objective"),
        (
            "threshold_seconds: 0.25",
            "threshold_seconds: 0.3",
            "run-latency",
            "sli.pipelens.latency.threshold_seconds",
        ),
        ("min: 0.6", "min: 0.65", "model-confidence", "sli.pipelens.confidence.min"),
        (
            "      pipelens:\n        success: {pipeline: ceiling-layout}",
            "      events:\n        error_query: sum(rate(x_total{outcome=\"failure\"}[{{.window}}])\n        total_query: sum(rate(x_total[{{.window}}]))",
            "run-success",
            "sli.events.error_query",
        ),
        (
            "      pipelens:\n        success: {pipeline: ceiling-layout}",
            "      raw:\n        error_ratio_query: 1 - avg(x[5m])",
            "run-success",
            "sli.raw.error_ratio_query",
        ),
        (
            "availability: {pipeline: ceiling-layout}",
            "availability: {pipeline: ceiling-layout, route: x}",
            "run-api-availability",
            "route",
        ),
    ];
    for (i, (from, to, slo, field)) in cases.iter().enumerate() {
        assert!(spec.contains(from), "the demo spec has no {from:?}");
        let path = dir.path().join(format!("bad-{i}.yaml"));
        std::fs::write(&path, spec.replacen(from, to, 1)).unwrap();
        let (ok, out) = generate(&path, &dir.path().join(format!("out-{i}")));
        assert!(!ok, "case {i} ({to:?}) was accepted:\n{out}");
        assert!(
            out.contains(&format!("SLO \"{slo}\"")) && out.contains(field),
            "case {i} ({to:?}): the error should name SLO {slo:?} and field {field:?}:\n{out}"
        );
        assert!(
            !dir.path().join(format!("out-{i}")).exists(),
            "case {i}: files written for a refused spec"
        );
    }
}

/// The `le` values of a histogram on a /metrics text.
fn bucket_bounds(metrics: &str, histogram: &str) -> BTreeSet<String> {
    let prefix = format!("{histogram}_bucket{{");
    metrics
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| {
            l.split("le=\"")
                .nth(1)?
                .split('"')
                .next()
                .map(str::to_owned)
        })
        .filter(|le| le != "+Inf")
        .collect()
}

#[tokio::test]
async fn accepted_thresholds_are_the_buckets_the_service_exports() {
    let metrics = metrics_after_a_mix().await.body;
    for (histogram, generator) in [
        ("ml_pipeline_duration_seconds", &sli::DURATION_BUCKETS[..]),
        ("ml_model_confidence", &sli::CONFIDENCE_BUCKETS[..]),
    ] {
        let exported = bucket_bounds(&metrics, histogram);
        let accepted: BTreeSet<String> = generator.iter().map(|b| format!("{b}")).collect();
        assert_eq!(
            accepted, exported,
            "the generator's bucket boundaries for {histogram} (as it writes them in `le`) must be \
             the service's"
        );
    }
}
