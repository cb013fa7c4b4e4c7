//! A load generator for the service: a realistic mix of rooms at a steady
//! rate, with a configurable share of bad requests, so dashboards have data
//! and alerts have something to fire on.

use std::collections::BTreeMap;
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
}

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
        Ok(())
    }
}

impl LoadgenConfig {
    fn check(&self) -> Result<Uri, LoadgenError> {
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
        if self.concurrency == 0 {
            return Err(bad("--concurrency", "0".into(), "expected at least 1"));
        }
        let url = format!(
            "{}{}",
            self.target.trim_end_matches('/'),
            pipelens::server::runs_route(crate::demo::planner::PIPELINE_NAME)
        );
        let uri: Uri = url.parse().map_err(|_| {
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

/// Drives the service until the duration ends or `shutdown` resolves, then
/// waits for in-flight requests and returns what happened.
pub async fn run(
    config: LoadgenConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<Summary, LoadgenError> {
    let uri = config.check()?;
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let summary = Arc::new(Mutex::new(Summary::default()));
    let permits = Arc::new(tokio::sync::Semaphore::new(config.concurrency));
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / config.rps));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let deadline = config.duration.map(|d| tokio::time::Instant::now() + d);
    let mut report = tokio::time::interval(Duration::from_secs(10));
    report.tick().await;
    tokio::pin!(shutdown);
    loop {
        let until_deadline = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut shutdown => break,
            () = until_deadline => break,
            _ = report.tick() => {
                let s = lock(&summary).to_string();
                tracing::info!(summary = %s, "load generator progress");
            }
            _ = tick.tick() => {
                let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                    lock(&summary).skipped += 1;
                    continue;
                };
                let shot = shot(&mut rng, config.mix, config.bad_share);
                let request = Request::builder()
                    .method(Method::POST)
                    .uri(uri.clone())
                    .header("content-type", shot.content_type)
                    .body(Full::new(Bytes::from(shot.body)));
                let Ok(request) = request else { continue };
                let client = client.clone();
                let summary = Arc::clone(&summary);
                lock(&summary).sent += 1;
                tokio::spawn(async move {
                    let started = Instant::now();
                    let result = client.request(request).await;
                    let outcome = match result {
                        Ok(response) => {
                            let status = response.status().as_u16();
                            let _ = response.into_body().collect().await;
                            Some(status)
                        }
                        Err(_) => None,
                    };
                    let mut s = lock(&summary);
                    match outcome {
                        Some(status) => {
                            *s.by_status.entry(status).or_default() += 1;
                            if s.latencies.len() == LATENCY_WINDOW {
                                s.latencies.pop_front();
                            }
                            s.latencies.push_back(started.elapsed().as_secs_f64());
                        }
                        None => s.transport_errors += 1,
                    }
                    drop(permit);
                });
            }
        }
    }
    let _ = permits
        .acquire_many(u32::try_from(config.concurrency).unwrap_or(u32::MAX))
        .await;
    let summary = lock(&summary).clone();
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
        let mut window = pipelens::drift::DriftWindow::new(planner::drift_features(), 200, 200);
        let mut rng = StdRng::seed_from_u64(3);
        for i in 0..400 {
            let mix = if i < 200 { Mix::Realistic } else { live };
            let body = room(&mut rng, mix).to_string();
            let room = planner::parse_room(body.as_bytes()).unwrap();
            window.record(&planner::features(&room));
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
        };
        assert_eq!(config.check().unwrap_err().flag, "--target");
        let config = LoadgenConfig { rps: 0.0, ..config };
        assert_eq!(config.check().unwrap_err().flag, "--rps");
    }
}
