//! What the instrumented runner adds to a model execution.
//!
//! Run: `cargo bench --bench runner_overhead`
//!
//! Compares, on the demo pipeline (12×8 room, one obstacle; five model
//! executions per run: three light candidates, air supply, smoke detectors):
//! - `direct`: the same five models called one after another, best light
//!   candidate picked by hand — no spans, metrics or logs;
//! - `instrumented/inline`: `Pipeline::run` with `Execution::Inline`, every
//!   span sampled through tracing-opentelemetry (no exporter: the SDK's no-op
//!   sink), every metric recorded into the OTel SDK behind the Prometheus
//!   exporter, and JSON log lines formatted and written to `io::sink()`;
//! - `instrumented/auto`: the same with `Execution::Auto` (the default):
//!   these models take microseconds, so after their first execution they
//!   run in place like `Inline`;
//! - `instrumented/offload`: the same with `Execution::Offload` (each model on
//!   tokio's blocking pool), which adds a thread hop per model;
//! - `bare/auto`: `Pipeline::run` with telemetry off (no subscriber, a
//!   no-op meter): what the runner itself costs — futures, timing, the
//!   report — without spans, metrics or logs.
//!
//! After criterion's figures it prints the added time per model execution,
//! measured side by side (interleaved batches) in the same process.
//!
//! Then, since the tracing subscriber is installed once per process, it
//! runs itself again once per telemetry configuration
//! (`runner_overhead --configuration NAME COLLECTOR`), three rounds in
//! turn, and prints the time of a run under each: telemetry off, JSON log
//! lines only, spans without an exporter, tail sampling at 5% and keeping
//! everything (both over OTLP/HTTP to a decoding collector in this
//! process). No HTTP in between, so the figures are steady enough to
//! compare one change against another; `cargo bench --bench service_load`
//! measures the same under load.
//!
//! On the 2-core development VM (2026-11-24, typed stages, one INFO line per
//! run): direct 5.0 µs/run; inline 19.3 µs/run (3.9×, +2.9 µs per model
//! execution); offload 127 µs/run (26×, +24 µs per model execution, the
//! blocking-pool hop).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use demo::ceiling::{
    AirSupply, Cell, DenseLights, Layout, PerimeterLights, Room, SmokeDetectors, SparseLights,
};
use pipelens::telemetry::{self, LogFormat, TelemetryConfig};
use pipelens::{Execution, Model, Pipeline, Stage};

// Bench targets compile `#[cfg(test)]` modules without running them, so
// the demo's test helpers would count as unused here.
#[allow(dead_code, unreachable_pub, unused_imports)]
#[path = "../src/bin/pipelens/demo/mod.rs"]
mod demo;
#[allow(dead_code)]
#[path = "service_load/sink.rs"]
mod sink;

const MODELS_PER_RUN: f64 = 5.0;

fn room() -> Layout {
    Layout::empty(Room::new(12, 8, vec![Cell::new(3, 4)]).expect("valid room"))
}

/// The five models called directly, with the selection done by hand.
fn direct(input: &Layout) -> Layout {
    let candidates = [
        DenseLights.run(input),
        SparseLights.run(input),
        PerimeterLights.run(input),
    ];
    let best = candidates
        .into_iter()
        .flatten()
        .max_by(|a, b| a.confidence.total_cmp(&b.confidence))
        .expect("a light candidate");
    let air = AirSupply.run(&best.output).expect("air supply");
    SmokeDetectors
        .run(&air.output)
        .expect("smoke detectors")
        .output
}

fn pipeline(
    meter: opentelemetry::metrics::Meter,
    execution: Execution,
) -> Pipeline<Layout, Layout> {
    Pipeline::builder("ceiling-layout")
        .meter(meter)
        .execution(execution)
        .stage(
            Stage::parallel("lighting")
                .model(DenseLights)
                .model(SparseLights)
                .model(PerimeterLights),
        )
        .stage(
            Stage::sequential("fixtures")
                .model(AirSupply)
                .model(SmokeDetectors),
        )
        .build()
        .expect("valid pipeline")
}

struct Setup {
    runtime: tokio::runtime::Runtime,
    inline: Pipeline<Layout, Layout>,
    auto: Pipeline<Layout, Layout>,
    offload: Pipeline<Layout, Layout>,
    bare: Pipeline<Layout, Layout>,
    _telemetry: Arc<telemetry::Telemetry>,
}

fn setup() -> Setup {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let config = TelemetryConfig {
        log_format: LogFormat::Json,
        ..TelemetryConfig::default()
    };
    let telemetry = runtime.block_on(async {
        Arc::new(telemetry::init_with_writer(&config, std::io::sink).expect("telemetry"))
    });
    let meter = telemetry.meter();
    Setup {
        inline: pipeline(meter.clone(), Execution::Inline),
        auto: pipeline(meter.clone(), Execution::Auto),
        offload: pipeline(meter, Execution::Offload),
        bare: pipeline(
            opentelemetry::metrics::MeterProvider::meter(
                &opentelemetry::metrics::NoopMeterProvider::new(),
                "bare",
            ),
            Execution::Auto,
        ),
        runtime,
        _telemetry: telemetry,
    }
}

fn bench(c: &mut Criterion, s: &Setup) {
    let input = room();
    let mut group = c.benchmark_group("runner_overhead");
    group.bench_function("direct", |b| {
        b.iter(|| {
            s.runtime
                .block_on(async { black_box(direct(black_box(&input))) })
        })
    });
    group.bench_function("instrumented/inline", |b| {
        b.iter(|| {
            s.runtime
                .block_on(s.inline.run(black_box(input.clone())))
                .expect("run")
        })
    });
    group.bench_function("instrumented/auto", |b| {
        b.iter(|| {
            s.runtime
                .block_on(s.auto.run(black_box(input.clone())))
                .expect("run")
        })
    });
    group.bench_function("instrumented/offload", |b| {
        b.iter(|| {
            s.runtime
                .block_on(s.offload.run(black_box(input.clone())))
                .expect("run")
        })
    });
    group.bench_function("bare/auto", |b| {
        b.iter(|| without_telemetry(|| s.runtime.block_on(s.bare.run(black_box(input.clone())))))
    });
    group.finish();
}

/// Runs `f` with no subscriber on this thread, as a service without
/// telemetry runs (`block_on` polls on the calling thread).
fn without_telemetry<T>(f: impl FnOnce() -> T) -> T {
    tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), f)
}

/// Mean time of one call of `f` over `n` calls.
fn mean(n: u32, mut f: impl FnMut()) -> Duration {
    let start = Instant::now();
    for _ in 0..n {
        f();
    }
    start.elapsed() / n
}

/// Interleaves batches of the three variants and prints the added time per
/// model execution, so the figures share the machine's state.
fn side_by_side(s: &Setup) {
    let input = room();
    let (mut d, mut i, mut a, mut o, mut b) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..15 {
        d.push(mean(400, || {
            s.runtime.block_on(async {
                black_box(direct(&input));
            })
        }));
        i.push(mean(400, || {
            black_box(s.runtime.block_on(s.inline.run(input.clone())).ok());
        }));
        a.push(mean(400, || {
            black_box(s.runtime.block_on(s.auto.run(input.clone())).ok());
        }));
        o.push(mean(400, || {
            black_box(s.runtime.block_on(s.offload.run(input.clone())).ok());
        }));
        b.push(without_telemetry(|| {
            mean(400, || {
                black_box(s.runtime.block_on(s.bare.run(input.clone())).ok());
            })
        }));
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (d, i, a, o, b) = (
        median(&mut d),
        median(&mut i),
        median(&mut a),
        median(&mut o),
        median(&mut b),
    );
    let per_model = |x: Duration| (x.as_secs_f64() - d.as_secs_f64()) / MODELS_PER_RUN * 1e6;
    println!("\nside by side (median of 15 interleaved batches of 400 runs, 5 model executions per run):");
    println!(
        "  direct               {:>9.2} µs/run",
        d.as_secs_f64() * 1e6
    );
    println!(
        "  instrumented/inline  {:>9.2} µs/run  ({:.2}× direct)  added per model execution: {:.2} µs",
        i.as_secs_f64() * 1e6,
        i.as_secs_f64() / d.as_secs_f64(),
        per_model(i)
    );
    println!(
        "  instrumented/auto    {:>9.2} µs/run  ({:.2}× direct)  added per model execution: {:.2} µs",
        a.as_secs_f64() * 1e6,
        a.as_secs_f64() / d.as_secs_f64(),
        per_model(a)
    );
    println!(
        "  instrumented/offload {:>9.2} µs/run  ({:.2}× direct)  added per model execution: {:.2} µs",
        o.as_secs_f64() * 1e6,
        o.as_secs_f64() / d.as_secs_f64(),
        per_model(o)
    );
    println!(
        "  bare/auto            {:>9.2} µs/run  ({:.2}× direct)  added per model execution: {:.2} µs",
        b.as_secs_f64() * 1e6,
        b.as_secs_f64() / d.as_secs_f64(),
        per_model(b)
    );
}

/// Criterion's figures, then the side-by-side summary.
fn benches() {
    let s = setup();
    let mut c = Criterion::default()
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1))
        .configure_from_args();
    bench(&mut c, &s);
    c.final_summary();
    side_by_side(&s);
}

/// The telemetry configurations compared, in the order they run.
const CONFIGURATIONS: [&str; 5] = [
    "telemetry off",
    "JSON log lines only",
    "spans, no exporter",
    "tail sampling 5%, OTLP",
    "keep everything, OTLP",
];

/// Spans of one demo run: the run, two stages, five models.
const SPANS_PER_RUN: f64 = 8.0;

/// `name`'s telemetry, exporting to the collector at `collector`.
fn configuration(name: &str, collector: &str) -> TelemetryConfig {
    let otlp = |ratio: f64| TelemetryConfig {
        log_format: LogFormat::Json,
        traces: Some(telemetry::OtlpTarget {
            endpoint: format!("http://{collector}/v1/traces"),
            protocol: telemetry::Protocol::HttpProtobuf,
        }),
        logs: Some(telemetry::OtlpTarget {
            endpoint: format!("http://{collector}/v1/logs"),
            protocol: telemetry::Protocol::HttpProtobuf,
        }),
        traces_keep_ratio: ratio,
        traces_keep_slower_than: pipelens::telemetry::SlowThreshold::Quantile(0.99),
        ..TelemetryConfig::default()
    };
    match name {
        "telemetry off" => TelemetryConfig {
            sdk_disabled: true,
            log_filter: "off".to_owned(),
            ..TelemetryConfig::default()
        },
        "JSON log lines only" => TelemetryConfig {
            sdk_disabled: true,
            log_format: LogFormat::Json,
            ..TelemetryConfig::default()
        },
        "spans, no exporter" => TelemetryConfig {
            log_format: LogFormat::Json,
            ..TelemetryConfig::default()
        },
        "tail sampling 5%, OTLP" => otlp(0.05),
        "keep everything, OTLP" => otlp(1.0),
        other => panic!("unknown configuration {other:?}"),
    }
}

/// The child's side: the demo pipeline under one configuration, 15 batches
/// of 2000 runs after a warm-up; prints the median µs per run.
fn run_configuration(name: &str, collector: &str) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let telemetry = runtime.block_on(async {
        telemetry::init_with_writer(&configuration(name, collector), std::io::sink)
            .expect("telemetry")
    });
    let demo = pipeline(telemetry.meter(), Execution::Auto);
    let input = room();
    let batch = || {
        let start = Instant::now();
        runtime.block_on(async {
            for _ in 0..2000 {
                black_box(demo.run(input.clone()).await.ok());
            }
        });
        start.elapsed().as_secs_f64() / 2000.0 * 1e6
    };
    batch();
    let mut times: Vec<f64> = (0..15).map(|_| batch()).collect();
    times.sort_by(f64::total_cmp);
    println!("{:.3}", times[times.len() / 2]);
    drop(demo);
    let _ = telemetry.shutdown();
}

/// The parent's side: every configuration in a process of its own, three
/// rounds, each round starting one configuration further on.
fn by_configuration() {
    let collector = sink::Collector::start("127.0.0.1:0".parse().expect("addr"))
        .expect("start the OTLP collector");
    let exe = std::env::current_exe().expect("this bench's path");
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); CONFIGURATIONS.len()];
    for round in 0..3 {
        for k in 0..CONFIGURATIONS.len() {
            let i = (round + k) % CONFIGURATIONS.len();
            let out = std::process::Command::new(&exe)
                .args([
                    "--configuration",
                    CONFIGURATIONS[i],
                    &collector.addr.to_string(),
                ])
                .output()
                .expect("run the bench again");
            let text = String::from_utf8_lossy(&out.stdout);
            let us: f64 = text.trim().parse().unwrap_or_else(|_| {
                panic!(
                    "{}: no figure ({})\n{text}{}",
                    CONFIGURATIONS[i],
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                )
            });
            times[i].push(us);
        }
    }
    let medians: Vec<f64> = times
        .iter_mut()
        .map(|t| {
            t.sort_by(f64::total_cmp);
            t[t.len() / 2]
        })
        .collect();
    println!(
        "\nby telemetry configuration (a process each, median of 3 rounds of 15 batches of \
         2000 runs; {SPANS_PER_RUN} spans and 1 INFO line per run):"
    );
    println!("| configuration | µs/run | added to telemetry off | added per span |");
    println!("|---|---|---|---|");
    for (name, us) in CONFIGURATIONS.iter().zip(&medians) {
        let added = us - medians[0];
        println!(
            "| {name} | {us:.2} | {added:+.2} | {:+.2} |",
            added / SPANS_PER_RUN
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, name, collector] = &args[..] {
        if flag == "--configuration" {
            run_configuration(name, collector);
            return;
        }
    }
    benches();
    by_configuration();
}
