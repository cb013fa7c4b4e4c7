//! What telemetry costs the service at full load, measured side by side.
//!
//! Run: `cargo bench --bench service_load` (about 2 minutes on 2 cores).
//! Options after `--`:
//! - `--suite telemetry,exporters,realistic,overload,python,store,shadow,peer`
//!   (default `telemetry,exporters`);
//! - `--seconds N` measured per round (default 4, after 1 s of warm-up),
//!   `--rounds N` (default 3), `--connections N` (default 16);
//! - `--soak`: instead of the suites, both demo pipelines at once under
//!   load for minutes with the stack's telemetry settings (`--seconds`,
//!   defaults to 240 there, at least 30): traces kept by reason against what the
//!   settings predict, items dropped, memory over time (see `soak.rs`);
//! - `--only TEXT`: only the variants whose name contains TEXT (to profile
//!   one with `perf record -p`);
//! - `--python PATH`: the virtualenv's python for the `python` suite
//!   (`scripts/bench-vs-python` sets it up and passes it);
//! - `--baseline PATH`: another build's `pipelens` binary (an earlier
//!   commit), run as `OTLP export, baseline`, `telemetry off, baseline` and
//!   `tail sampling, baseline` beside this build's variants.
//!
//! Every variant is a fresh `pipelens serve` process (the ceiling-layout
//! demo, five models per run) on loopback, driven by a closed-loop
//! keep-alive load generator in this process (as `wrk -c16` would) for the
//! same time; variants alternate round by round, each round starting one
//! variant further on, so drift on a shared machine spreads over all of
//! them. Each figure is the median over rounds; each comparison of two
//! variants (a ratio, a p99 difference) is the median of the rounds' own
//! comparisons, in which the drift between rounds cancels. The OTLP
//! collector is an OTLP/HTTP and OTLP gRPC receiver in this process that
//! decodes every export request and counts spans and log records.
//!
//! Suites:
//! - `telemetry`: off (`OTEL_SDK_DISABLED=true`, `RUST_LOG=off`); JSON logs
//!   to stdout only; spans, metrics and logs with no exporter; everything
//!   exported over OTLP; the same with parent-based 10% head sampling; the
//!   same behind in-process tail sampling (errors, the slowest 1%, 5% of
//!   the rest: `tail sampling: errors, slow, 5%`).
//! - `realistic`: every model takes ~1 ms; telemetry off, OTLP export and
//!   tail sampling side by side.
//! - `exporters`: OTLP export to an endpoint that refuses connections and to
//!   one that accepts TCP and never answers, against the healthy case.
//! - `overload`: 256 connections against a service whose air-supply model
//!   takes 20 ms: admitted runs keep a bounded p99, the rest are refused
//!   with 503 in milliseconds, memory stays flat.
//! - `store`: the judged sentiment pipeline (telemetry off, so the store's
//!   cost is not hidden) with the memory, SQLite and Postgres run stores
//!   (a PostgreSQL 15 server the bench starts on loopback, as the tests
//!   do), then 500 truths a second for 10 s posted to the Postgres one:
//!   feedback latency.
//! - `shadow`: the judged sentiment pipeline (OTLP export on, memory run
//!   store) without a shadow (`PIPELENS_SENTIMENT_SHADOW=off`), and with
//!   `majority_vote` as an async shadow answering 20 ms after it is called
//!   (`async:20`): what a slow challenger costs the requests it never
//!   delays.
//! - `python`: the same three-candidate pipeline with fixed results served
//!   by pipelens (`examples/fixed_three.rs`) and by the seeds' FastAPI stack
//!   (`bench/python/app.py`), telemetry off and on.
//! - `peer`: small fraud-scoring work (parse JSON, featurize, three CPU
//!   models of a few µs, most confident, decide: `fraud.rs`) served by a
//!   hand-wired axum service (`peer.rs`: tower-http `TraceLayer`, `tracing`
//!   spans bridged by tracing-opentelemetry to a batch OTLP gRPC exporter,
//!   opentelemetry-prometheus metrics, a JSON log line per run) and by
//!   pipelens (`fraud_pipelens.rs`), both exporting over OTLP gRPC to this
//!   process's collector: telemetry off, keep everything, and 5% of traces
//!   (head sampling on the peer, tail sampling on pipelens). Both are this
//!   bench binary re-executed as `service_load --serve-fraud peer|pipelens`
//!   (`BENCH_ADDR`, `BENCH_TELEMETRY`).
//!
//! It prints, per variant: requests/s, p50 and p99 latency, the service's
//! CPU time per request, peak memory, failed requests and what the collector
//! received; then the ratios the README reports and whether each goal of
//! the performance issue was met.

#[path = "service_load/feedback.rs"]
mod feedback;
#[path = "service_load/fraud.rs"]
mod fraud;
#[path = "service_load/fraud_pipelens.rs"]
mod fraud_pipelens;
#[path = "service_load/load.rs"]
mod load;
#[path = "service_load/peer.rs"]
mod peer;
#[allow(dead_code, unreachable_pub)]
#[path = "../tests/support/postgres.rs"]
mod postgres;
#[path = "service_load/sink.rs"]
mod sink;
#[path = "service_load/soak.rs"]
mod soak;
#[path = "service_load/target.rs"]
mod target;

use std::net::SocketAddr;
use std::time::Duration;

use target::{free_addr, Launch, Service};

/// The run request every ceiling-layout variant serves.
const ROOM: &str = r#"{"width": 12, "length": 8, "obstacles": [{"x": 3, "y": 4}]}"#;
const CEILING_ROUTE: &str = "/v1/pipelines/ceiling-layout/runs";
/// The run request of the fixed three-candidate pipeline.
const FEATURES: &str = r#"{"features": [0.1, 0.5, 0.9, 1.3]}"#;
const FIXED_ROUTE: &str = "/v1/pipelines/fixed/runs";
/// The run request of the judged sentiment pipeline.
const REVIEW: &str = r#"{"text": "a wonderful, moving film with a great cast"}"#;
const SENTIMENT_ROUTE: &str = "/v1/pipelines/sentiment/runs";
/// The `store` suite's variants.
const STORE_MEMORY: &str = "sentiment, memory store";
const STORE_SQLITE: &str = "sentiment, SQLite store";
const STORE_POSTGRES: &str = "sentiment, Postgres store";
/// The `shadow` suite's variants.
const SHADOW_OFF: &str = "sentiment, no shadow";
const SHADOW_20MS: &str = "sentiment, 20 ms async shadow";
/// The variant that runs `--baseline`'s binary with full OTLP export.
const BASELINE: &str = "OTLP export, baseline";
/// The tail-sampling variant's name, as the issue and README give it.
const TAIL: &str = "tail sampling: errors, slow, 5%";
/// The same on `--baseline`'s binary.
const TAIL_BASELINE: &str = "tail sampling, baseline";
/// The `peer` suite's variants.
const PEER_OFF: &str = "peer, telemetry off";
const PEER_ALL: &str = "peer, keep everything";
const PEER_HEAD: &str = "peer, 5% head sampling";
const FRAUD_OFF: &str = "pipelens fraud, telemetry off";
const FRAUD_ALL: &str = "pipelens fraud, keep everything";
const FRAUD_TAIL: &str = "pipelens fraud, tail 5%";
const FRAUD_OFF_MIN: &str = "pipelens fraud, telemetry off, minimal answer";
const FRAUD_ALL_MIN: &str = "pipelens fraud, keep everything, minimal answer";
const FRAUD_TAIL_MIN: &str = "pipelens fraud, tail 5%, minimal answer";
/// What a caller sends for the run's summary instead of its report.
const PREFER_MINIMAL: &str = "prefer: return=minimal\r\n";

/// Options from the command line.
struct Options {
    suites: Vec<String>,
    seconds: u64,
    rounds: usize,
    connections: usize,
    python: Option<String>,
    /// Another build's `pipelens` binary for the `OTLP export, baseline`
    /// variant.
    baseline: Option<String>,
    only: Option<String>,
    /// `--soak`: the long run of both demo pipelines instead of the suites.
    soak: bool,
}

impl Options {
    fn parse() -> Result<Self, String> {
        let mut options = Self {
            suites: vec!["telemetry".into(), "exporters".into()],
            seconds: 4,
            rounds: 3,
            connections: 16,
            python: None,
            baseline: None,
            only: None,
            soak: false,
        };
        let mut seconds_given = false;
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = |flag: &str| args.next().ok_or(format!("{flag} needs a value"));
            match arg.as_str() {
                "--bench" => {}
                "--suite" => {
                    options.suites = value("--suite")?.split(',').map(str::to_owned).collect();
                }
                "--seconds" => {
                    options.seconds = number("--seconds", &value("--seconds")?)?;
                    seconds_given = true;
                }
                "--rounds" => options.rounds = number("--rounds", &value("--rounds")?)?,
                "--connections" => {
                    options.connections = number("--connections", &value("--connections")?)?
                }
                "--python" => options.python = Some(value("--python")?),
                "--baseline" => options.baseline = Some(value("--baseline")?),
                "--only" => options.only = Some(value("--only")?),
                "--soak" => options.soak = true,
                other => return Err(format!("unknown option {other}")),
            }
        }
        for suite in &options.suites {
            if ![
                "telemetry",
                "exporters",
                "realistic",
                "overload",
                "python",
                "store",
                "shadow",
                "peer",
            ]
            .contains(&suite.as_str())
            {
                return Err(format!(
                    "--suite: unknown suite {suite} (telemetry, exporters, realistic, overload, python, store, shadow, peer)"
                ));
            }
        }
        if options.soak && !seconds_given {
            options.seconds = soak::DEFAULT_SECONDS;
        }
        if options.soak && options.seconds < soak::MIN_SECONDS {
            return Err(format!(
                "--seconds: a soak needs at least {} s (memory is compared between the first \
                 and last thirds of 10 s samples), got {}",
                soak::MIN_SECONDS,
                options.seconds
            ));
        }
        if options.suites.iter().any(|s| s == "python") && options.python.is_none() {
            return Err("--suite python needs --python PATH (run scripts/bench-vs-python)".into());
        }
        Ok(options)
    }
}

fn number<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("{flag}: expected a positive number, got {value:?}"))
}

/// One service configuration under test.
struct Variant {
    name: &'static str,
    command: Command,
    env: Vec<(&'static str, String)>,
    route: &'static str,
    /// Header lines sent with each request beside the content type, each
    /// ending in CRLF.
    headers: &'static str,
    body: &'static str,
    /// Connections, if not `--connections`.
    connections: Option<usize>,
}

impl Variant {
    /// What each request of this variant asks for.
    fn target(&self) -> load::Target<'static> {
        load::Target {
            path: self.route,
            headers: self.headers,
            body: self.body,
        }
    }
}

/// Which program a variant runs.
#[derive(Clone, Copy)]
enum Command {
    /// `pipelens serve` (the ceiling-layout demo).
    Pipelens,
    /// The fixed three-candidate pipeline on pipelens.
    FixedThree,

    /// The fixed three-candidate pipeline on FastAPI.
    Python,
    /// The fraud-scoring work on the hand-wired peer (`peer.rs`).
    FraudPeer,
    /// The fraud-scoring work on pipelens (`fraud_pipelens.rs`).
    FraudPipelens,
    /// `serve` of another `pipelens` binary (`--baseline`: an earlier
    /// commit's build), to compare releases side by side.
    Baseline,
}

/// The figures of one variant over all rounds.
#[derive(Default)]
struct Figures {
    throughput: Vec<f64>,
    p50_ms: Vec<f64>,
    p99_ms: Vec<f64>,
    cpu_us_per_request: Vec<f64>,
    peak_rss_mib: f64,
    failures: u64,
    failed_statuses: Vec<(u16, u64)>,
    refused: u64,
    refused_p99_ms: Vec<f64>,
    broken: u64,
    requests: u64,
    spans: u64,
    logs: u64,
    stdout_bytes: u64,
    dropped: f64,
    export_failed: f64,
}

/// The median over rounds of `a[round] - b[round]`.
fn paired_difference(a: &[f64], b: &[f64]) -> f64 {
    median(&a.iter().zip(b).map(|(a, b)| a - b).collect::<Vec<_>>())
}

/// The median over rounds of `a[round] / b[round]`: two variants of one
/// round run minutes apart at most, so the machine's drift between rounds
/// cancels, which the ratio of two medians does not do.
fn paired(a: &[f64], b: &[f64]) -> f64 {
    median(&a.iter().zip(b).map(|(a, b)| a / b).collect::<Vec<_>>())
}

fn median(values: &[f64]) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 0 {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    }
}

impl Figures {
    fn throughput(&self) -> f64 {
        median(&self.throughput)
    }
    fn p99(&self) -> f64 {
        median(&self.p99_ms)
    }
    fn cpu(&self) -> f64 {
        median(&self.cpu_us_per_request)
    }
    /// This variant's throughput over `other`'s: the median of the rounds'
    /// ratios ([`paired`]).
    fn throughput_vs(&self, other: &Figures) -> f64 {
        paired(&self.throughput, &other.throughput)
    }
    /// What this variant adds to `other`'s p99, in ms: the median of the
    /// rounds' differences.
    fn p99_added(&self, other: &Figures) -> f64 {
        paired_difference(&self.p99_ms, &other.p99_ms)
    }
    /// This variant's CPU per request over `other`'s: the median of the
    /// rounds' ratios.
    fn cpu_vs(&self, other: &Figures) -> f64 {
        paired(&self.cpu_us_per_request, &other.cpu_us_per_request)
    }
}

fn main() {
    // The `peer` suite's services are this binary re-executed.
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() == Some("--serve-fraud") {
        serve_fraud(args.next().as_deref());
    }
    let options = match Options::parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("service_load: {e}");
            std::process::exit(2);
        }
    };
    let collector = sink::Collector::start("127.0.0.1:0".parse().expect("addr"))
        .expect("start the OTLP collector");
    if options.soak {
        let passed = soak::run(&collector, options.seconds, options.connections);
        std::process::exit(if passed { 0 } else { 1 });
    }
    let refused = sink::refusing();
    let blackhole = sink::Blackhole::start().expect("start the blackhole endpoint");
    let otlp = |addr: SocketAddr| {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}")),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".to_owned()),
        ]
    };
    let off = || {
        vec![
            ("OTEL_SDK_DISABLED", "true".to_owned()),
            ("RUST_LOG", "off".to_owned()),
        ]
    };
    // OTLP export behind in-process tail sampling: errors and the slowest
    // 1% always, 5% of the rest.
    let tail = |mut extra: Vec<(&'static str, String)>| {
        let mut env = otlp(collector.addr);
        env.push(("PIPELENS_TRACES_KEEP_RATIO", "0.05".to_owned()));
        env.push(("PIPELENS_TRACES_KEEP_SLOWER_THAN", "p99".to_owned()));
        env.append(&mut extra);
        env
    };
    let ceiling = |name, env| Variant {
        name,
        command: Command::Pipelens,
        env,
        route: CEILING_ROUTE,
        headers: "",
        body: ROOM,
        connections: None,
    };
    let mut variants = Vec::new();
    let has = |suite: &str| options.suites.iter().any(|s| s == suite);
    if has("telemetry") || has("exporters") {
        variants.push(ceiling("telemetry off", off()));
        variants.push(ceiling("OTLP export", otlp(collector.addr)));
    }
    if has("telemetry") {
        variants.push(ceiling(
            "JSON logs to stdout only",
            vec![("OTEL_SDK_DISABLED", "true".to_owned())],
        ));
        variants.push(ceiling("spans + logs, no exporter", Vec::new()));
        let mut sampled = otlp(collector.addr);
        sampled.push(("OTEL_TRACES_SAMPLER", "parentbased_traceidratio".to_owned()));
        sampled.push(("OTEL_TRACES_SAMPLER_ARG", "0.1".to_owned()));
        variants.push(ceiling("OTLP export, 10% sampled", sampled));
        variants.push(ceiling(TAIL, tail(Vec::new())));
        if options.baseline.is_some() {
            variants.push(Variant {
                command: Command::Baseline,
                ..ceiling(BASELINE, otlp(collector.addr))
            });
            variants.push(Variant {
                command: Command::Baseline,
                ..ceiling("telemetry off, baseline", off())
            });
            variants.push(Variant {
                command: Command::Baseline,
                ..ceiling(TAIL_BASELINE, tail(Vec::new()))
            });
        }
    }
    if has("realistic") {
        // Every model of the demo takes ~1 ms (a sleep on its thread, as a
        // small CPU model or a fast model server would).
        let ms = || {
            (
                "PIPELENS_FAULTS",
                r#"{"light_dense": {"latency_ms": 1}, "light_sparse": {"latency_ms": 1},
                    "light_perimeter": {"latency_ms": 1}, "air_supply": {"latency_ms": 1},
                    "smoke_detector": {"latency_ms": 1}}"#
                    .to_owned(),
            )
        };
        let mut off_1ms = off();
        off_1ms.push(ms());
        variants.push(ceiling("1 ms models, telemetry off", off_1ms));
        let mut on_1ms = otlp(collector.addr);
        on_1ms.push(ms());
        variants.push(ceiling("1 ms models, OTLP export", on_1ms));
        variants.push(ceiling("1 ms models, tail sampling", tail(vec![ms()])));
    }
    if has("exporters") {
        variants.push(ceiling("OTLP endpoint refusing", otlp(refused)));
        variants.push(ceiling(
            "OTLP endpoint never answering",
            otlp(blackhole.addr),
        ));
    }
    if has("overload") {
        let slow = || {
            vec![
                (
                    "PIPELENS_FAULTS",
                    r#"{"air_supply": {"latency_ms": 20}}"#.to_owned(),
                ),
                ("PIPELENS_LOG_FORMAT", "json".to_owned()),
            ]
        };
        let mut normal = ceiling("20 ms model, 16 connections", slow());
        normal.connections = Some(16);
        variants.push(normal);
        let mut overload = ceiling("20 ms model, 256 connections", slow());
        overload.connections = Some(256);
        variants.push(overload);
    }
    // Kept until the end: the SQLite file and the Postgres server.
    let store_dir = tempfile::tempdir().expect("a temp dir");
    let pg = has("store").then(postgres::Postgres::start);
    if let Some(pg) = &pg {
        let store = |target: String| {
            let mut env = off();
            env.push(("PIPELENS_RUN_STORE", target));
            Variant {
                name: "",
                command: Command::Pipelens,
                env,
                route: SENTIMENT_ROUTE,
                headers: "",
                body: REVIEW,
                connections: None,
            }
        };
        let sqlite = format!("sqlite:{}", store_dir.path().join("bench.db").display());
        variants.push(Variant {
            name: STORE_MEMORY,
            ..store("memory".to_owned())
        });
        variants.push(Variant {
            name: STORE_SQLITE,
            ..store(sqlite)
        });
        variants.push(Variant {
            name: STORE_POSTGRES,
            ..store(pg.url())
        });
    }
    if has("shadow") {
        for (name, shadow) in [(SHADOW_OFF, "off"), (SHADOW_20MS, "async:20")] {
            let mut env = otlp(collector.addr);
            env.push(("PIPELENS_SENTIMENT_SHADOW", shadow.to_owned()));
            env.push(("PIPELENS_RUN_STORE", "memory".to_owned()));
            variants.push(Variant {
                name,
                command: Command::Pipelens,
                env,
                route: SENTIMENT_ROUTE,
                headers: "",
                body: REVIEW,
                connections: None,
            });
        }
    }
    if has("python") {
        for (name, command, env) in [
            ("pipelens fixed, telemetry off", Command::FixedThree, off()),
            (
                "pipelens fixed, OTLP",
                Command::FixedThree,
                otlp(collector.addr),
            ),
            ("FastAPI fixed, telemetry off", Command::Python, Vec::new()),
            ("FastAPI fixed, OTLP", Command::Python, otlp(collector.addr)),
        ] {
            let mut env = env;
            let telemetry = if name.ends_with("off") { "off" } else { "on" };
            env.push(("BENCH_TELEMETRY", telemetry.to_owned()));
            variants.push(Variant {
                name,
                command,
                env,
                route: FIXED_ROUTE,
                headers: "",
                body: FEATURES,
                connections: None,
            });
        }
    }
    if has("peer") {
        // Both export over OTLP gRPC to the collector; the same load.
        let grpc = |extra: &[(&'static str, &str)]| {
            let mut env = vec![
                (
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                    format!("http://{}", collector.grpc_addr),
                ),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_owned()),
            ];
            env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
            env
        };
        let off = vec![("BENCH_TELEMETRY", "off".to_owned())];
        let tail = || grpc(&[("PIPELENS_TRACES_KEEP_RATIO", "0.05")]);
        // pipelens answers with its run report unless the caller prefers
        // the summary (the peer answers with the decision alone). The
        // variants compared sit next to each other.
        for (name, command, env, headers) in [
            (PEER_OFF, Command::FraudPeer, off.clone(), ""),
            (FRAUD_OFF, Command::FraudPipelens, off.clone(), ""),
            (
                FRAUD_OFF_MIN,
                Command::FraudPipelens,
                off.clone(),
                PREFER_MINIMAL,
            ),
            (PEER_ALL, Command::FraudPeer, grpc(&[]), ""),
            (FRAUD_ALL, Command::FraudPipelens, grpc(&[]), ""),
            (
                FRAUD_ALL_MIN,
                Command::FraudPipelens,
                grpc(&[]),
                PREFER_MINIMAL,
            ),
            (
                PEER_HEAD,
                Command::FraudPeer,
                grpc(&[
                    ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                    ("OTEL_TRACES_SAMPLER_ARG", "0.05"),
                ]),
                "",
            ),
            (FRAUD_TAIL, Command::FraudPipelens, tail(), ""),
            (
                FRAUD_TAIL_MIN,
                Command::FraudPipelens,
                tail(),
                PREFER_MINIMAL,
            ),
        ] {
            variants.push(Variant {
                name,
                command,
                env,
                route: fraud::ROUTE,
                headers,
                body: fraud::BODY,
                connections: None,
            });
        }
    }

    if let Some(only) = &options.only {
        variants.retain(|v| v.name.contains(only.as_str()));
    }
    println!(
        "service_load: {} variants × {} rounds × {} s, {} connections, {} cores",
        variants.len(),
        options.rounds,
        options.seconds,
        options.connections,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("load runtime");
    let mut figures: Vec<Figures> = variants.iter().map(|_| Figures::default()).collect();
    for round in 0..options.rounds {
        // Each round starts one variant further on, so no variant always
        // runs at the same point of the machine's drift within a round.
        let start = round % variants.len().max(1);
        let order = (0..variants.len()).map(|i| (start + i) % variants.len());
        for i in order {
            let (variant, figures) = (&variants[i], &mut figures[i]);
            if let Err(e) = measure(&runtime, &options, variant, &collector, figures) {
                eprintln!("service_load: {}: {e}", variant.name);
                std::process::exit(1);
            }
            println!(
                "  round {} {:<32} {:>8.0} req/s  p99 {:>6.2} ms",
                round + 1,
                variant.name,
                figures.throughput.last().copied().unwrap_or(f64::NAN),
                figures.p99_ms.last().copied().unwrap_or(f64::NAN),
            );
        }
    }
    report(&variants, &figures, &options);
    if let Some(pg) = &pg {
        if let Err(e) = feedback_latency(&runtime, pg) {
            eprintln!("service_load: feedback latency: {e}");
            std::process::exit(1);
        }
    }
}

/// `--serve-fraud peer|pipelens`: serves the fraud-scoring work on
/// `BENCH_ADDR` until SIGTERM, then exits.
fn serve_fraud(which: Option<&str>) -> ! {
    let addr = std::env::var("BENCH_ADDR").unwrap_or_default();
    let Ok(addr) = addr.parse() else {
        eprintln!("service_load --serve-fraud: invalid BENCH_ADDR={addr:?}");
        std::process::exit(2);
    };
    let telemetry_on = match std::env::var("BENCH_TELEMETRY").as_deref() {
        Err(_) | Ok("on") => true,
        Ok("off") => false,
        Ok(other) => {
            eprintln!("service_load --serve-fraud: BENCH_TELEMETRY={other:?}: expected on or off");
            std::process::exit(2);
        }
    };
    let served = match which {
        Some("peer") => peer::serve(addr, telemetry_on),
        Some("pipelens") => fraud_pipelens::serve(addr, telemetry_on),
        other => {
            eprintln!("service_load --serve-fraud: expected peer or pipelens, got {other:?}");
            std::process::exit(2);
        }
    };
    if let Err(e) = served {
        eprintln!("service_load --serve-fraud: {e}");
        std::process::exit(1);
    }
    std::process::exit(0);
}

/// 500 truths a second for 10 s, posted to a service whose store is
/// `pg`: their latency, against the goal (p99 under 5 ms).
fn feedback_latency(
    runtime: &tokio::runtime::Runtime,
    pg: &postgres::Postgres,
) -> Result<(), String> {
    const RATE: f64 = 500.0;
    const SECONDS: u64 = 10;
    let addr = free_addr();
    let env = vec![
        ("PIPELENS_ADDR".to_owned(), addr.to_string()),
        ("PIPELENS_RUN_STORE".to_owned(), pg.url()),
        ("OTEL_SDK_DISABLED".to_owned(), "true".to_owned()),
        ("RUST_LOG".to_owned(), "off".to_owned()),
    ];
    let command = vec![
        env!("CARGO_BIN_EXE_pipelens").to_owned(),
        "serve".to_owned(),
    ];
    let mut service = Service::start(&Launch { command, env, addr })?;
    let wanted = (RATE as usize) * SECONDS as usize;
    let ids = runtime.block_on(feedback::runs(addr, wanted, 8));
    if ids.len() < wanted {
        return Err(format!("only {} of {wanted} runs succeeded", ids.len()));
    }
    let mut outcome = runtime.block_on(feedback::truths(
        addr,
        ids,
        RATE,
        Duration::from_secs(SECONDS),
    ));
    service.terminate(Duration::from_secs(15));
    let p50 = outcome.quantile_ms(0.50);
    let p99 = outcome.quantile_ms(0.99);
    println!();
    println!(
        "Feedback on the Postgres store, {RATE:.0}/s open loop for {SECONDS} s: {} judged, {} failed, p50 {p50:.2} ms, p99 {p99:.2} ms",
        outcome.latencies_us.len(),
        outcome.failures(),
    );
    println!(
        "  feedback p99 under 5 ms at 500/s on Postgres: {}",
        if p99 < 5.0 && outcome.failures() == 0 {
            "met"
        } else {
            "MISSED"
        }
    );
    Ok(())
}

/// Starts the variant's service, warms it up, measures one round, stops it.
fn measure(
    runtime: &tokio::runtime::Runtime,
    options: &Options,
    variant: &Variant,
    collector: &sink::Collector,
    figures: &mut Figures,
) -> Result<(), String> {
    let addr = free_addr();
    let mut env: Vec<(String, String)> = variant
        .env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    let command = match variant.command {
        Command::Pipelens | Command::Baseline => {
            env.push(("PIPELENS_ADDR".into(), addr.to_string()));
            // As deployed (docker-compose.yml): JSON lines for Loki.
            env.push(("PIPELENS_LOG_FORMAT".into(), "json".into()));
            let binary = match variant.command {
                Command::Baseline => options.baseline.clone().expect("checked in main"),
                _ => env!("CARGO_BIN_EXE_pipelens").to_owned(),
            };
            vec![binary, "serve".to_owned()]
        }
        Command::FixedThree => {
            env.push(("BENCH_ADDR".into(), addr.to_string()));
            vec![example("fixed_three")?]
        }

        Command::Python => {
            env.push(("BENCH_ADDR".into(), addr.to_string()));
            let python = options.python.clone().expect("checked in Options::parse");
            let app = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/python/app.py");
            vec![python, app.to_owned()]
        }
        Command::FraudPeer | Command::FraudPipelens => {
            env.push(("BENCH_ADDR".into(), addr.to_string()));
            // This very binary, even if a rebuild replaced the file since it
            // started (the link in /proc still reaches its inode).
            let exe = match std::path::Path::new("/proc/self/exe") {
                path if path.exists() => path.to_owned(),
                _ => std::env::current_exe().map_err(|e| e.to_string())?,
            };
            let which = match variant.command {
                Command::FraudPeer => "peer",
                _ => "pipelens",
            };
            vec![
                exe.display().to_string(),
                "--serve-fraud".to_owned(),
                which.to_owned(),
            ]
        }
    };
    let mut service = Service::start(&Launch { command, env, addr })?;
    let connections = variant.connections.unwrap_or(options.connections);
    runtime.block_on(load::run(
        addr,
        variant.target(),
        connections,
        Duration::from_secs(1),
    ));
    let (spans_before, logs_before) = collector.counts();
    let cpu_before = service.cpu_time();
    let mut outcome = runtime.block_on(load::run(
        addr,
        variant.target(),
        connections,
        Duration::from_secs(options.seconds),
    ));
    let cpu = service.cpu_time().saturating_sub(cpu_before);
    let done = outcome.latencies_us.len() as u64;
    figures.throughput.push(outcome.throughput());
    figures.p50_ms.push(outcome.quantile_ms(0.50));
    figures.p99_ms.push(outcome.quantile_ms(0.99));
    figures
        .cpu_us_per_request
        .push(cpu.as_secs_f64() * 1e6 / done.max(1) as f64);
    figures.peak_rss_mib = figures.peak_rss_mib.max(service.peak_rss_mib());
    figures
        .refused_p99_ms
        .push(refused_quantile_ms(&mut outcome.refused_us, 0.99));
    figures.refused += outcome.refused_us.len() as u64;
    figures.failures += outcome.failures();
    figures.broken += outcome.broken;
    for (code, n) in &outcome.failed {
        match figures.failed_statuses.iter_mut().find(|(c, _)| c == code) {
            Some((_, m)) => *m += n,
            None => figures.failed_statuses.push((*code, *n)),
        }
    }
    figures.requests += done;
    let metrics = service.metrics();
    figures.dropped += target::items_dropped(&metrics);
    figures.export_failed += target::export_errors(&metrics);
    figures.stdout_bytes += service.stdout_bytes();
    service.terminate(Duration::from_secs(15));
    let (spans_after, logs_after) = collector.counts();
    figures.spans += spans_after - spans_before;
    figures.logs += logs_after - logs_before;
    Ok(())
}

/// The path of a built example next to this benchmark's own executable.
fn example(name: &str) -> Result<String, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .ok_or("cannot locate the target directory")?;
    let path = profile_dir.join("examples").join(name);
    if path.exists() {
        Ok(path.display().to_string())
    } else {
        Err(format!(
            "{} is missing: build it with `cargo build --release --example {name}` \
             (scripts/bench-vs-python does)",
            path.display()
        ))
    }
}

/// The `q` quantile of refused requests' latencies, in milliseconds.
fn refused_quantile_ms(latencies_us: &mut [u32], q: f64) -> f64 {
    if latencies_us.is_empty() {
        return f64::NAN;
    }
    latencies_us.sort_unstable();
    let rank = ((latencies_us.len() - 1) as f64 * q).round() as usize;
    f64::from(latencies_us[rank]) / 1000.0
}

/// Failed requests with their statuses and broken connections, e.g.
/// `3 (503×2, broken×1)`.
fn failed(f: &Figures) -> String {
    if f.failures == 0 {
        return "0".into();
    }
    let mut parts: Vec<String> = f
        .failed_statuses
        .iter()
        .map(|(code, n)| format!("{code}×{n}"))
        .collect();
    if f.broken > 0 {
        parts.push(format!("broken×{}", f.broken));
    }
    format!("{} ({})", f.failures, parts.join(", "))
}

fn report(variants: &[Variant], figures: &[Figures], options: &Options) {
    let find = |name: &str| {
        variants
            .iter()
            .position(|v| v.name == name)
            .map(|i| &figures[i])
    };
    println!();
    println!(
        "| variant | req/s | p50 ms | p99 ms | CPU µs/req | peak RSS MiB | failed | spans/req | logs/req | stdout B/req | items dropped | export errors |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (variant, f) in variants.iter().zip(figures) {
        let per = |n: u64| n as f64 / f.requests.max(1) as f64;
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {:.0} | {:.1} | {} | {:.2} | {:.2} | {:.0} | {:.0} | {:.0} |",
            variant.name,
            f.throughput(),
            median(&f.p50_ms),
            f.p99(),
            f.cpu(),
            f.peak_rss_mib,
            failed(f),
            per(f.spans),
            per(f.logs),
            per(f.stdout_bytes),
            f.dropped,
            f.export_failed,
        );
    }
    println!();
    let goal = |met: bool| if met { "met" } else { "MISSED" };
    if let Some(memory) = find(STORE_MEMORY) {
        println!(
            "Run stores, side by side (medians of the {} rounds' ratios and differences):",
            options.rounds
        );
        for name in [STORE_SQLITE, STORE_POSTGRES] {
            if let Some(f) = find(name) {
                let ratio = f.throughput_vs(memory);
                let p99 = f.p99_added(memory);
                println!(
                    "  {name}: {ratio:.2} of the memory store's runs/s, p99 {p99:+.2} ms: {} (goal >= 0.95 and <= +0.5 ms)",
                    goal(ratio >= 0.95 && p99 <= 0.5)
                );
            }
        }
        println!();
    }
    if let (Some(without), Some(with)) = (find(SHADOW_OFF), find(SHADOW_20MS)) {
        let ratio = with.throughput_vs(without);
        let p99 = with.p99_added(without);
        println!(
            "Goal: a 20 ms async shadow keeps >= 0.97 of the runs/s and p99 within +0.5 ms \
             (medians of the {} rounds' ratios and differences): {ratio:.2}, p99 {p99:+.2} ms, \
             {:+.1} µs CPU/req ({})",
            options.rounds,
            with.cpu() - without.cpu(),
            goal(ratio >= 0.97 && p99 <= 0.5)
        );
        println!();
    }
    if let (Some(off), Some(on)) = (find("telemetry off"), find("OTLP export")) {
        let ratio = |f: &Figures| f.throughput_vs(off);
        println!(
            "Throughput ratio to telemetry off (median of the {} rounds' ratios):",
            options.rounds
        );
        for (variant, f) in variants.iter().zip(figures) {
            if matches!(variant.command, Command::Pipelens | Command::Baseline) {
                println!("  {:<32} {:.2}", variant.name, ratio(f));
            }
        }
        let added_p99 = on.p99_added(off);
        println!(
            "Goal: OTLP export keeps >= 0.85 of telemetry-off throughput: {:.2} ({})",
            ratio(on),
            goal(ratio(on) >= 0.85)
        );
        println!(
            "Goal: OTLP export adds < 1 ms to p99: {added_p99:+.2} ms ({})",
            goal(added_p99 < 1.0)
        );
        if let Some(sampled) = find("OTLP export, 10% sampled") {
            println!("  at 10% sampling: {:.2} of telemetry off", ratio(sampled));
        }
        if let Some(tail) = find(TAIL) {
            let added = tail.p99_added(off);
            println!(
                "Goal: {TAIL} keeps >= 0.85 of telemetry-off throughput (stretch 0.90): {:.2} ({}), \
                 p99 {added:+.2} ms ({}), {:.2} spans/req exported",
                ratio(tail),
                goal(ratio(tail) >= 0.85),
                goal(added <= 1.0),
                tail.spans as f64 / tail.requests.max(1) as f64,
            );
        }
    }
    if let (Some(off), Some(tail)) = (find("telemetry off"), find(TAIL)) {
        let ratio = tail.throughput_vs(off);
        let added = tail.p99_added(off);
        println!(
            "Goal: {TAIL} keeps >= 0.72 of telemetry-off throughput with p99 within +1 ms \
             (medians of the rounds' ratios and differences): {ratio:.2}, p99 {added:+.2} ms \
             ({}); by CPU per request {:.2}",
            goal(ratio >= 0.72 && added <= 1.0),
            off.cpu_vs(tail),
        );
    }
    if let (Some(now), Some(before)) = (find("OTLP export"), find(BASELINE)) {
        println!(
            "Goal: keep-everything (PIPELENS_TRACES_KEEP_RATIO=1.0, the default) not worse than \
             the baseline's OTLP export: {:.0} vs {:.0} req/s, {:.0} vs {:.0} µs CPU/req, p99 \
             {:.2} vs {:.2} ms",
            now.throughput(),
            before.throughput(),
            now.cpu(),
            before.cpu(),
            now.p99(),
            before.p99(),
        );
    }
    if let (Some(off), Some(on), Some(tail)) = (
        find("1 ms models, telemetry off"),
        find("1 ms models, OTLP export"),
        find("1 ms models, tail sampling"),
    ) {
        println!(
            "1 ms models: OTLP export {:.2}, tail sampling {:.2} of telemetry-off throughput; \
             p99 {:+.2} / {:+.2} ms",
            on.throughput_vs(off),
            tail.throughput_vs(off),
            on.p99_added(off),
            tail.p99_added(off),
        );
    }
    if let (Some(off), Some(tail)) = (
        find("1 ms models, telemetry off"),
        find("1 ms models, tail sampling"),
    ) {
        let ratio = tail.throughput_vs(off);
        println!(
            "Goal: 1 ms models, tail sampling keeps >= 0.97 of 1 ms models, telemetry off \
             throughput (median of the rounds' ratios): {ratio:.2} ({})",
            goal(ratio >= 0.97)
        );
    }
    if let Some(healthy) = find("OTLP export") {
        for name in ["OTLP endpoint refusing", "OTLP endpoint never answering"] {
            let Some(down) = find(name) else { continue };
            let throughput = down.throughput_vs(healthy);
            let p99 = paired(&down.p99_ms, &healthy.p99_ms);
            let within = (0.9..).contains(&throughput) && p99 <= 1.1;
            println!(
                "Goal: {name}: throughput {throughput:.2}×, p99 {p99:.2}× of healthy export, \
                 {} failed requests, peak RSS {:.1} vs {:.1} MiB, {:.0} items dropped and \
                 {:.0} export errors counted ({})",
                down.failures,
                down.peak_rss_mib,
                healthy.peak_rss_mib,
                down.dropped,
                down.export_failed,
                goal(within && down.failures == 0 && down.dropped + down.export_failed > 0.0)
            );
        }
    }
    if let (Some(normal), Some(over)) = (
        find("20 ms model, 16 connections"),
        find("20 ms model, 256 connections"),
    ) {
        println!(
            "Overload (256 connections vs 16, 20 ms model): admitted {:.0} vs {:.0} runs/s, \
             admitted p99 {:.1} vs {:.1} ms, {} refused with 503 at p99 {:.2} ms, \
             peak RSS {:.1} vs {:.1} MiB",
            over.throughput(),
            normal.throughput(),
            over.p99(),
            normal.p99(),
            over.refused,
            median(&over.refused_p99_ms),
            over.peak_rss_mib,
            normal.peak_rss_mib,
        );
    }
    let fixed = |name: &str| find(name);
    if let (Some(pl_off), Some(pl_on), Some(py_off), Some(py_on)) = (
        fixed("pipelens fixed, telemetry off"),
        fixed("pipelens fixed, OTLP"),
        fixed("FastAPI fixed, telemetry off"),
        fixed("FastAPI fixed, OTLP"),
    ) {
        let per_core = |f: &Figures| 1e6 / f.cpu();
        println!(
            "pipelens: telemetry on/off throughput {:.2}, {:.0} req per CPU-second with OTLP",
            pl_on.throughput_vs(pl_off),
            per_core(pl_on)
        );
        println!(
            "FastAPI:  telemetry on/off throughput {:.2}, {:.0} req per CPU-second with OTLP",
            py_on.throughput_vs(py_off),
            per_core(py_on)
        );
        let ratio = per_core(pl_on) / per_core(py_on);
        println!(
            "Goal: pipelens >= 10x FastAPI throughput per core with full telemetry: {ratio:.1}x ({})",
            goal(ratio >= 10.0)
        );
    }
    peer_report(&find, options);
}

/// The `peer` suite's side-by-side CPU per request and its two goals.
fn peer_report<'a>(find: &dyn Fn(&str) -> Option<&'a Figures>, options: &Options) {
    let rows = [
        ("telemetry off", PEER_OFF, FRAUD_OFF, FRAUD_OFF_MIN),
        ("keep everything", PEER_ALL, FRAUD_ALL, FRAUD_ALL_MIN),
        (
            "5% of traces (peer head, pipelens tail)",
            PEER_HEAD,
            FRAUD_TAIL,
            FRAUD_TAIL_MIN,
        ),
    ];
    let none = |names: &[&str]| names.iter().all(|n| find(n).is_none());
    if rows.iter().all(|(_, p, r, m)| none(&[p, r, m])) {
        return;
    }
    let cpu = |name: &str| find(name).map_or(f64::NAN, Figures::cpu);
    // The median of the per-round ratios: the two variants of a round run
    // minutes apart at most, so the machine's drift between rounds cancels.
    let ratio = |ours: &str, peer: &str| match (find(ours), find(peer)) {
        (Some(o), Some(p)) => o.cpu_vs(p),
        _ => f64::NAN,
    };
    let per =
        |name: &str| find(name).map_or(f64::NAN, |f| f.spans as f64 / f.requests.max(1) as f64);
    println!();
    println!(
        "Fraud scoring, hand-wired peer vs pipelens (CPU µs/request, median of {} rounds; \
         pipelens / peer: the median of the rounds' ratios):",
        options.rounds
    );
    println!(
        "| telemetry | peer µs/req | pipelens µs/req: report | minimal answer \
         | pipelens / peer: report | minimal | peer spans/req | pipelens spans/req |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    // A variant left out by `--only` shows as `-`.
    let show = |value: f64, digits: usize| {
        if value.is_finite() {
            format!("{value:.digits$}")
        } else {
            "-".to_owned()
        }
    };
    for (label, peer, report, minimal) in rows {
        if none(&[peer, report, minimal]) {
            continue;
        }
        let spans = if find(report).is_some() {
            per(report)
        } else {
            per(minimal)
        };
        println!(
            "| {label} | {} | {} | {} | {} | {} | {} | {} |",
            show(cpu(peer), 1),
            show(cpu(report), 1),
            show(cpu(minimal), 1),
            show(ratio(report, peer), 2),
            show(ratio(minimal, peer), 2),
            show(per(peer), 2),
            show(spans, 2),
        );
    }
    let goal = |met: bool| if met { "met" } else { "MISSED" };
    for (answer, tail, all) in [
        ("report", FRAUD_TAIL, FRAUD_ALL),
        ("minimal answer", FRAUD_TAIL_MIN, FRAUD_ALL_MIN),
    ] {
        let sampled = ratio(tail, PEER_HEAD);
        if sampled.is_finite() {
            println!(
                "Goal: pipelens tail 5% ({answer}) within 1.3x the peer's CPU/request at 5% \
                 head sampling: {sampled:.2}x ({})",
                goal(sampled <= 1.3)
            );
        }
        let everything = ratio(all, PEER_ALL);
        if everything.is_finite() {
            println!(
                "Goal: pipelens keep-everything ({answer}) within 1.4x the peer's \
                 keep-everything: {everything:.2}x ({})",
                goal(everything <= 1.4)
            );
        }
    }
    // The demo's goal is a share of telemetry-off throughput; the same
    // share for each service against its own telemetry off says what the
    // hand-wired OTel stack itself keeps.
    let kept = |on: &str, off: &str| match (find(on), find(off)) {
        (Some(a), Some(b)) => a.throughput_vs(b),
        _ => f64::NAN,
    };
    for (label, peer, ours) in [
        ("5% of traces", PEER_HEAD, FRAUD_TAIL),
        ("keep everything", PEER_ALL, FRAUD_ALL),
    ] {
        let (p, o) = (kept(peer, PEER_OFF), kept(ours, FRAUD_OFF));
        if p.is_finite() || o.is_finite() {
            println!(
                "Throughput kept against its own telemetry off, {label}: peer {}, pipelens {}",
                show(p, 2),
                show(o, 2)
            );
        }
    }
}
