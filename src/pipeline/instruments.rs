//! The OTel instruments a pipeline records into, with label sets bound once
//! per model when the pipeline is built.

use opentelemetry::metrics::{BoundCounter, BoundHistogram, Counter, Gauge, Histogram, Meter};
use opentelemetry::KeyValue;

use super::report::Outcome;
use crate::names;
use crate::telemetry::exemplars::{self, Series};

/// Bucket boundaries (seconds) for model and pipeline durations: 100 µs to 10 s.
pub(crate) const DURATION_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Bucket boundaries for confidence: steps of 0.1.
pub(crate) const CONFIDENCE_BUCKETS: [f64; 10] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];

/// Bucket boundaries for the absolute error of value judges: 0.01 to 1000,
/// in the unit of the judged value.
pub(crate) const ERROR_BUCKETS: [f64; 16] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0,
];

/// Instruments shared by every model and stage of one pipeline.
pub(crate) struct Instruments {
    pub(crate) executions: Counter<u64>,
    pub(crate) execution_duration: Histogram<f64>,
    pub(crate) confidence_score: Gauge<f64>,
    pub(crate) confidence: Histogram<f64>,
    pub(crate) selected: Counter<u64>,
    pub(crate) components: Counter<u64>,
    pub(crate) runs: Counter<u64>,
    pub(crate) run_duration: Histogram<f64>,
    pub(crate) errors: Counter<u64>,
    pub(crate) loaded: Gauge<u64>,
    pub(crate) feedback: Counter<u64>,
    pub(crate) pipeline_feedback: Counter<u64>,
    pub(crate) absolute_error: Histogram<f64>,
}

impl Instruments {
    pub(crate) fn new(meter: &Meter) -> Self {
        Self {
            executions: meter
                .u64_counter(names::MODEL_EXECUTIONS)
                .with_description("Model executions by outcome (success, error, panic, timeout)")
                .build(),
            execution_duration: meter
                .f64_histogram(names::MODEL_EXECUTION_DURATION)
                .with_unit("s")
                .with_description("Wall-clock time of one model execution")
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build(),
            confidence_score: meter
                .f64_gauge(names::MODEL_CONFIDENCE_SCORE)
                .with_description("Confidence of the model's latest successful execution")
                .build(),
            confidence: meter
                .f64_histogram(names::MODEL_CONFIDENCE)
                .with_description("Distribution of model confidence in [0, 1]")
                .with_boundaries(CONFIDENCE_BUCKETS.to_vec())
                .build(),
            selected: meter
                .u64_counter(names::MODEL_SELECTED)
                .with_description("Times a parallel stage selected the model's output")
                .build(),
            components: meter
                .u64_counter(names::COMPONENTS_PLACED)
                .with_description("Components produced by successful model executions")
                .build(),
            runs: meter
                .u64_counter(names::PIPELINE_RUNS)
                .with_description("Pipeline runs by outcome (success, failure)")
                .build(),
            run_duration: meter
                .f64_histogram(names::PIPELINE_DURATION)
                .with_unit("s")
                .with_description("Wall-clock time of one pipeline run")
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build(),
            errors: meter
                .u64_counter(names::MODEL_ERRORS)
                .with_description("Failed model executions by error type")
                .build(),
            loaded: meter
                .u64_gauge(names::MODEL_LOADED)
                .with_description("1 while the model is loaded in a pipeline")
                .build(),
            feedback: meter
                .u64_counter(names::MODEL_FEEDBACK)
                .with_description(
                    "Candidate answers judged against ground truth, by outcome (correct, incorrect)",
                )
                .build(),
            pipeline_feedback: meter
                .u64_counter(names::PIPELINE_FEEDBACK)
                .with_description(
                    "Served answers of judged stages checked against ground truth, by outcome",
                )
                .build(),
            absolute_error: meter
                .f64_histogram(names::MODEL_ABSOLUTE_ERROR)
                .with_description("Absolute error of value answers against ground truth")
                .with_boundaries(ERROR_BUCKETS.to_vec())
                .build(),
        }
    }
}

/// The `error_type` values the runner knows: those of
/// `ModelError::ERROR_TYPES` plus `panic` and `timeout`; each gets a bound
/// counter.
const ERROR_TYPES: [&str; 7] = [
    "invalid_input",
    "computation",
    "unavailable",
    "not_loaded",
    "injected_fault",
    "panic",
    "timeout",
];

/// One model's instruments in one stage of one pipeline, bound to their label
/// sets when the pipeline is built, so recording skips the per-call attribute
/// lookup. Bound counters and histograms are exported from the start with 0,
/// so `rate()` and ratio alerts see every series before its first event.
pub(crate) struct ModelInstruments {
    /// `pipeline, stage, model_name, outcome`, in `Outcome::ALL` order.
    executions: [BoundCounter<u64>; 4],
    duration: BoundHistogram<f64>,
    /// Where the duration's exemplars go.
    duration_series: Series,
    /// `pipeline, model_name`; only for models that report a confidence.
    confidence: Option<BoundHistogram<f64>>,
    /// `pipeline, stage, model_name`; only in parallel stages, which select.
    selected: Option<BoundCounter<u64>>,
    /// `pipeline, model_name, error_type`, in `ERROR_TYPES` order.
    errors: [BoundCounter<u64>; 7],
    /// The unbound instruments, for label sets only known when recording.
    confidence_score: Gauge<f64>,
    components: Counter<u64>,
    errors_unbound: Counter<u64>,
    /// `pipeline, model_name`.
    model: [KeyValue; 2],
}

impl ModelInstruments {
    /// Binds the label sets of `model` in `stage` of `pipeline`. `scored`
    /// models report a confidence (function steps do not); `selects` is true
    /// in parallel stages.
    pub(crate) fn new(
        ins: &Instruments,
        pipeline: &str,
        stage: &str,
        model: &str,
        scored: bool,
        selects: bool,
    ) -> Self {
        let p = KeyValue::new(names::PIPELINE, pipeline.to_owned());
        let m = KeyValue::new(names::MODEL_NAME, model.to_owned());
        let s = KeyValue::new(names::STAGE, stage.to_owned());
        Self {
            executions: Outcome::ALL.map(|o| {
                ins.executions.bind(&[
                    p.clone(),
                    s.clone(),
                    m.clone(),
                    KeyValue::new(names::OUTCOME, o.as_str()),
                ])
            }),
            duration: ins
                .execution_duration
                .bind(&[p.clone(), s.clone(), m.clone()]),
            duration_series: Series::new(
                names::PROM_MODEL_EXECUTION_DURATION,
                &[p.clone(), s.clone(), m.clone()],
            ),
            confidence: scored.then(|| ins.confidence.bind(&[p.clone(), m.clone()])),
            selected: selects.then(|| ins.selected.bind(&[p.clone(), s.clone(), m.clone()])),
            errors: ERROR_TYPES.map(|e| {
                ins.errors
                    .bind(&[p.clone(), m.clone(), KeyValue::new(names::ERROR_TYPE, e)])
            }),
            confidence_score: ins.confidence_score.clone(),
            components: ins.components.clone(),
            errors_unbound: ins.errors.clone(),
            model: [p, m],
        }
    }

    /// One execution ended with `outcome` after `seconds`, in `span` (the
    /// duration's exemplar).
    pub(crate) fn execution(&self, outcome: Outcome, seconds: f64, span: &tracing::Span) {
        self.executions[outcome as usize].add(1);
        self.duration.record(seconds);
        exemplars::offer(&self.duration_series, seconds, span);
    }

    /// A successful execution's confidence. The latest-value gauge is not
    /// bound: a bound gauge would export a made-up 0 before the first run.
    pub(crate) fn confidence(&self, confidence: f64) {
        if let Some(histogram) = &self.confidence {
            self.confidence_score.record(confidence, &self.model);
            histogram.record(confidence);
        }
    }

    /// Components of a successful execution (their types come from the
    /// model, so they are not bound in advance).
    pub(crate) fn components(&self, kind: std::borrow::Cow<'static, str>, count: u64) {
        self.components.add(
            count,
            &[
                self.model[0].clone(),
                KeyValue::new(names::COMPONENT_TYPE, kind),
                self.model[1].clone(),
            ],
        );
    }

    /// A failed execution of class `error_type`.
    pub(crate) fn error(&self, error_type: &'static str) {
        match ERROR_TYPES.iter().position(|e| *e == error_type) {
            Some(i) => self.errors[i].add(1),
            None => self.errors_unbound.add(
                1,
                &[
                    self.model[0].clone(),
                    self.model[1].clone(),
                    KeyValue::new(names::ERROR_TYPE, error_type),
                ],
            ),
        }
    }

    /// The stage selected this model's output.
    pub(crate) fn selected(&self) {
        if let Some(c) = &self.selected {
            c.add(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ERROR_TYPES;
    use crate::pipeline::ModelError;

    #[test]
    fn every_model_error_type_has_a_bound_counter() {
        assert_eq!(ERROR_TYPES[..5], ModelError::ERROR_TYPES);
        assert_eq!(ERROR_TYPES[5..], ["panic", "timeout"]);
    }
}
