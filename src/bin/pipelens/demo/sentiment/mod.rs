//! The sentiment pipeline, a second domain served by the same library:
//! `{"text": "..."}` → a `tokenize` step → four candidate classifiers in a
//! parallel stage (a lexicon, a naive Bayes model trained at load time, the
//! reference logistic regression of `models/sentiment/model.onnx` run in the
//! process by tract, and an async remote candidate) → a `label` step giving
//! `{"label": "positive|negative|neutral", "score": ...}`.
//!
//! The remote candidate, `remote_logistic`, is where the model lives:
//! - with a model server configured ([`Remote::ModelServer`]), the reference
//!   model served by MLServer over the Open Inference Protocol (an
//!   `OpenInferenceModel`, [`reference::remote`]);
//! - without one ([`Remote::Scorer`]), a logistic model behind a scoring
//!   endpoint the process starts itself, which shows how a hand-written
//!   outbound HTTP call carries the run's trace: it adds
//!   `pipelens::telemetry::trace_headers()` to its request, and the scoring
//!   endpoint continues the trace from them.
//!
//! The classifiers are judged against ground truth: a label sent later to
//! `POST /v1/pipelines/sentiment/runs/{run_id}/feedback` counts each
//! candidate's answer as correct or not (`ml_model_feedback_total`). The
//! stage serves the candidate with the best measured accuracy
//! ([`MeasuredAccuracy`]), and a challenger, `majority_vote`, runs in shadow:
//! judged on the same truth, never served. Every model, the shadow
//! included, takes the fault knobs (`PIPELENS_FAULTS`,
//! `PIPELENS_FAULTS_FILE`).
//!
//! `pipelens serve` serves it beside the ceiling-layout planner, and
//! `cargo run --example sentiment` alone; [`reviews`] is the load
//! generator's pool of reviews labelled by construction.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry::metrics::Meter;
use pipelens::faults::{Faults, Faulty};
use pipelens::server::{FieldError, Served};
use pipelens::{
    AsyncModel, BuildError, DriftSpec, Feature, Judge, MeasuredAccuracy, Model, ModelError,
    Pipeline, Prediction, Stage,
};
use serde::{Deserialize, Serialize};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

pub mod classify;
pub mod reference;
pub mod reviews;

use classify::{Lexicon, NaiveBayes, Scored, Tokens};

/// The pipeline's name: the `pipeline` label and the URL segment.
pub const NAME: &str = "sentiment";
/// The longest text accepted, in bytes.
pub const MAX_TEXT_BYTES: usize = 16 * 1024;
/// How long the classifiers may take.
pub const CLASSIFY_TIMEOUT: Duration = Duration::from_millis(500);

/// The body of `POST /v1/pipelines/sentiment/runs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// The text to classify.
    pub text: String,
}

/// The run's output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sentiment {
    /// `positive`, `negative` or `neutral`.
    pub label: &'static str,
    /// From -1 (negative) to 1 (positive).
    pub score: f64,
}

/// Where the remote candidate, `remote_logistic`, runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Remote {
    /// The scoring endpoint at this address ([`start_scorer`]).
    Scorer(SocketAddr),
    /// The Open Inference Protocol server at this base URL (such as
    /// `http://mlserver:8080`), serving the reference model as `sentiment`.
    ModelServer(String),
}

/// What the pipeline's models need from outside the process.
#[derive(Debug, Clone)]
pub struct Models {
    /// The directory of `model.onnx` and `features.json`.
    pub dir: PathBuf,
    /// Where `remote_logistic` runs.
    pub remote: Remote,
    /// The fault knobs every model of the stage reads (none by default).
    pub faults: Arc<Faults>,
    /// The challenger in shadow.
    pub shadow: Shadow,
}

/// The challenger the `classify` stage runs in shadow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Shadow {
    /// `majority_vote`, in the process (what `pipelens serve` runs).
    #[default]
    MajorityVote,
    /// `majority_vote` as an async model answering this long after it is
    /// called: a challenger behind a model server of its own, whose round
    /// trip the process only waits for (what `cargo bench --bench
    /// service_load -- --suite shadow` measures).
    MajorityVoteAfter(Duration),
    /// No shadow.
    Off,
}

impl Shadow {
    /// `majority_vote`, `off`, or `async:MS` (an async `majority_vote`
    /// answering MS milliseconds after it is called).
    pub fn parse(value: &str) -> Result<Self, String> {
        match value {
            "majority_vote" => Ok(Self::MajorityVote),
            "off" => Ok(Self::Off),
            other => other
                .strip_prefix("async:")
                .and_then(|ms| ms.parse().ok())
                .map(|ms| Self::MajorityVoteAfter(Duration::from_millis(ms)))
                .ok_or_else(|| {
                    format!("`{other}`: expected majority_vote, off or async:MILLISECONDS")
                }),
        }
    }
}

impl Models {
    /// The reference model's files from [`reference::default_dir`], and the
    /// remote candidate at `remote`.
    pub fn new(remote: Remote) -> Self {
        Self {
            dir: reference::default_dir(),
            remote,
            faults: Arc::new(Faults::none()),
            shadow: Shadow::default(),
        }
    }
}

impl From<SocketAddr> for Models {
    fn from(scorer: SocketAddr) -> Self {
        Self::new(Remote::Scorer(scorer))
    }
}

// The service builds it with its run store; the example and the tests
// without.
#[allow(dead_code)]
/// Builds the pipeline, recording into `meter`, with the remote candidate
/// and the model files of `models` (a scoring endpoint's address will do).
pub fn pipeline(
    meter: Meter,
    models: impl Into<Models>,
) -> Result<Pipeline<Request, Sentiment>, BuildError> {
    pipeline_with_drift(meter, models, drift_spec())
}

/// The drift features of a review: its length in characters.
pub fn drift_spec() -> DriftSpec<Request> {
    DriftSpec::new(
        vec![Feature {
            name: "text_length",
            edges: vec![16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0],
        }],
        |request: &Request| vec![request.text.chars().count() as f64],
    )
}

#[allow(dead_code)]
/// Like [`pipeline`], watching drift as `drift` says (its references kept
/// in a directory, say).
pub fn pipeline_with_drift(
    meter: Meter,
    models: impl Into<Models>,
    drift: DriftSpec<Request>,
) -> Result<Pipeline<Request, Sentiment>, BuildError> {
    pipeline_with_store(meter, models, drift, None)
}

/// Like [`pipeline_with_drift`], keeping runs for their ground truth in
/// `store` (a memory store of its own when `None`): the service's run
/// store.
pub fn pipeline_with_store(
    meter: Meter,
    models: impl Into<Models>,
    drift: DriftSpec<Request>,
    store: Option<pipelens::store::RunStore>,
) -> Result<Pipeline<Request, Sentiment>, BuildError> {
    let models = models.into();
    let stage = Stage::parallel("classify")
        .model(Faulty::new(
            LexiconModel(Lexicon::new()),
            Arc::clone(&models.faults),
        ))
        .model(Faulty::new(
            BayesModel(OnceLock::new()),
            Arc::clone(&models.faults),
        ))
        .model(Faulty::new(
            reference::OnnxLogistic::new(&models.dir),
            Arc::clone(&models.faults),
        ))
        .select(MeasuredAccuracy::default());
    let stage = match &models.remote {
        Remote::Scorer(addr) => stage.async_model(Faulty::new(
            RemoteScorer::new(*addr),
            Arc::clone(&models.faults),
        )),
        Remote::ModelServer(base) => stage.async_model(Faulty::new(
            reference::remote(base, &models.dir),
            Arc::clone(&models.faults),
        )),
    };
    let stage = match models.shadow {
        Shadow::MajorityVote => stage.shadow(Faulty::new(
            MajorityVote::default(),
            Arc::clone(&models.faults),
        )),
        Shadow::MajorityVoteAfter(delay) => stage.shadow_async(Faulty::new(
            AsyncVote {
                vote: MajorityVote::default(),
                delay,
            },
            Arc::clone(&models.faults),
        )),
        Shadow::Off => stage,
    };
    let builder = Pipeline::builder(NAME).meter(meter);
    let builder = match store {
        Some(store) => builder.run_store(store),
        None => builder,
    };
    builder
        .step("tokenize", |request: &Request| {
            Ok(classify::tokenize(&request.text))
        })
        .stage(
            stage
                .timeout(CLASSIFY_TIMEOUT)
                .judge(Judge::label(|scored: &Scored| scored.label.as_str())),
        )
        .step("label", |scored: &Scored| {
            Ok(Sentiment {
                label: scored.label.as_str(),
                score: (scored.score * 1000.0).round() / 1000.0,
            })
        })
        .drift(drift)
        .build()
}

/// The pipeline as served: the text must be non-blank and at most
/// [`MAX_TEXT_BYTES`] long.
pub fn served(pipeline: Pipeline<Request, Sentiment>) -> Served<Request, Sentiment> {
    Served::new(pipeline).validate(|request: &Request| {
        if request.text.trim().is_empty() {
            Err(FieldError::new("text", "must not be blank"))
        } else if request.text.len() > MAX_TEXT_BYTES {
            Err(FieldError::new(
                "text",
                format!("must be at most {MAX_TEXT_BYTES} bytes"),
            ))
        } else {
            Ok(())
        }
    })
}

/// The `classify` stage's candidates, by the `model_name` they report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Candidate {
    /// `lexicon`: the valence lexicon.
    Lexicon,
    /// `naive_bayes`: the naive Bayes model.
    NaiveBayes,
    /// `onnx_logistic`: the reference model's ONNX export, run by tract.
    OnnxLogistic,
    /// `remote_logistic`: the logistic model behind the scoring endpoint,
    /// or the reference model behind the model server when one is set.
    RemoteLogistic,
}

impl Candidate {
    /// Every candidate, in the stage's order.
    pub const ALL: [Candidate; 4] = [
        Candidate::Lexicon,
        Candidate::NaiveBayes,
        Candidate::OnnxLogistic,
        Candidate::RemoteLogistic,
    ];

    /// The candidates `loadgen --degrade-model` can degrade: each alone
    /// misreads some reviews of the pool. The reference model is trained on
    /// the pool and reads (almost) all of it right.
    pub const DEGRADABLE: [Candidate; 3] = [
        Candidate::Lexicon,
        Candidate::NaiveBayes,
        Candidate::RemoteLogistic,
    ];

    /// The model's name: its `model_name` label.
    pub fn name(self) -> &'static str {
        match self {
            Candidate::Lexicon => "lexicon",
            Candidate::NaiveBayes => "naive_bayes",
            Candidate::OnnxLogistic => "onnx_logistic",
            Candidate::RemoteLogistic => "remote_logistic",
        }
    }

    /// What this candidate makes of `tokens`, computed in-process (the
    /// remote candidate's model is the one the scoring endpoint runs; the
    /// ONNX model, read from [`reference::default_dir`], answers neutral
    /// with no confidence when its files cannot be read).
    pub fn score(self, tokens: &Tokens) -> Scored {
        static LEXICON: OnceLock<Lexicon> = OnceLock::new();
        static BAYES: OnceLock<NaiveBayes> = OnceLock::new();
        match self {
            Candidate::Lexicon => LEXICON.get_or_init(Lexicon::new).classify(tokens),
            Candidate::NaiveBayes => BAYES
                .get_or_init(NaiveBayes::trained_default)
                .classify(tokens),
            Candidate::OnnxLogistic => reference::score(tokens).unwrap_or(Scored {
                label: classify::Label::Neutral,
                score: 0.0,
                confidence: 0.0,
            }),
            Candidate::RemoteLogistic => classify::logistic_score(tokens),
        }
    }

    /// The label this candidate gives `tokens`.
    pub fn classify(self, tokens: &Tokens) -> classify::Label {
        self.score(tokens).label
    }
}

/// A valence lexicon with negation and intensifiers.
struct LexiconModel(Lexicon);

impl Model<Tokens, Scored> for LexiconModel {
    fn name(&self) -> &str {
        Candidate::Lexicon.name()
    }
    fn version(&self) -> &str {
        "1.0.0"
    }
    fn run(&self, tokens: &Tokens) -> Result<Prediction<Scored>, ModelError> {
        let scored = self.0.classify(tokens);
        Ok(Prediction::new(scored.clone(), scored.confidence))
    }
}

/// Multinomial naive Bayes, trained on the built-in corpus when it loads.
struct BayesModel(OnceLock<NaiveBayes>);

impl Model<Tokens, Scored> for BayesModel {
    fn name(&self) -> &str {
        Candidate::NaiveBayes.name()
    }
    fn version(&self) -> &str {
        "1.0.0"
    }
    fn load(&self) -> Result<(), ModelError> {
        self.0.get_or_init(NaiveBayes::trained_default);
        Ok(())
    }
    fn run(&self, tokens: &Tokens) -> Result<Prediction<Scored>, ModelError> {
        let model = self
            .0
            .get()
            .ok_or_else(|| ModelError::NotLoaded("not trained yet".into()))?;
        let scored = model.classify(tokens);
        Ok(Prediction::new(scored.clone(), scored.confidence))
    }
}

/// The shadow's `model_name`.
pub const SHADOW: &str = "majority_vote";

/// The challenger in shadow: the majority of the lexicon, naive Bayes and
/// the in-process logistic model (when all three disagree, the most
/// confident); its confidence is the agreeing models' mean confidence
/// times the share that agrees.
#[derive(Default)]
struct MajorityVote {
    voters: OnceLock<(Lexicon, NaiveBayes)>,
}

impl Model<Tokens, Scored> for MajorityVote {
    fn name(&self) -> &str {
        SHADOW
    }
    fn version(&self) -> &str {
        "0.1.0"
    }
    fn load(&self) -> Result<(), ModelError> {
        self.voters
            .get_or_init(|| (Lexicon::new(), NaiveBayes::trained_default()));
        Ok(())
    }
    fn run(&self, tokens: &Tokens) -> Result<Prediction<Scored>, ModelError> {
        let (lexicon, bayes) = self
            .voters
            .get()
            .ok_or_else(|| ModelError::NotLoaded("voters not trained yet".into()))?;
        let scored = classify::majority(&[
            lexicon.classify(tokens),
            bayes.classify(tokens),
            classify::logistic_score(tokens),
        ]);
        Ok(Prediction::new(scored.clone(), scored.confidence))
    }
}

/// [`MajorityVote`] answering `delay` after it is called.
struct AsyncVote {
    vote: MajorityVote,
    delay: Duration,
}

impl AsyncModel<Tokens, Scored> for AsyncVote {
    fn name(&self) -> &str {
        SHADOW
    }
    fn version(&self) -> &str {
        "0.1.0"
    }
    async fn load(&self) -> Result<(), ModelError> {
        self.vote.load()
    }
    async fn run(&self, tokens: &Tokens) -> Result<Prediction<Scored>, ModelError> {
        tokio::time::sleep(self.delay).await;
        self.vote.run(tokens)
    }
}

/// A logistic scorer served over HTTP: an async candidate.
struct RemoteScorer {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl RemoteScorer {
    fn new(addr: SocketAddr) -> Self {
        Self {
            base: format!("http://{addr}"),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    async fn call(&self, method: &str, path: &str, body: String) -> Result<String, ModelError> {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json");
        // The run's trace travels with the call: the scorer's span becomes a
        // child of this model's `model.run` span.
        for (name, value) in pipelens::telemetry::trace_headers() {
            request = request.header(name, value);
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ModelError::Computation(e.to_string()))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| ModelError::Unavailable(format!("{}: {e}", self.base)))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| ModelError::Unavailable(e.to_string()))?
            .to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if status.is_success() {
            Ok(text)
        } else {
            Err(ModelError::Unavailable(format!(
                "scorer answered {status}: {text}"
            )))
        }
    }
}

impl AsyncModel<Tokens, Scored> for RemoteScorer {
    fn name(&self) -> &str {
        Candidate::RemoteLogistic.name()
    }
    fn version(&self) -> &str {
        "1.0.0"
    }
    async fn load(&self) -> Result<(), ModelError> {
        self.call("GET", "/health", String::new()).await.map(|_| ())
    }
    async fn run(&self, tokens: &Tokens) -> Result<Prediction<Scored>, ModelError> {
        let body = self
            .call("POST", "/score", classify::tokens_json(tokens))
            .await?;
        let scored = classify::parse_scored(&body).map_err(ModelError::Computation)?;
        Ok(Prediction::new(scored.clone(), scored.confidence))
    }
}

/// Starts the remote scoring endpoint on a loopback port: `POST /score`
/// with `{"tokens": [...]}`, `GET /health`. It continues the caller's trace
/// from the `traceparent` header, as any downstream service would.
pub async fn start_scorer() -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/score", post(score));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error.message = %e, "scoring endpoint stopped");
        }
    });
    Ok(addr)
}

async fn score(headers: HeaderMap, body: Bytes) -> (StatusCode, String) {
    let carrier: HashMap<String, String> = headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let span = tracing::info_span!("scorer.score", otel.kind = "server");
    let _ = span.set_parent(pipelens::telemetry::context_from_headers(&carrier));
    async move {
        match std::str::from_utf8(&body)
            .map_err(|e| e.to_string())
            .and_then(classify::score_json)
        {
            Ok(json) => (StatusCode::OK, json),
            Err(message) => (StatusCode::BAD_REQUEST, message),
        }
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipelens::{Answer, Outcome};

    /// Runs a review and sends its truth at once (it waits for the shadow):
    /// the outcome of each candidate, and the models judged.
    async fn run_and_judge(models: Models) -> (Vec<(String, Outcome)>, Vec<String>) {
        let p = pipeline(opentelemetry::global::meter("test"), models).unwrap();
        p.load().await.unwrap();
        let report = p
            .run(Request {
                text: "I love this film, it is wonderful".into(),
            })
            .await
            .unwrap();
        let outcomes = report.stages[1]
            .models
            .iter()
            .map(|m| (m.model_name.clone(), m.outcome))
            .collect();
        let verdict = p
            .feedback(&report.run_id, None, Answer::Label("positive".into()))
            .await
            .unwrap();
        (
            outcomes,
            verdict.models.into_iter().map(|j| j.model_name).collect(),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_model_and_the_shadow_take_the_fault_knobs() {
        let scorer = start_scorer().await.unwrap();
        let (outcomes, judged) = run_and_judge(Models::from(scorer)).await;
        assert!(outcomes.iter().all(|(_, o)| *o == Outcome::Success));
        assert_eq!(
            judged.len(),
            5,
            "four candidates and the shadow: {judged:?}"
        );
        assert!(judged.contains(&SHADOW.to_owned()));

        let faults = Faults::new(
            Some(
                r#"{"lexicon": {"error_rate": 1.0}, "onnx_logistic": {"error_rate": 1.0},
                    "remote_logistic": {"error_rate": 1.0}, "majority_vote": {"error_rate": 1.0}}"#,
            ),
            None,
        )
        .unwrap();
        let models = Models {
            faults: Arc::new(faults),
            ..Models::from(scorer)
        };
        let (outcomes, judged) = run_and_judge(models).await;
        let failed: Vec<&str> = outcomes
            .iter()
            .filter(|(_, o)| *o == Outcome::Error)
            .map(|(m, _)| m.as_str())
            .collect();
        assert_eq!(failed, ["lexicon", "onnx_logistic", "remote_logistic"]);
        assert_eq!(judged, ["naive_bayes"], "the failed shadow gave no answer");
    }

    #[test]
    fn shadows_parse_by_name() {
        assert_eq!(Shadow::parse("majority_vote"), Ok(Shadow::MajorityVote));
        assert_eq!(Shadow::parse("off"), Ok(Shadow::Off));
        assert_eq!(
            Shadow::parse("async:20"),
            Ok(Shadow::MajorityVoteAfter(Duration::from_millis(20)))
        );
        let e = Shadow::parse("async:soon").unwrap_err();
        assert!(e.contains("async:MILLISECONDS"), "{e}");
    }
}
