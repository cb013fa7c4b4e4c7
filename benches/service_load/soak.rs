//! The soak: both demo pipelines under load at once, for minutes, with the
//! stack's telemetry settings (`docker-compose.yml`): tail sampling keeping
//! errors, runs slower than their pipeline's recent p99 and 10% of the
//! rest; JSON log lines on stdout; spans and log records over OTLP to the
//! bench's collector. The sentiment pipeline's remote candidate calls the
//! scoring endpoint in the same process, which continues the run's trace
//! from `traceparent`: the topology in which every healthy run used to be
//! kept as `parent`. The sentiment requests come from a caller instrumented
//! with an OpenTelemetry SDK's default sampler: each carries a new trace's
//! `traceparent` flagged sampled and no `tracestate` threshold, which by
//! default (`PIPELENS_TRACES_KEEP_PARENT=threshold`) keeps nothing.
//!
//! Two models fail 1% of their calls (`PIPELENS_FAULTS`), so each
//! pipeline has error traces whose number the service's own
//! `ml_model_errors_total` gives. At the end it checks:
//! - one sampling decision per run (fragments are decided with their run);
//! - kept as `error`: every run with a failed model;
//! - kept as `slow`: about 1% of the other runs (the threshold is each
//!   pipeline's own recent p99, re-estimated as it goes: 0.5% to 2%);
//! - kept as `parent`: none (no caller says it sampled below 1);
//! - kept as `ratio`: 10% of the rest, within 4 standard deviations of the
//!   binomial count;
//! - no trace decided early (`overflow`, `evicted`), no span or log record
//!   dropped (`queue_full`) and no export failed;
//! - resident memory plateaus: its peak over the last third of the run is
//!   within 10% (plus 4 MiB) of its peak over the first third.

use std::time::{Duration, Instant};

use crate::load::{self, Caller, Outcome};
use crate::sink::Collector;
use crate::target::{export_errors, free_addr, items_dropped, metric_sum, Launch, Service};
use crate::{CEILING_ROUTE, REVIEW, ROOM, SENTIMENT_ROUTE};

/// How long the soak loads the service unless `--seconds` says otherwise.
pub(crate) const DEFAULT_SECONDS: u64 = 240;
/// How often memory and throughput are sampled.
const INTERVAL: Duration = Duration::from_secs(10);
/// The shortest soak whose memory can be judged: a sample in each third.
pub(crate) const MIN_SECONDS: u64 = 3 * INTERVAL.as_secs();
/// The keep ratio and slow threshold of `docker-compose.yml`.
const KEEP_RATIO: f64 = 0.1;
const SLOWER_THAN: &str = "p99";
/// The injected faults: one model of each pipeline fails 1% of its calls.
const FAULTS: &str =
    r#"{"light_sparse": {"error_rate": 0.01}, "naive_bayes": {"error_rate": 0.01}}"#;
const FAULTED: [&str; 2] = ["light_sparse", "naive_bayes"];
/// The share of healthy runs kept as slow, at least and at most.
const SLOW_SHARE: (f64, f64) = (0.005, 0.02);

/// One pipeline under load.
struct Load {
    name: &'static str,
    route: &'static str,
    body: &'static str,
    caller: Caller,
    total: Outcome,
}

/// One memory and throughput sample.
struct Sample {
    at: Duration,
    rss_mib: f64,
    anon_mib: f64,
    /// Traces tail sampling held and runs queued for the run store at
    /// that moment (`pipelens_traces_held`, `..._run_store_queue_depth`).
    held: f64,
    queued: f64,
    threads: f64,
    runs_per_second: [f64; 2],
    p99_ms: [f64; 2],
}

/// Runs the soak for `seconds` with `connections` split between the two
/// pipelines; prints what it measured and whether every check passed.
pub(crate) fn run(collector: &Collector, seconds: u64, connections: usize) -> bool {
    match soak(collector, seconds, connections.max(2)) {
        Ok(passed) => passed,
        Err(e) => {
            eprintln!("service_load: soak: {e}");
            false
        }
    }
}

fn soak(collector: &Collector, seconds: u64, connections: usize) -> Result<bool, String> {
    let store = tempfile::tempdir().map_err(|e| format!("a temp dir: {e}"))?;
    let addr = free_addr();
    let env = [
        ("PIPELENS_ADDR", addr.to_string()),
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://{}", collector.addr),
        ),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".to_owned()),
        ("PIPELENS_LOG_FORMAT", "json".to_owned()),
        ("PIPELENS_TRACES_KEEP_RATIO", KEEP_RATIO.to_string()),
        ("PIPELENS_TRACES_KEEP_SLOWER_THAN", SLOWER_THAN.to_owned()),
        ("PIPELENS_FAULTS", FAULTS.to_owned()),
        (
            "PIPELENS_RUN_STORE",
            format!("sqlite:{}", store.path().join("soak.db").display()),
        ),
    ];
    let launch = Launch {
        command: vec![
            env!("CARGO_BIN_EXE_pipelens").to_owned(),
            "serve".to_owned(),
        ],
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
        addr,
    };
    let mut service = Service::start(&launch)?;
    let mut loads = [
        Load {
            name: "ceiling-layout",
            route: CEILING_ROUTE,
            body: ROOM,
            caller: Caller::Direct,
            total: Outcome::default(),
        },
        Load {
            name: "sentiment",
            route: SENTIMENT_ROUTE,
            body: REVIEW,
            caller: Caller::AlwaysOn,
            total: Outcome::default(),
        },
    ];
    let per_load = connections / 2;
    println!(
        "soak: both demo pipelines for {seconds} s, {per_load} connections each, tail sampling \
         {KEEP_RATIO} + errors + slower than {SLOWER_THAN}, JSON logs, OTLP/HTTP to the bench's \
         collector, faults {FAULTS}; sentiment requests carry an always-on caller's sampled \
         traceparent"
    );
    println!(
        "| at s | RSS MiB | of it anonymous | threads | traces held | store queue | {} runs/s | {} p99 ms | {} runs/s | {} p99 ms |",
        loads[0].name, loads[0].name, loads[1].name, loads[1].name
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("load runtime: {e}"))?;
    let (spans_before, logs_before) = collector.counts();
    let started = Instant::now();
    let cpu_before = service.cpu_time();
    let mut samples = Vec::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        let left = Duration::from_secs(seconds).saturating_sub(started.elapsed());
        let length = INTERVAL.min(left).max(Duration::from_secs(1));
        let run = |l: &Load| {
            let target = load::Target {
                path: l.route,
                headers: "",
                body: l.body,
            };
            load::run_from(addr, target, per_load, length, l.caller)
        };
        let (a, b) = runtime.block_on(async { tokio::join!(run(&loads[0]), run(&loads[1])) });
        let mut sample = Sample {
            at: started.elapsed(),
            rss_mib: service.rss_mib(),
            anon_mib: service.rss_anon_mib(),
            held: f64::NAN,
            queued: f64::NAN,
            threads: service.threads(),
            runs_per_second: [0.0; 2],
            p99_ms: [0.0; 2],
        };
        let now = service.metrics();
        sample.held = metric_sum(&now, "pipelens_traces_held", &[]);
        sample.queued = metric_sum(&now, "pipelens_run_store_queue_depth", &[]);
        for (i, mut outcome) in [a, b].into_iter().enumerate() {
            sample.runs_per_second[i] = outcome.throughput();
            sample.p99_ms[i] = outcome.quantile_ms(0.99);
            loads[i].total.merge(outcome);
        }
        println!(
            "| {:.0} | {:.1} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {:.0} | {:.2} |",
            sample.at.as_secs_f64(),
            sample.rss_mib,
            sample.anon_mib,
            sample.threads,
            sample.held,
            sample.queued,
            sample.runs_per_second[0],
            sample.p99_ms[0],
            sample.runs_per_second[1],
            sample.p99_ms[1],
        );
        samples.push(sample);
    }
    let elapsed = started.elapsed();
    let cpu = service.cpu_time().saturating_sub(cpu_before);
    // Every run has answered; its trace was decided when its root ended.
    std::thread::sleep(Duration::from_secs(1));
    let metrics = service.metrics();
    let peak = service.peak_rss_mib();
    service.terminate(Duration::from_secs(15));
    // The exporter flushes at shutdown; give the collector a moment.
    std::thread::sleep(Duration::from_millis(500));
    let (spans_after, logs_after) = collector.counts();
    let spans = spans_after - spans_before;
    let logs = logs_after - logs_before;

    println!();
    let served: u64 = loads
        .iter()
        .map(|l| l.total.latencies_us.len() as u64)
        .sum();
    let failed: u64 = loads.iter().map(|l| l.total.failures()).sum();
    for load in &mut loads {
        let runs = load.total.latencies_us.len();
        println!(
            "{}: {runs} runs, {:.0} runs/s, p50 {:.2} ms, p99 {:.2} ms, {} failed requests",
            load.name,
            runs as f64 / elapsed.as_secs_f64(),
            load.total.quantile_ms(0.50),
            load.total.quantile_ms(0.99),
            load.total.failures(),
        );
    }
    println!(
        "service: {:.0} µs CPU per run, peak RSS {peak:.1} MiB",
        cpu.as_secs_f64() * 1e6 / served.max(1) as f64
    );

    let sampled = |decision: &str, reason: &str| {
        metric_sum(
            &metrics,
            "pipelens_traces_sampled_total",
            &[
                &format!("decision=\"{decision}\""),
                &format!("reason=\"{reason}\""),
            ],
        )
    };
    let decisions = metric_sum(&metrics, "pipelens_traces_sampled_total", &[]);
    let errors: f64 = FAULTED
        .iter()
        .map(|m| {
            metric_sum(
                &metrics,
                "ml_model_errors_total",
                &[&format!("model_name=\"{m}\"")],
            )
        })
        .sum();
    let kept_error = sampled("kept", "error");
    let kept_slow = sampled("kept", "slow");
    let kept_parent = sampled("kept", "parent");
    let kept_ratio = sampled("kept", "ratio");
    let dropped_ratio = sampled("dropped", "ratio");
    let early = ["overflow", "evicted"]
        .iter()
        .map(|r| sampled("kept", r) + sampled("dropped", r))
        .sum::<f64>();
    let kept = metric_sum(
        &metrics,
        "pipelens_traces_sampled_total",
        &["decision=\"kept\""],
    );
    let healthy = decisions - kept_error;
    let rest = kept_ratio + dropped_ratio;
    let expected_ratio = KEEP_RATIO * rest;
    let sigma = (rest * KEEP_RATIO * (1.0 - KEEP_RATIO)).sqrt();
    let queue_full = items_dropped(&metrics);
    let export_failed = export_errors(&metrics);
    // Runs still in flight when the load stopped may be decided or not.
    let in_flight = connections as f64;

    println!();
    println!("| traces | counted | predicted | check |");
    println!("|---|---|---|---|");
    let mut passed = true;
    let mut check = |what: &str, counted: f64, predicted: String, ok: bool| {
        passed &= ok;
        println!(
            "| {what} | {counted:.0} | {predicted} | {} |",
            if ok { "ok" } else { "FAILED" }
        );
    };
    check(
        "decided (one per run)",
        decisions,
        format!("{served} runs served ± {in_flight:.0} in flight"),
        (decisions - served as f64).abs() <= in_flight,
    );
    check(
        "kept: error",
        kept_error,
        format!("{errors:.0} model errors ± {in_flight:.0}"),
        (kept_error - errors).abs() <= in_flight,
    );
    check(
        "kept: slow",
        kept_slow,
        format!(
            "{:.0}..{:.0} ({:.1}%..{:.1}% of {healthy:.0} healthy)",
            SLOW_SHARE.0 * healthy,
            SLOW_SHARE.1 * healthy,
            SLOW_SHARE.0 * 100.0,
            SLOW_SHARE.1 * 100.0
        ),
        (SLOW_SHARE.0 * healthy..=SLOW_SHARE.1 * healthy).contains(&kept_slow),
    );
    check(
        "kept: parent",
        kept_parent,
        "0".to_owned(),
        kept_parent == 0.0,
    );
    check(
        "kept: ratio",
        kept_ratio,
        format!("{expected_ratio:.0} ± {:.0} (4σ)", 4.0 * sigma),
        (kept_ratio - expected_ratio).abs() <= 4.0 * sigma,
    );
    check(
        "decided early (overflow, evicted)",
        early,
        "0".to_owned(),
        early == 0.0,
    );
    check(
        "spans and log records dropped (queue_full)",
        queue_full,
        "0".to_owned(),
        queue_full == 0.0,
    );
    check(
        "export errors",
        export_failed,
        "0".to_owned(),
        export_failed == 0.0,
    );
    check(
        "failed requests",
        failed as f64,
        "0".to_owned(),
        failed == 0,
    );
    let third = samples.len() / 3;
    let (first, last) = if third == 0 {
        (f64::NAN, f64::NAN)
    } else {
        let peak_of = |s: &[Sample]| s.iter().map(|s| s.rss_mib).fold(f64::NAN, f64::max);
        (
            peak_of(&samples[..third]),
            peak_of(&samples[samples.len() - third..]),
        )
    };
    check(
        "RSS MiB, peak of the last third",
        last,
        format!(
            "<= {:.1} (first third {first:.1} + 10% + 4)",
            first * 1.1 + 4.0
        ),
        third > 0 && last <= first * 1.1 + 4.0,
    );
    println!();
    println!(
        "kept {kept:.0} of {decisions:.0} traces ({:.1}%); the collector received {spans} spans \
         ({:.1} per kept trace) and {logs} log records ({:.2} per run)",
        kept * 100.0 / decisions.max(1.0),
        spans as f64 / kept.max(1.0),
        logs as f64 / served.max(1) as f64,
    );
    println!("soak: {}", if passed { "passed" } else { "FAILED" });
    Ok(passed)
}
