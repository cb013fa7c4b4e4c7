//! A load generator for the service: a realistic mix of rooms at a steady
//! rate, with a configurable share of bad requests, so dashboards have data
//! and alerts have something to fire on. A share of the good requests are
//! reviews for the sentiment pipeline, from a pool labelled by construction;
//! some of their true labels are sent back later as feedback (delayed ground
//! truth), so the service can measure each model's accuracy, and
//! `--degrade-model` makes one model's accuracy drop with honest labels.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::demo::sentiment::reviews::{self, Review};
use crate::demo::sentiment::{self, Candidate};

/// How to drive the service.
#[derive(Debug, Clone)]
pub struct LoadgenConfig {
    /// Base URL of the service, such as `http://127.0.0.1:8000`.
    pub target: String,
    /// Requests per second.
    pub rps: f64,
    /// How long to run; `None` runs until the shutdown future resolves.
    pub duration: Option<Duration>,
    /// Share of requests, in `[0, 1]`, that are deliberately bad.
    pub bad_share: f64,
    /// Most requests in flight at once; ticks beyond it are skipped and counted.
    pub concurrency: usize,
    /// Seed of the room generator, for reproducible runs.
    pub seed: u64,
    /// Which rooms to send.
    pub mix: Mix,
    /// Share of good requests, in `[0, 1]`, sent to the sentiment pipeline
    /// (a review of the pool) instead of a room; 0 sends rooms only.
    pub sentiment_share: f64,
    /// Share of successful sentiment runs, in `[0, 1]`, whose true label is
    /// sent back as feedback.
    pub feedback_share: f64,
    /// Seconds between a sentiment run's answer and its feedback.
    pub feedback_delay_secs: f64,
    /// The sentiment model to make look worse, if any.
    pub degrade: Option<Candidate>,
    /// Share of sentiment reviews, in `[0, 1]`, drawn from those `degrade`
    /// alone misreads.
    pub degrade_share: f64,
    /// The token feedback is sent with (`Authorization: Bearer`), when the
    /// service requires one (`PIPELENS_FEEDBACK_TOKEN`).
    pub feedback_token: Option<String>,
}

impl Default for LoadgenConfig {
    /// The command line's defaults.
    fn default() -> Self {
        Self {
            target: "http://127.0.0.1:8000".to_owned(),
            rps: 5.0,
            duration: Some(Duration::from_secs(60)),
            bad_share: 0.05,
            concurrency: 32,
            seed: 42,
            mix: Mix::Realistic,
            sentiment_share: 0.25,
            feedback_share: 0.5,
            feedback_delay_secs: 10.0,
            degrade: None,
            degrade_share: 0.5,
            feedback_token: None,
        }
    }
}

/// The longest feedback delay, in seconds.
pub const MAX_FEEDBACK_DELAY_SECS: f64 = 3600.0;

/// Most feedbacks waiting for their delay at once; beyond, they are dropped
/// and counted.
pub const MAX_PENDING_FEEDBACK: usize = 10_000;

/// A load generator setting that cannot be used, named by its flag.
#[derive(Debug, thiserror::Error)]
#[error("invalid {flag} {value:?}: {reason}")]
pub struct LoadgenError {
    /// The flag at fault, such as `--target`.
    pub flag: &'static str,
    /// The rejected value.
    pub value: String,
    /// What is expected.
    pub reason: &'static str,
}

/// What a load run did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Requests sent.
    pub sent: u64,
    /// Responses by status code.
    pub by_status: BTreeMap<u16, u64>,
    /// Requests that got no response (connection refused, reset).
    pub transport_errors: u64,
    /// Ticks skipped because `concurrency` requests were in flight.
    pub skipped: u64,
    /// Of the requests sent, those to the sentiment pipeline.
    pub sentiment_sent: u64,
    /// Feedbacks sent.
    pub feedback_sent: u64,
    /// Feedback responses by status code.
    pub feedback_by_status: BTreeMap<u16, u64>,
    /// Feedbacks that got no response (within 10 seconds).
    pub feedback_transport_errors: u64,
    /// Feedbacks not sent because the run's answer had no usable `run_id`.
    pub feedback_without_run_id: u64,
    /// Feedbacks dropped because [`MAX_PENDING_FEEDBACK`] were waiting.
    pub feedback_dropped: u64,
    /// Feedbacks still waiting for their delay when the load stopped.
    pub feedback_unsent: u64,
    /// Latencies of the last `LATENCY_WINDOW` answered requests, in
    /// seconds: bounded, since `--duration 0` runs for days.
    latencies: std::collections::VecDeque<f64>,
}

/// How many recent latencies the quantiles are computed over.
const LATENCY_WINDOW: usize = 10_000;

impl Summary {
    /// The `q` quantile (0..=1) of response latency in seconds, over the
    /// most recent answered requests.
    pub fn latency_quantile(&self, q: f64) -> Option<f64> {
        if self.latencies.is_empty() {
            return None;
        }
        let mut sorted: Vec<f64> = self.latencies.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        let i = ((sorted.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
        sorted.get(i).copied()
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sent={} transport_errors={} skipped={}",
            self.sent, self.transport_errors, self.skipped
        )?;
        for (status, n) in &self.by_status {
            write!(f, " status_{status}={n}")?;
        }
        if let (Some(p50), Some(p95)) = (self.latency_quantile(0.5), self.latency_quantile(0.95)) {
            write!(f, " p50_ms={:.2} p95_ms={:.2}", p50 * 1e3, p95 * 1e3)?;
        }
        write!(
            f,
            " sentiment_sent={} feedback_sent={}",
            self.sentiment_sent, self.feedback_sent
        )?;
        for (status, n) in &self.feedback_by_status {
            write!(f, " feedback_status_{status}={n}")?;
        }
        for (name, n) in [
            ("feedback_transport_errors", self.feedback_transport_errors),
            ("feedback_without_run_id", self.feedback_without_run_id),
            ("feedback_dropped", self.feedback_dropped),
            ("feedback_unsent", self.feedback_unsent),
        ] {
            if n > 0 {
                write!(f, " {name}={n}")?;
            }
        }
        Ok(())
    }
}

/// Where the load goes, parsed from `--target`.
#[derive(Debug, Clone)]
struct Targets {
    /// The base URL, without a trailing slash.
    base: String,
    /// The ceiling-layout pipeline's runs.
    ceiling: Uri,
    /// The sentiment pipeline's runs.
    sentiment: Uri,
    /// `GET /v1/pipelines`.
    pipelines: Uri,
}

impl Targets {
    /// Where the feedback on the sentiment run `run_id` goes, if the id is
    /// fit for a URL path.
    fn feedback(&self, run_id: &str) -> Option<Uri> {
        if run_id.is_empty()
            || run_id.len() > 128
            || !run_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return None;
        }
        format!(
            "{}{}/{run_id}/feedback",
            self.base,
            pipelens::server::runs_route(sentiment::NAME)
        )
        .parse()
        .ok()
    }
}

impl LoadgenConfig {
    fn check(&self) -> Result<Targets, LoadgenError> {
        let bad = |flag, value: String, reason| LoadgenError {
            flag,
            value,
            reason,
        };
        if !(self.rps > 0.0 && self.rps <= 10_000.0) {
            return Err(bad(
                "--rps",
                self.rps.to_string(),
                "expected a rate between 0 and 10000",
            ));
        }
        if !(0.0..=1.0).contains(&self.bad_share) {
            return Err(bad(
                "--bad-share",
                self.bad_share.to_string(),
                "expected a share between 0 and 1",
            ));
        }
        for (flag, share) in [
            ("--sentiment-share", self.sentiment_share),
            ("--feedback-share", self.feedback_share),
            ("--degrade-share", self.degrade_share),
        ] {
            if !(0.0..=1.0).contains(&share) {
                return Err(bad(
                    flag,
                    share.to_string(),
                    "expected a share between 0 and 1",
                ));
            }
        }
        if !(0.0..=MAX_FEEDBACK_DELAY_SECS).contains(&self.feedback_delay_secs) {
            return Err(bad(
                "--feedback-delay-secs",
                self.feedback_delay_secs.to_string(),
                "expected seconds between 0 and 3600",
            ));
        }
        if let Some(model) = self.degrade {
            if self.sentiment_share == 0.0 {
                return Err(bad(
                    "--degrade-model",
                    model.name().to_owned(),
                    "needs sentiment traffic: a --sentiment-share above 0",
                ));
            }
        }
        if self.concurrency == 0 {
            return Err(bad("--concurrency", "0".into(), "expected at least 1"));
        }
        let base = self.target.trim_end_matches('/').to_owned();
        let parse = |path: &str| -> Result<Uri, LoadgenError> {
            let uri: Uri = format!("{base}{path}").parse().map_err(|_| {
                bad(
                    "--target",
                    self.target.clone(),
                    "expected a URL such as http://127.0.0.1:8000",
                )
            })?;
            if uri.scheme_str() != Some("http") || uri.host().is_none() {
                return Err(bad(
                    "--target",
                    self.target.clone(),
                    "expected an http:// URL with a host",
                ));
            }
            Ok(uri)
        };
        Ok(Targets {
            ceiling: parse(&pipelens::server::runs_route(
                crate::demo::planner::PIPELINE_NAME,
            ))?,
            sentiment: parse(&pipelens::server::runs_route(sentiment::NAME))?,
            pipelines: parse("/v1/pipelines")?,
            base,
        })
    }
}

/// One request of the mix: its body and content type.
#[derive(Debug, Clone, PartialEq)]
pub struct Shot {
    /// The request body.
    pub body: String,
    /// The `Content-Type` header.
    pub content_type: &'static str,
    /// Whether the service should reject it with a 4xx.
    pub bad: bool,
}

/// Which rooms the load generator sends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mix {
    /// Small offices, open halls, corridors and cluttered rooms: the traffic
    /// the service's drift reference is taken from.
    #[default]
    Realistic,
    /// Only large open halls: traffic unlike the reference, which makes
    /// `ml_feature_drift_psi` rise and the FeatureDrift alert fire.
    Halls,
}

/// A room of the `mix`.
pub fn room(rng: &mut impl Rng, mix: Mix) -> Value {
    let kind = match mix {
        Mix::Realistic => rng.random_range(0..100),
        Mix::Halls => 50,
    };
    let (w, l, density) = match kind {
        0..=39 => (rng.random_range(4..=12), rng.random_range(4..=12), 0.02),
        40..=64 => (rng.random_range(30..=120), rng.random_range(30..=120), 0.01),
        65..=84 => (rng.random_range(2..=4), rng.random_range(20..=80), 0.0),
        _ => (rng.random_range(10..=40), rng.random_range(10..=40), 0.12),
    };
    let (w, l) = if rng.random_bool(0.5) { (w, l) } else { (l, w) };
    let count = ((f64::from(w) * f64::from(l)) * density) as usize;
    let mut seen = std::collections::HashSet::new();
    let obstacles: Vec<Value> = (0..count)
        .map(|_| (rng.random_range(0..w), rng.random_range(0..l)))
        .filter(|c| seen.insert(*c))
        .map(|(x, y)| json!({"x": x, "y": y}))
        .collect();
    json!({"width": w, "length": l, "obstacles": obstacles})
}

/// A request the service must reject: each kind the API guards against.
pub fn bad_request(rng: &mut impl Rng) -> Shot {
    let (body, content_type) = match rng.random_range(0..7) {
        0 => (r#"{"width": 12, "length": "#.to_owned(), "application/json"),
        1 => (
            r#"{"width": "twelve", "length": 8}"#.to_owned(),
            "application/json",
        ),
        2 => (r#"{"length": 8}"#.to_owned(), "application/json"),
        3 => (
            r#"{"width": 1000000, "length": 1000000}"#.to_owned(),
            "application/json",
        ),
        4 => (
            r#"{"width": 5, "length": 5, "obstacles": [{"x": 9, "y": 1}]}"#.to_owned(),
            "application/json",
        ),
        5 => (
            r#"{"width": -3, "length": 8}"#.to_owned(),
            "application/json",
        ),
        _ => (r#"{"width": 12, "length": 8}"#.to_owned(), "text/plain"),
    };
    Shot {
        body,
        content_type,
        bad: true,
    }
}

/// The next request of the mix.
pub fn shot(rng: &mut impl Rng, mix: Mix, bad_share: f64) -> Shot {
    if bad_share > 0.0 && rng.random_bool(bad_share) {
        bad_request(rng)
    } else {
        Shot {
            body: room(rng, mix).to_string(),
            content_type: "application/json",
            bad: false,
        }
    }
}

/// Where sentiment reviews come from: the whole pool, or with a degraded
/// model, partly from the reviews that model alone misreads.
#[derive(Debug, Clone)]
pub struct SentimentMix {
    pool: &'static [Review],
    degraded: Vec<&'static Review>,
    degrade_share: f64,
}

impl SentimentMix {
    /// Reviews from the pool; with `degrade`, a `degrade_share` of them
    /// from those that model alone misreads (found by running the three
    /// classifiers in-process, once).
    pub fn new(degrade: Option<Candidate>, degrade_share: f64) -> Self {
        Self {
            pool: reviews::pool(),
            degraded: degrade.map(reviews::misread_only_by).unwrap_or_default(),
            degrade_share,
        }
    }

    /// The reviews the degraded model alone misreads (none without one).
    pub fn degraded(&self) -> &[&'static Review] {
        &self.degraded
    }

    /// The next review.
    pub fn review(&self, rng: &mut impl Rng) -> &'static Review {
        if !self.degraded.is_empty()
            && self.degrade_share > 0.0
            && rng.random_bool(self.degrade_share)
        {
            self.degraded[rng.random_range(0..self.degraded.len())]
        } else {
            &self.pool[rng.random_range(0..self.pool.len())]
        }
    }
}

/// One request of the load.
#[derive(Debug, Clone, PartialEq)]
pub enum Planned {
    /// A room (or a bad request) for the ceiling-layout pipeline.
    Ceiling(Shot),
    /// A review for the sentiment pipeline, and whether its true label is
    /// to be sent back once the run has answered.
    Sentiment {
        /// The review.
        review: &'static Review,
        /// Whether to send its label as feedback.
        feedback: bool,
    },
}

/// The next request: [`shot`]'s, except that a `sentiment_share` of the
/// good ones (while `sentiment_on`) become reviews. Reviews are drawn from
/// `texts` alone and `rooms` is drawn exactly as by [`shot`], so the
/// ceiling requests of a seed are today's, some rooms replaced by reviews.
pub fn plan(
    rooms: &mut impl Rng,
    texts: &mut impl Rng,
    config: &LoadgenConfig,
    sentiment_on: bool,
    mix: &SentimentMix,
) -> Planned {
    let shot = shot(rooms, config.mix, config.bad_share);
    if !shot.bad
        && sentiment_on
        && config.sentiment_share > 0.0
        && texts.random_bool(config.sentiment_share)
    {
        let review = mix.review(texts);
        let feedback = config.feedback_share > 0.0 && texts.random_bool(config.feedback_share);
        return Planned::Sentiment { review, feedback };
    }
    Planned::Ceiling(shot)
}

/// How long a feedback may take to be answered; beyond, it counts as a
/// transport error.
const FEEDBACK_TIMEOUT: Duration = Duration::from_secs(10);

/// Mixed into the seed of the review generator.
const TEXT_SEED: u64 = 0x7e57_5e47_1a3e_0001;

/// What the request tasks share.
struct Shared {
    client: Client<HttpConnector, Full<Bytes>>,
    targets: Targets,
    summary: Mutex<Summary>,
    /// Whether sentiment requests are sent: off once the target says it does
    /// not serve the pipeline.
    sentiment_on: AtomicBool,
    /// Feedbacks waiting for their delay or in flight.
    pending: AtomicUsize,
    feedback_delay: Duration,
    /// `Bearer <token>` for feedback, when a token is configured.
    feedback_auth: Option<hyper::header::HeaderValue>,
    /// Whether the missing `run_id` has been warned about.
    warned_run_id: AtomicBool,
}

/// Whether the target serves the sentiment pipeline, by its
/// `GET /v1/pipelines`. If it does not answer that (not up yet, say), the
/// answer is yes until a sentiment run gets a 404.
async fn serves_sentiment(shared: &Shared) -> bool {
    let listing = async {
        let request = Request::builder()
            .method(Method::GET)
            .uri(shared.targets.pipelines.clone())
            .body(Full::new(Bytes::new()))
            .ok()?;
        let response = shared.client.request(request).await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        let body = response.into_body().collect().await.ok()?.to_bytes();
        let listed: Value = serde_json::from_slice(&body).ok()?;
        let names: Vec<String> = listed["pipelines"]
            .as_array()?
            .iter()
            .filter_map(|p| p["name"].as_str().map(str::to_owned))
            .collect();
        Some(names)
    };
    match tokio::time::timeout(Duration::from_secs(5), listing).await {
        Ok(Some(names)) if !names.iter().any(|n| n == sentiment::NAME) => {
            tracing::warn!(
                target_url = %shared.targets.base,
                pipelines = ?names,
                "the target does not serve the sentiment pipeline: sending ceiling traffic only"
            );
            false
        }
        _ => true,
    }
}

/// Sends one run and records its answer; for a sentiment run picked for
/// feedback, then waits `feedback_delay` and sends its true label.
async fn exchange(
    shared: Arc<Shared>,
    request: Request<Full<Bytes>>,
    sentiment: Option<(&'static Review, bool)>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let started = Instant::now();
    let outcome = match shared.client.request(request).await {
        Ok(response) => {
            let status = response.status().as_u16();
            let body = match response.into_body().collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(_) => Bytes::new(),
            };
            Some((status, body))
        }
        Err(_) => None,
    };
    let mut feedback = None;
    {
        let mut s = lock(&shared.summary);
        match &outcome {
            Some((status, _)) => {
                *s.by_status.entry(*status).or_default() += 1;
                if s.latencies.len() == LATENCY_WINDOW {
                    s.latencies.pop_front();
                }
                s.latencies.push_back(started.elapsed().as_secs_f64());
            }
            None => s.transport_errors += 1,
        }
        match (sentiment, &outcome) {
            (Some(_), Some((404, _))) if shared.sentiment_on.swap(false, Ordering::SeqCst) => {
                tracing::warn!(
                    target_url = %shared.targets.base,
                    "the sentiment pipeline answered 404: sending ceiling traffic only"
                );
            }
            (Some((review, true)), Some((status, body))) if (200..300).contains(status) => {
                match run_id(body).and_then(|id| shared.targets.feedback(&id)) {
                    None => {
                        s.feedback_without_run_id += 1;
                        if !shared.warned_run_id.swap(true, Ordering::SeqCst) {
                            tracing::warn!(
                                "a sentiment run's answer has no run_id: no feedback for such runs"
                            );
                        }
                    }
                    // Reserved while the run's permit is held, so the end of
                    // the load waits for it.
                    Some(uri) => {
                        if shared.pending.fetch_add(1, Ordering::SeqCst) >= MAX_PENDING_FEEDBACK {
                            shared.pending.fetch_sub(1, Ordering::SeqCst);
                            s.feedback_dropped += 1;
                        } else {
                            feedback = Some((uri, review.label));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    drop(permit);
    let Some((uri, label)) = feedback else {
        return;
    };
    tokio::time::sleep(shared.feedback_delay).await;
    let body = json!({ "label": label.as_str() }).to_string();
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header("content-type", "application/json");
    if let Some(auth) = &shared.feedback_auth {
        request = request.header(hyper::header::AUTHORIZATION, auth.clone());
    }
    let request = request.body(Full::new(Bytes::from(body)));
    let send = async {
        let response = shared.client.request(request.ok()?).await.ok()?;
        let status = response.status().as_u16();
        let _ = response.into_body().collect().await;
        Some(status)
    };
    let status = tokio::time::timeout(FEEDBACK_TIMEOUT, send)
        .await
        .ok()
        .flatten();
    {
        let mut s = lock(&shared.summary);
        s.feedback_sent += 1;
        match status {
            Some(status) => *s.feedback_by_status.entry(status).or_default() += 1,
            None => s.feedback_transport_errors += 1,
        }
    }
    shared.pending.fetch_sub(1, Ordering::SeqCst);
}

/// The `run_id` of a run's JSON answer.
fn run_id(body: &[u8]) -> Option<String> {
    let answer: Value = serde_json::from_slice(body).ok()?;
    answer["run_id"].as_str().map(str::to_owned)
}

/// Drives the service until the duration ends or `shutdown` resolves, then
/// waits for in-flight requests and returns what happened. Feedbacks still
/// waiting for their delay are waited for when the duration ends, and
/// abandoned (counted as unsent) at a shutdown signal.
pub async fn run(
    config: LoadgenConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<Summary, LoadgenError> {
    let targets = config.check()?;
    let feedback_auth = match &config.feedback_token {
        None => None,
        Some(token) => {
            let mut value = hyper::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| LoadgenError {
                    flag: "PIPELENS_FEEDBACK_TOKEN",
                    value: "<not shown>".to_owned(),
                    reason: "expected a token that fits an HTTP header",
                })?;
            value.set_sensitive(true);
            Some(value)
        }
    };
    let shared = Arc::new(Shared {
        feedback_auth,
        client: Client::builder(TokioExecutor::new()).build_http(),
        targets,
        summary: Mutex::new(Summary::default()),
        sentiment_on: AtomicBool::new(false),
        pending: AtomicUsize::new(0),
        feedback_delay: Duration::from_secs_f64(config.feedback_delay_secs),
        warned_run_id: AtomicBool::new(false),
    });
    if config.sentiment_share > 0.0 {
        let on = serves_sentiment(&shared).await;
        shared.sentiment_on.store(on, Ordering::SeqCst);
    }
    let mix = SentimentMix::new(config.degrade, config.degrade_share);
    if let Some(model) = config.degrade {
        tracing::info!(
            model = model.name(),
            share = config.degrade_share,
            reviews = mix.degraded().len(),
            "degrading a sentiment model: a share of reviews it alone misreads"
        );
    }
    let permits = Arc::new(tokio::sync::Semaphore::new(config.concurrency));
    let mut rooms = StdRng::seed_from_u64(config.seed);
    let mut texts = StdRng::seed_from_u64(config.seed ^ TEXT_SEED);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / config.rps));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let deadline = config.duration.map(|d| tokio::time::Instant::now() + d);
    let mut report = tokio::time::interval(Duration::from_secs(10));
    report.tick().await;
    tokio::pin!(shutdown);
    let mut signalled = false;
    loop {
        let until_deadline = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut shutdown => {
                signalled = true;
                break;
            }
            () = until_deadline => break,
            _ = report.tick() => {
                let s = lock(&shared.summary).to_string();
                tracing::info!(summary = %s, "load generator progress");
            }
            _ = tick.tick() => {
                let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                    lock(&shared.summary).skipped += 1;
                    continue;
                };
                let sentiment_on = shared.sentiment_on.load(Ordering::SeqCst);
                let (uri, body, content_type, sentiment) =
                    match plan(&mut rooms, &mut texts, &config, sentiment_on, &mix) {
                        Planned::Ceiling(shot) => (
                            shared.targets.ceiling.clone(),
                            shot.body,
                            shot.content_type,
                            None,
                        ),
                        Planned::Sentiment { review, feedback } => (
                            shared.targets.sentiment.clone(),
                            json!({ "text": review.text }).to_string(),
                            "application/json",
                            Some((review, feedback)),
                        ),
                    };
                let request = Request::builder()
                    .method(Method::POST)
                    .uri(uri)
                    .header("content-type", content_type)
                    .body(Full::new(Bytes::from(body)));
                let Ok(request) = request else { continue };
                {
                    let mut s = lock(&shared.summary);
                    s.sent += 1;
                    if sentiment.is_some() {
                        s.sentiment_sent += 1;
                    }
                }
                tokio::spawn(exchange(Arc::clone(&shared), request, sentiment, permit));
            }
        }
    }
    let _ = permits
        .acquire_many(u32::try_from(config.concurrency).unwrap_or(u32::MAX))
        .await;
    if !signalled && shared.pending.load(Ordering::SeqCst) > 0 {
        tracing::info!(
            pending = shared.pending.load(Ordering::SeqCst),
            "waiting for delayed feedbacks"
        );
        let drained = async {
            while shared.pending.load(Ordering::SeqCst) > 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::select! {
            () = &mut shutdown => {}
            () = drained => {}
        }
    }
    let mut summary = lock(&shared.summary).clone();
    summary.feedback_unsent = shared.pending.load(Ordering::SeqCst) as u64;
    Ok(summary)
}

fn lock(summary: &Mutex<Summary>) -> std::sync::MutexGuard<'_, Summary> {
    summary.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_is_reproducible_and_has_the_requested_share_of_bad_requests() {
        let mut a = StdRng::seed_from_u64(7);
        let mut b = StdRng::seed_from_u64(7);
        let shots: Vec<Shot> = (0..2000)
            .map(|_| shot(&mut a, Mix::Realistic, 0.1))
            .collect();
        let again: Vec<Shot> = (0..2000)
            .map(|_| shot(&mut b, Mix::Realistic, 0.1))
            .collect();
        assert_eq!(shots, again);
        let bad = shots.iter().filter(|s| s.bad).count();
        assert!((150..=250).contains(&bad), "{bad} bad of 2000 at 10%");
        for s in shots.iter().filter(|s| !s.bad) {
            let v: Value = serde_json::from_str(&s.body).unwrap();
            let room = crate::demo::planner::parse_room(s.body.as_bytes());
            assert!(room.is_ok(), "generated room must be valid: {v}");
        }
    }

    /// The service's drift arithmetic, fed the realistic mix as reference
    /// and then live traffic: the realistic mix stays stable, halls drift.
    fn psi_after(live: Mix) -> Vec<f64> {
        use crate::demo::planner;
        let mut window = pipelens::drift::DriftWindow::new(planner::drift_features(), 200, 200)
            .categorical(&[planner::ROOM_SHAPE]);
        let mut rng = StdRng::seed_from_u64(3);
        for i in 0..400 {
            let mix = if i < 200 { Mix::Realistic } else { live };
            let body = room(&mut rng, mix).to_string();
            let room = planner::parse_room(body.as_bytes()).unwrap();
            window.record_with(
                &planner::features(&room),
                &[planner::shape(&room).to_owned()],
            );
        }
        window
            .psi()
            .expect("the reference is complete after 200 rooms")
    }

    #[test]
    fn the_halls_mix_drifts_from_the_realistic_reference() {
        let stable = psi_after(Mix::Realistic);
        assert!(
            stable.iter().all(|p| *p < 0.2),
            "realistic traffic: {stable:?}"
        );
        let drifted = psi_after(Mix::Halls);
        assert!(drifted[0] > 0.2 && drifted[1] > 0.2, "halls: {drifted:?}");
    }

    #[test]
    fn bad_flags_are_named() {
        let config = LoadgenConfig {
            target: "localhost:8000".into(),
            rps: 5.0,
            duration: None,
            bad_share: 0.0,
            concurrency: 4,
            seed: 1,
            mix: Mix::Realistic,
            ..LoadgenConfig::default()
        };
        assert_eq!(config.check().unwrap_err().flag, "--target");
        let config = LoadgenConfig { rps: 0.0, ..config };
        assert_eq!(config.check().unwrap_err().flag, "--rps");
    }

    #[test]
    fn bad_sentiment_settings_are_named() {
        let good = LoadgenConfig::default();
        assert!(good.check().is_ok());
        let cases: Vec<(LoadgenConfig, &str)> = vec![
            (
                LoadgenConfig {
                    sentiment_share: 1.5,
                    ..good.clone()
                },
                "--sentiment-share",
            ),
            (
                LoadgenConfig {
                    feedback_share: -0.1,
                    ..good.clone()
                },
                "--feedback-share",
            ),
            (
                LoadgenConfig {
                    degrade_share: f64::NAN,
                    ..good.clone()
                },
                "--degrade-share",
            ),
            (
                LoadgenConfig {
                    feedback_delay_secs: -1.0,
                    ..good.clone()
                },
                "--feedback-delay-secs",
            ),
            (
                LoadgenConfig {
                    feedback_delay_secs: f64::INFINITY,
                    ..good.clone()
                },
                "--feedback-delay-secs",
            ),
            (
                LoadgenConfig {
                    degrade: Some(Candidate::Lexicon),
                    sentiment_share: 0.0,
                    ..good.clone()
                },
                "--degrade-model",
            ),
        ];
        for (config, flag) in cases {
            let error = config.check().unwrap_err();
            assert_eq!(error.flag, flag);
            assert!(error.to_string().contains(flag), "{error}");
        }
        let edges = LoadgenConfig {
            sentiment_share: 1.0,
            feedback_share: 0.0,
            feedback_delay_secs: 0.0,
            degrade: Some(Candidate::RemoteLogistic),
            degrade_share: 1.0,
            ..good
        };
        assert!(edges.check().is_ok());
    }

    #[test]
    fn feedback_goes_to_the_run_it_is_about() {
        let targets = LoadgenConfig {
            target: "http://127.0.0.1:8000/".into(),
            ..LoadgenConfig::default()
        }
        .check()
        .unwrap();
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(
            targets.feedback(id).unwrap().to_string(),
            format!("http://127.0.0.1:8000/v1/pipelines/sentiment/runs/{id}/feedback")
        );
        for bad in ["", "../../metrics", "a b", "id?x=1", &"f".repeat(200)] {
            assert!(targets.feedback(bad).is_none(), "{bad:?}");
        }
        assert_eq!(
            run_id(format!(r#"{{"run_id": "{id}", "output": {{}}}}"#).as_bytes()).as_deref(),
            Some(id)
        );
        assert_eq!(run_id(br#"{"trace_id": "abc"}"#), None);
        assert_eq!(run_id(b"not json"), None);
    }

    fn ceiling_only(planned: &[Planned]) -> Vec<Option<&Shot>> {
        planned
            .iter()
            .map(|p| match p {
                Planned::Ceiling(shot) => Some(shot),
                Planned::Sentiment { .. } => None,
            })
            .collect()
    }

    #[test]
    fn sentiment_traffic_replaces_some_good_rooms_and_leaves_the_rest_as_today() {
        let config = LoadgenConfig {
            bad_share: 0.1,
            ..LoadgenConfig::default()
        };
        let mix = SentimentMix::new(None, 0.5);
        let today: Vec<Shot> = {
            let mut rng = StdRng::seed_from_u64(9);
            (0..4000)
                .map(|_| shot(&mut rng, Mix::Realistic, 0.1))
                .collect()
        };
        let planned = |sentiment_on: bool, config: &LoadgenConfig| -> Vec<Planned> {
            let mut rooms = StdRng::seed_from_u64(9);
            let mut texts = StdRng::seed_from_u64(9 ^ TEXT_SEED);
            (0..4000)
                .map(|_| plan(&mut rooms, &mut texts, config, sentiment_on, &mix))
                .collect()
        };
        // Off (by the flag or because the target lacks it): today's requests.
        let off = planned(false, &config);
        let zero = planned(
            true,
            &LoadgenConfig {
                sentiment_share: 0.0,
                ..config.clone()
            },
        );
        for p in [&off, &zero] {
            assert_eq!(ceiling_only(p), today.iter().map(Some).collect::<Vec<_>>());
        }
        // On: the same requests where they are rooms; reviews only where
        // today's request was a good room.
        let on = planned(true, &config);
        assert_eq!(on, planned(true, &config), "reproducible");
        let mut reviews = 0;
        let mut feedback = 0;
        for (p, shot) in on.iter().zip(&today) {
            match p {
                Planned::Ceiling(s) => assert_eq!(s, shot),
                Planned::Sentiment {
                    review,
                    feedback: f,
                } => {
                    assert!(!shot.bad, "a bad request became a review");
                    assert!(reviews::pool().contains(review));
                    reviews += 1;
                    feedback += usize::from(*f);
                }
            }
        }
        let good = today.iter().filter(|s| !s.bad).count();
        // 25% of the good requests, half of them with feedback.
        let share = reviews as f64 / good as f64;
        assert!(
            (0.21..=0.29).contains(&share),
            "{reviews} reviews of {good}"
        );
        let fed = feedback as f64 / reviews as f64;
        assert!((0.43..=0.57).contains(&fed), "{feedback} of {reviews}");
    }

    /// Each model's accuracy on `n` reviews of `mix`.
    fn accuracies(mix: &SentimentMix, n: usize) -> Vec<f64> {
        let mut rng = StdRng::seed_from_u64(5);
        let sample: Vec<&Review> = (0..n).map(|_| mix.review(&mut rng)).collect();
        Candidate::ALL
            .iter()
            .map(|c| {
                let right = sample
                    .iter()
                    .filter(|r| c.classify(&sentiment::classify::tokenize(&r.text)) == r.label)
                    .count();
                right as f64 / n as f64
            })
            .collect()
    }

    #[test]
    fn degrading_a_model_lowers_its_accuracy_alone() {
        let normal = accuracies(&SentimentMix::new(None, 0.5), 3000);
        assert!(normal.iter().all(|a| *a >= 0.85), "{normal:?}");
        for model in Candidate::DEGRADABLE {
            let i = Candidate::ALL.iter().position(|&c| c == model).unwrap();
            let mix = SentimentMix::new(Some(model), 0.5);
            assert!(mix.degraded().len() >= 10, "{}", model.name());
            for review in mix.degraded() {
                let tokens = sentiment::classify::tokenize(&review.text);
                assert_ne!(model.classify(&tokens), review.label, "{}", review.text);
            }
            let measured = accuracies(&mix, 3000);
            for (j, accuracy) in measured.iter().enumerate() {
                if i == j {
                    assert!(*accuracy < 0.6, "{}: {measured:?}", model.name());
                } else {
                    assert!(*accuracy >= 0.9, "{}: {measured:?}", model.name());
                }
            }
            // The whole share: only reviews the model misreads.
            let all = accuracies(&SentimentMix::new(Some(model), 1.0), 500);
            assert_eq!(all[i], 0.0, "{}", model.name());
        }
    }

    /// A stand-in for the service: lists `pipelines`, answers runs (with a
    /// `run_id` for sentiment ones) and feedback (200, then 409 for a
    /// repeat), and notes when each arrived.
    async fn fake_service(pipelines: &'static [&'static str]) -> (String, Arc<Mutex<FakeLog>>) {
        use axum::extract::{Path, State};
        use axum::routing::{get, post};
        type Log = Arc<Mutex<FakeLog>>;
        let log: Log = Arc::default();
        let app = axum::Router::new()
            .route(
                "/v1/pipelines",
                get(move || async move {
                    let listed: Vec<Value> =
                        pipelines.iter().map(|n| json!({ "name": n })).collect();
                    axum::Json(json!({ "pipelines": listed }))
                }),
            )
            .route(
                "/v1/pipelines/{name}/runs",
                post(
                    move |State(log): State<Log>, Path(name): Path<String>| async move {
                        if !pipelines.contains(&name.as_str()) {
                            return (axum::http::StatusCode::NOT_FOUND, "{}".to_owned());
                        }
                        let mut log = log.lock().unwrap();
                        let id = format!("{:032x}", log.runs.len() + 1);
                        log.runs.push((name, id.clone(), Instant::now()));
                        (
                            axum::http::StatusCode::OK,
                            json!({ "run_id": id, "output": {} }).to_string(),
                        )
                    },
                ),
            )
            .route(
                "/v1/pipelines/sentiment/runs/{id}/feedback",
                post(
                    |State(log): State<Log>, Path(id): Path<String>, body: String| async move {
                        let mut log = log.lock().unwrap();
                        let repeat = log.feedback.iter().any(|(i, _, _)| *i == id);
                        log.feedback.push((id, body, Instant::now()));
                        if repeat {
                            axum::http::StatusCode::CONFLICT
                        } else {
                            axum::http::StatusCode::OK
                        }
                    },
                ),
            )
            .with_state(Arc::clone(&log));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), log)
    }

    #[derive(Default)]
    struct FakeLog {
        /// (pipeline, run id, answered at)
        runs: Vec<(String, String, Instant)>,
        /// (run id, body, received at)
        feedback: Vec<(String, String, Instant)>,
    }

    fn quick(target: String) -> LoadgenConfig {
        LoadgenConfig {
            target,
            rps: 100.0,
            duration: Some(Duration::from_millis(600)),
            bad_share: 0.0,
            sentiment_share: 0.5,
            feedback_share: 1.0,
            feedback_delay_secs: 0.3,
            ..LoadgenConfig::default()
        }
    }

    #[tokio::test]
    async fn sentiment_runs_get_their_true_label_back_after_the_delay() {
        let (target, log) = fake_service(&["ceiling-layout", "sentiment"]).await;
        let summary = run(quick(target), std::future::pending()).await.unwrap();
        let log = log.lock().unwrap();
        let sentiment: Vec<&(String, String, Instant)> =
            log.runs.iter().filter(|r| r.0 == "sentiment").collect();
        assert!(summary.sentiment_sent > 5, "{summary}");
        assert_eq!(summary.sentiment_sent, sentiment.len() as u64);
        assert_eq!(summary.sent, log.runs.len() as u64);
        // Every sentiment run got its feedback, after the delay, before the
        // load generator returned.
        assert_eq!(summary.feedback_sent, summary.sentiment_sent, "{summary}");
        assert_eq!(
            summary.feedback_by_status.get(&200),
            Some(&summary.feedback_sent)
        );
        assert_eq!(summary.feedback_unsent, 0);
        for (id, body, at) in &log.feedback {
            let (_, _, answered) = sentiment.iter().find(|r| r.1 == *id).unwrap();
            assert!(
                at.duration_since(*answered) >= Duration::from_millis(290),
                "feedback after {:?}",
                at.duration_since(*answered)
            );
            let label: Value = serde_json::from_str(body).unwrap();
            assert!(
                ["positive", "negative", "neutral"].contains(&label["label"].as_str().unwrap()),
                "{body}"
            );
        }
        let text = summary.to_string();
        assert!(text.contains("sentiment_sent="), "{text}");
        assert!(text.contains("feedback_status_200="), "{text}");
    }

    #[tokio::test]
    async fn a_target_without_sentiment_gets_ceiling_traffic_only() {
        let (target, log) = fake_service(&["ceiling-layout"]).await;
        let summary = run(quick(target), std::future::pending()).await.unwrap();
        assert_eq!(summary.sentiment_sent, 0, "{summary}");
        assert!(summary.sent > 20, "{summary}");
        assert!(log
            .lock()
            .unwrap()
            .runs
            .iter()
            .all(|r| r.0 == "ceiling-layout"));
    }

    #[tokio::test]
    async fn a_signal_abandons_pending_feedback_and_counts_it() {
        let (target, log) = fake_service(&["ceiling-layout", "sentiment"]).await;
        let config = LoadgenConfig {
            duration: None,
            feedback_delay_secs: 60.0,
            ..quick(target)
        };
        let started = Instant::now();
        let signal = tokio::time::sleep(Duration::from_millis(500));
        let summary = run(config, signal).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(summary.sentiment_sent > 5, "{summary}");
        assert_eq!(summary.feedback_sent, 0);
        assert_eq!(summary.feedback_unsent, summary.sentiment_sent, "{summary}");
        assert!(log.lock().unwrap().feedback.is_empty());
        assert!(summary.to_string().contains("feedback_unsent="));
    }
}
