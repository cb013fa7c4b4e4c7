//! The `pipelens` command line: `serve` the ceiling-layout and sentiment
//! pipelines over HTTP, `run` a batch of rooms, drive a service with
//! `loadgen`, `healthcheck` a service (for container health checks without a
//! shell), and `slo generate` Prometheus rules and their tests from an SLO
//! spec.
//!
//! The demo lives in [`demo`]: a user of the library's public API like any
//! other.

// A binary has no public API: `pub` marks what the demo's modules offer each
// other (and the integration tests that include them).
#![allow(unreachable_pub)]

mod batch;
mod demo;
mod run_store;
mod slo;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use demo::loadgen::{self, LoadgenConfig};
use demo::sentiment::{self, Candidate};
use demo::{ceiling, planner};
use pipelens::faults::Faults;
use pipelens::server::{self, Concurrency, Server};
use pipelens::telemetry::{self, TelemetryConfig};

#[derive(Parser)]
#[command(
    name = "pipelens",
    version,
    about = "Observable ML pipelines: ceiling layouts and sentiment analysis as a service"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The pipelines `pipelens profile` knows the inputs of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ProfiledPipeline {
    /// Rooms of the ceiling-layout planner.
    #[value(name = "ceiling-layout")]
    CeilingLayout,
    /// Reviews of the sentiment classifier.
    #[value(name = "sentiment")]
    Sentiment,
}

impl ProfiledPipeline {
    fn name(self) -> &'static str {
        match self {
            Self::CeilingLayout => planner::PIPELINE_NAME,
            Self::Sentiment => sentiment::NAME,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Serve the ceiling-layout and sentiment pipelines over HTTP with
    /// /health, /ready and /metrics.
    Serve {
        /// Address to listen on.
        #[arg(long, env = "PIPELENS_ADDR", default_value = "0.0.0.0:8000")]
        addr: SocketAddr,
        /// Pipeline runs executing at once (default: 4 per core).
        #[arg(long, env = "PIPELENS_MAX_CONCURRENT_RUNS", value_parser = clap::value_parser!(u32).range(1..))]
        max_concurrent_runs: Option<u32>,
        /// Runs waiting for a slot; beyond, requests get 503 at once
        /// (default: 4 per core).
        #[arg(long, env = "PIPELENS_RUN_QUEUE")]
        run_queue: Option<u32>,
        /// Longest a queued run waits for a slot before a 503, in milliseconds.
        #[arg(long, env = "PIPELENS_MAX_QUEUE_WAIT_MS", default_value_t = 1000)]
        max_queue_wait_ms: u64,
        /// Seconds in-flight requests may take to finish after SIGTERM before
        /// the service stops anyway (and exits 1); telemetry is flushed after.
        #[arg(long, env = "PIPELENS_SHUTDOWN_GRACE_SECS", default_value_t = 15.0, value_parser = grace_secs)]
        shutdown_grace_secs: f64,
        /// The drift reference file: read at start if it exists (made by
        /// `pipelens profile`, or saved earlier), else learned from the first
        /// rooms and saved there, so a restart does not reset it.
        #[arg(
            long,
            env = "PIPELENS_DRIFT_REFERENCE",
            conflicts_with = "drift_reference_dir"
        )]
        drift_reference: Option<PathBuf>,
        /// A directory keeping every served pipeline's drift references,
        /// input features and predictions, one file per pipeline
        /// (`{pipeline}.json`): read at start, or learned and saved there.
        /// Created if missing.
        #[arg(long, env = "PIPELENS_DRIFT_REFERENCE_DIR")]
        drift_reference_dir: Option<PathBuf>,
        /// The Open Inference Protocol server (MLServer, Triton, KServe)
        /// serving the sentiment model as `sentiment`, such as
        /// http://mlserver:8080: the sentiment pipeline's remote candidate
        /// calls it. Unset, the candidate calls a scoring endpoint this
        /// process starts on a loopback port.
        #[arg(long, env = "PIPELENS_SENTIMENT_MODEL_SERVER", value_parser = model_server)]
        sentiment_model_server: Option<String>,
        /// The directory of the sentiment pipeline's ONNX model
        /// (`model.onnx`, `features.json`); default: the repository's
        /// `models/sentiment`.
        #[arg(long, env = "PIPELENS_SENTIMENT_MODEL_DIR")]
        sentiment_model_dir: Option<PathBuf>,
        /// The challenger the sentiment pipeline runs in shadow:
        /// `majority_vote` (in the process), `off`, or `async:MS` (an async
        /// `majority_vote` answering MS milliseconds after it is called, as
        /// one behind a model server of its own would).
        #[arg(long, env = "PIPELENS_SENTIMENT_SHADOW", default_value = "majority_vote", value_parser = sentiment::Shadow::parse)]
        sentiment_shadow: sentiment::Shadow,
        /// Where the service keeps its state (created if missing): the run
        /// store's SQLite file `pipelens.db`, unless PIPELENS_RUN_STORE
        /// names another store (memory, sqlite:PATH, postgres://...).
        #[arg(long, env = "PIPELENS_DATA_DIR", default_value = "data")]
        data_dir: PathBuf,
    },
    /// Build a drift reference profile from a sample of rooms.
    Profile {
        /// The served pipeline whose inputs these are.
        #[arg(long, value_enum, default_value = "ceiling-layout")]
        pipeline: ProfiledPipeline,
        /// Its inputs as JSON Lines or a JSON array (rooms, or
        /// {"text": ...} reviews); `-` reads stdin.
        #[arg(long)]
        input: PathBuf,
        /// Where to write the profile (JSON); a directory (as given to
        /// `serve --drift-reference-dir`) gets the features part of
        /// `{pipeline}.json`, keeping its predictions part.
        #[arg(long)]
        out: PathBuf,
        /// Bins per feature, between the sample's quantiles.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(2..=100))]
        bins: u32,
    },
    /// Run a batch of rooms: one JSON result per line, then a summary.
    Run {
        /// Rooms as JSON Lines (one {"width": 12, "length": 8, "obstacles":
        /// [{"x": 3, "y": 4}]} per line) or a JSON array; `-` reads stdin.
        #[arg(long)]
        input: PathBuf,
        /// Write the results to this file instead of stdout.
        #[arg(long)]
        output: Option<PathBuf>,
        /// Runs at once (default: 2 per core).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        concurrency: Option<u32>,
        /// Stop at the first invalid input or failed run (exit 1).
        #[arg(long)]
        fail_fast: bool,
        /// Exit 0 only if failed inputs are at most this share of all inputs.
        #[arg(long, default_value_t = 0.0, value_parser = ratio)]
        max_failure_ratio: f64,
        /// The `batch_id` resource attribute of this batch's telemetry (an
        /// orchestrator's run id, say); default: the start time and a
        /// random suffix.
        #[arg(long)]
        batch_id: Option<String>,
        /// Run only the inputs whose line (or array element) number is
        /// INDEX modulo COUNT; each result keeps its line number from the
        /// whole file. COUNT at least 1, INDEX from 0 to COUNT-1.
        #[arg(long, value_name = "INDEX/COUNT", value_parser = batch::parse_shard, conflicts_with = "shards")]
        shard: Option<batch::Shard>,
        /// Split the batch into COUNT shards and run the one whose INDEX is
        /// JOB_COMPLETION_INDEX (set by a Kubernetes Indexed Job).
        #[arg(long, value_name = "COUNT", value_parser = clap::value_parser!(u64).range(1..))]
        shards: Option<u64>,
    },
    /// Drive a running service with a realistic mix of rooms and reviews,
    /// sending reviews' true labels back as delayed feedback.
    Loadgen {
        /// Base URL of the service.
        #[arg(long, default_value = "http://127.0.0.1:8000")]
        target: String,
        /// Requests per second.
        #[arg(long, default_value_t = 5.0)]
        rps: f64,
        /// Seconds to run; 0 runs until Ctrl-C or SIGTERM.
        #[arg(long, default_value_t = 60)]
        duration: u64,
        /// Share of deliberately bad requests, in [0, 1].
        #[arg(long, default_value_t = 0.05)]
        bad_share: f64,
        /// Most requests in flight at once.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Seed of the room generator.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Which rooms to send: `realistic`, or `halls` (only large halls:
        /// input drift, for the FeatureDrift alert).
        #[arg(long, value_enum, default_value_t = MixArg::Realistic)]
        mix: MixArg,
        /// Share of good requests sent to the sentiment pipeline (a review
        /// from a labelled pool) instead of a room, in [0, 1]; 0 sends rooms
        /// only, as does a target that does not serve sentiment.
        #[arg(long, default_value_t = 0.25, value_parser = ratio)]
        sentiment_share: f64,
        /// Share of successful sentiment runs whose true label is sent back
        /// as feedback, in [0, 1].
        #[arg(long, default_value_t = 0.5, value_parser = ratio)]
        feedback_share: f64,
        /// Seconds between a sentiment run's answer and its feedback
        /// (delayed ground truth); may be fractional.
        #[arg(long, default_value_t = 10.0, value_parser = delay_secs)]
        feedback_delay_secs: f64,
        /// Make this sentiment model's measured accuracy drop: a share of
        /// reviews is drawn from those it alone misreads (labels stay
        /// true). One of lexicon, naive_bayes, remote_logistic, or none.
        #[arg(long, value_name = "NAME", default_value = "none", value_parser = degrade_model)]
        degrade_model: Degrade,
        /// Share of sentiment reviews drawn from those --degrade-model
        /// misreads, in [0, 1].
        #[arg(long, default_value_t = 0.5, value_parser = ratio)]
        degrade_share: f64,
    },
    /// Service level objectives: rules, alerts and tests from one spec.
    Slo {
        #[command(subcommand)]
        command: slo::SloCommand,
    },
    /// Exit 0 if the URL answers 200, 1 otherwise (container health checks).
    Healthcheck {
        /// URL to probe.
        #[arg(long, default_value = "http://127.0.0.1:8000/health")]
        url: String,
    },
}

/// The `--mix` values.
#[derive(Clone, Copy, clap::ValueEnum)]
enum MixArg {
    Realistic,
    Halls,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(dispatch(cli.command));
    // Models abandoned at a timeout or at the end of the shutdown grace may
    // still hold blocking-pool threads: exit without waiting for them.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve {
            addr,
            max_concurrent_runs,
            run_queue,
            max_queue_wait_ms,
            shutdown_grace_secs,
            drift_reference,
            drift_reference_dir,
            sentiment_model_server,
            sentiment_model_dir,
            sentiment_shadow,
            data_dir,
        } => {
            let defaults = Concurrency::default();
            let concurrency = Concurrency {
                limit: max_concurrent_runs.map_or(defaults.limit, |n| n as usize),
                queue: run_queue.map_or(defaults.queue, |n| n as usize),
                max_wait: Duration::from_millis(max_queue_wait_ms),
            };
            serve(
                addr,
                concurrency,
                Duration::from_secs_f64(shutdown_grace_secs),
                drift_reference,
                drift_reference_dir,
                SentimentModels {
                    server: sentiment_model_server,
                    dir: sentiment_model_dir,
                    shadow: sentiment_shadow,
                },
                data_dir,
            )
            .await
        }
        Command::Run {
            input,
            output,
            concurrency,
            fail_fast,
            max_failure_ratio,
            batch_id,
            shard,
            shards,
        } => {
            let cores = std::thread::available_parallelism().map_or(2, usize::from);
            let job_index = std::env::var(batch::JOB_COMPLETION_INDEX).ok();
            let shard = batch::Shard::resolve(shard, shards, job_index.as_deref())
                .map_err(anyhow::Error::msg)?;
            let args = batch::BatchArgs {
                input,
                output,
                concurrency: concurrency.map_or(2 * cores, |n| n as usize),
                fail_fast,
                max_failure_ratio,
                shard,
            };
            let batch_id = batch_id.unwrap_or_else(|| {
                let secs = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                format!("{secs}-{:08x}", rand::random::<u32>())
            });
            run_batch(args, batch_id).await
        }
        Command::Loadgen {
            target,
            rps,
            duration,
            bad_share,
            concurrency,
            seed,
            mix,
            sentiment_share,
            feedback_share,
            feedback_delay_secs,
            degrade_model,
            degrade_share,
        } => {
            let config = LoadgenConfig {
                target,
                rps,
                duration: (duration > 0).then(|| Duration::from_secs(duration)),
                bad_share,
                concurrency,
                seed,
                mix: match mix {
                    MixArg::Realistic => loadgen::Mix::Realistic,
                    MixArg::Halls => loadgen::Mix::Halls,
                },
                sentiment_share,
                feedback_share,
                feedback_delay_secs,
                degrade: degrade_model.0,
                degrade_share,
                feedback_token: feedback_token()?,
            };
            let _telemetry = telemetry::init(&TelemetryConfig::from_env()?)?;
            let summary = loadgen::run(config, server::shutdown_signal()).await?;
            println!("{summary}");
            Ok(())
        }
        Command::Slo { command } => slo::run(command),
        Command::Profile {
            pipeline,
            input,
            out,
            bins,
        } => profile(pipeline, &input, &out, bins as usize).await,
        Command::Healthcheck { url } => healthcheck(&url).await,
    }
}

/// Parses `--feedback-delay-secs`: a finite number of seconds, 0 or more.
fn delay_secs(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(s) if (0.0..=loadgen::MAX_FEEDBACK_DELAY_SECS).contains(&s) => Ok(s),
        _ => Err(format!(
            "expected seconds between 0 and {}, got {value:?}",
            loadgen::MAX_FEEDBACK_DELAY_SECS
        )),
    }
}

/// Parses `--degrade-model`: one of the sentiment pipeline's candidates.
/// `--degrade-model`: the sentiment candidate to degrade, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Degrade(Option<Candidate>);

/// Parses `--degrade-model`: a candidate's name, or `none` (so compose can
/// pass `${LOADGEN_DEGRADE_MODEL:-none}`).
fn degrade_model(value: &str) -> Result<Degrade, String> {
    if value == "none" {
        return Ok(Degrade(None));
    }
    Candidate::DEGRADABLE
        .into_iter()
        .find(|c| c.name() == value)
        .map(|c| Degrade(Some(c)))
        .ok_or_else(|| {
            let names: Vec<&str> = Candidate::DEGRADABLE.iter().map(|c| c.name()).collect();
            format!(
                "expected one of {} or none, got {value:?}",
                names.join(", ")
            )
        })
}

/// Parses `--sentiment-model-server`: an `http://` or `https://` base URL,
/// without a trailing slash.
fn model_server(value: &str) -> Result<String, String> {
    let base = value.trim_end_matches('/');
    let rest = base
        .strip_prefix("http://")
        .or_else(|| base.strip_prefix("https://"));
    match rest {
        Some(host) if !host.is_empty() && !host.contains(char::is_whitespace) => {
            Ok(base.to_owned())
        }
        _ => Err(format!(
            "expected a base URL such as http://mlserver:8080, got {value:?}"
        )),
    }
}

/// Parses `--shutdown-grace-secs`: a finite number of seconds, 0 or more.
fn grace_secs(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(s) if s.is_finite() && (0.0..=3600.0).contains(&s) => Ok(s),
        _ => Err(format!(
            "expected seconds between 0 and 3600, got {value:?}"
        )),
    }
}

/// `serve`'s sentiment model flags.
struct SentimentModels {
    /// `--sentiment-model-server`.
    server: Option<String>,
    /// `--sentiment-model-dir`.
    dir: Option<PathBuf>,
    /// `--sentiment-shadow`.
    shadow: sentiment::Shadow,
}

async fn serve(
    addr: SocketAddr,
    concurrency: Concurrency,
    grace: Duration,
    drift_reference: Option<PathBuf>,
    drift_reference_dir: Option<PathBuf>,
    models: SentimentModels,
    data_dir: PathBuf,
) -> anyhow::Result<()> {
    let config = TelemetryConfig::from_env()?;
    let telemetry = telemetry::init(&config).context("cannot initialise telemetry")?;
    let faults = Arc::new(Faults::from_env()?);
    faults.watch(Duration::from_secs(1));
    // Read once, here, so a broken file stops start-up naming the flag; a
    // missing one is learned and saved there.
    let references = match (&drift_reference, drift_reference_dir) {
        (Some(path), _) if path.exists() => planner::References::Stored(
            pipelens::drift::Profile::read(path)
                .with_context(|| format!("--drift-reference {}", path.display()))?,
        ),
        (Some(path), _) => planner::References::SaveTo(path.clone()),
        (None, Some(dir)) => {
            drift_reference_dir_ready(&dir)?;
            planner::References::Dir(dir)
        }
        (None, None) => planner::References::Learn,
    };
    // Opened once every flag is checked, so a bad flag touches no state.
    let run_store = run_store::open(&data_dir, &telemetry.meter()).await?;
    let run_store_status = run_store.status();
    // A durable store keeps the drift references too, unless a flag names
    // a file or directory for them.
    let references = match references {
        planner::References::Learn if run_store.is_durable() => {
            planner::References::Store(run_store.clone())
        }
        other => other,
    };
    let sentiment_dir = match &references {
        planner::References::Dir(dir) => Some(dir.clone()),
        _ => None,
    };
    let pipeline = planner::pipeline_with_reference(
        Some(telemetry.meter()),
        &faults,
        planner::DRIFT_WINDOW,
        references,
    )?;
    // The sentiment pipeline's remote candidate calls the model server when
    // one is configured, else a scoring endpoint started here on a loopback
    // port.
    let remote = match models.server {
        Some(base) => sentiment::Remote::ModelServer(base),
        None => sentiment::Remote::Scorer(
            sentiment::start_scorer()
                .await
                .context("cannot start the sentiment scoring endpoint")?,
        ),
    };
    let models = sentiment::Models {
        dir: models.dir.unwrap_or_else(sentiment::reference::default_dir),
        remote,
        faults: Arc::clone(&faults),
        shadow: models.shadow,
    };
    let remote_logistic = match &models.remote {
        sentiment::Remote::ModelServer(base) => format!("model server {base}"),
        sentiment::Remote::Scorer(addr) => format!(
            "built-in scoring endpoint http://{addr} (no --sentiment-model-server / PIPELENS_SENTIMENT_MODEL_SERVER)"
        ),
    };
    let onnx_model = models.dir.join("model.onnx").display().to_string();
    let drift = match sentiment_dir {
        Some(dir) => sentiment::drift_spec().references_in(dir),
        None => sentiment::drift_spec(),
    };
    let reviews =
        sentiment::pipeline_with_store(telemetry.meter(), models, drift, Some(run_store.clone()))?;
    let mut builder = Server::builder()
        .telemetry(&telemetry)
        .pipeline(planner::served(pipeline))
        .pipeline(sentiment::served(reviews))
        .concurrency(concurrency)
        .shutdown_grace(grace);
    let feedback_token = feedback_token()?;
    let feedback_protected = feedback_token.is_some();
    if let Some(token) = feedback_token {
        builder = builder.feedback_token(token);
    }
    let server = builder.build().map_err(|e| match e {
        server::ServerError::FeedbackToken(e) => anyhow::anyhow!("{FEEDBACK_TOKEN_VAR}: {e}"),
        e => e.into(),
    })?;
    tracing::info!(
        feedback_token_required = feedback_protected,
        max_concurrent_runs = concurrency.limit,
        run_queue = concurrency.queue,
        shutdown_grace_s = grace.as_secs_f64(),
        pipelines = ?[planner::PIPELINE_NAME, sentiment::NAME],
        traces_exported = config.traces.is_some(),
        logs_exported = config.logs.is_some(),
        faults = ?faults.snapshot(),
        sentiment.remote_logistic = %remote_logistic,
        sentiment.onnx_model = %onnx_model,
        run_store.backend = run_store_status.backend,
        run_store.target = %run_store_status.target,
        run_store.retention_s = run_store_status.retention_s,
        "pipelens starting"
    );
    let served = server::run(server, addr, telemetry).await;
    // The last runs' batch, before the process goes.
    run_store.flush().await;
    served.with_context(|| format!("cannot serve on --addr {addr}"))
}

/// Creates `--drift-reference-dir` if missing and reads each served
/// pipeline's file in it, so a broken one stops start-up naming the flag
/// (a missing one is learned and saved there).
fn drift_reference_dir_ready(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create --drift-reference-dir {}", dir.display()))?;
    for name in [planner::PIPELINE_NAME, sentiment::NAME] {
        let path = pipelens::drift::PipelineReferences::path(dir, name);
        if path.exists() {
            pipelens::drift::PipelineReferences::read(&path)
                .with_context(|| format!("--drift-reference-dir {}", dir.display()))?;
        }
    }
    Ok(())
}

/// The variable holding the token feedback needs (read from the
/// environment only, so it never shows in a process listing).
const FEEDBACK_TOKEN_VAR: &str = "PIPELENS_FEEDBACK_TOKEN";

/// The feedback token, if `PIPELENS_FEEDBACK_TOKEN` is set.
fn feedback_token() -> anyhow::Result<Option<String>> {
    match std::env::var(FEEDBACK_TOKEN_VAR) {
        Ok(token) => Ok(Some(token)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => {
            anyhow::bail!("{FEEDBACK_TOKEN_VAR} is not valid UTF-8")
        }
    }
}

/// Parses `--max-failure-ratio` and the load generator's shares: a share in
/// [0, 1].
fn ratio(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("expected a ratio between 0 and 1, got {value:?}")),
    }
}

async fn run_batch(args: batch::BatchArgs, batch_id: String) -> anyhow::Result<()> {
    let mut config = TelemetryConfig::from_env()?;
    config
        .resource_attributes
        .push(("batch_id".to_owned(), batch_id.clone()));
    if args.shard != batch::Shard::WHOLE {
        config
            .resource_attributes
            .push(("batch_shard".to_owned(), args.shard.to_string()));
        // Shards of one batch push the same series but for their instance:
        // without one of their own, each push would overwrite the others'.
        let own_instance = std::env::var("OTEL_RESOURCE_ATTRIBUTES")
            .is_ok_and(|a| a.contains("service.instance.id="));
        if !own_instance {
            config.resource_attributes.push((
                "service.instance.id".to_owned(),
                format!("{batch_id}-shard-{}", args.shard.index),
            ));
        }
    }
    if std::env::var_os("RUST_LOG").is_none() {
        // A line per run (and a WARN per low-confidence model) would bury
        // the progress bar and the summary: stderr shows errors only, while
        // spans and OTLP log records keep the INFO level.
        config.stdout_filter = Some("error".to_owned());
    }
    let telemetry = telemetry::init_with_writer(&config, std::io::stderr)?;
    let faults = Arc::new(Faults::from_env()?);
    let pipeline = planner::pipeline(Some(telemetry.meter()), &faults, planner::DRIFT_WINDOW)?;
    let decode = |value| planner::room_from_value(value).map(ceiling::Layout::empty);
    let ended = batch::run(&pipeline, decode, &args).await;
    tokio::task::spawn_blocking(move || telemetry.shutdown()).await??;
    let ended = ended?;
    if args.shard == batch::Shard::WHOLE {
        eprint!("batch {batch_id}: {}", ended.summary);
    } else {
        eprint!("batch {batch_id} shard {}: {}", args.shard, ended.summary);
    }
    if !ended.passed {
        bail!(
            "{} of {} inputs failed (ratio {:.4}, --max-failure-ratio {}{})",
            ended.summary.failures(),
            ended.summary.inputs,
            ended.summary.failure_ratio(),
            args.max_failure_ratio,
            if args.fail_fast { ", --fail-fast" } else { "" }
        );
    }
    Ok(())
}

/// `pipelens profile`: reads a served pipeline's inputs (rooms or
/// reviews), builds the drift reference of their features, writes it (to a
/// profile file, or as the features part of `{pipeline}.json` in a
/// directory); bad lines are named and skipped.
async fn profile(
    pipeline: ProfiledPipeline,
    input: &std::path::Path,
    out: &std::path::Path,
    bins: usize,
) -> anyhow::Result<()> {
    let reader = batch::open_input(input)?.reader;
    let (profile, count, skipped) = match pipeline {
        ProfiledPipeline::CeilingLayout => {
            let (rooms, skipped) = read_inputs(input, reader, |v| {
                planner::room_from_value(v).map(ceiling::Layout::empty)
            })
            .await?;
            (
                planner::drift_spec().profile(&rooms, bins),
                rooms.len(),
                skipped,
            )
        }
        ProfiledPipeline::Sentiment => {
            let (reviews, skipped) = read_inputs(input, reader, |v| {
                serde_json::from_value::<sentiment::Request>(v)
                    .map_err(|e| pipelens::input::FieldError::new("text", e.to_string()))
            })
            .await?;
            (
                sentiment::drift_spec().profile(&reviews, bins),
                reviews.len(),
                skipped,
            )
        }
    };
    let written = if out.is_dir() {
        let path = pipelens::drift::PipelineReferences::path(out, pipeline.name());
        let mut references = if path.exists() {
            pipelens::drift::PipelineReferences::read(&path)
                .with_context(|| format!("--out {}", out.display()))?
        } else {
            pipelens::drift::PipelineReferences::default()
        };
        references.features = Some(profile);
        references
            .write(&path)
            .with_context(|| format!("cannot write --out {}", path.display()))?;
        path
    } else {
        profile
            .write(out)
            .with_context(|| format!("cannot write --out {}", out.display()))?;
        out.to_owned()
    };
    eprintln!(
        "profile of {count} {} inputs ({skipped} skipped) written to {}",
        pipeline.name(),
        written.display()
    );
    Ok(())
}

/// Every valid input of `--input` and how many lines were skipped (each
/// named on stderr); an error if none is valid.
async fn read_inputs<In: Send + 'static>(
    input: &std::path::Path,
    reader: Box<dyn std::io::BufRead + Send>,
    decode: impl Fn(serde_json::Value) -> Result<In, pipelens::input::FieldError> + Send + 'static,
) -> anyhow::Result<(Vec<In>, u64)> {
    let mut items = pipelens::batch::read_json(reader, decode);
    let mut inputs = Vec::new();
    let mut skipped = 0u64;
    while let Some(item) = items.recv().await {
        let item = item.with_context(|| format!("--input {}", input.display()))?;
        match item.input {
            Ok(value) => inputs.push(value),
            Err(e) => {
                skipped += 1;
                eprintln!(
                    "--input {} line {}: {e} (skipped)",
                    input.display(),
                    item.position
                );
            }
        }
    }
    if inputs.is_empty() {
        bail!(
            "--input {}: no valid input to build a profile from",
            input.display()
        );
    }
    Ok((inputs, skipped))
}

async fn healthcheck(url: &str) -> anyhow::Result<()> {
    use http_body_util::Empty;
    use hyper::body::Bytes;
    let uri: hyper::Uri = url
        .parse()
        .with_context(|| format!("invalid --url {url}"))?;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<Bytes>>();
    let response = tokio::time::timeout(Duration::from_secs(3), client.get(uri))
        .await
        .with_context(|| format!("{url} did not answer within 3 s"))?
        .with_context(|| format!("cannot reach {url}"))?;
    if !response.status().is_success() {
        bail!("{url} answered {}", response.status());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loadgen_args(args: &[&str]) -> Result<Command, clap::Error> {
        let argv = ["pipelens", "loadgen"].iter().chain(args);
        Cli::try_parse_from(argv).map(|cli| cli.command)
    }

    /// The sentiment flags of a loadgen command line: shares of sentiment,
    /// feedback and degraded reviews, the feedback delay, the degraded model.
    fn sentiment_flags(args: &[&str]) -> (f64, f64, f64, f64, Degrade) {
        match loadgen_args(args) {
            Ok(Command::Loadgen {
                sentiment_share,
                feedback_share,
                feedback_delay_secs,
                degrade_model,
                degrade_share,
                ..
            }) => (
                sentiment_share,
                feedback_share,
                degrade_share,
                feedback_delay_secs,
                degrade_model,
            ),
            Ok(_) => unreachable!("loadgen_args parses a loadgen command"),
            Err(e) => panic!("{args:?} must parse: {e}"),
        }
    }

    #[test]
    fn loadgen_sentiment_flags_have_their_defaults() {
        assert_eq!(sentiment_flags(&[]), (0.25, 0.5, 0.5, 10.0, Degrade(None)));
    }

    #[test]
    fn loadgen_sentiment_flags_parse() {
        let flags = sentiment_flags(&[
            "--sentiment-share",
            "1",
            "--feedback-share",
            "0",
            "--feedback-delay-secs",
            "0.25",
            "--degrade-model",
            "naive_bayes",
            "--degrade-share",
            "0.8",
        ]);
        assert_eq!(
            flags,
            (1.0, 0.0, 0.8, 0.25, Degrade(Some(Candidate::NaiveBayes)))
        );
        for name in ["lexicon", "naive_bayes", "remote_logistic", "none"] {
            assert!(loadgen_args(&["--degrade-model", name]).is_ok(), "{name}");
        }
    }

    #[test]
    fn the_sentiment_model_server_is_a_base_url() {
        let server = |args: &[&str]| {
            let argv = [&["pipelens", "serve"], args].concat();
            match Cli::try_parse_from(argv).map(|cli| cli.command) {
                Ok(Command::Serve {
                    sentiment_model_server,
                    ..
                }) => Ok(sentiment_model_server),
                Ok(_) => panic!("not serve"),
                Err(e) => Err(e.to_string()),
            }
        };
        assert_eq!(
            server(&["--sentiment-model-server", "http://mlserver:8080/"]),
            Ok(Some("http://mlserver:8080".to_owned()))
        );
        for bad in ["mlserver:8080", "http://", "ftp://mlserver"] {
            let message = server(&["--sentiment-model-server", bad]).unwrap_err();
            assert!(message.contains("--sentiment-model-server"), "{message}");
            assert!(message.contains("http://mlserver:8080"), "{message}");
        }
    }

    #[test]
    fn bad_loadgen_sentiment_flags_are_named() {
        let error = |args: &[&str]| match loadgen_args(args) {
            Ok(_) => panic!("{args:?} must be refused"),
            Err(e) => e.to_string(),
        };
        // The ONNX model is trained on the review pool: no review is
        // misread by it alone, so it cannot be degraded.
        for model in ["bert", "onnx_logistic"] {
            let message = error(&["--degrade-model", model]);
            assert!(message.contains("--degrade-model"), "{message}");
            assert!(
                message.contains("lexicon, naive_bayes, remote_logistic or none"),
                "{message}"
            );
        }
        for (flag, value) in [
            ("--sentiment-share", "1.5"),
            ("--sentiment-share", "-0.1"),
            ("--feedback-share", "2"),
            ("--feedback-share", "NaN"),
            ("--degrade-share", "-1"),
            ("--feedback-delay-secs", "-1"),
            ("--feedback-delay-secs", "inf"),
            ("--feedback-delay-secs", "soon"),
        ] {
            let message = error(&[&format!("{flag}={value}")]);
            assert!(message.contains(flag), "{flag} {value}: {message}");
        }
    }
}
