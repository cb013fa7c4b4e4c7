//! Feature drift: the population stability index (PSI) between a reference
//! window of inputs and a sliding window of live inputs, per feature,
//! exported as `ml_feature_drift_psi{pipeline, feature}`. A pipeline declares
//! its features with a [`DriftSpec`]: numeric ones binned by edges,
//! categorical ones by category (plus an "other" bin).
//!
//! PSI = Σ (live% − ref%) · ln(live% / ref%) over fixed bins; shares are
//! floored at 0.0001 so empty bins do not divide by zero. Rule of thumb:
//! < 0.1 stable, 0.1–0.2 moderate shift, > 0.2 significant drift.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use opentelemetry::metrics::{Counter, Gauge, Meter};
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

/// Most categories a categorical feature's reference keeps; further ones
/// (and, once the reference is complete, any category it has not seen)
/// fall in the feature's last bin, "other".
pub const MAX_CATEGORIES: usize = 64;

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
            (Bins::Edges(_), None) => Bins::Edges(p.edges.clone()),
            (Bins::Categories(_), Some(c)) => Bins::Categories(c.clone()),
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
                    let category = categories.get(i - numeric).map_or("", String::as_str);
                    f.bin_of_category(category, learning)
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

/// A drift reference kept in a file: per feature, its bin edges and how many
/// reference values fell in each bin. Built from a sample of inputs by
/// [`Profile::from_samples`] (`pipelens profile`), or learned from the first
/// inputs and persisted ([`DriftSpec::persist_to`]), so a restart does not
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

type Extract<In> = Box<dyn Fn(&In) -> Vec<f64> + Send + Sync>;
type Category<In> = Box<dyn Fn(&In) -> String + Send + Sync>;

/// Which features of a pipeline's input are watched for drift: numeric
/// features with their bins and a function from an input to their values
/// (in the order of the features), and categorical features
/// ([`DriftSpec::categorical`]) each with a function from an input to its
/// category. Handed to [`crate::PipelineBuilder::drift`].
pub struct DriftSpec<In> {
    features: Vec<Feature>,
    extract: Extract<In>,
    categorical: Vec<(&'static str, Category<In>)>,
    reference_size: usize,
    window_size: usize,
    publish_every: Duration,
    reference: Option<Profile>,
    persist_to: Option<std::path::PathBuf>,
}

impl<In> DriftSpec<In> {
    /// Watches `features`, whose values `extract` reads off each input. The
    /// first 200 inputs are the reference, the last 200 the live window,
    /// and the PSI is published every second.
    pub fn new(
        features: Vec<Feature>,
        extract: impl Fn(&In) -> Vec<f64> + Send + Sync + 'static,
    ) -> Self {
        Self {
            features,
            extract: Box::new(extract),
            categorical: Vec::new(),
            reference_size: 200,
            window_size: 200,
            publish_every: Duration::from_secs(1),
            reference: None,
            persist_to: None,
        }
    }

    /// Also watches a categorical feature: `category` reads it off each
    /// input (a language, a client, a document type). Its reference is the
    /// share of each category (up to [`MAX_CATEGORIES`]; an "other" bin
    /// takes the rest and, once the reference is set, any category it has
    /// not seen, so a new category shows as drift).
    #[must_use]
    pub fn categorical(
        mut self,
        name: &'static str,
        category: impl Fn(&In) -> String + Send + Sync + 'static,
    ) -> Self {
        self.categorical.push((name, Box::new(category)));
        self
    }

    /// The names of the watched features: numeric, then categorical.
    pub fn feature_names(&self) -> Vec<&'static str> {
        self.features
            .iter()
            .map(|f| f.name)
            .chain(self.categorical.iter().map(|(name, _)| *name))
            .collect()
    }

    /// Builds a reference profile from a sample of inputs (training data,
    /// or a known-good day of traffic): each numeric feature in `bins` bins
    /// between the sample's quantiles ([`Profile::from_samples`]), each
    /// categorical feature by category share
    /// ([`Profile::categorical_feature`]).
    pub fn profile<'a>(&self, inputs: impl IntoIterator<Item = &'a In>, bins: usize) -> Profile
    where
        In: 'a,
    {
        let mut numbers = Vec::new();
        let mut categories: Vec<Vec<String>> = vec![Vec::new(); self.categorical.len()];
        for input in inputs {
            numbers.push((self.extract)(input));
            for ((_, category), values) in self.categorical.iter().zip(&mut categories) {
                values.push(category(input));
            }
        }
        let names: Vec<&str> = self.features.iter().map(|f| f.name).collect();
        let mut profile = Profile::from_samples(&names, &numbers, bins);
        for ((name, _), values) in self.categorical.iter().zip(&categories) {
            profile
                .features
                .push(Profile::categorical_feature(name, values));
        }
        profile
    }

    /// Uses `profile` as the reference from the first input on (a profile
    /// built by `pipelens profile` from a sample of training or known-good
    /// inputs), instead of learning it from the first inputs.
    #[must_use]
    pub fn reference(mut self, profile: Profile) -> Self {
        self.reference = Some(profile);
        self
    }

    /// Keeps the reference in the file at `path`: read at start if it
    /// exists (then nothing is learned), otherwise learned from the first
    /// inputs and written there once complete, so a restart does not reset
    /// it. An unreadable file is reported and the reference learned again.
    #[must_use]
    pub fn persist_to(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.persist_to = Some(path.into());
        self
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

    /// Sets how often the PSI is computed and recorded.
    #[must_use]
    pub fn publish_every(mut self, interval: Duration) -> Self {
        self.publish_every = interval;
        self
    }
}

/// Samples waiting for the drift thread; beyond, they are dropped and
/// counted.
const SAMPLE_QUEUE: usize = 1024;

/// What the request path hands to the drift thread.
enum Message {
    /// One input's numeric feature values and categories.
    Sample(Vec<f64>, Vec<String>),
    /// Reply with the PSI and the observations seen once every earlier
    /// message is folded in.
    Flush(std::sync::mpsc::Sender<(Option<Vec<f64>>, usize)>),
}

/// Tracks drift of a fixed set of features of one pipeline's inputs, off
/// the request path: [`DriftMonitor::observe_input`] reads the feature
/// values and hands them to a bounded queue (never waiting: a full queue
/// drops the sample and counts it on `ml_feature_drift_samples_dropped`);
/// a thread of its own folds them into a [`DriftWindow`] and records
/// `ml_feature_drift_psi{pipeline, feature}` every `publish_every`.
pub struct DriftMonitor<In> {
    extract: Extract<In>,
    categorical: Vec<Category<In>>,
    samples: std::sync::mpsc::SyncSender<Message>,
    dropped: Counter<u64>,
    labels: [KeyValue; 1],
}

impl<In> DriftMonitor<In> {
    /// A monitor for `spec`, recording into `meter`; starts its thread.
    pub fn from_spec(meter: &Meter, pipeline: &str, spec: DriftSpec<In>) -> Self {
        let gauge: Gauge<f64> = meter
            .f64_gauge(names::FEATURE_DRIFT_PSI)
            .with_description(
                "Population stability index of the feature: live window vs reference window",
            )
            .build();
        let labels: Vec<Vec<KeyValue>> = spec
            .feature_names()
            .into_iter()
            .map(|name| {
                vec![
                    KeyValue::new(names::PIPELINE, pipeline.to_owned()),
                    KeyValue::new(names::FEATURE, name),
                ]
            })
            .collect();
        Self::start(meter, pipeline, spec, gauge, labels)
    }

    /// Starts the thread that folds samples of `spec`'s features in and
    /// records each one's PSI on `gauge` with its `labels`.
    fn start(
        meter: &Meter,
        pipeline: &str,
        spec: DriftSpec<In>,
        gauge: Gauge<f64>,
        labels: Vec<Vec<KeyValue>>,
    ) -> Self {
        let stored = match (&spec.reference, &spec.persist_to) {
            (Some(profile), _) => Some(profile.clone()),
            (None, Some(path)) if path.exists() => match Profile::read(path) {
                Ok(profile) => Some(profile),
                Err(e) => {
                    tracing::warn!(error.message = %e, "drift reference unreadable; learning it again");
                    None
                }
            },
            _ => None,
        };
        let persist = spec.persist_to.filter(|_| stored.is_none());
        let (categorical, category_names): (Vec<Category<In>>, Vec<&'static str>) = spec
            .categorical
            .into_iter()
            .map(|(name, f)| (f, name))
            .unzip();
        let window = match &stored {
            Some(profile) => DriftWindow::from_profile(spec.features, profile, spec.window_size),
            None => DriftWindow::new(spec.features, spec.reference_size, spec.window_size),
        }
        .categorical(&category_names);
        let (samples, queue) = std::sync::mpsc::sync_channel(SAMPLE_QUEUE);
        let every = spec.publish_every.max(Duration::from_millis(1));
        std::thread::Builder::new()
            .name("pipelens-drift".into())
            .spawn(move || fold(window, &queue, every, &gauge, &labels, persist))
            .expect("spawn the drift thread");
        Self {
            extract: spec.extract,
            categorical,
            samples,
            dropped: meter
                .u64_counter(names::FEATURE_DRIFT_SAMPLES_DROPPED)
                .with_description("Feature samples the drift thread had no room for")
                .build(),
            labels: [KeyValue::new(names::PIPELINE, pipeline.to_owned())],
        }
    }

    /// Hands one input's feature values to the drift thread, without
    /// waiting; a full queue drops them (counted).
    pub fn observe_input(&self, input: &In) {
        let categories = self.categorical.iter().map(|f| f(input)).collect();
        self.send(Message::Sample((self.extract)(input), categories));
    }

    /// Hands numeric feature values (in the order of the features) to the
    /// drift thread, without waiting.
    pub fn observe(&self, values: Vec<f64>) {
        self.send(Message::Sample(values, Vec::new()));
    }

    fn send(&self, sample: Message) {
        if self.samples.try_send(sample).is_err() {
            self.dropped.add(1, &self.labels);
        }
    }

    /// Waits until every sample handed over so far is folded in; the PSI
    /// per feature then (`None` until the reference is complete) and the
    /// observations folded in. For tests and shutdown, not the request path.
    pub fn flush(&self) -> (Option<Vec<f64>>, usize) {
        let (reply, answer) = std::sync::mpsc::channel();
        if self.samples.send(Message::Flush(reply)).is_err() {
            return (None, 0);
        }
        answer.recv().unwrap_or((None, 0))
    }
}

/// Prediction drift of a pipeline's parallel stages: per stage, the
/// distribution of the selected output's confidence (bins 0.1 wide) and of
/// which candidate was selected (one bin per candidate), live window vs
/// the first runs, as `ml_prediction_drift_psi{pipeline, stage, signal}`
/// (`signal` = `confidence` | `selected_model`). Same thread and bounded
/// queue as input drift; fed by the runner with [`DriftMonitor::observe`]:
/// per stage, the selected confidence then the selected candidate's index.
pub(crate) fn prediction_monitor(
    meter: &Meter,
    pipeline: &str,
    stages: &[(String, usize)],
    sizes: (usize, usize, Duration),
) -> DriftMonitor<()> {
    let mut features = Vec::new();
    let mut labels = Vec::new();
    for (stage, candidates) in stages {
        // Feature names only label the window's bins here; the gauge's
        // labels are the stage and signal. Leaked once per pipeline build.
        let name: &'static str = Box::leak(stage.clone().into_boxed_str());
        features.push(Feature {
            name,
            edges: (1..10).map(|i| f64::from(i) / 10.0).collect(),
        });
        features.push(Feature {
            name,
            edges: (1..*candidates).map(|i| i as f64 - 0.5).collect(),
        });
        for signal in [names::SIGNAL_CONFIDENCE, names::SIGNAL_SELECTED_MODEL] {
            labels.push(vec![
                KeyValue::new(names::PIPELINE, pipeline.to_owned()),
                KeyValue::new(names::STAGE, stage.clone()),
                KeyValue::new(names::SIGNAL, signal),
            ]);
        }
    }
    let gauge = meter
        .f64_gauge(names::PREDICTION_DRIFT_PSI)
        .with_description(
            "Population stability index of a parallel stage's selected confidence or selected model: live window vs the first runs",
        )
        .build();
    let (reference_size, window_size, every) = sizes;
    let spec = DriftSpec::new(features, |_: &()| Vec::new())
        .reference_size(reference_size)
        .window_size(window_size)
        .publish_every(every);
    DriftMonitor::start(meter, pipeline, spec, gauge, labels)
}

impl<In> DriftSpec<In> {
    /// How many first samples form the reference, how many latest ones the
    /// live window, and how often the PSI is published.
    pub(crate) fn sizes(&self) -> (usize, usize, Duration) {
        (self.reference_size, self.window_size, self.publish_every)
    }
}

/// The drift thread: folds samples in, publishes the PSI every `every`,
/// answers flushes, and ends when its monitor is dropped.
fn fold(
    mut window: DriftWindow,
    queue: &std::sync::mpsc::Receiver<Message>,
    every: Duration,
    gauge: &Gauge<f64>,
    labels: &[Vec<KeyValue>],
    mut persist: Option<std::path::PathBuf>,
) {
    use std::sync::mpsc::RecvTimeoutError;
    let publish = |window: &DriftWindow| {
        if let Some(values) = window.psi() {
            for (v, l) in values.iter().zip(labels) {
                gauge.record(*v, l);
            }
        }
    };
    let mut next = Instant::now() + every;
    loop {
        match queue.recv_timeout(next.saturating_duration_since(Instant::now())) {
            Ok(Message::Sample(values, categories)) => {
                let had = window.has_reference();
                window.record_with(&values, &categories);
                if !had && window.has_reference() {
                    if let (Some(path), Some(profile)) = (persist.take(), window.profile()) {
                        match profile.write(&path) {
                            Ok(()) => {
                                tracing::info!(path = %path.display(), "drift reference learned and saved")
                            }
                            Err(e) => {
                                tracing::warn!(path = %path.display(), error.message = %e, "cannot save the drift reference")
                            }
                        }
                    }
                }
            }
            Ok(Message::Flush(reply)) => {
                publish(&window);
                let _ = reply.send((window.psi(), window.seen()));
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                publish(&window);
                return;
            }
        }
        if Instant::now() >= next {
            publish(&window);
            next = Instant::now() + every;
        }
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

    fn one_feature() -> Vec<Feature> {
        vec![Feature {
            name: "x",
            edges: vec![10.0],
        }]
    }

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
    fn the_monitor_folds_samples_off_the_request_path_and_accounts_for_each() {
        let (registry, provider) = crate::telemetry::metrics_provider(
            opentelemetry_sdk::Resource::builder_empty().build(),
        )
        .unwrap();
        let meter = opentelemetry::metrics::MeterProvider::meter(&provider, "drift-test");
        let spec = DriftSpec::new(one_feature(), |x: &f64| vec![*x])
            .reference_size(4)
            .window_size(4)
            .publish_every(Duration::from_secs(3600));
        let m = DriftMonitor::from_spec(&meter, "p", spec);
        for v in [1.0, 2.0, 20.0, 30.0] {
            m.observe_input(&v);
        }
        assert_eq!(m.flush(), (None, 4), "reference only");
        let sent = 5000u64;
        for _ in 0..sent {
            m.observe_input(&99.0);
        }
        let (psi, seen) = m.flush();
        assert!(psi.unwrap()[0] > 1.0);
        let text = crate::telemetry::encode_metrics(&registry);
        let dropped: f64 = text
            .lines()
            .find(|l| l.starts_with("ml_feature_drift_samples_dropped_total{"))
            .and_then(|l| l.rsplit_once(' '))
            .map_or(0.0, |(_, v)| v.parse().unwrap());
        // Every sample was either folded in (the window keeps the last 4 of
        // them) or counted as dropped; the flush published the gauge.
        let folded_live = sent - dropped as u64;
        assert!(folded_live >= 4, "{folded_live}");
        assert_eq!(seen, 8);
        assert!(
            text.contains(r#"ml_feature_drift_psi{feature="x",pipeline="p"}"#),
            "{text}"
        );
    }

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
    fn a_learned_reference_is_saved_and_read_back_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reference.json");
        let meter = opentelemetry::global::meter("drift-persist-test");
        let spec = || {
            DriftSpec::new(one_feature(), |x: &f64| vec![*x])
                .reference_size(4)
                .window_size(4)
                .persist_to(&path)
        };
        let first = DriftMonitor::from_spec(&meter, "p", spec());
        for v in [1.0, 2.0, 20.0, 30.0] {
            first.observe_input(&v);
        }
        first.flush();
        let saved = Profile::read(&path).unwrap();
        assert_eq!(saved.features[0].counts, [2, 2]);
        drop(first);
        // A restart: the reference is there before any input.
        let second = DriftMonitor::from_spec(&meter, "p", spec());
        second.observe_input(&99.0);
        let (psi, _) = second.flush();
        assert!(
            psi.unwrap()[0] > 1.0,
            "compared with the saved reference at once"
        );
    }

    /// A request with one numeric and one categorical feature.
    struct Doc {
        words: f64,
        lang: &'static str,
    }

    fn doc_spec() -> DriftSpec<Doc> {
        DriftSpec::new(
            vec![Feature {
                name: "words",
                edges: vec![100.0],
            }],
            |d: &Doc| vec![d.words],
        )
        .categorical("lang", |d: &Doc| d.lang.to_owned())
    }

    fn doc(lang: &'static str) -> Doc {
        Doc { words: 50.0, lang }
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

    #[test]
    fn a_profile_of_inputs_round_trips_and_a_new_category_reads_as_drift() {
        let spec = doc_spec();
        assert_eq!(spec.feature_names(), ["words", "lang"]);
        let sample: Vec<Doc> = ["en", "en", "en", "de"].into_iter().map(doc).collect();
        let profile = spec.profile(&sample, 4);
        assert_eq!(profile.samples, 4);
        assert_eq!(
            profile.features[1].categories.as_deref(),
            Some(&["en", "de"].map(String::from)[..])
        );
        assert_eq!(profile.features[1].counts, [3, 1, 0]);
        // Numeric features keep their old JSON shape (no `categories`).
        let json = serde_json::to_value(&profile).unwrap();
        assert!(json["features"][0].get("categories").is_none(), "{json}");
        assert_eq!(
            json["features"][1]["categories"],
            serde_json::json!(["en", "de"])
        );
        assert!(json["features"][1].get("edges").is_none(), "{json}");
        let back: Profile = serde_json::from_value(json).unwrap();
        assert_eq!(back, profile);

        let meter = opentelemetry::global::meter("drift-categorical-test");
        let m = DriftMonitor::from_spec(&meter, "docs", doc_spec().reference(profile));
        for _ in 0..10 {
            m.observe_input(&doc("ja"));
        }
        let psi = m.flush().0.unwrap();
        // words: reference 4 in the bin of 50 (quantile edges), live all 50.
        assert!(psi[0] < 1e-9, "{psi:?}");
        // lang: 75/25/0 vs 0/0/100: (0.0001-0.75)ln(0.0001/0.75)
        // + (0.0001-0.25)ln(0.0001/0.25) + (1-0.0001)ln(1/0.0001)
        // = 6.691101 + 1.955229 + 9.209419 = 17.855750
        assert!((psi[1] - 17.855_750).abs() < 1e-5, "{psi:?}");
    }

    #[test]
    fn a_learned_categorical_reference_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reference.json");
        let meter = opentelemetry::global::meter("drift-categorical-persist-test");
        let spec = || {
            doc_spec()
                .reference_size(4)
                .window_size(4)
                .persist_to(&path)
        };
        let first = DriftMonitor::from_spec(&meter, "docs", spec());
        for lang in ["en", "de", "en", "en"] {
            first.observe_input(&doc(lang));
        }
        first.flush();
        drop(first);
        let saved = Profile::read(&path).unwrap();
        assert_eq!(saved.features[1].counts, [3, 1, 0]);
        let second = DriftMonitor::from_spec(&meter, "docs", spec());
        second.observe_input(&doc("en"));
        second.observe_input(&doc("de"));
        second.observe_input(&doc("en"));
        second.observe_input(&doc("en"));
        let psi = second.flush().0.unwrap();
        assert!(
            psi[1] < 1e-9,
            "the same mix as the saved reference: {psi:?}"
        );
    }
}
