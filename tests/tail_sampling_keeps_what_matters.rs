//! Tail sampling end to end: a served pipeline's real spans and log records
//! go through the real processors to an OTLP receiver. With a keep ratio of
//! 0 and a 250 ms threshold, no healthy trace is exported and every failed,
//! half-failed, slow or upstream-sampled run's whole trace is; the decision
//! counts on /metrics add up to the runs sent; roots that never end stay
//! within the memory bound. Then exemplars: /metrics in OpenMetrics carries
//! the same series as the text format, with exemplars whose traces were all
//! exported, and Debian's Prometheus (exemplar storage on) scraping the
//! service returns only such trace ids from /api/v1/query_exemplars.
//!
//! One test in its own binary: telemetry is process-global.

#[allow(dead_code, unreachable_pub)]
#[path = "../src/bin/pipelens/demo/mod.rs"]
mod demo;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use hyper::Method;
use pipelens::server::{self, Served, Server};
use pipelens::telemetry::{self, HoldLimits, Protocol, SlowThreshold, TelemetryConfig};
use pipelens::{Model, ModelError, Pipeline, Prediction, Stage};
use serde::Deserialize;
use support::otlp::{self, hex, Received};
use support::service::{send, serve, Reply};
use support::stack::{free_port, get_json, require_tool, urlencode, Children};

const PIPELINE: &str = "tails";
const MAX_HELD: usize = 64;

/// What a run should do: `ok`, `half` (one candidate fails, the other
/// wins), `fail` (both fail), with the winning candidate sleeping `sleep_ms`.
#[derive(Debug, Deserialize)]
struct Job {
    mode: String,
    #[serde(default)]
    sleep_ms: u64,
}

struct Primary;

impl Model<Job, f64> for Primary {
    fn name(&self) -> &str {
        "primary"
    }
    fn version(&self) -> &str {
        "1"
    }
    fn run(&self, job: &Job) -> Result<Prediction<f64>, ModelError> {
        match job.mode.as_str() {
            "half" | "fail" => Err(ModelError::Computation("primary failed".into())),
            _ => Ok(Prediction::new(1.0, 0.9)),
        }
    }
}

struct Backup;

impl Model<Job, f64> for Backup {
    fn name(&self) -> &str {
        "backup"
    }
    fn version(&self) -> &str {
        "1"
    }
    fn run(&self, job: &Job) -> Result<Prediction<f64>, ModelError> {
        std::thread::sleep(Duration::from_millis(job.sleep_ms));
        match job.mode.as_str() {
            "fail" => Err(ModelError::Computation("backup failed".into())),
            _ => Ok(Prediction::new(2.0, 0.5)),
        }
    }
}

fn pipeline(meter: opentelemetry::metrics::Meter) -> Served<Job, f64> {
    let p = Pipeline::builder(PIPELINE)
        .meter(meter)
        .stage(
            Stage::parallel("candidates")
                .model(Primary)
                .model(Backup)
                .timeout(Duration::from_secs(5)),
        )
        .build()
        .unwrap();
    Served::new(p)
}

/// The trace id the service answered with (`traceresponse`).
fn trace_of(reply: &Reply) -> Option<String> {
    let v = reply.headers.get("traceresponse")?.to_str().ok()?;
    v.split('-').nth(1).map(str::to_owned)
}

async fn run(addr: SocketAddr, body: &str, headers: &[(&str, &str)]) -> Reply {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    send(
        addr,
        Method::POST,
        &server::runs_route(PIPELINE),
        body,
        &all,
    )
    .await
}

/// `pipelens_traces_sampled_total` by `decision/reason`, and the held gauge.
async fn decisions(addr: SocketAddr) -> (BTreeMap<String, u64>, u64) {
    let text = send(addr, Method::GET, "/metrics", "", &[]).await.body;
    let mut counts = BTreeMap::new();
    let mut held = None;
    for line in text.lines() {
        let value = || line.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64;
        if line.starts_with("pipelens_traces_sampled_total{") {
            let label = |name: &str| {
                let start = line.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
                line[start..].split('"').next().unwrap().to_owned()
            };
            counts.insert(
                format!("{}/{}", label("decision"), label("reason")),
                value(),
            );
        } else if line.starts_with("pipelens_traces_held") {
            held = Some(value());
        }
    }
    assert_eq!(
        counts.len(),
        9,
        "every decision series is exported:\n{text}"
    );
    (counts, held.expect("pipelens_traces_held on /metrics"))
}

fn delta(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>, key: &str) -> u64 {
    after[key] - before[key]
}

/// Every received span's trace id.
fn traces(received: &Received) -> BTreeSet<String> {
    received.spans().iter().map(|s| hex(&s.trace_id)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_sampling_keeps_failed_slow_and_parented_traces_whole_and_exemplars_land_on_them() {
    let (otlp_addr, received) = otlp::start_grpc().await;
    let endpoint = format!("http://{otlp_addr}");
    let config = TelemetryConfig {
        traces: Some(telemetry::OtlpTarget {
            endpoint: endpoint.clone(),
            protocol: Protocol::Grpc,
        }),
        logs: Some(telemetry::OtlpTarget {
            endpoint,
            protocol: Protocol::Grpc,
        }),
        traces_keep_ratio: 0.0,
        traces_keep_slower_than: SlowThreshold::Duration(Duration::from_millis(250)),
        traces_hold: HoldLimits {
            max_traces: MAX_HELD,
            ..HoldLimits::default()
        },
        ..TelemetryConfig::default()
    };
    let telemetry = telemetry::init_with_writer(&config, std::io::sink).unwrap();
    let server = Server::builder()
        .telemetry(&telemetry)
        .pipeline(pipeline(telemetry.meter()))
        .build()
        .unwrap();
    let addr = serve(server).await;
    // Every model loaded (each load is a trace of its own, decided too)
    // before counting.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while send(addr, Method::GET, "/ready", "", &[]).await.status != 200 {
        assert!(std::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The load spans close just after the models report loaded.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (before, _) = decisions(addr).await;

    // Runs of every kind, each in its own trace.
    let mut healthy = Vec::new();
    let mut failed = Vec::new();
    let mut half = Vec::new();
    let mut slow = Vec::new();
    let mut parented = Vec::new();
    for _ in 0..30 {
        let r = run(addr, r#"{"mode":"ok"}"#, &[]).await;
        assert_eq!(r.status, 200, "{}", r.body);
        healthy.push(trace_of(&r).unwrap());
    }
    for _ in 0..5 {
        let r = run(addr, r#"{"mode":"fail"}"#, &[]).await;
        assert!(r.status.is_server_error(), "{}: {}", r.status, r.body);
        failed.push(trace_of(&r).unwrap());
        let r = run(addr, r#"{"mode":"half"}"#, &[]).await;
        assert_eq!(r.status, 200, "{}", r.body);
        half.push(trace_of(&r).unwrap());
    }
    for _ in 0..2 {
        let r = run(addr, r#"{"mode":"ok","sleep_ms":400}"#, &[]).await;
        assert_eq!(r.status, 200, "{}", r.body);
        slow.push(trace_of(&r).unwrap());
    }
    for i in 0..3u8 {
        let trace = format!("{:032x}", 0xabc0_u128 + u128::from(i));
        let header = format!("00-{trace}-00f067aa0ba902{i:02x}-01");
        // A caller that sampled at 10% and says so (OpenTelemetry's
        // consistent probability sampling threshold).
        let r = run(
            addr,
            r#"{"mode":"ok"}"#,
            &[
                ("traceparent", &header),
                ("tracestate", "ot=th:e666666666666"),
            ],
        )
        .await;
        assert_eq!(trace_of(&r).as_deref(), Some(trace.as_str()));
        parented.push(trace);
    }
    // Unsampled upstream: head sampling records nothing, so nothing is held
    // or counted.
    for i in 0..2u8 {
        let header = format!(
            "00-{:032x}-00f067aa0ba902{i:02x}-00",
            0xdef0_u128 + u128::from(i)
        );
        assert_eq!(
            run(addr, r#"{"mode":"ok"}"#, &[("traceparent", &header)])
                .await
                .status,
            200
        );
    }

    let must_keep: Vec<String> = [&failed, &half, &slow, &parented]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    let flush = |t: &telemetry::Telemetry| t.flush().unwrap();
    flush(&telemetry);
    received
        .wait_for("every kept trace", Duration::from_secs(20), |r| {
            let got = traces(r);
            must_keep.iter().all(|t| got.contains(t))
        })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    flush(&telemetry);

    let spans = received.spans();
    let got = traces(&received);
    for t in &healthy {
        assert!(!got.contains(t), "healthy trace {t} was exported");
    }
    // Kept traces are whole: the HTTP span, the run, the stage and both
    // models, every parent link resolving inside the trace (or upstream).
    for t in &must_keep {
        let of: Vec<_> = spans.iter().filter(|s| &hex(&s.trace_id) == t).collect();
        let names: BTreeSet<&str> = of.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(of.len(), 5, "trace {t}: {names:?}");
        for name in ["pipeline.run", "stage.run"] {
            assert!(names.contains(name), "trace {t} lacks {name}: {names:?}");
        }
        let ids: BTreeSet<Vec<u8>> = of.iter().map(|s| s.span_id.clone()).collect();
        for s in &of {
            let upstream = parented.contains(t) && s.name.starts_with("POST");
            assert!(
                s.parent_span_id.is_empty() || ids.contains(&s.parent_span_id) || upstream,
                "trace {t}: {} has a parent outside the trace",
                s.name
            );
        }
    }
    // Logs follow their trace: the healthy runs' INFO lines were dropped,
    // the failed runs' ERROR lines and the slow runs' INFO lines exported.
    let logs = received.logs();
    let log_traces: BTreeSet<String> = logs.iter().map(|l| hex(&l.trace_id)).collect();
    for t in &healthy {
        assert!(!log_traces.contains(t), "a log record of healthy trace {t}");
    }
    for t in failed.iter().chain(&slow) {
        assert!(log_traces.contains(t), "no log record of kept trace {t}");
    }

    let (after, held) = decisions(addr).await;
    assert_eq!(delta(&after, &before, "kept/error"), 10, "{after:?}");
    assert_eq!(delta(&after, &before, "kept/slow"), 2, "{after:?}");
    assert_eq!(delta(&after, &before, "kept/parent"), 3, "{after:?}");
    assert_eq!(delta(&after, &before, "dropped/ratio"), 30, "{after:?}");
    let total: u64 = after.keys().map(|k| delta(&after, &before, k)).sum();
    assert_eq!(total, 45, "one decision per recorded run: {after:?}");
    assert_eq!(held, 0, "nothing held once every root ended");

    // A flood of runs whose roots never end stays within the bound.
    let roots: Vec<tracing::Span> = (0..300)
        .map(|_| tracing::info_span!(parent: None, "flood.root"))
        .collect();
    for root in &roots {
        drop(tracing::info_span!(parent: root, "flood.child"));
    }
    let (flooded, held) = decisions(addr).await;
    assert_eq!(held, MAX_HELD as u64, "held traces stay at the bound");
    let overflow =
        delta(&flooded, &after, "dropped/overflow") + delta(&flooded, &after, "kept/overflow");
    assert_eq!(overflow, 300 - MAX_HELD as u64, "{flooded:?}");
    drop(roots);
    let (_, held) = decisions(addr).await;
    assert_eq!(held, 0, "the held traces are decided when their roots end");

    exemplars_land_on_kept_traces(addr, &received).await;
}

/// Parses exposition text into series -> value, without comments and
/// exemplars, leaving out the /metrics route's own series (the scrapes
/// change them).
fn samples(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty() && !l.contains("/metrics"))
        .map(|l| {
            let sample = l.split(" # ").next().unwrap();
            let (series, value) = sample.rsplit_once(' ').unwrap();
            (series.to_owned(), value.to_owned())
        })
        .collect()
}

async fn exemplars_land_on_kept_traces(addr: SocketAddr, received: &Received) {
    let kept = traces(received);
    let om_accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
    let om = send(addr, Method::GET, "/metrics", "", &[("accept", om_accept)]).await;
    let text = send(addr, Method::GET, "/metrics", "", &[]).await;
    assert!(om.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    assert!(text.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    assert!(om.body.ends_with("# EOF\n"));
    assert!(!text.body.contains("# EOF"));
    assert_eq!(
        samples(&om.body),
        samples(&text.body),
        "same series either way"
    );

    let exemplar_traces: Vec<String> = om
        .body
        .lines()
        .filter_map(|l| l.split_once(" # {trace_id=\""))
        .map(|(_, rest)| rest[..32].to_owned())
        .collect();
    for metric in [
        "ml_pipeline_duration_seconds_bucket",
        "ml_model_execution_duration_seconds_bucket",
        "http_server_request_duration_seconds_bucket",
    ] {
        assert!(
            om.body
                .lines()
                .any(|l| l.starts_with(metric) && l.contains(" # {trace_id=")),
            "no exemplar on {metric}"
        );
    }
    for t in &exemplar_traces {
        assert!(kept.contains(t), "exemplar trace {t} was never exported");
    }

    // Debian's Prometheus with exemplar storage scrapes the service.
    let prometheus_bin = require_tool(&["prometheus"]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut children = Children::new(dir, Duration::from_secs(120));
    let prom_addr = format!("127.0.0.1:{}", free_port());
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: pipelens\n    \
         static_configs:\n      - targets: ['{addr}']\n"
    );
    let config_path = dir.join("prometheus.yml");
    std::fs::write(&config_path, config).unwrap();
    children.spawn(
        "prometheus",
        Command::new(&prometheus_bin)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={prom_addr}"))
            .arg("--enable-feature=exemplar-storage"),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let url = format!(
        "http://{prom_addr}/api/v1/query_exemplars?query={}&start={}&end={}",
        urlencode("ml_pipeline_duration_seconds_bucket"),
        now - 3600,
        now + 3600
    );
    let stored: Vec<String> = children
        .wait_for(
            "Prometheus stores exemplars",
            Duration::from_secs(60),
            || {
                let url = url.clone();
                async move {
                    let body = get_json(&url).await?;
                    let ids: Vec<String> = body["data"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .flat_map(|s| s["exemplars"].as_array().cloned().unwrap_or_default())
                        .filter_map(|e| e["labels"]["trace_id"].as_str().map(str::to_owned))
                        .collect();
                    if ids.is_empty() {
                        Err(format!("no exemplars yet: {body}"))
                    } else {
                        Ok(ids)
                    }
                }
            },
        )
        .await;
    for t in &stored {
        assert!(
            kept.contains(t),
            "Prometheus exemplar {t} is not an exported trace"
        );
    }
}
