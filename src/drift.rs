//! Feature drift: the population stability index (PSI) between a reference
//! window of inputs and a sliding window of live inputs, per feature,
//! exported as `ml_feature_drift_psi{pipeline, feature}`. A pipeline declares
//! its features with a [`DriftSpec`].
//!
//! PSI = Σ (live% − ref%) · ln(live% / ref%) over fixed bins; shares are
//! floored at 0.0001 so empty bins do not divide by zero. Rule of thumb:
//! < 0.1 stable, 0.1–0.2 moderate shift, > 0.2 significant drift.

use std::collections::VecDeque;
use std::sync::Mutex;

use opentelemetry::metrics::{Gauge, Meter};
use opentelemetry::KeyValue;

use crate::names;

/// The smallest share a bin counts with in [`psi`], so empty bins stay
/// finite.
pub const FLOOR: f64 = 1e-4;

/// One monitored input feature and its bin edges (upper bounds, ascending;
/// values above the last edge fall in a final overflow bin).
#[derive(Debug, Clone)]
pub struct Feature {
    /// The `feature` label value.
    pub name: &'static str,
    /// Upper bin edges.
    pub edges: Vec<f64>,
}

impl Feature {
    fn bin(&self, value: f64) -> usize {
        self.edges
            .iter()
            .position(|e| value <= *e)
            .unwrap_or(self.edges.len())
    }

    fn bins(&self) -> usize {
        self.edges.len() + 1
    }
}

/// Computes PSI between two histograms of counts over the same bins.
///
/// Each bin's share is floored at [`FLOOR`] (0.0001) before the logarithm,
/// so a bin that is empty on one side adds a large but finite term (for a
/// bin holding half the live values and none of the reference:
/// (0.5 − 0.0001) · ln(0.5 / 0.0001) ≈ 4.26) and the result is never
/// infinite or NaN. With no reference or no live values (a feature absent
/// from the reference, or nothing seen yet) there is nothing to compare and
/// the PSI is 0. Small samples are not corrected: one reference value and
/// one live value in different bins give about 18.4.
pub fn psi(reference: &[u64], live: &[u64]) -> f64 {
    let ref_total: u64 = reference.iter().sum();
    let live_total: u64 = live.iter().sum();
    if ref_total == 0 || live_total == 0 {
        return 0.0;
    }
    reference
        .iter()
        .zip(live)
        .map(|(&r, &l)| {
            let e = (r as f64 / ref_total as f64).max(FLOOR);
            let a = (l as f64 / live_total as f64).max(FLOOR);
            (a - e) * (a / e).ln()
        })
        .sum()
}

struct State {
    reference: Vec<Vec<u64>>,
    reference_seen: usize,
    live: Vec<Vec<u64>>,
    window: VecDeque<Vec<usize>>,
}

type Extract<In> = Box<dyn Fn(&In) -> Vec<f64> + Send + Sync>;

/// Which numeric features of a pipeline's input are watched for drift: the
/// features with their bins, and a function from an input to their values
/// (in the order of the features). Handed to
/// [`crate::PipelineBuilder::drift`].
pub struct DriftSpec<In> {
    features: Vec<Feature>,
    extract: Extract<In>,
    reference_size: usize,
    window_size: usize,
}

impl<In> DriftSpec<In> {
    /// Watches `features`, whose values `extract` reads off each input. The
    /// first 200 inputs are the reference, the last 200 the live window.
    pub fn new(
        features: Vec<Feature>,
        extract: impl Fn(&In) -> Vec<f64> + Send + Sync + 'static,
    ) -> Self {
        Self {
            features,
            extract: Box::new(extract),
            reference_size: 200,
            window_size: 200,
        }
    }

    /// Sets how many first inputs form the reference.
    #[must_use]
    pub fn reference_size(mut self, n: usize) -> Self {
        self.reference_size = n;
        self
    }

    /// Sets how many latest inputs form the live window.
    #[must_use]
    pub fn window_size(mut self, n: usize) -> Self {
        self.window_size = n;
        self
    }
}

/// Tracks drift of a fixed set of features of one pipeline's inputs. The
/// first `reference_size` observations form the reference; PSI is then
/// computed over the last `window_size` observations and recorded on every
/// observation.
pub struct DriftMonitor<In> {
    features: Vec<Feature>,
    extract: Extract<In>,
    reference_size: usize,
    window_size: usize,
    state: Mutex<State>,
    gauge: Gauge<f64>,
    labels: Vec<[KeyValue; 2]>,
}

impl<In> DriftMonitor<In> {
    /// A monitor for `spec`, recording `ml_feature_drift_psi{pipeline,
    /// feature}` into `meter`.
    pub fn from_spec(meter: &Meter, pipeline: &str, spec: DriftSpec<In>) -> Self {
        let features = spec.features;
        let zeros = || {
            features
                .iter()
                .map(|f| vec![0; f.bins()])
                .collect::<Vec<_>>()
        };
        let state = State {
            reference: zeros(),
            reference_seen: 0,
            live: zeros(),
            window: VecDeque::with_capacity(spec.window_size),
        };
        let labels = features
            .iter()
            .map(|f| {
                [
                    KeyValue::new(names::PIPELINE, pipeline.to_owned()),
                    KeyValue::new(names::FEATURE, f.name),
                ]
            })
            .collect();
        Self {
            gauge: meter
                .f64_gauge(names::FEATURE_DRIFT_PSI)
                .with_description(
                    "Population stability index of the feature: live window vs reference window",
                )
                .build(),
            features,
            extract: spec.extract,
            reference_size: spec.reference_size.max(1),
            window_size: spec.window_size.max(1),
            state: Mutex::new(state),
            labels,
        }
    }

    /// Records one input's feature values and returns the current PSI per
    /// feature once the reference is complete.
    pub fn observe_input(&self, input: &In) -> Option<Vec<f64>> {
        self.observe(&(self.extract)(input))
    }

    /// Records feature values (in the order of the features) and returns the
    /// current PSI per feature once the reference is complete.
    pub fn observe(&self, values: &[f64]) -> Option<Vec<f64>> {
        let bins: Vec<usize> = self
            .features
            .iter()
            .zip(values)
            .map(|(f, v)| f.bin(*v))
            .collect();
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.reference_seen < self.reference_size {
            for (i, b) in bins.iter().enumerate() {
                st.reference[i][*b] += 1;
            }
            st.reference_seen += 1;
            return None;
        }
        for (i, b) in bins.iter().enumerate() {
            st.live[i][*b] += 1;
        }
        st.window.push_back(bins);
        if st.window.len() > self.window_size {
            if let Some(old) = st.window.pop_front() {
                for (i, b) in old.iter().enumerate() {
                    st.live[i][*b] -= 1;
                }
            }
        }
        let values: Vec<f64> = (0..self.features.len())
            .map(|i| psi(&st.reference[i], &st.live[i]))
            .collect();
        drop(st);
        for (v, labels) in values.iter().zip(&self.labels) {
            self.gauge.record(*v, labels);
        }
        Some(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_distributions_have_zero_psi_and_shifted_ones_do_not() {
        assert!(psi(&[10, 20, 30], &[1, 2, 3]).abs() < 1e-12);
        // 50/50 vs 90/10: (0.9-0.5)ln(1.8) + (0.1-0.5)ln(0.2) = 0.2351 + 0.6438
        let v = psi(&[50, 50], &[90, 10]);
        assert!((v - 0.878_9).abs() < 1e-3, "{v}");
        assert_eq!(psi(&[0, 0], &[1, 1]), 0.0);
    }

    #[test]
    fn psi_matches_values_worked_out_by_hand() {
        // Four bins, 40/30/20/10% against 10/20/30/40%:
        // (0.1-0.4)ln(0.25) + (0.2-0.3)ln(2/3) + (0.3-0.2)ln(1.5) + (0.4-0.1)ln(4)
        // = 0.415888 + 0.040547 + 0.040547 + 0.415888 = 0.912870
        let v = psi(&[40, 30, 20, 10], &[10, 20, 30, 40]);
        assert!((v - 0.912_870).abs() < 1e-6, "{v}");
        // Symmetric: swapping reference and live gives the same index.
        let w = psi(&[10, 20, 30, 40], &[40, 30, 20, 10]);
        assert!((v - w).abs() < 1e-12);
    }

    #[test]
    fn an_empty_bin_counts_with_the_floor_and_stays_finite() {
        // Reference all in bin 0; live split evenly:
        // bin 0: (0.5-1)ln(0.5) = 0.346574
        // bin 1: (0.5-0.0001)ln(0.5/0.0001) = 0.4999 * 8.517193 = 4.257745
        let v = psi(&[100, 0], &[50, 50]);
        assert!((v - 4.604_319).abs() < 1e-5, "{v}");
        assert!(v.is_finite());
        let all_moved = psi(&[100, 0], &[0, 100]);
        assert!(all_moved.is_finite() && all_moved > 10.0, "{all_moved}");
    }

    #[test]
    fn tiny_samples_give_finite_large_values() {
        // One value each, in different bins: 2 * 0.9999 * ln(10000) = 18.4188
        let v = psi(&[1, 0, 0], &[0, 0, 1]);
        assert!((v - 18.418_8).abs() < 1e-3, "{v}");
        assert_eq!(psi(&[1], &[1]), 0.0);
    }

    #[test]
    fn a_feature_absent_from_the_reference_reads_zero() {
        assert_eq!(psi(&[0, 0, 0], &[3, 1, 0]), 0.0);
        assert_eq!(psi(&[2, 2], &[0, 0]), 0.0);
        assert_eq!(psi(&[], &[]), 0.0);
    }

    #[test]
    fn monitor_uses_the_first_observations_as_reference_and_slides_the_window() {
        let meter = opentelemetry::global::meter("drift-test");
        let feature = Feature {
            name: "x",
            edges: vec![10.0],
        };
        let spec = DriftSpec::new(vec![feature], |x: &f64| vec![*x])
            .reference_size(4)
            .window_size(4);
        let m = DriftMonitor::from_spec(&meter, "p", spec);
        for v in [1.0, 2.0, 20.0, 30.0] {
            assert_eq!(m.observe_input(&v), None);
        }
        m.observe(&[5.0]);
        let same = m.observe(&[50.0]).unwrap()[0];
        assert!(same < 0.01, "balanced live window: {same}");
        let mut last = 0.0;
        for _ in 0..4 {
            last = m.observe(&[99.0]).unwrap()[0];
        }
        assert!(last > 1.0, "all live values in one bin: {last}");
    }
}
