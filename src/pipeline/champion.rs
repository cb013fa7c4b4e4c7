//! Champion and challengers: the roles of a parallel stage's models
//! (serving candidates, shadows), each judged model's accuracy measured over
//! its last judged answers, the champion that measurement prefers, and the
//! promotion of a shadow that measurably beats it.
//!
//! Measuring happens on the feedback path ([`Board::observe`], under one
//! lock per stage); the request path only reads atomics ([`Board::pick`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use opentelemetry::metrics::{BoundCounter, Counter, Gauge, Meter};
use opentelemetry::KeyValue;
use serde::Serialize;

use super::judge::{JudgeKind, Verdict};
use super::lifecycle::ModelState;
use crate::names;

/// What a model of a parallel stage does with the stage's traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// It runs on the request path and may be selected.
    Candidate,
    /// It runs after the stage has answered, off the request path; its
    /// answers are judged but never served.
    Shadow,
}

impl Role {
    /// The `role` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Candidate => "candidate",
            Role::Shadow => "shadow",
        }
    }
}

/// The z of the 95% bounds.
const Z: f64 = 1.96;

/// Selection by measured accuracy (see
/// [`crate::SelectionPolicy::MeasuredAccuracy`]): each candidate is measured
/// over its last `window` judged answers (label judges: the share correct;
/// value judges: the mean absolute error) and compared by a 95% confidence
/// bound, Wilson's lower bound for shares and the mean's upper bound for
/// errors, so a short lucky streak does not win. Until every serving
/// candidate has `min_judged` judged answers in its window, the stage
/// selects by confidence.
///
/// ```
/// use pipelens::MeasuredAccuracy;
/// let policy = MeasuredAccuracy::default().window(2000).min_judged(100);
/// assert_eq!(policy.min_judged_answers(), 100);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeasuredAccuracy {
    window: usize,
    min_judged: usize,
}

impl MeasuredAccuracy {
    /// Default window: the last 1000 judged answers of each model. Wide
    /// enough that the 95% bounds of an 80–90% accurate model are about
    /// ±2 points, so models 5 points apart are told apart; short enough
    /// that a model that got worse loses within 1000 labels.
    pub const DEFAULT_WINDOW: usize = 1000;
    /// Default minimum: 50 judged answers per candidate before measured
    /// accuracy decides. Below that the bounds are wider than ±10 points
    /// and confidence is the better guess.
    pub const DEFAULT_MIN_JUDGED: usize = 50;

    /// Measures over each model's last `answers` judged answers (at least 1).
    #[must_use]
    pub fn window(mut self, answers: usize) -> Self {
        self.window = answers.max(1);
        self.min_judged = self.min_judged.min(self.window);
        self
    }

    /// Selects by confidence until every candidate has `answers` judged
    /// answers (at least 1, at most the window).
    #[must_use]
    pub fn min_judged(mut self, answers: usize) -> Self {
        self.min_judged = answers.clamp(1, self.window);
        self
    }

    /// The window, in judged answers per model.
    pub fn window_size(&self) -> usize {
        self.window
    }

    /// The judged answers each candidate needs before measurement decides.
    pub fn min_judged_answers(&self) -> usize {
        self.min_judged
    }
}

impl Default for MeasuredAccuracy {
    fn default() -> Self {
        Self {
            window: Self::DEFAULT_WINDOW,
            min_judged: Self::DEFAULT_MIN_JUDGED,
        }
    }
}

const CANDIDATE: u8 = 0;
const SHADOW: u8 = 1;

/// The models of one parallel stage and their roles, shared by the stage,
/// its board and the pipeline's listing.
pub(crate) struct Roster {
    pub(crate) stage: String,
    pub(crate) models: Vec<Arc<ModelState>>,
    roles: Vec<AtomicU8>,
    promote: bool,
    /// `ml_model_role` and each model's label set without `role`.
    role_gauge: Gauge<u64>,
    labels: Vec<[KeyValue; 3]>,
    promotions: Vec<Option<BoundCounter<u64>>>,
    /// Shadow executions running now, and the most that may.
    pub(crate) pending: AtomicUsize,
    pub(crate) max_pending: usize,
    /// `ml_shadow_skipped_total`, per model (shadows only).
    skipped: Vec<Option<BoundCounter<u64>>>,
}

impl Roster {
    pub(crate) fn new(
        meter: &Meter,
        pipeline: &str,
        stage: &str,
        models: Vec<Arc<ModelState>>,
        shadows: &[bool],
        promote: bool,
        max_pending: usize,
    ) -> Self {
        let role_gauge = meter
            .u64_gauge(names::MODEL_ROLE)
            .with_description("1 for a parallel stage's model's current role (candidate, shadow)")
            .build();
        let skipped_counter: Counter<u64> = meter
            .u64_counter(names::SHADOW_SKIPPED)
            .with_description("Shadow executions skipped because too many were pending")
            .build();
        let promotions_counter: Counter<u64> = meter
            .u64_counter(names::MODEL_PROMOTIONS)
            .with_description("Shadows promoted to serving candidates")
            .build();
        let labels: Vec<[KeyValue; 3]> = models
            .iter()
            .map(|m| {
                [
                    KeyValue::new(names::PIPELINE, pipeline.to_owned()),
                    KeyValue::new(names::STAGE, stage.to_owned()),
                    KeyValue::new(names::MODEL_NAME, m.name.clone()),
                ]
            })
            .collect();
        let bind_if = |on: bool, counter: &Counter<u64>, l: &[KeyValue; 3]| {
            on.then(|| {
                let bound = counter.bind(l);
                bound.add(0);
                bound
            })
        };
        let roster = Self {
            stage: stage.to_owned(),
            roles: shadows
                .iter()
                .map(|s| AtomicU8::new(if *s { SHADOW } else { CANDIDATE }))
                .collect(),
            skipped: shadows
                .iter()
                .zip(&labels)
                .map(|(s, l)| bind_if(*s, &skipped_counter, l))
                .collect(),
            promotions: shadows
                .iter()
                .zip(&labels)
                .map(|(s, l)| bind_if(*s && promote, &promotions_counter, l))
                .collect(),
            models,
            promote,
            role_gauge,
            labels,
            pending: AtomicUsize::new(0),
            max_pending,
        };
        for i in 0..roster.models.len() {
            roster.publish_role(i);
        }
        roster
    }

    /// The role of model `i` now.
    pub(crate) fn role(&self, i: usize) -> Role {
        if self.roles[i].load(Ordering::Relaxed) == SHADOW {
            Role::Shadow
        } else {
            Role::Candidate
        }
    }

    /// Whether any model is a shadow now.
    pub(crate) fn has_shadows(&self) -> bool {
        (0..self.roles.len()).any(|i| self.role(i) == Role::Shadow)
    }

    /// Counts a skipped execution of shadow `i`.
    pub(crate) fn skipped(&self, i: usize) {
        if let Some(c) = &self.skipped[i] {
            c.add(1);
        }
    }

    fn publish_role(&self, i: usize) {
        let now = self.role(i);
        for role in [Role::Candidate, Role::Shadow] {
            let mut attrs = self.labels[i].to_vec();
            attrs.push(KeyValue::new(names::ROLE, role.as_str()));
            self.role_gauge.record(u64::from(role == now), &attrs);
        }
    }

    /// Makes shadow `i` a serving candidate, once: counted and logged.
    fn promote(&self, i: usize) -> bool {
        if !self.promote
            || self.roles[i]
                .compare_exchange(SHADOW, CANDIDATE, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return false;
        }
        if let Some(c) = &self.promotions[i] {
            c.add(1);
        }
        self.publish_role(i);
        true
    }
}

/// One model's judged answers in its window: 1/0 for label judges, the
/// absolute error for value judges.
#[derive(Default)]
struct Window {
    values: VecDeque<f64>,
    sum: f64,
    sum_sq: f64,
    /// Pushes since the sums were last recomputed (against float drift).
    since_exact: usize,
}

impl Window {
    fn push(&mut self, value: f64, capacity: usize) {
        if self.values.len() == capacity {
            if let Some(old) = self.values.pop_front() {
                self.sum -= old;
                self.sum_sq -= old * old;
            }
        }
        self.values.push_back(value);
        self.sum += value;
        self.sum_sq += value * value;
        self.since_exact += 1;
        if self.since_exact >= capacity {
            self.sum = self.values.iter().sum();
            self.sum_sq = self.values.iter().map(|v| v * v).sum();
            self.since_exact = 0;
        }
    }
}

/// A model's measured figures over its window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Measured {
    pub(crate) n: usize,
    /// Share correct, or mean absolute error.
    pub(crate) estimate: f64,
    pub(crate) lower: f64,
    pub(crate) upper: f64,
}

impl Measured {
    fn of(kind: JudgeKind, w: &Window) -> Option<Self> {
        let n = w.values.len();
        if n == 0 {
            return None;
        }
        let nf = n as f64;
        let mean = w.sum / nf;
        let (lower, upper) = match kind {
            JudgeKind::Label => wilson(mean.clamp(0.0, 1.0), nf),
            JudgeKind::Value => {
                let var = if n > 1 {
                    ((w.sum_sq - nf * mean * mean) / (nf - 1.0)).max(0.0)
                } else {
                    f64::INFINITY
                };
                let half = Z * (var / nf).sqrt();
                ((mean - half).max(0.0), mean + half)
            }
        };
        Some(Self {
            n,
            estimate: mean,
            lower,
            upper,
        })
    }

    /// The bound a model is ranked by, higher is better: the worst the
    /// model plausibly is.
    fn pessimistic(&self, kind: JudgeKind) -> f64 {
        match kind {
            JudgeKind::Label => self.lower,
            JudgeKind::Value => -self.upper,
        }
    }

    /// The best the model plausibly is, on the same scale.
    fn optimistic(&self, kind: JudgeKind) -> f64 {
        match kind {
            JudgeKind::Label => self.upper,
            JudgeKind::Value => -self.lower,
        }
    }
}

/// Wilson's score interval at 95% for a share `p` of `n`.
pub(crate) fn wilson(p: f64, n: f64) -> (f64, f64) {
    let z2 = Z * Z;
    let denom = 1.0 + z2 / n;
    let center = p + z2 / (2.0 * n);
    let margin = Z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    (
        ((center - margin) / denom).max(0.0),
        ((center + margin) / denom).min(1.0),
    )
}

const NO_CHAMPION: usize = usize::MAX;

/// The measurement of one judged stage: every model's window, the scores
/// the request path reads, and the champion.
pub(crate) struct Board {
    pipeline: String,
    kind: JudgeKind,
    /// `Some` when the stage selects by measured accuracy.
    policy: Option<MeasuredAccuracy>,
    window: usize,
    min_judged: usize,
    roster: Arc<Roster>,
    windows: Mutex<Vec<Window>>,
    /// Per model, its pessimistic bound's bits (higher is better).
    scores: Vec<AtomicU64>,
    /// Whether every serving candidate has its minimum of judged answers.
    measured: AtomicBool,
    champion: AtomicUsize,
    gauges: BoardGauges,
}

struct BoardGauges {
    measured: Gauge<f64>,
    answers: Gauge<u64>,
    champion: Gauge<u64>,
    outperforms: Gauge<u64>,
    changes: Option<BoundCounter<u64>>,
}

impl Board {
    pub(crate) fn new(
        meter: &Meter,
        pipeline: &str,
        kind: JudgeKind,
        policy: Option<MeasuredAccuracy>,
        roster: Arc<Roster>,
    ) -> Self {
        let settings = policy.unwrap_or_default();
        let measured_name = match kind {
            JudgeKind::Label => names::MODEL_MEASURED_ACCURACY,
            JudgeKind::Value => names::MODEL_MEASURED_ERROR,
        };
        let changes = policy.map(|_| {
            let bound = meter
                .u64_counter(names::CHAMPION_CHANGES)
                .with_description("Changes of a stage's champion (the candidate measured best)")
                .build()
                .bind(&[
                    KeyValue::new(names::PIPELINE, pipeline.to_owned()),
                    KeyValue::new(names::STAGE, roster.stage.clone()),
                ]);
            bound.add(0);
            bound
        });
        let gauges = BoardGauges {
            measured: meter
                .f64_gauge(measured_name)
                .with_description(match kind {
                    JudgeKind::Label => "Share of a model's last judged answers that were correct (estimate, 95% Wilson bounds)",
                    JudgeKind::Value => "Mean absolute error of a model's last judged answers (estimate, 95% bounds)",
                })
                .build(),
            answers: meter
                .u64_gauge(names::MODEL_MEASURED_ANSWERS)
                .with_description("Judged answers in a model's measurement window")
                .build(),
            champion: meter
                .u64_gauge(names::STAGE_CHAMPION)
                .with_description("1 for the serving candidate a stage's measured accuracy prefers now")
                .build(),
            outperforms: meter
                .u64_gauge(names::MODEL_OUTPERFORMS_CHAMPION)
                .with_description("1 while a shadow's pessimistic bound beats the champion's optimistic one")
                .build(),
            changes,
        };
        let n = roster.models.len();
        let board = Self {
            pipeline: pipeline.to_owned(),
            kind,
            policy,
            window: settings.window,
            min_judged: settings.min_judged,
            windows: Mutex::new((0..n).map(|_| Window::default()).collect()),
            scores: (0..n)
                .map(|_| AtomicU64::new(f64::NEG_INFINITY.to_bits()))
                .collect(),
            measured: AtomicBool::new(false),
            champion: AtomicUsize::new(NO_CHAMPION),
            roster,
            gauges,
        };
        if board.policy.is_some() {
            board.publish_champion(None);
        }
        board
    }

    /// Picks among `survivors` (model index, confidence), by measured
    /// accuracy once every serving candidate is measured, else by
    /// confidence (ties go to the model declared first).
    pub(crate) fn pick(&self, survivors: impl Iterator<Item = (usize, f64)>) -> Option<usize> {
        if !self.measured.load(Ordering::Acquire) {
            return highest(survivors);
        }
        highest(survivors.map(|(i, _)| (i, f64::from_bits(self.scores[i].load(Ordering::Relaxed)))))
    }

    /// Takes in one feedback's verdicts (model index, verdict), then
    /// re-ranks: the champion, the shadows ahead of it, promotions.
    pub(crate) fn observe(&self, verdicts: &[(usize, Verdict)]) {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        for (i, v) in verdicts {
            let value = match self.kind {
                JudgeKind::Label => f64::from(u8::from(v.correct)),
                // A NaN answer has no error: it counts as wrong for labels
                // and is left out of the mean error.
                JudgeKind::Value => match v.absolute_error {
                    Some(e) => e,
                    None => continue,
                },
            };
            if let Some(w) = windows.get_mut(*i) {
                w.push(value, self.window);
            }
        }
        let measured: Vec<Option<Measured>> =
            windows.iter().map(|w| Measured::of(self.kind, w)).collect();
        // Only the models judged now have new figures.
        for (i, _) in verdicts {
            if let Some(m) = measured.get(*i).copied().flatten() {
                self.publish_measured(*i, &m);
                self.scores[*i].store(m.pessimistic(self.kind).to_bits(), Ordering::Relaxed);
            }
        }
        let mut champion = self.rank(&measured);
        let mut promoted = false;
        for i in 0..measured.len() {
            if self.roster.role(i) != Role::Shadow {
                continue;
            }
            let ahead = match (champion, &measured[i]) {
                (Some(c), Some(s)) if s.n >= self.min_judged => {
                    measured[c].is_some_and(|c| s.pessimistic(self.kind) > c.optimistic(self.kind))
                }
                _ => false,
            };
            self.gauges
                .outperforms
                .record(u64::from(ahead), &self.roster.labels[i]);
            if ahead && self.roster.promote(i) {
                promoted = true;
                let (c, s) = (champion.unwrap_or(0), measured[i].unwrap_or(ZERO));
                let cm = measured[c].unwrap_or(ZERO);
                tracing::info!(
                    pipeline.name = self.pipeline.as_str(),
                    stage.name = self.roster.stage.as_str(),
                    model.name = self.roster.models[i].name.as_str(),
                    champion.name = self.roster.models[c].name.as_str(),
                    model.measured = s.estimate,
                    model.judged = s.n,
                    champion.measured = cm.estimate,
                    champion.judged = cm.n,
                    "shadow promoted to candidate: it measurably beats the champion"
                );
                self.gauges.outperforms.record(0, &self.roster.labels[i]);
            }
        }
        if promoted {
            champion = self.rank(&measured);
        }
        drop(windows);
        if self.policy.is_some() {
            let before = self
                .champion
                .swap(champion.unwrap_or(NO_CHAMPION), Ordering::AcqRel);
            let before = (before != NO_CHAMPION).then_some(before);
            if before != champion {
                self.changed(before, champion, &measured);
            }
        }
    }

    /// The champion among the serving candidates, when all are measured;
    /// also publishes whether they are.
    fn rank(&self, measured: &[Option<Measured>]) -> Option<usize> {
        let serving = || (0..measured.len()).filter(|&i| self.roster.role(i) == Role::Candidate);
        let all = serving().all(|i| measured[i].is_some_and(|m| m.n >= self.min_judged));
        self.measured.store(all, Ordering::Release);
        if !all {
            return None;
        }
        highest(serving().filter_map(|i| measured[i].map(|m| (i, m.pessimistic(self.kind)))))
    }

    fn changed(&self, before: Option<usize>, now: Option<usize>, measured: &[Option<Measured>]) {
        if let Some(c) = &self.gauges.changes {
            c.add(1);
        }
        self.publish_champion(now);
        let name = |i: Option<usize>| i.map_or("", |i| self.roster.models[i].name.as_str());
        let figures = |i: Option<usize>| i.and_then(|i| measured[i]).unwrap_or(ZERO);
        let (b, n) = (figures(before), figures(now));
        tracing::info!(
            pipeline.name = self.pipeline.as_str(),
            stage.name = self.roster.stage.as_str(),
            champion.before = name(before),
            champion.now = name(now),
            champion.before.measured = b.estimate,
            champion.before.judged = b.n,
            champion.now.measured = n.estimate,
            champion.now.judged = n.n,
            measure = match self.kind {
                JudgeKind::Label => "accuracy",
                JudgeKind::Value => "mean_absolute_error",
            },
            "champion changed"
        );
    }

    fn publish_champion(&self, champion: Option<usize>) {
        for i in 0..self.roster.models.len() {
            if self.roster.role(i) == Role::Candidate || champion == Some(i) {
                self.gauges
                    .champion
                    .record(u64::from(champion == Some(i)), &self.roster.labels[i]);
            }
        }
    }

    fn publish_measured(&self, i: usize, m: &Measured) {
        let labels = &self.roster.labels[i];
        for (bound, value) in [
            ("estimate", m.estimate),
            ("lower", m.lower),
            ("upper", m.upper),
        ] {
            let mut attrs = labels.to_vec();
            attrs.push(KeyValue::new(names::BOUND, bound));
            self.gauges.measured.record(value, &attrs);
        }
        self.gauges.answers.record(m.n as u64, labels);
    }
}

const ZERO: Measured = Measured {
    n: 0,
    estimate: 0.0,
    lower: 0.0,
    upper: 0.0,
};

/// The index with the highest score; ties go to the first.
pub(crate) fn highest(scores: impl Iterator<Item = (usize, f64)>) -> Option<usize> {
    scores
        .fold(None, |best: Option<(usize, f64)>, (i, c)| match best {
            Some((_, b)) if b >= c => best,
            _ => Some((i, c)),
        })
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_bounds_match_the_published_interval() {
        // 90 of 100 at 95%: the Wilson interval is [0.8256, 0.9448].
        let (lo, hi) = wilson(0.9, 100.0);
        assert!((lo - 0.8256).abs() < 1e-3, "{lo}");
        assert!((hi - 0.9448).abs() < 1e-3, "{hi}");
        // A perfect short streak is not certain.
        let (lo, hi) = wilson(1.0, 5.0);
        assert!(lo < 0.6 && hi == 1.0, "{lo} {hi}");
    }

    #[test]
    fn a_window_forgets_its_oldest_answers() {
        let mut w = Window::default();
        for _ in 0..10 {
            w.push(0.0, 4);
        }
        for _ in 0..4 {
            w.push(1.0, 4);
        }
        let m = Measured::of(JudgeKind::Label, &w).unwrap();
        assert_eq!((m.n, m.estimate), (4, 1.0));
        let mut e = Window::default();
        for v in [1.0, 3.0] {
            e.push(v, 10);
        }
        let m = Measured::of(JudgeKind::Value, &e).unwrap();
        assert_eq!(m.estimate, 2.0);
        assert!(m.lower < 2.0 && m.upper > 2.0);
    }

    #[test]
    fn settings_stay_in_range() {
        let p = MeasuredAccuracy::default().window(10).min_judged(50);
        assert_eq!((p.window_size(), p.min_judged_answers()), (10, 10));
        let p = MeasuredAccuracy::default().min_judged(0);
        assert_eq!(p.min_judged_answers(), 1);
    }
}
