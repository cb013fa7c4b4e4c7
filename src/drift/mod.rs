//! Feature drift: the population stability index (PSI) between a reference
//! window of inputs and a sliding window of live inputs, per feature,
//! exported as `ml_feature_drift_psi{pipeline, feature}`. A pipeline declares
//! its features with a [`DriftSpec`]: numeric ones binned by edges,
//! categorical ones by category (plus an "other" bin).
//!
//! PSI = Σ (live% − ref%) · ln(live% / ref%) over fixed bins; shares are
//! floored at 0.0001 so empty bins do not divide by zero. Rule of thumb:
//! < 0.1 stable, 0.1–0.2 moderate shift, > 0.2 significant drift.

mod monitor;
mod profile;
mod psi;
mod spec;
mod store;
mod window;

pub(crate) use monitor::prediction_monitor;
pub use monitor::DriftMonitor;
pub use profile::{FeatureProfile, Profile, ProfileError};
pub use psi::psi;
pub use spec::DriftSpec;
pub use store::PipelineReferences;
pub(crate) use store::{Part, ReferenceFile};
pub use window::DriftWindow;

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

/// Most categories a categorical feature's reference keeps; further ones
/// (and, once the reference is complete, any category it has not seen)
/// fall in the feature's last bin, "other".
pub const MAX_CATEGORIES: usize = 64;

/// One numeric feature, `x`, with one edge at 10, for the tests.
#[cfg(test)]
fn one_feature() -> Vec<Feature> {
    vec![Feature {
        name: "x",
        edges: vec![10.0],
    }]
}
