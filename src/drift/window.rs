//! The drift arithmetic without threads: a reference and a sliding live
//! histogram per feature.

use std::collections::VecDeque;

use super::{psi, Feature, FeatureProfile, Profile, MAX_CATEGORIES};

/// How one tracked feature's values fall into bins.
#[derive(Debug, Clone)]
enum Bins {
    /// Numeric: upper edges, and an overflow bin after them.
    Edges(Vec<f64>),
    /// Categorical: the reference's categories, and an "other" bin after
    /// them; the list grows while a learned reference is incomplete.
    Categories(Vec<String>),
}

/// One feature of a [`DriftWindow`]: its bins and both histograms.
#[derive(Debug, Clone)]
struct Tracked {
    name: &'static str,
    bins: Bins,
    reference: Vec<u64>,
    live: Vec<u64>,
}

impl Tracked {
    fn numeric(feature: Feature) -> Self {
        let n = feature.bins();
        Self {
            name: feature.name,
            bins: Bins::Edges(feature.edges),
            reference: vec![0; n],
            live: vec![0; n],
        }
    }

    fn categorical(name: &'static str) -> Self {
        Self {
            name,
            bins: Bins::Categories(Vec::new()),
            reference: vec![0],
            live: vec![0],
        }
    }

    /// Takes the reference of the profile's feature of the same name and
    /// kind, if there is one.
    fn adopt(&mut self, profile: &Profile) {
        let Some(p) = profile.features.iter().find(|p| p.name == self.name) else {
            return;
        };
        let bins = match (&self.bins, &p.categories) {
            (Bins::Edges(_), None) if p.counts.len() == p.edges.len() + 1 => {
                Bins::Edges(p.edges.clone())
            }
            (Bins::Categories(_), Some(c)) if p.counts.len() == c.len() + 1 => {
                Bins::Categories(c.clone())
            }
            // The other kind, or counts that do not fit the bins (a profile
            // that `Profile::validate` would refuse): compared with nothing.
            _ => return,
        };
        self.bins = bins;
        self.reference = p.counts.clone();
        self.live = vec![0; p.counts.len()];
    }

    /// The bin of a numeric value (`None` for a categorical feature).
    fn bin_of_number(&self, value: f64) -> Option<usize> {
        match &self.bins {
            Bins::Edges(edges) => Some(
                edges
                    .iter()
                    .position(|e| value <= *e)
                    .unwrap_or(edges.len()),
            ),
            Bins::Categories(_) => None,
        }
    }

    /// The bin of a category; while `learning`, an unseen category gets a
    /// bin of its own (up to [`MAX_CATEGORIES`]).
    fn bin_of_category(&mut self, value: &str, learning: bool) -> usize {
        let Bins::Categories(categories) = &mut self.bins else {
            return 0;
        };
        if let Some(i) = categories.iter().position(|c| c == value) {
            return i;
        }
        if learning && categories.len() < MAX_CATEGORIES {
            categories.push(value.to_owned());
            // The new category's bin goes before "other", which stays last.
            self.reference.insert(categories.len() - 1, 0);
            self.live.insert(categories.len() - 1, 0);
            return categories.len() - 1;
        }
        categories.len()
    }

    fn profile(&self) -> FeatureProfile {
        let (edges, categories) = match &self.bins {
            Bins::Edges(edges) => (edges.clone(), None),
            Bins::Categories(c) => (Vec::new(), Some(c.clone())),
        };
        FeatureProfile {
            name: self.name.to_owned(),
            edges,
            categories,
            counts: self.reference.clone(),
        }
    }
}

/// A reference histogram and a sliding live window per feature, and their
/// PSI: the arithmetic of drift, with no threads or metrics, so it can be
/// tested and reused on its own. The first `reference_size` observations
/// form the reference; the last `window_size` after them the live window.
/// Numeric features come first, then categorical ones
/// ([`DriftWindow::categorical`]), in every list of values and results.
#[derive(Debug, Clone)]
pub struct DriftWindow {
    features: Vec<Tracked>,
    numeric: usize,
    reference_size: usize,
    window_size: usize,
    reference_seen: usize,
    window: VecDeque<Vec<usize>>,
    /// The profile the reference came from, for categorical features added
    /// after.
    source: Option<Profile>,
}

impl DriftWindow {
    /// An empty window over `features`.
    pub fn new(features: Vec<Feature>, reference_size: usize, window_size: usize) -> Self {
        Self {
            numeric: features.len(),
            features: features.into_iter().map(Tracked::numeric).collect(),
            reference_size: reference_size.max(1),
            window_size: window_size.max(1),
            reference_seen: 0,
            window: VecDeque::with_capacity(window_size.max(1)),
            source: None,
        }
    }

    /// A window whose reference is `profile` (complete from the start): each
    /// feature found in it by name (and kind) takes its bins and counts; a
    /// feature absent from it keeps its own bins and an empty reference, so
    /// its PSI reads 0.
    pub fn from_profile(features: Vec<Feature>, profile: &Profile, window_size: usize) -> Self {
        let mut window = Self::new(features, 1, window_size);
        for f in &mut window.features {
            f.adopt(profile);
        }
        window.reference_seen = 1;
        window.source = Some(profile.clone());
        window
    }

    /// Adds categorical features, after the numeric ones: their categories
    /// are learned with the reference (up to [`MAX_CATEGORIES`] each), or
    /// taken from the profile the window was made from.
    #[must_use]
    pub fn categorical(mut self, names: &[&'static str]) -> Self {
        for name in names {
            let mut tracked = Tracked::categorical(name);
            if let Some(profile) = &self.source {
                tracked.adopt(profile);
            }
            self.features.push(tracked);
        }
        self
    }

    /// The reference as a [`Profile`], once it is complete.
    pub fn profile(&self) -> Option<Profile> {
        (self.reference_seen >= self.reference_size).then(|| Profile {
            samples: self.reference_seen as u64,
            features: self.features.iter().map(Tracked::profile).collect(),
        })
    }

    /// Whether the reference is complete.
    pub fn has_reference(&self) -> bool {
        self.reference_seen >= self.reference_size
    }

    /// Adds one observation of the numeric features (values in their
    /// order); categorical features, if any, count it as "other".
    pub fn record(&mut self, values: &[f64]) {
        self.record_with(values, &[]);
    }

    /// Adds one observation: the numeric features' values and the
    /// categorical features' categories, each in declaration order. It goes
    /// to the reference while that is incomplete, to the live window after.
    pub fn record_with(&mut self, values: &[f64], categories: &[String]) {
        let learning = self.reference_seen < self.reference_size;
        let numeric = self.numeric;
        let bins: Vec<usize> = self
            .features
            .iter_mut()
            .enumerate()
            .map(|(i, f)| {
                if i < numeric {
                    f.bin_of_number(values.get(i).copied().unwrap_or(f64::NAN))
                        .unwrap_or(0)
                } else {
                    // A missing category is "other", never learned.
                    match categories.get(i - numeric) {
                        Some(category) => f.bin_of_category(category, learning),
                        None => f.reference.len() - 1,
                    }
                }
            })
            .collect();
        if learning {
            for (f, b) in self.features.iter_mut().zip(&bins) {
                f.reference[*b] += 1;
            }
            self.reference_seen += 1;
            if self.reference_seen == self.reference_size {
                for f in &mut self.features {
                    f.live = vec![0; f.reference.len()];
                }
            }
            return;
        }
        for (f, b) in self.features.iter_mut().zip(&bins) {
            f.live[*b] += 1;
        }
        self.window.push_back(bins);
        if self.window.len() > self.window_size {
            if let Some(old) = self.window.pop_front() {
                for (f, b) in self.features.iter_mut().zip(&old) {
                    f.live[*b] -= 1;
                }
            }
        }
    }

    /// PSI per feature, once the reference is complete and the live window
    /// holds at least one observation.
    pub fn psi(&self) -> Option<Vec<f64>> {
        if self.reference_seen < self.reference_size || self.window.is_empty() {
            return None;
        }
        Some(
            self.features
                .iter()
                .map(|f| psi(&f.reference, &f.live))
                .collect(),
        )
    }

    /// Observations recorded so far, reference included.
    pub fn seen(&self) -> usize {
        self.reference_seen + self.window.len()
    }
}

#[cfg(test)]
mod tests {
    use super::super::one_feature;
    use super::*;

    #[test]
    fn the_window_uses_the_first_observations_as_reference_and_slides() {
        let mut w = DriftWindow::new(one_feature(), 4, 4);
        for v in [1.0, 2.0, 20.0, 30.0] {
            w.record(&[v]);
            assert_eq!(w.psi(), None, "reference incomplete or no live value");
        }
        w.record(&[5.0]);
        w.record(&[50.0]);
        let same = w.psi().unwrap()[0];
        assert!(same < 0.01, "balanced live window: {same}");
        for _ in 0..4 {
            w.record(&[99.0]);
        }
        let moved = w.psi().unwrap()[0];
        assert!(moved > 1.0, "all live values in one bin: {moved}");
        assert_eq!(w.seen(), 8, "4 reference + a window of 4");
    }

    #[test]
    fn a_window_from_a_profile_compares_from_the_first_input() {
        let profile = Profile {
            samples: 100,
            features: vec![FeatureProfile {
                name: "x".into(),
                edges: vec![10.0],
                categories: None,
                counts: vec![50, 50],
            }],
        };
        let features = vec![
            Feature {
                name: "x",
                edges: vec![1.0, 2.0, 3.0],
            },
            Feature {
                name: "absent",
                edges: vec![1.0],
            },
        ];
        let mut w = DriftWindow::from_profile(features, &profile, 10);
        w.record(&[99.0, 5.0]);
        let psi = w.psi().unwrap();
        // The profile's bins, not the spec's: 50/50 vs 0/100 with the floor:
        // (0.0001-0.5)ln(0.0002) + (1-0.5)ln(2) = 4.2586 + 0.3466
        assert!((psi[0] - 4.605_2).abs() < 1e-3, "{psi:?}");
        assert_eq!(psi[1], 0.0, "absent from the reference");
    }

    #[test]
    fn a_categorical_feature_counts_unseen_categories_as_other() {
        let strings = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let mut w = DriftWindow::new(Vec::new(), 10, 10).categorical(&["lang"]);
        for lang in ["en", "de"].repeat(5) {
            w.record_with(&[], &strings(&[lang]));
        }
        let reference = w.profile().unwrap();
        assert_eq!(
            reference.features[0].categories.as_deref(),
            Some(&strings(&["en", "de"])[..])
        );
        assert_eq!(reference.features[0].counts, [5, 5, 0], "other is last");
        for lang in ["en", "fr"].repeat(5) {
            w.record_with(&[], &strings(&[lang]));
        }
        // Live 50% en, 0% de, 50% other (fr was never seen):
        // en: 0; de: (0.0001-0.5)ln(0.0001/0.5) = 4.257745;
        // other: (0.5-0.0001)ln(0.5/0.0001) = 4.257745.
        let psi = w.psi().unwrap();
        assert!((psi[0] - 8.515_49).abs() < 1e-4, "{psi:?}");
        // The reference's category list is frozen: fr stays "other".
        assert_eq!(w.profile().unwrap().features[0].counts, [5, 5, 0]);
    }

    #[test]
    fn a_profile_feature_of_the_other_kind_is_compared_with_nothing() {
        let profile = Profile {
            samples: 10,
            features: vec![
                Profile::categorical_feature("x", &vec!["a".to_owned(); 10]),
                FeatureProfile {
                    name: "lang".into(),
                    edges: vec![1.0],
                    categories: None,
                    counts: vec![5, 5],
                },
            ],
        };
        let mut w = DriftWindow::from_profile(one_feature(), &profile, 10).categorical(&["lang"]);
        w.record_with(&[99.0], &["fr".to_owned()]);
        assert_eq!(w.psi().unwrap(), [0.0, 0.0]);
        let kept = w.profile().unwrap();
        assert_eq!(kept.features[0].edges, [10.0], "the spec's own bins");
        assert_eq!(kept.features[1].categories.as_deref(), Some(&[][..]));
    }

    #[test]
    fn a_missing_category_is_other_and_never_learned() {
        let mut w = DriftWindow::new(one_feature(), 2, 2).categorical(&["lang"]);
        w.record(&[1.0]);
        w.record_with(&[1.0], &["en".to_owned()]);
        let reference = w.profile().unwrap();
        assert_eq!(
            reference.features[1].categories.as_deref(),
            Some(&["en".to_owned()][..])
        );
        assert_eq!(reference.features[1].counts, [1, 1], "en, then other");
    }

    #[test]
    fn a_profile_whose_counts_do_not_fit_its_bins_is_not_adopted() {
        let profile = Profile {
            samples: 5,
            features: vec![FeatureProfile {
                name: "x".into(),
                edges: vec![10.0],
                categories: None,
                counts: vec![5],
            }],
        };
        let mut w = DriftWindow::from_profile(one_feature(), &profile, 4);
        w.record(&[99.0]);
        assert_eq!(w.psi().unwrap(), [0.0]);
    }
}
