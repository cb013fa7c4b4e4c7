//! After real runs, /metrics holds every metric of the contract in
//! `pipelens::names::PROM_CONTRACT` with its labels, in a format that
//! `promtool check metrics` accepts.

#[allow(dead_code, unreachable_pub)]
#[path = "../src/bin/pipelens/demo/mod.rs"]
mod demo;
mod support;

use std::io::Write as _;
use std::process::{Command, Stdio};

use pipelens::names::PROM_CONTRACT;
use support::service::{metrics_after_a_mix, MIX_ROOMS};

/// The labels of every sample line of `name` (histograms: of `name_bucket`).
fn label_sets(text: &str, name: &str) -> Vec<Vec<String>> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, _) = l.rsplit_once(' ')?;
            let (metric, labels) = series.split_once('{').unwrap_or((series, "}"));
            if metric != name && metric != format!("{name}_bucket") {
                return None;
            }
            Some(
                labels
                    .trim_end_matches('}')
                    .split(',')
                    .filter_map(|kv| kv.split_once('=').map(|(k, _)| k.to_owned()))
                    .collect(),
            )
        })
        .collect()
}

#[tokio::test]
async fn every_contract_metric_is_exported_with_its_labels_and_passes_promtool() {
    let reply = metrics_after_a_mix().await;
    let content_type = reply.headers["content-type"].to_str().unwrap();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = reply.body;

    for (name, labels) in PROM_CONTRACT {
        let sets = label_sets(&text, name);
        assert!(!sets.is_empty(), "{name} is missing from /metrics:\n{text}");
        let mut expected: Vec<&str> = labels.to_vec();
        expected.sort_unstable();
        for set in &sets {
            let mut got: Vec<&str> = set
                .iter()
                .map(String::as_str)
                .filter(|l| *l != "le")
                .collect();
            got.sort_unstable();
            assert_eq!(
                got, expected,
                "{name}: every series carries exactly the contract's labels"
            );
        }
    }
    for needle in [
        r#"ml_model_executions_total{model_name="light_dense",outcome="error",pipeline="ceiling-layout",stage="lighting"}"#,
        r#"ml_model_errors_total{error_type="injected_fault",model_name="light_dense",pipeline="ceiling-layout"}"#,
        &format!(
            r#"ml_pipeline_runs_total{{outcome="success",pipeline="ceiling-layout"}} {MIX_ROOMS}"#
        ),
        r#"http_server_request_duration_seconds_count{http_request_method="POST",http_response_status_code="422",http_route="/v1/pipelines/ceiling-layout/runs"} 1"#,
        r#"ml_model_loaded{model_name="smoke_detector",model_version="1.0.0",pipeline="ceiling-layout"} 1"#,
    ] {
        assert!(text.contains(needle), "missing {needle}:\n{text}");
    }

    let promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "promtool is required ({e}): install it with `apt-get install -y prometheus` \
                 (scripts/test does this)"
            )
        });
    promtool
        .stdin
        .as_ref()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
