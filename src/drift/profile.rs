//! Drift references kept in files.

use super::{Feature, MAX_CATEGORIES};

/// A drift reference kept in a file: per feature, its bin edges and how many
/// reference values fell in each bin. Built from a sample of inputs by
/// [`Profile::from_samples`] (`pipelens profile`), or learned from the first
/// inputs and persisted ([`DriftSpec::persist_to`](super::DriftSpec::persist_to)), so a restart does not
/// forget it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Values the profile was built from.
    pub samples: u64,
    /// One entry per feature.
    pub features: Vec<FeatureProfile>,
}

/// One feature of a [`Profile`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureProfile {
    /// The feature's name (the `feature` label).
    pub name: String,
    /// Upper bin edges of a numeric feature, ascending; a last bin takes
    /// values above them. Empty for a categorical feature.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub edges: Vec<f64>,
    /// The categories of a categorical feature (absent for a numeric one);
    /// a last bin, "other", takes any category not listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub categories: Option<Vec<String>>,
    /// Reference values per bin: one count more than edges (numeric) or
    /// than categories (categorical).
    pub counts: Vec<u64>,
}

/// Why a profile cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("drift profile: feature `{feature}`: {reason}")]
pub struct ProfileError {
    /// The feature at fault (or `.` for the whole profile).
    pub feature: String,
    /// What is wrong.
    pub reason: String,
}

impl Profile {
    /// Builds a profile from a sample: for each feature (named by `names`,
    /// its values at the same index of every sample), `bins` bins between
    /// the sample's quantiles, so each holds about the same share of the
    /// sample; repeated quantiles (a feature with few distinct values)
    /// collapse into fewer bins.
    pub fn from_samples(names: &[&str], samples: &[Vec<f64>], bins: usize) -> Self {
        let bins = bins.max(2);
        let features = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let mut values: Vec<f64> = samples
                    .iter()
                    .filter_map(|s| s.get(i).copied())
                    .filter(|v| v.is_finite())
                    .collect();
                values.sort_by(f64::total_cmp);
                let mut edges: Vec<f64> = Vec::new();
                if !values.is_empty() {
                    for k in 1..bins {
                        let rank = (k * values.len()).div_ceil(bins).saturating_sub(1);
                        let edge = values[rank.min(values.len() - 1)];
                        if edges.last().is_none_or(|last| edge > *last) {
                            edges.push(edge);
                        }
                    }
                }
                let feature = Feature { name: "", edges };
                let mut counts = vec![0; feature.bins()];
                for v in &values {
                    counts[feature.bin(*v)] += 1;
                }
                FeatureProfile {
                    name: (*name).to_owned(),
                    edges: feature.edges,
                    categories: None,
                    counts,
                }
            })
            .collect();
        Self {
            samples: samples.len() as u64,
            features,
        }
    }

    /// The profile of a categorical feature from a sample of its values:
    /// its categories by share, most frequent first (ties by name), the
    /// first [`MAX_CATEGORIES`] kept and the rest counted as "other".
    pub fn categorical_feature(name: &str, values: &[String]) -> FeatureProfile {
        let mut counts: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
        for v in values {
            *counts.entry(v.as_str()).or_default() += 1;
        }
        let mut ranked: Vec<(&str, u64)> = counts.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let kept = ranked.len().min(MAX_CATEGORIES);
        let other: u64 = ranked[kept..].iter().map(|(_, n)| n).sum();
        FeatureProfile {
            name: name.to_owned(),
            edges: Vec::new(),
            categories: Some(
                ranked[..kept]
                    .iter()
                    .map(|(c, _)| (*c).to_owned())
                    .collect(),
            ),
            counts: ranked[..kept]
                .iter()
                .map(|(_, n)| *n)
                .chain(std::iter::once(other))
                .collect(),
        }
    }

    /// Checks each feature: numeric edges finite and strictly ascending,
    /// categories distinct and at most [`MAX_CATEGORIES`], not both, and
    /// one count more than edges or categories.
    pub fn validate(&self) -> Result<(), ProfileError> {
        let mut names = std::collections::BTreeSet::new();
        for f in &self.features {
            let bad = |reason: &str| ProfileError {
                feature: f.name.clone(),
                reason: reason.to_owned(),
            };
            if !names.insert(f.name.as_str()) {
                return Err(bad("appears twice"));
            }
            match &f.categories {
                None => {
                    if f.counts.len() != f.edges.len() + 1 {
                        return Err(bad("needs one count more than edges"));
                    }
                    if f.edges.iter().any(|e| !e.is_finite())
                        || f.edges.windows(2).any(|w| w[0] >= w[1])
                    {
                        return Err(bad("edges must be finite and strictly ascending"));
                    }
                }
                Some(categories) => {
                    if !f.edges.is_empty() {
                        return Err(bad("has both edges and categories"));
                    }
                    if f.counts.len() != categories.len() + 1 {
                        return Err(bad(
                            "needs one count more than categories (the last is \"other\")",
                        ));
                    }
                    if categories.len() > MAX_CATEGORIES {
                        return Err(bad(&format!("has more than {MAX_CATEGORIES} categories")));
                    }
                    let distinct: std::collections::BTreeSet<&String> = categories.iter().collect();
                    if distinct.len() != categories.len() {
                        return Err(bad("lists a category twice"));
                    }
                }
            }
        }
        Ok(())
    }

    /// Reads and checks a profile file.
    pub fn read(path: &std::path::Path) -> Result<Self, ProfileError> {
        let whole = |reason: String| ProfileError {
            feature: ".".to_owned(),
            reason: format!("{}: {reason}", path.display()),
        };
        let text = std::fs::read(path).map_err(|e| whole(e.to_string()))?;
        let profile: Self = serde_json::from_slice(&text).map_err(|e| whole(e.to_string()))?;
        profile.validate()?;
        Ok(profile)
    }

    /// Writes the profile as JSON, atomically (a temporary file renamed
    /// over `path`).
    pub fn write(&self, path: &std::path::Path) -> std::io::Result<()> {
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(tmp, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_bins_a_sample_at_its_quantiles() {
        // 1..=100 in 4 bins: edges at the 25th, 50th and 75th values.
        let samples: Vec<Vec<f64>> = (1..=100).map(|v| vec![f64::from(v), 7.0]).collect();
        let p = Profile::from_samples(&["x", "constant"], &samples, 4);
        assert_eq!(p.samples, 100);
        assert_eq!(p.features[0].edges, [25.0, 50.0, 75.0]);
        assert_eq!(p.features[0].counts, [25, 25, 25, 25]);
        // A constant feature collapses into one edge and two bins.
        assert_eq!(p.features[1].edges, [7.0]);
        assert_eq!(p.features[1].counts, [100, 0]);
        p.validate().unwrap();
        let broken = Profile {
            samples: 1,
            features: vec![FeatureProfile {
                name: "x".into(),
                edges: vec![2.0, 1.0],
                categories: None,
                counts: vec![1, 0, 0],
            }],
        };
        assert_eq!(broken.validate().unwrap_err().feature, "x");
    }

    #[test]
    fn a_categorical_profile_ranks_categories_by_share_and_caps_them() {
        let values: Vec<String> = ["b", "a", "b", "c"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let f = Profile::categorical_feature("lang", &values);
        assert_eq!(
            f.categories.as_deref(),
            Some(&["b", "a", "c"].map(String::from)[..])
        );
        assert_eq!(f.counts, [2, 1, 1, 0]);
        assert!(f.edges.is_empty());
        let many: Vec<String> = (0..MAX_CATEGORIES + 6)
            .map(|i| format!("c{i:03}"))
            .collect();
        let capped = Profile::categorical_feature("client", &many);
        assert_eq!(capped.categories.as_ref().unwrap().len(), MAX_CATEGORIES);
        assert_eq!(capped.counts.last(), Some(&6), "the rest is other");
        Profile {
            samples: 4,
            features: vec![f.clone(), capped],
        }
        .validate()
        .unwrap();

        let broken = |change: fn(&mut FeatureProfile)| {
            let mut g = f.clone();
            change(&mut g);
            Profile {
                samples: 4,
                features: vec![g],
            }
            .validate()
            .unwrap_err()
            .reason
        };
        assert!(broken(|g| g.edges = vec![1.0]).contains("both"));
        assert!(broken(|g| g.counts.pop().map_or((), drop)).contains("one count more"));
        assert!(
            broken(|g| g.categories = Some(vec!["a".into(), "a".into(), "b".into()]))
                .contains("twice")
        );
        let twice = Profile {
            samples: 4,
            features: vec![f.clone(), f],
        };
        assert_eq!(twice.validate().unwrap_err().reason, "appears twice");
    }
}
