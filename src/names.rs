//! Every metric, span, attribute and label name pipelens emits, in one place.
//!
//! Metric names are a public contract: the dashboards under `grafana/`, the
//! rules under `prometheus/` and the tests refer to the Prometheus forms
//! (`PROM_*`). Each OTel instrument name sits beside the name the Prometheus
//! exporter turns it into (unit suffix for seconds, `_total` for counters).

/// OTel name of the per-model execution counter.
pub const MODEL_EXECUTIONS: &str = "ml_model_executions";
/// Prometheus name of [`MODEL_EXECUTIONS`].
pub const PROM_MODEL_EXECUTIONS: &str = "ml_model_executions_total";
/// OTel name of the per-model execution duration histogram (unit `s`).
pub const MODEL_EXECUTION_DURATION: &str = "ml_model_execution_duration";
/// Prometheus name of [`MODEL_EXECUTION_DURATION`].
pub const PROM_MODEL_EXECUTION_DURATION: &str = "ml_model_execution_duration_seconds";
/// OTel (and Prometheus) name of the latest-confidence gauge.
pub const MODEL_CONFIDENCE_SCORE: &str = "ml_model_confidence_score";
/// OTel (and Prometheus) name of the confidence histogram.
pub const MODEL_CONFIDENCE: &str = "ml_model_confidence";
/// OTel name of the selection counter.
pub const MODEL_SELECTED: &str = "ml_model_selected";
/// Prometheus name of [`MODEL_SELECTED`].
pub const PROM_MODEL_SELECTED: &str = "ml_model_selected_total";
/// OTel name of the components counter.
pub const COMPONENTS_PLACED: &str = "ml_components_placed";
/// Prometheus name of [`COMPONENTS_PLACED`].
pub const PROM_COMPONENTS_PLACED: &str = "ml_components_placed_total";
/// OTel name of the pipeline run counter.
pub const PIPELINE_RUNS: &str = "ml_pipeline_runs";
/// Prometheus name of [`PIPELINE_RUNS`].
pub const PROM_PIPELINE_RUNS: &str = "ml_pipeline_runs_total";
/// OTel name of the pipeline duration histogram (unit `s`).
pub const PIPELINE_DURATION: &str = "ml_pipeline_duration";
/// Prometheus name of [`PIPELINE_DURATION`].
pub const PROM_PIPELINE_DURATION: &str = "ml_pipeline_duration_seconds";
/// OTel name of the model error counter.
pub const MODEL_ERRORS: &str = "ml_model_errors";
/// Prometheus name of [`MODEL_ERRORS`].
pub const PROM_MODEL_ERRORS: &str = "ml_model_errors_total";
/// OTel (and Prometheus) name of the model-loaded gauge.
pub const MODEL_LOADED: &str = "ml_model_loaded";
/// OTel (and Prometheus) name of the feature drift gauge.
pub const FEATURE_DRIFT_PSI: &str = "ml_feature_drift_psi";
/// OTel (and Prometheus) name of the prediction drift gauge (labels
/// `pipeline, stage, signal`).
pub const PREDICTION_DRIFT_PSI: &str = "ml_prediction_drift_psi";
/// Label: what a prediction drift figure is about.
pub const SIGNAL: &str = "signal";
/// Signal value: the selected output's confidence.
pub const SIGNAL_CONFIDENCE: &str = "confidence";
/// Signal value: which candidate was selected.
pub const SIGNAL_SELECTED_MODEL: &str = "selected_model";
/// OTel name of the counter of feature samples the drift thread had no room
/// for (label `pipeline`).
pub const FEATURE_DRIFT_SAMPLES_DROPPED: &str = "ml_feature_drift_samples_dropped";
/// OTel name of the per-model ground-truth counter (labels `pipeline,
/// stage, model_name, outcome` = `correct` | `incorrect`).
pub const MODEL_FEEDBACK: &str = "ml_model_feedback";
/// Prometheus name of [`MODEL_FEEDBACK`].
pub const PROM_MODEL_FEEDBACK: &str = "ml_model_feedback_total";
/// OTel name of the ground-truth counter of the answer a judged stage served
/// (labels `pipeline, stage, outcome`): the quality SLI.
pub const PIPELINE_FEEDBACK: &str = "ml_pipeline_feedback";
/// Prometheus name of [`PIPELINE_FEEDBACK`].
pub const PROM_PIPELINE_FEEDBACK: &str = "ml_pipeline_feedback_total";
/// OTel (and Prometheus, plus `_bucket`/`_sum`/`_count`) name of the
/// absolute-error histogram of value judges (labels `pipeline, stage,
/// model_name`).
pub const MODEL_ABSOLUTE_ERROR: &str = "ml_model_absolute_error";
/// OTel (and Prometheus) name of the info series of a parallel stage's
/// models: 1 for the role a model has now (labels `pipeline, stage,
/// model_name, role` = `candidate` | `shadow`), 0 for the other role.
pub const MODEL_ROLE: &str = "ml_model_role";
/// OTel (and Prometheus) name of the champion gauge of a stage selected by
/// measured accuracy: 1 for the serving candidate the policy prefers now,
/// 0 for the others (labels `pipeline, stage, model_name`).
pub const STAGE_CHAMPION: &str = "ml_stage_champion";
/// OTel name of the counter of champion changes (labels `pipeline, stage`).
pub const CHAMPION_CHANGES: &str = "ml_champion_changes";
/// Prometheus name of [`CHAMPION_CHANGES`].
pub const PROM_CHAMPION_CHANGES: &str = "ml_champion_changes_total";
/// OTel (and Prometheus) name of a label-judged model's measured accuracy
/// over its window of judged answers (labels `pipeline, stage, model_name,
/// bound` = `estimate` | `lower` | `upper`; the bounds are Wilson's at 95%).
pub const MODEL_MEASURED_ACCURACY: &str = "ml_model_measured_accuracy";
/// OTel (and Prometheus) name of a value-judged model's measured mean
/// absolute error over its window (labels as [`MODEL_MEASURED_ACCURACY`]).
pub const MODEL_MEASURED_ERROR: &str = "ml_model_measured_error";
/// OTel (and Prometheus) name of the number of judged answers in a model's
/// window (labels `pipeline, stage, model_name`).
pub const MODEL_MEASURED_ANSWERS: &str = "ml_model_measured_answers";
/// OTel (and Prometheus) name of the gauge that is 1 while a shadow
/// measurably beats its stage's champion: its pessimistic bound is better
/// than the champion's optimistic one (labels `pipeline, stage,
/// model_name`). The alert `ChallengerOutperformsChampion` reads it.
pub const MODEL_OUTPERFORMS_CHAMPION: &str = "ml_model_outperforms_champion";
/// OTel name of the counter of shadow executions skipped because too many
/// were pending (labels `pipeline, stage, model_name`).
pub const SHADOW_SKIPPED: &str = "ml_shadow_skipped";
/// Prometheus name of [`SHADOW_SKIPPED`].
pub const PROM_SHADOW_SKIPPED: &str = "ml_shadow_skipped_total";
/// OTel name of the counter of shadows promoted to serving candidates
/// (labels `pipeline, stage, model_name`).
pub const MODEL_PROMOTIONS: &str = "ml_model_promotions";
/// Prometheus name of [`MODEL_PROMOTIONS`].
pub const PROM_MODEL_PROMOTIONS: &str = "ml_model_promotions_total";
/// The series of champion and challengers as they appear on /metrics,
/// with their labels: exported by pipelines with a judged stage (the
/// measured series), shadows (role, skips) or
/// [`crate::MeasuredAccuracy`] (champion).
pub const PROM_CHAMPION_SERIES: &[(&str, &[&str])] = &[
    (MODEL_ROLE, &[PIPELINE, STAGE, MODEL_NAME, ROLE]),
    (STAGE_CHAMPION, &[PIPELINE, STAGE, MODEL_NAME]),
    (PROM_CHAMPION_CHANGES, &[PIPELINE, STAGE]),
    (
        MODEL_MEASURED_ACCURACY,
        &[PIPELINE, STAGE, MODEL_NAME, BOUND],
    ),
    (MODEL_MEASURED_ERROR, &[PIPELINE, STAGE, MODEL_NAME, BOUND]),
    (MODEL_MEASURED_ANSWERS, &[PIPELINE, STAGE, MODEL_NAME]),
    (MODEL_OUTPERFORMS_CHAMPION, &[PIPELINE, STAGE, MODEL_NAME]),
    (PROM_SHADOW_SKIPPED, &[PIPELINE, STAGE, MODEL_NAME]),
    (PROM_MODEL_PROMOTIONS, &[PIPELINE, STAGE, MODEL_NAME]),
];
/// OTel name of the HTTP server duration histogram (semantic conventions).
pub const HTTP_SERVER_REQUEST_DURATION: &str = "http.server.request.duration";
/// Prometheus name of [`HTTP_SERVER_REQUEST_DURATION`].
pub const PROM_HTTP_SERVER_REQUEST_DURATION: &str = "http_server_request_duration_seconds";
/// OTel name of the in-flight HTTP request gauge (semantic conventions).
pub const HTTP_SERVER_ACTIVE_REQUESTS: &str = "http.server.active_requests";
/// Prometheus name of [`HTTP_SERVER_ACTIVE_REQUESTS`].
pub const PROM_HTTP_SERVER_ACTIVE_REQUESTS: &str = "http_server_active_requests";

/// Every metric of the contract as it appears on /metrics, with its labels.
pub const PROM_CONTRACT: &[(&str, &[&str])] = &[
    (
        PROM_MODEL_EXECUTIONS,
        &[PIPELINE, STAGE, MODEL_NAME, OUTCOME],
    ),
    (
        PROM_MODEL_EXECUTION_DURATION,
        &[PIPELINE, STAGE, MODEL_NAME],
    ),
    (MODEL_CONFIDENCE_SCORE, &[PIPELINE, MODEL_NAME]),
    (MODEL_CONFIDENCE, &[PIPELINE, MODEL_NAME]),
    (PROM_MODEL_SELECTED, &[PIPELINE, STAGE, MODEL_NAME]),
    (
        PROM_COMPONENTS_PLACED,
        &[PIPELINE, COMPONENT_TYPE, MODEL_NAME],
    ),
    (PROM_PIPELINE_RUNS, &[PIPELINE, OUTCOME]),
    (PROM_PIPELINE_DURATION, &[PIPELINE]),
    (PROM_MODEL_ERRORS, &[PIPELINE, MODEL_NAME, ERROR_TYPE]),
    (MODEL_LOADED, &[PIPELINE, MODEL_NAME, MODEL_VERSION]),
    (FEATURE_DRIFT_PSI, &[PIPELINE, FEATURE]),
    (PREDICTION_DRIFT_PSI, &[PIPELINE, STAGE, SIGNAL]),
    (PROM_MODEL_FEEDBACK, &[PIPELINE, STAGE, MODEL_NAME, OUTCOME]),
    (PROM_PIPELINE_FEEDBACK, &[PIPELINE, STAGE, OUTCOME]),
    (
        PROM_HTTP_SERVER_REQUEST_DURATION,
        &[
            "http_request_method",
            "http_route",
            "http_response_status_code",
        ],
    ),
    (PROM_HTTP_SERVER_ACTIVE_REQUESTS, &["http_request_method"]),
];

/// Label: a model's role in its parallel stage (`candidate`, `shadow`).
pub const ROLE: &str = "role";
/// Label: which figure of a measured window (`estimate`, `lower`, `upper`).
pub const BOUND: &str = "bound";
/// Label: the model's name.
pub const MODEL_NAME: &str = "model_name";
/// Label: the model's version.
pub const MODEL_VERSION: &str = "model_version";
/// Label: the stage's name.
pub const STAGE: &str = "stage";
/// Label: how a model execution or a pipeline run ended.
pub const OUTCOME: &str = "outcome";
/// Label: the pipeline's name.
pub const PIPELINE: &str = "pipeline";
/// Label: the type of a produced component.
pub const COMPONENT_TYPE: &str = "component_type";
/// Label: the class of a model error.
pub const ERROR_TYPE: &str = "error_type";
/// Label: the input feature a drift figure is about.
pub const FEATURE: &str = "feature";

/// Attribute (OTel form): HTTP request method.
pub const HTTP_REQUEST_METHOD: &str = "http.request.method";
/// Attribute (OTel form): matched route template.
pub const HTTP_ROUTE: &str = "http.route";
/// Attribute (OTel form): HTTP response status code.
pub const HTTP_RESPONSE_STATUS_CODE: &str = "http.response.status_code";

/// Span: one pipeline run (root, or child of the incoming request).
pub const SPAN_PIPELINE_RUN: &str = "pipeline.run";
/// Span: one stage of a run.
pub const SPAN_STAGE_RUN: &str = "stage.run";
/// Span: one model execution.
pub const SPAN_MODEL_RUN: &str = "model.run";

/// Outcome value: the model or run succeeded.
pub const OUTCOME_SUCCESS: &str = "success";
/// Outcome value of feedback: the answer matched the ground truth.
pub const FEEDBACK_CORRECT: &str = "correct";
/// Outcome value of feedback: the answer did not match the ground truth.
pub const FEEDBACK_INCORRECT: &str = "incorrect";
/// Outcome value: the pipeline run failed.
pub const OUTCOME_FAILURE: &str = "failure";
