//! A model's load lifecycle: not loaded → loaded, or failed; exported as
//! `ml_model_loaded{pipeline, model_name, model_version}` (0 until loaded, 0 again
//! after a failed load) and read by `/ready`.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_util::FutureExt as _;
use opentelemetry::metrics::Gauge;
use opentelemetry::KeyValue;
use tracing::Instrument as _;

use super::call::{panic_message, Load, ModelKind};
use super::model::ModelError;
use crate::names;

const NOT_LOADED: u8 = 0;
const LOADED: u8 = 1;
const FAILED: u8 = 2;

/// The load state of one model in one pipeline.
pub(crate) struct ModelState {
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) kind: ModelKind,
    state: AtomicU8,
    /// Serialises loads so concurrent first runs load once.
    lock: tokio::sync::Mutex<()>,
    last_error: Mutex<Option<String>>,
    loader: Arc<dyn Load>,
    /// The `ml_model_loaded` gauge and its labels; `None` for steps, which
    /// have nothing to load and are not models.
    gauge: Option<(Gauge<u64>, [KeyValue; 3])>,
}

impl ModelState {
    pub(crate) fn new(
        pipeline: &str,
        name: String,
        version: String,
        kind: ModelKind,
        loader: Arc<dyn Load>,
        gauge: &Gauge<u64>,
    ) -> Self {
        let gauge = (kind != ModelKind::Step).then(|| {
            let attrs = [
                KeyValue::new(names::PIPELINE, pipeline.to_owned()),
                KeyValue::new(names::MODEL_NAME, name.clone()),
                KeyValue::new(names::MODEL_VERSION, version.clone()),
            ];
            gauge.record(0, &attrs);
            (gauge.clone(), attrs)
        });
        let state = if kind == ModelKind::Step {
            LOADED
        } else {
            NOT_LOADED
        };
        Self {
            name,
            version,
            kind,
            state: AtomicU8::new(state),
            lock: tokio::sync::Mutex::new(()),
            last_error: Mutex::new(None),
            loader,
            gauge,
        }
    }

    /// Whether the model has loaded and its last load did not fail.
    pub(crate) fn is_loaded(&self) -> bool {
        self.state.load(Ordering::Acquire) == LOADED
    }

    /// The error of the last failed load, while the model is not loaded.
    pub(crate) fn load_error(&self) -> Option<String> {
        if self.is_loaded() {
            return None;
        }
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Runs the model's load step (again, if it already ran), records the
    /// result on `ml_model_loaded` and logs it.
    pub(crate) async fn load(&self, pipeline: &str) -> Result<(), ModelError> {
        let _guard = self.lock.lock().await;
        self.load_locked(pipeline).await
    }

    /// Loads the model unless it has loaded meanwhile (a request may have
    /// loaded it while this call waited for the lock): a model never loads
    /// twice because two callers saw it missing at once.
    pub(crate) async fn load_if_missing(&self, pipeline: &str) -> Result<(), ModelError> {
        let _guard = self.lock.lock().await;
        if self.state.load(Ordering::Acquire) == LOADED {
            return Ok(());
        }
        self.load_locked(pipeline).await
    }

    /// Loads the model unless it is loaded or its last load failed (a failed
    /// model is retried by [`ModelState::load`], not on the request path).
    pub(crate) async fn ensure_loaded(&self, pipeline: &str) -> Result<(), ModelError> {
        let _guard = self.lock.lock().await;
        match self.state.load(Ordering::Acquire) {
            LOADED => Ok(()),
            FAILED => Err(ModelError::NotLoaded(
                self.load_error()
                    .unwrap_or_else(|| "its load step failed".to_owned()),
            )),
            _ => self.load_locked(pipeline).await,
        }
    }

    async fn load_locked(&self, pipeline: &str) -> Result<(), ModelError> {
        if self.kind == ModelKind::Step {
            return Ok(());
        }
        let span = tracing::info_span!(
            "model.load",
            pipeline.name = pipeline,
            model.name = self.name.as_str(),
            model.version = self.version.as_str(),
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
        );
        self.load_in(pipeline, &span).instrument(span.clone()).await
    }

    async fn load_in(&self, pipeline: &str, span: &tracing::Span) -> Result<(), ModelError> {
        let started = Instant::now();
        let result = match AssertUnwindSafe(Arc::clone(&self.loader).load())
            .catch_unwind()
            .await
        {
            Ok(result) => result,
            Err(payload) => Err(ModelError::NotLoaded(format!(
                "load panicked: {}",
                panic_message(payload)
            ))),
        };
        let loaded = result.is_ok();
        self.state
            .store(if loaded { LOADED } else { FAILED }, Ordering::Release);
        if let Some((gauge, attrs)) = &self.gauge {
            gauge.record(u64::from(loaded), attrs);
        }
        match &result {
            Ok(()) => {
                *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
                tracing::info!(
                    pipeline.name = pipeline,
                    model.name = self.name.as_str(),
                    model.version = self.version.as_str(),
                    duration_ms = started.elapsed().as_secs_f64() * 1e3,
                    "model loaded"
                );
            }
            Err(e) => {
                let message = e.to_string();
                span.record("otel.status_code", "ERROR");
                span.record("otel.status_description", message.as_str());
                tracing::error!(
                    pipeline.name = pipeline,
                    model.name = self.name.as_str(),
                    model.version = self.version.as_str(),
                    error.message = message.as_str(),
                    "model failed to load"
                );
                *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(message);
            }
        }
        result
    }
}
