//! The OTel instruments a pipeline records into, with label sets bound once
//! per model when the pipeline is built.

use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter};
use opentelemetry::KeyValue;

use super::report::Outcome;
use crate::names;

/// Bucket boundaries (seconds) for model and pipeline durations: 100 µs to 10 s.
pub(crate) const DURATION_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Bucket boundaries for confidence: steps of 0.1.
pub(crate) const CONFIDENCE_BUCKETS: [f64; 10] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];

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
        }
    }
}

/// The label sets of one model in one stage, built once.
pub(crate) struct ModelLabels {
    /// `model_name, stage, outcome` for each [`Outcome`], in `Outcome::ALL` order.
    pub(crate) by_outcome: [[KeyValue; 3]; 4],
    /// `model_name, stage`.
    pub(crate) model_stage: [KeyValue; 2],
    /// `model_name`.
    pub(crate) model: [KeyValue; 1],
    /// `stage, model_name`.
    pub(crate) selected: [KeyValue; 2],
}

impl ModelLabels {
    pub(crate) fn new(model: &str, stage: &str) -> Self {
        let m = KeyValue::new(names::MODEL_NAME, model.to_owned());
        let s = KeyValue::new(names::STAGE, stage.to_owned());
        let by_outcome = Outcome::ALL.map(|o| {
            [
                m.clone(),
                s.clone(),
                KeyValue::new(names::OUTCOME, o.as_str()),
            ]
        });
        Self {
            by_outcome,
            model_stage: [m.clone(), s.clone()],
            model: [m.clone()],
            selected: [s, m],
        }
    }

    pub(crate) fn outcome(&self, outcome: Outcome) -> &[KeyValue] {
        &self.by_outcome[outcome as usize]
    }
}
