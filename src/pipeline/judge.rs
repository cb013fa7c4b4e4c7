//! Judges: how a parallel stage's candidates are compared with ground truth
//! that arrives after the run (`POST .../runs/{run_id}/feedback`, or
//! [`crate::Pipeline::feedback`]).

use std::sync::Arc;

pub use crate::answer::Answer;

/// Whether a judge compares labels or values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JudgeKind {
    Label,
    Value,
}

impl JudgeKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            JudgeKind::Label => "label",
            JudgeKind::Value => "value",
        }
    }
}

/// Reads a candidate's answer from its output.
pub(crate) type Read<Out> = Arc<dyn Fn(&Out) -> Answer + Send + Sync>;

/// How the candidates of a parallel stage are judged against ground truth:
/// which part of a candidate's output is its answer, and when an answer
/// counts as correct. Set with [`crate::Parallel::judge`].
///
/// Every judged run is remembered (bounded, see
/// [`crate::PipelineBuilder::feedback_retention`]) until its ground truth
/// arrives; each candidate's answer is then counted on
/// `ml_model_feedback_total{outcome="correct"|"incorrect"}`, the served
/// (selected) answer on `ml_pipeline_feedback_total`, and for values the
/// absolute error on `ml_model_absolute_error`.
///
/// ```
/// use pipelens::Judge;
/// # struct Scored { label: &'static str, price: f64 }
/// // Classification: correct when the label equals the true one.
/// let by_label = Judge::label(|s: &Scored| s.label);
/// // Regression: correct within 5 units or 10% of the true value.
/// let by_value = Judge::value(|s: &Scored| s.price).tolerance(5.0).relative_tolerance(0.1);
/// # let _ = (by_label, by_value);
/// ```
pub struct Judge<Out> {
    pub(crate) kind: JudgeKind,
    pub(crate) read: Read<Out>,
    pub(crate) tolerance: f64,
    pub(crate) relative_tolerance: f64,
}

impl<Out> Clone for Judge<Out> {
    fn clone(&self) -> Self {
        Self {
            kind: self.kind,
            read: Arc::clone(&self.read),
            tolerance: self.tolerance,
            relative_tolerance: self.relative_tolerance,
        }
    }
}

impl<Out: 'static> Judge<Out> {
    /// Judges a classification: `label` reads the class from a candidate's
    /// output; the answer is correct when it equals the true label.
    pub fn label<L: Into<String>>(label: impl Fn(&Out) -> L + Send + Sync + 'static) -> Self {
        Self {
            kind: JudgeKind::Label,
            read: Arc::new(move |out| Answer::Label(label(out).into())),
            tolerance: 0.0,
            relative_tolerance: 0.0,
        }
    }

    /// Judges a regression: `value` reads the number from a candidate's
    /// output; the absolute error is recorded, and the answer is correct
    /// when the error is within the tolerance (exact by default).
    pub fn value(value: impl Fn(&Out) -> f64 + Send + Sync + 'static) -> Self {
        Self {
            kind: JudgeKind::Value,
            read: Arc::new(move |out| Answer::Value(value(out))),
            tolerance: 0.0,
            relative_tolerance: 0.0,
        }
    }

    /// A value answer within `absolute` of the truth is correct.
    #[must_use]
    pub fn tolerance(mut self, absolute: f64) -> Self {
        self.tolerance = absolute.max(0.0);
        self
    }

    /// A value answer within `share` × |truth| of the truth is correct
    /// (whichever of the two tolerances is larger applies).
    #[must_use]
    pub fn relative_tolerance(mut self, share: f64) -> Self {
        self.relative_tolerance = share.max(0.0);
        self
    }
}

/// The verdict on one answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Verdict {
    pub(crate) correct: bool,
    /// For values: `|answer - truth|`.
    pub(crate) absolute_error: Option<f64>,
}

/// How answers of one judged stage are compared with the truth.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rule {
    pub(crate) kind: JudgeKind,
    pub(crate) tolerance: f64,
    pub(crate) relative_tolerance: f64,
}

impl Rule {
    /// Compares `answer` with `truth` (of this rule's kind).
    pub(crate) fn verdict(&self, answer: &Answer, truth: &Answer) -> Verdict {
        match (answer, truth) {
            (Answer::Label(a), Answer::Label(t)) => Verdict {
                correct: a == t,
                absolute_error: None,
            },
            (Answer::Value(a), Answer::Value(t)) => {
                let error = (a - t).abs();
                let allowed = self.tolerance.max(self.relative_tolerance * t.abs());
                Verdict {
                    // A NaN answer is never correct.
                    correct: error.is_finite() && error <= allowed,
                    absolute_error: error.is_finite().then_some(error),
                }
            }
            _ => Verdict {
                correct: false,
                absolute_error: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value_rule(tolerance: f64, relative: f64) -> Rule {
        Rule {
            kind: JudgeKind::Value,
            tolerance,
            relative_tolerance: relative,
        }
    }

    #[test]
    fn labels_are_correct_only_when_equal() {
        let rule = Rule {
            kind: JudgeKind::Label,
            tolerance: 0.0,
            relative_tolerance: 0.0,
        };
        let yes = rule.verdict(&Answer::Label("a".into()), &Answer::Label("a".into()));
        let no = rule.verdict(&Answer::Label("a".into()), &Answer::Label("A".into()));
        assert!(yes.correct && !no.correct);
        assert_eq!(yes.absolute_error, None);
    }

    #[test]
    fn values_use_the_larger_tolerance() {
        // |12 - 10| = 2: within 2.5 absolute, not within 0.1 × 10 = 1.
        let v = value_rule(2.5, 0.1).verdict(&Answer::Value(12.0), &Answer::Value(10.0));
        assert_eq!(v.absolute_error, Some(2.0));
        assert!(v.correct);
        // |120 - 100| = 20: not within 2.5, within 0.25 × 100 = 25.
        assert!(
            value_rule(2.5, 0.25)
                .verdict(&Answer::Value(120.0), &Answer::Value(100.0))
                .correct
        );
        assert!(
            !value_rule(2.5, 0.1)
                .verdict(&Answer::Value(120.0), &Answer::Value(100.0))
                .correct
        );
        // Exact by default.
        assert!(
            value_rule(0.0, 0.0)
                .verdict(&Answer::Value(3.0), &Answer::Value(3.0))
                .correct
        );
    }

    #[test]
    fn nan_and_infinite_answers_are_wrong_and_record_no_error() {
        let v = value_rule(1e9, 1.0).verdict(&Answer::Value(f64::NAN), &Answer::Value(1.0));
        assert!(!v.correct);
        assert_eq!(v.absolute_error, None);
        // An infinite error is wrong even under an infinite tolerance.
        let v = value_rule(f64::INFINITY, 0.0)
            .verdict(&Answer::Value(f64::INFINITY), &Answer::Value(1.0));
        assert!(!v.correct);
        assert_eq!(v.absolute_error, None);
    }

    #[test]
    fn answers_read_from_json_by_type() {
        let label: Answer = serde_json::from_str("\"positive\"").unwrap();
        let value: Answer = serde_json::from_str("3.5").unwrap();
        assert_eq!(label, Answer::Label("positive".into()));
        assert_eq!(value, Answer::Value(3.5));
        assert_eq!(serde_json::to_string(&value).unwrap(), "3.5");
    }
}
