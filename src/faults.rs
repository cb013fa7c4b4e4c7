//! Fault knobs to test alerts and dashboards, like the OpenTelemetry demo's
//! feature flags: wrap any model, sync or async, in [`Faulty`] and set per
//! model name an error rate, added latency and a confidence penalty. Off by
//! default; set by `PIPELENS_FAULTS` (inline JSON) or `PIPELENS_FAULTS_FILE`
//! (a JSON file re-read when it changes, so a fault can be switched on and
//! off without a restart).
//!
//! ```json
//! {"light_dense": {"error_rate": 1.0}, "air_supply": {"latency_ms": 250, "confidence_penalty": 0.5}}
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use crate::pipeline::{AsyncModel, Model, ModelError, Prediction};

/// The faults of one model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelFault {
    /// Share of executions, in `[0, 1]`, that fail with an injected error.
    pub error_rate: f64,
    /// Milliseconds added to every execution (at most 60 000).
    pub latency_ms: u64,
    /// Subtracted from the model's confidence, in `[0, 1]`.
    pub confidence_penalty: f64,
}

/// A fault specification that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FaultError {
    /// The JSON does not parse or has the wrong shape.
    #[error("{source_name}: {message}")]
    Parse {
        /// `PIPELENS_FAULTS` or the file's path.
        source_name: String,
        /// What is wrong, with the JSON path of the offending value.
        message: String,
    },
    /// The file cannot be read.
    #[error("cannot read faults file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

type FaultMap = HashMap<String, ModelFault>;

/// The live fault set, shared by every [`Faulty`] model.
#[derive(Debug, Default)]
pub struct Faults {
    current: RwLock<Arc<FaultMap>>,
    file: Option<(PathBuf, RwLock<Option<SystemTime>>)>,
    inline: FaultMap,
    /// State of the generator that draws which executions fail.
    draws: AtomicU64,
}

impl Faults {
    /// No faults.
    pub fn none() -> Self {
        Self::default()
    }

    /// Faults from inline JSON (`PIPELENS_FAULTS`) and an optional file
    /// (`PIPELENS_FAULTS_FILE`); the file's entries win for models in both.
    pub fn new(inline: Option<&str>, file: Option<&Path>) -> Result<Self, FaultError> {
        let inline = match inline.map(str::trim).filter(|s| !s.is_empty()) {
            Some(json) => parse("PIPELENS_FAULTS", json)?,
            None => FaultMap::new(),
        };
        let faults = Self {
            current: RwLock::new(Arc::new(inline.clone())),
            file: file.map(|p| (p.to_owned(), RwLock::new(None))),
            inline,
            draws: AtomicU64::new(seed()),
        };
        faults.reload()?;
        Ok(faults)
    }

    /// Reads `PIPELENS_FAULTS` and `PIPELENS_FAULTS_FILE`.
    pub fn from_env() -> Result<Self, FaultError> {
        let inline = std::env::var("PIPELENS_FAULTS").ok();
        let file = std::env::var_os("PIPELENS_FAULTS_FILE")
            .filter(|f| !f.is_empty())
            .map(PathBuf::from);
        Self::new(inline.as_deref(), file.as_deref())
    }

    /// The faults of `model`, if any.
    pub fn get(&self, model: &str) -> Option<ModelFault> {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        current.get(model).copied()
    }

    /// Re-reads the file if its modification time changed. Returns whether
    /// the set changed. A file that does not parse leaves the set as it was.
    pub fn reload(&self) -> Result<bool, FaultError> {
        let Some((path, seen)) = &self.file else {
            return Ok(false);
        };
        let modified = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .map_err(|source| FaultError::Read {
                path: path.clone(),
                source,
            })?;
        if *seen.read().unwrap_or_else(|e| e.into_inner()) == Some(modified) {
            return Ok(false);
        }
        let text = std::fs::read_to_string(path).map_err(|source| FaultError::Read {
            path: path.clone(),
            source,
        })?;
        let from_file = parse(&path.display().to_string(), &text)?;
        let mut merged = self.inline.clone();
        merged.extend(from_file);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(merged);
        *seen.write().unwrap_or_else(|e| e.into_inner()) = Some(modified);
        Ok(true)
    }

    /// Polls the file every `interval` on the tokio runtime and logs each
    /// change, and each new error once (a broken file is not reported again
    /// every tick). Does nothing without a file.
    pub fn watch(self: &Arc<Self>, interval: Duration) {
        if self.file.is_none() {
            return;
        }
        let faults = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            let mut last_error: Option<String> = None;
            loop {
                tick.tick().await;
                match faults.reload() {
                    Ok(changed) => {
                        if changed {
                            tracing::warn!(faults = ?faults.snapshot(), "fault knobs changed");
                        }
                        last_error = None;
                    }
                    Err(e) => {
                        let message = e.to_string();
                        if last_error.as_deref() != Some(message.as_str()) {
                            tracing::error!(
                                error.message = message.as_str(),
                                "fault knobs not reloaded; the last good set stays"
                            );
                            last_error = Some(message);
                        }
                    }
                }
            }
        });
    }

    /// A uniform draw in `[0, 1)` (SplitMix64 over an atomic counter: no
    /// lock, and no dependency on a random-number crate).
    fn draw(&self) -> f64 {
        let mut z = self
            .draws
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Whether an execution of a model with `fault` fails.
    fn fails(&self, fault: &ModelFault) -> bool {
        fault.error_rate > 0.0 && self.draw() < fault.error_rate
    }

    /// The current set, model by model.
    pub fn snapshot(&self) -> Vec<(String, ModelFault)> {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = current.iter().map(|(k, v)| (k.clone(), *v)).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

fn parse(source_name: &str, json: &str) -> Result<FaultMap, FaultError> {
    let de = &mut serde_json::Deserializer::from_str(json);
    let map: FaultMap = serde_path_to_error::deserialize(de).map_err(|e| FaultError::Parse {
        source_name: source_name.to_owned(),
        message: format!("at `{}`: {}", e.path(), e.inner()),
    })?;
    for (model, f) in &map {
        let bad = |field: &str, why: &str| FaultError::Parse {
            source_name: source_name.to_owned(),
            message: format!("at `{model}.{field}`: {why}"),
        };
        if !(0.0..=1.0).contains(&f.error_rate) {
            return Err(bad("error_rate", "must be between 0 and 1"));
        }
        if !(0.0..=1.0).contains(&f.confidence_penalty) {
            return Err(bad("confidence_penalty", "must be between 0 and 1"));
        }
        if f.latency_ms > 60_000 {
            return Err(bad("latency_ms", "must be at most 60000"));
        }
    }
    Ok(map)
}

/// Wraps a model so the fault knobs apply to it; without a fault for its
/// name it only costs a map lookup.
pub struct Faulty<M> {
    inner: M,
    faults: Arc<Faults>,
}

impl<M> Faulty<M> {
    /// Wraps `inner`.
    pub fn new(inner: M, faults: Arc<Faults>) -> Self {
        Self { inner, faults }
    }
}

fn injected(model: &str, fault: &ModelFault) -> ModelError {
    ModelError::InjectedFault(format!("error_rate={} for {model}", fault.error_rate))
}

fn penalised<T>(mut prediction: Prediction<T>, fault: &ModelFault) -> Prediction<T> {
    prediction.confidence = (prediction.confidence - fault.confidence_penalty).max(0.0);
    prediction
}

fn seed() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0x5EED, |d| d.as_nanos() as u64)
}

impl<In, Out, M: Model<In, Out>> Model<In, Out> for Faulty<M> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn version(&self) -> &str {
        self.inner.version()
    }

    fn load(&self) -> Result<(), ModelError> {
        self.inner.load()
    }

    fn run(&self, input: &In) -> Result<Prediction<Out>, ModelError> {
        let Some(fault) = self.faults.get(self.inner.name()) else {
            return self.inner.run(input);
        };
        if fault.latency_ms > 0 {
            std::thread::sleep(Duration::from_millis(fault.latency_ms));
        }
        if self.faults.fails(&fault) {
            return Err(injected(self.inner.name(), &fault));
        }
        self.inner.run(input).map(|p| penalised(p, &fault))
    }
}

impl<In: Sync, Out, M: AsyncModel<In, Out>> AsyncModel<In, Out> for Faulty<M> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn version(&self) -> &str {
        self.inner.version()
    }

    fn load(&self) -> impl Future<Output = Result<(), ModelError>> + Send {
        self.inner.load()
    }

    async fn run(&self, input: &In) -> Result<Prediction<Out>, ModelError> {
        let Some(fault) = self.faults.get(self.inner.name()) else {
            return self.inner.run(input).await;
        };
        if fault.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(fault.latency_ms)).await;
        }
        if self.faults.fails(&fault) {
            return Err(injected(self.inner.name(), &fault));
        }
        self.inner.run(input).await.map(|p| penalised(p, &fault))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;
    impl Model<u32, u32> for Echo {
        fn name(&self) -> &str {
            "echo"
        }
        fn version(&self) -> &str {
            "1"
        }
        fn run(&self, input: &u32) -> Result<Prediction<u32>, ModelError> {
            Ok(Prediction::new(*input, 0.9))
        }
    }

    #[test]
    fn no_fault_passes_through_and_faults_apply() {
        let none = Faulty::new(Echo, Arc::new(Faults::none()));
        assert_eq!(none.run(&7).unwrap().confidence, 0.9);

        let faults = Faults::new(Some(r#"{"echo": {"confidence_penalty": 0.5}}"#), None).unwrap();
        let penalised = Faulty::new(Echo, Arc::new(faults));
        assert!((penalised.run(&7).unwrap().confidence - 0.4).abs() < 1e-9);

        let faults = Faults::new(Some(r#"{"echo": {"error_rate": 1.0}}"#), None).unwrap();
        let failing = Faulty::new(Echo, Arc::new(faults));
        let err = failing.run(&7).unwrap_err();
        assert_eq!(err.error_type(), "injected_fault");
    }

    #[test]
    fn bad_specs_name_the_place() {
        let err = Faults::new(Some(r#"{"echo": {"error_rate": 2}}"#), None).unwrap_err();
        assert!(err.to_string().contains("echo.error_rate"), "{err}");
        let err = Faults::new(Some(r#"{"echo": {"eror_rate": 1}}"#), None).unwrap_err();
        assert!(err.to_string().contains("PIPELENS_FAULTS"), "{err}");
        assert!(err.to_string().contains("eror_rate"), "{err}");
        let err = Faults::new(Some(r#"{"echo": {"latency_ms": "slow"}}"#), None).unwrap_err();
        assert!(err.to_string().contains("echo.latency_ms"), "{err}");
    }

    #[test]
    fn the_file_is_reloaded_when_it_changes_and_wins_over_inline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("faults.json");
        std::fs::write(&path, "{}").unwrap();
        let faults = Faults::new(Some(r#"{"echo": {"error_rate": 0.5}}"#), Some(&path)).unwrap();
        assert_eq!(faults.get("echo").unwrap().error_rate, 0.5);
        assert!(!faults.reload().unwrap(), "unchanged file must not reload");

        std::fs::write(&path, r#"{"echo": {"error_rate": 1.0}}"#).unwrap();
        let later = SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert!(faults.reload().unwrap());
        assert_eq!(faults.get("echo").unwrap().error_rate, 1.0);

        std::fs::write(&path, "{not json").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(later + Duration::from_secs(5))
            .unwrap();
        assert!(faults.reload().is_err());
        assert_eq!(
            faults.get("echo").unwrap().error_rate,
            1.0,
            "a bad file keeps the last good set"
        );
    }
}
