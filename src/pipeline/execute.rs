//! One model execution: where it runs (blocking pool, inline, or polled as a
//! future), its timeout and panic isolation, and how it is recorded in its
//! span, the metrics and the log.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use tracing::{field, Instrument as _, Span};

use super::call::{join_error_message, panic_message, Call, ModelKind};
use super::execution::{Env, LOW_CONFIDENCE};
use super::instruments::ModelInstruments;
use super::lifecycle::ModelState;
use super::model::{Component, ModelError, Prediction};
use super::pace::Pace;
use super::report::{ModelReport, Outcome};

/// A model or step bound to its pipeline: its call, load state and metrics.
pub(crate) struct BoundModel<In, Out> {
    pub(crate) call: Call<In, Out>,
    pub(crate) state: Arc<ModelState>,
    pub(crate) metrics: ModelInstruments,
    /// Recent execution time, for [`super::Execution::Auto`].
    pub(crate) pace: Pace,
}

/// A model execution's raw result, before it is recorded.
pub(crate) enum Exec<T> {
    Done(Result<Prediction<T>, ModelError>, Duration),
    Panicked(String, Duration),
    TimedOut(Duration),
}

/// A recorded execution: its report line and, on success, its prediction.
pub(crate) struct Ran<T> {
    pub(crate) report: ModelReport,
    pub(crate) prediction: Option<Prediction<T>>,
}

impl<In: Send + Sync + 'static, Out: Send + 'static> BoundModel<In, Out> {
    pub(crate) fn name(&self) -> &str {
        &self.state.name
    }

    /// The `model.run` span of one execution, a child of its stage's span.
    pub(crate) fn span(&self, parent: &Span, stage: &str) -> Span {
        self.span_with(parent.id(), stage, None)
    }

    /// The `model.run` span of a shadow's execution, with `model.role =
    /// "shadow"`, whose OpenTelemetry parent is `stage` (the stage span's
    /// context): a child of the stage's span in the trace, but not in
    /// `tracing`'s tree, where a child keeps its parents open until it
    /// closes; the run's spans end when the run does, not when its shadows
    /// do.
    pub(crate) fn shadow_span(&self, stage: opentelemetry::Context, stage_name: &str) -> Span {
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        let span = self.span_with(None, stage_name, Some("shadow"));
        // Fails only without the OpenTelemetry layer: no trace to join.
        let _ = span.set_parent(stage);
        span
    }

    fn span_with(
        &self,
        parent: Option<tracing::Id>,
        stage: &str,
        role: Option<&'static str>,
    ) -> Span {
        tracing::info_span!(
            parent: parent,
            "model.run",
            stage.name = stage,
            model.role = role,
            model.name = self.state.name.as_str(),
            model.version = self.state.version.as_str(),
            model.kind = self.state.kind.as_str(),
            model.outcome = field::Empty,
            model.confidence = field::Empty,
            model.components = field::Empty,
            error.type = field::Empty,
            otel.status_code = field::Empty,
            otel.status_description = field::Empty,
        )
    }

    /// Runs the model on `input` inside `span`, loading it first if it has
    /// never loaded. `start + timeout` is the deadline (a parallel stage's
    /// start, or the model's own in a sequential stage).
    pub(crate) async fn execute(
        &self,
        env: &Env,
        input: &Arc<In>,
        span: &Span,
        start: Instant,
        timeout: Option<Duration>,
    ) -> Exec<Out> {
        if !self.state.is_loaded() {
            if let Err(e) = self.state.ensure_loaded(&env.pipeline).await {
                return Exec::Done(Err(e), Duration::ZERO);
            }
        }
        match &self.call {
            Call::Sync(model) => {
                let exec = self
                    .execute_sync(model, env, input, span, start, timeout)
                    .await;
                let (Exec::Done(_, took) | Exec::Panicked(_, took) | Exec::TimedOut(took)) = &exec;
                self.pace.observe(*took);
                exec
            }
            Call::Async(model) => {
                let started = Instant::now();
                let future =
                    AssertUnwindSafe(model.call(input).instrument(span.clone())).catch_unwind();
                // A timeout needs tokio's timer; outside a runtime the call
                // runs to its end.
                let timer = timeout.filter(|_| tokio::runtime::Handle::try_current().is_ok());
                let result = match timer {
                    Some(t) => {
                        match tokio::time::timeout_at((start + t).into(), future).await {
                            Ok(result) => result,
                            // Dropping the future cancels the call.
                            Err(_) => return Exec::TimedOut(started.elapsed()),
                        }
                    }
                    None => future.await,
                };
                match result {
                    Ok(result) => over_time((result, started.elapsed()), timeout),
                    Err(payload) => Exec::Panicked(panic_message(payload), started.elapsed()),
                }
            }
        }
    }

    /// Runs a sync model on the blocking pool or inline, as `env` and the
    /// model's recent pace decide.
    async fn execute_sync(
        &self,
        model: &Arc<dyn super::call::SyncCall<In, Out>>,
        env: &Env,
        input: &Arc<In>,
        span: &Span,
        start: Instant,
        timeout: Option<Duration>,
    ) -> Exec<Out> {
        // The runtime is looked up only for a model that leaves the thread.
        let pool = env
            .offloads(self.pace.is_fast())
            .then(|| tokio::runtime::Handle::try_current().ok())
            .flatten();
        match pool {
            Some(handle) => {
                let model = Arc::clone(model);
                let input = Arc::clone(input);
                let span = span.clone();
                // The blocking thread runs under the caller's subscriber
                // (which may be a scoped, thread-local one), so the
                // model's own spans nest under its `model.run` span.
                let dispatch = tracing::dispatcher::get_default(|d| d.clone());
                let task = handle.spawn_blocking(move || {
                    tracing::dispatcher::with_default(&dispatch, || {
                        let _entered = span.enter();
                        let started = Instant::now();
                        let result = model.call(&input);
                        (result, started.elapsed())
                    })
                });
                let joined = match timeout {
                    Some(t) => match tokio::time::timeout_at((start + t).into(), task).await {
                        Ok(joined) => joined,
                        Err(_) => return Exec::TimedOut(start.elapsed()),
                    },
                    None => task.await,
                };
                match joined {
                    Ok(done) => over_time(done, timeout),
                    Err(e) => Exec::Panicked(join_error_message(e), start.elapsed()),
                }
            }
            None => {
                let _entered = span.enter();
                let started = Instant::now();
                match std::panic::catch_unwind(AssertUnwindSafe(|| model.call(input))) {
                    Ok(result) => over_time((result, started.elapsed()), timeout),
                    Err(payload) => Exec::Panicked(panic_message(payload), started.elapsed()),
                }
            }
        }
    }

    /// Records one execution in its span, the metrics and the log, and turns
    /// it into a report line.
    pub(crate) fn record(
        &self,
        stage: &str,
        span: &Span,
        exec: Exec<Out>,
        timeout: Option<Duration>,
    ) -> Ran<Out> {
        let (outcome, duration, result) = match exec {
            Exec::Done(Ok(prediction), d) => (Outcome::Success, d, Ok(prediction)),
            Exec::Done(Err(e), d) => (Outcome::Error, d, Err((e.error_type(), e.to_string()))),
            Exec::Panicked(msg, d) => (
                Outcome::Panic,
                d,
                Err(("panic", format!("model panicked: {msg}"))),
            ),
            Exec::TimedOut(d) => (
                Outcome::Timeout,
                d,
                Err((
                    "timeout",
                    format!("model exceeded its timeout of {:?}", timeout.unwrap_or(d)),
                )),
            ),
        };
        let seconds = duration.as_secs_f64();
        self.metrics.execution(outcome, seconds, span);
        let name = self.state.name.as_str();
        let report = |confidence, components, error| ModelReport {
            model_name: self.state.name.clone(),
            model_version: self.state.version.clone(),
            outcome,
            confidence,
            duration,
            components,
            error,
            answer: None,
        };
        match result {
            Ok(mut prediction) if self.state.kind == ModelKind::Step => {
                record_success(span, outcome.as_str(), None, 0);
                // Events are logged inside the span, for their trace ids;
                // entering it costs a call per layer, so only for a line
                // that is written.
                if tracing::enabled!(tracing::Level::DEBUG) {
                    span.in_scope(|| {
                        tracing::debug!(
                            stage.name = stage,
                            model.name = name,
                            duration_ms = seconds * 1e3,
                            "step completed"
                        );
                    });
                }
                let components = std::mem::take(&mut prediction.components);
                Ran {
                    report: report(None, components, None),
                    prediction: Some(prediction),
                }
            }
            Ok(mut prediction) => {
                let confidence = clamp_confidence(prediction.confidence);
                prediction.confidence = confidence;
                self.metrics.confidence(confidence);
                let mut total = 0;
                for c in &prediction.components {
                    total += c.count;
                    self.metrics.components(c.kind.clone(), c.count);
                }
                record_success(span, outcome.as_str(), Some(confidence), total);
                if confidence < LOW_CONFIDENCE {
                    span.in_scope(|| {
                        tracing::warn!(
                            stage.name = stage,
                            model.name = name,
                            model.confidence = confidence,
                            model.components = total,
                            duration_ms = seconds * 1e3,
                            "model completed with low confidence"
                        );
                    });
                } else if tracing::enabled!(tracing::Level::DEBUG) {
                    span.in_scope(|| {
                        tracing::debug!(
                            stage.name = stage,
                            model.name = name,
                            model.confidence = confidence,
                            model.components = total,
                            duration_ms = seconds * 1e3,
                            "model completed"
                        );
                    });
                }
                let components = std::mem::take(&mut prediction.components);
                Ran {
                    report: report(Some(confidence), components, None),
                    prediction: Some(prediction),
                }
            }
            Err((error_type, message)) => {
                self.metrics.error(error_type);
                record_failure(span, outcome.as_str(), error_type, &message);
                // An outcome, not a failure of the service: the other
                // candidates may still serve; a run with no survivor gets
                // its one ERROR line, `pipeline failed`, from the runner.
                span.in_scope(|| {
                    tracing::warn!(
                        stage.name = stage,
                        model.name = name,
                        model.outcome = outcome.as_str(),
                        error.type = error_type,
                        error.message = message.as_str(),
                        duration_ms = seconds * 1e3,
                        "model failed"
                    );
                });
                Ran {
                    report: report(None, Vec::<Component>::new(), Some(message)),
                    prediction: None,
                }
            }
        }
    }
}

/// Records a successful execution on its `model.run` span in one dispatch
/// (each `Span::record` call goes through every layer on its own).
fn record_success(span: &Span, outcome: &str, confidence: Option<f64>, components: u64) {
    let Some(fields) = span.metadata().map(|m| m.fields()) else {
        return;
    };
    let (Some(o), Some(c), Some(n)) = (
        fields.field("model.outcome"),
        fields.field("model.confidence"),
        fields.field("model.components"),
    ) else {
        return;
    };
    match confidence {
        Some(confidence) => span.record_all(&fields.value_set(&[
            (&o, Some(&outcome as &dyn field::Value)),
            (&c, Some(&confidence as &dyn field::Value)),
            (&n, Some(&components as &dyn field::Value)),
        ])),
        None => span.record_all(&fields.value_set(&[(&o, Some(&outcome as &dyn field::Value))])),
    };
}

/// Records a failed execution on its `model.run` span in one dispatch,
/// setting the span status to ERROR with the message.
fn record_failure(span: &Span, outcome: &str, error_type: &str, message: &str) {
    let Some(fields) = span.metadata().map(|m| m.fields()) else {
        return;
    };
    if let (Some(o), Some(e), Some(s), Some(d)) = (
        fields.field("model.outcome"),
        fields.field("error.type"),
        fields.field("otel.status_code"),
        fields.field("otel.status_description"),
    ) {
        span.record_all(&fields.value_set(&[
            (&o, Some(&outcome as &dyn field::Value)),
            (&e, Some(&error_type as &dyn field::Value)),
            (&s, Some(&"ERROR" as &dyn field::Value)),
            (&d, Some(&message as &dyn field::Value)),
        ]));
    }
}

/// A result that came back after its deadline is a timeout.
fn over_time<T>(
    (result, duration): (Result<Prediction<T>, ModelError>, Duration),
    timeout: Option<Duration>,
) -> Exec<T> {
    match timeout {
        Some(t) if duration > t => Exec::TimedOut(duration),
        _ => Exec::Done(result, duration),
    }
}

fn clamp_confidence(c: f64) -> f64 {
    if c.is_nan() {
        0.0
    } else {
        c.clamp(0.0, 1.0)
    }
}
