//! The reference sentiment classifier that `scripts/make-models` trains
//! (scikit-learn's logistic regression over words and word pairs), as two
//! candidates: `onnx_logistic`, its ONNX export run in the process by tract,
//! and — when a model server is configured — `remote_logistic`, the same
//! model served by MLServer over the Open Inference Protocol.
//!
//! Both featurise the `tokenize` step's words the way
//! `scripts/models/sentiment_features.py` does: 1.0 for each vocabulary term
//! of `features.json` (a word or two adjacent words) the text holds.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use pipelens::models::onnx::{OnnxModel, Tensor};
use pipelens::models::open_inference::{Datatype, InferTensor, OpenInferenceModel};
use pipelens::{Model, ModelError, Prediction};

use super::classify::{self, Scored, Tokens};
use super::Candidate;

/// The environment variable naming the directory of `model.onnx` and
/// `features.json`.
pub const MODEL_DIR_ENV: &str = "PIPELENS_SENTIMENT_MODEL_DIR";

/// The model server's name for the classifier (`deploy/mlserver/sentiment`).
pub const SERVED_NAME: &str = "sentiment";

/// The directory of the reference model's files: `$PIPELENS_SENTIMENT_MODEL_DIR`
/// when set, else the repository's `models/sentiment`.
pub fn default_dir() -> PathBuf {
    match std::env::var_os(MODEL_DIR_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("models/sentiment"),
    }
}

/// The featuriser of `features.json`, read on first use.
#[derive(Debug)]
pub struct Featuriser {
    path: PathBuf,
    columns: OnceLock<HashMap<String, usize>>,
}

impl Featuriser {
    /// The featuriser described by the file at `path`; nothing is read yet.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            columns: OnceLock::new(),
        }
    }

    /// Reads the vocabulary, once; the error names the file.
    pub fn load(&self) -> Result<&HashMap<String, usize>, ModelError> {
        if let Some(columns) = self.columns.get() {
            return Ok(columns);
        }
        let columns = read_vocabulary(&self.path)
            .map_err(|e| ModelError::NotLoaded(format!("{}: {e}", self.path.display())))?;
        Ok(self.columns.get_or_init(|| columns))
    }

    /// The feature row of `tokens`: one column per vocabulary term.
    pub fn row(&self, tokens: &Tokens) -> Result<Vec<f32>, ModelError> {
        let columns = self.load()?;
        let mut row = vec![0.0; columns.len()];
        let words = &tokens.words;
        let pairs = words.windows(2).map(|p| format!("{} {}", p[0], p[1]));
        for term in words.iter().cloned().chain(pairs) {
            if let Some(&c) = columns.get(&term) {
                row[c] = 1.0;
            }
        }
        Ok(row)
    }
}

fn read_vocabulary(path: &Path) -> Result<HashMap<String, usize>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    let spec: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("invalid JSON: {e}"))?;
    let terms = spec["vocabulary"]
        .as_array()
        .ok_or("no `vocabulary` list")?;
    terms
        .iter()
        .enumerate()
        .map(|(i, term)| {
            term.as_str()
                .map(|t| (t.to_owned(), i))
                .ok_or_else(|| format!("vocabulary term {i} is not a string"))
        })
        .collect()
}

/// Class probabilities in [`classify::Label::ALL`]'s order as a [`Scored`].
fn scored(probabilities: &[f64]) -> Result<Scored, ModelError> {
    match probabilities {
        &[positive, negative, neutral] => Ok(classify::scored([positive, negative, neutral])),
        other => Err(ModelError::Computation(format!(
            "expected 3 class probabilities, got {}",
            other.len()
        ))),
    }
}

/// `onnx_logistic`: `model.onnx` run by tract on the featurised words.
pub struct OnnxLogistic {
    features: Arc<Featuriser>,
    model: OnnxModel<Vec<f32>, Scored>,
}

impl OnnxLogistic {
    /// The classifier of `dir` (`model.onnx`, `features.json`), read in the
    /// load step.
    pub fn new(dir: &Path) -> Self {
        Self {
            features: Arc::new(Featuriser::new(dir.join("features.json"))),
            model: OnnxModel::new(
                Candidate::OnnxLogistic.name(),
                "1.0.0",
                dir.join("model.onnx"),
            )
            .input("features", |row: &Vec<f32>| {
                Ok(Tensor::f32(vec![1, row.len()], row.clone()))
            })
            .outputs(|outputs| {
                let view = outputs.f32("probabilities")?;
                let probabilities: Vec<f64> = view.data.iter().map(|&p| f64::from(p)).collect();
                let scored = scored(&probabilities)?;
                Ok(Prediction::new(scored.clone(), scored.confidence))
            }),
        }
    }
}

impl Model<Tokens, Scored> for OnnxLogistic {
    fn name(&self) -> &str {
        Candidate::OnnxLogistic.name()
    }
    fn version(&self) -> &str {
        "1.0.0"
    }
    fn load(&self) -> Result<(), ModelError> {
        self.features.load()?;
        self.model.load()
    }
    fn run(&self, tokens: &Tokens) -> Result<Prediction<Scored>, ModelError> {
        self.model.run(&self.features.row(tokens)?)
    }
}

/// `remote_logistic` served by the Open Inference Protocol server at `base`
/// (MLServer with `deploy/mlserver`'s settings), featurised by the
/// `features.json` of `dir`.
pub fn remote(base: &str, dir: &Path) -> OpenInferenceModel<Tokens, Scored> {
    let features = Arc::new(Featuriser::new(dir.join("features.json")));
    OpenInferenceModel::new(Candidate::RemoteLogistic.name(), "1", base, SERVED_NAME)
        .input("features", Datatype::Fp32, move |tokens: &Tokens| {
            let row = features.row(tokens)?;
            Ok(InferTensor::fp32(vec![1, row.len()], row))
        })
        .request_output("predict_proba")
        .outputs(|outputs| {
            let scored = scored(&outputs.f64("predict_proba")?.data)?;
            Ok(Prediction::new(scored.clone(), scored.confidence))
        })
}

/// What `onnx_logistic` makes of `tokens`, run in the process from
/// [`default_dir`]; `None` when its files cannot be read.
pub fn score(tokens: &Tokens) -> Option<Scored> {
    static MODEL: OnceLock<Option<OnnxLogistic>> = OnceLock::new();
    let model = MODEL
        .get_or_init(|| {
            let model = OnnxLogistic::new(&default_dir());
            model.load().ok().map(|()| model)
        })
        .as_ref()?;
    model.run(tokens).ok().map(|p| p.output)
}
