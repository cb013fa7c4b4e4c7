//! What a pipeline declares about drift: its features and reference.

use std::time::Duration;

use super::{Feature, Profile};

pub(super) type Extract<In> = Box<dyn Fn(&In) -> Vec<f64> + Send + Sync>;
pub(super) type Category<In> = Box<dyn Fn(&In) -> String + Send + Sync>;

/// Which features of a pipeline's input are watched for drift: numeric
/// features with their bins and a function from an input to their values
/// (in the order of the features), and categorical features
/// ([`DriftSpec::categorical`]) each with a function from an input to its
/// category. Handed to [`crate::PipelineBuilder::drift`].
pub struct DriftSpec<In> {
    pub(super) features: Vec<Feature>,
    pub(super) extract: Extract<In>,
    pub(super) categorical: Vec<(&'static str, Category<In>)>,
    pub(super) reference_size: usize,
    pub(super) window_size: usize,
    pub(super) publish_every: Duration,
    pub(super) reference: Option<Profile>,
    pub(super) persist_to: Option<std::path::PathBuf>,
    pub(super) reference_dir: Option<std::path::PathBuf>,
    /// Where a learned reference goes when a directory keeps it (set when
    /// the pipeline is built).
    pub(super) store: Option<std::sync::Arc<super::ReferenceFile>>,
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
            reference_dir: None,
            store: None,
        }
    }

    /// Also watches a categorical feature: `category` reads it off each
    /// input (a language, a client, a document type). Its reference is the
    /// share of each category (up to [`MAX_CATEGORIES`](super::MAX_CATEGORIES); an "other" bin
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

    /// Keeps the pipeline's references — the input features' and the
    /// predictions' — in one file per pipeline, `dir/{pipeline}.json`
    /// ([`PipelineReferences`](super::PipelineReferences)): each part read
    /// at start if the file has it, otherwise learned from the first runs
    /// and saved there once complete, so a restart resets neither. A
    /// reference given with [`DriftSpec::reference`] wins over the file's
    /// features part; [`DriftSpec::persist_to`] is for the features alone.
    #[must_use]
    pub fn references_in(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.reference_dir = Some(dir.into());
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

impl<In> DriftSpec<In> {
    /// How many first samples form the reference, how many latest ones the
    /// live window, and how often the PSI is published.
    pub(crate) fn sizes(&self) -> (usize, usize, Duration) {
        (self.reference_size, self.window_size, self.publish_every)
    }

    /// With [`DriftSpec::references_in`], opens `pipeline`'s file: takes
    /// its features part as the reference (unless one was given), has a
    /// learned one saved there, and returns the file and its predictions
    /// part for the prediction monitor.
    pub(crate) fn open_references(
        &mut self,
        pipeline: &str,
    ) -> Option<(std::sync::Arc<super::ReferenceFile>, Option<Profile>)> {
        let dir = self.reference_dir.as_ref()?;
        self.open_file(dir.clone(), pipeline)
    }

    /// Keeps the pipeline's references in a durable run store, unless a
    /// file or directory was named for them: the drift threads read them
    /// from it when they start and save what they learn there (an earlier
    /// replica's reference wins). Returns them for the prediction monitor.
    pub(crate) fn share_references(
        &mut self,
        store: crate::store::RunStore,
        pipeline: &str,
    ) -> Option<(std::sync::Arc<super::ReferenceFile>, Option<Profile>)> {
        if let Some(dir) = self.reference_dir.clone() {
            return self.open_file(dir, pipeline);
        }
        if self.persist_to.is_some() {
            return None;
        }
        let shared = std::sync::Arc::new(super::ReferenceFile::in_store(store, pipeline));
        self.store = Some(std::sync::Arc::clone(&shared));
        Some((shared, None))
    }

    fn open_file(
        &mut self,
        dir: std::path::PathBuf,
        pipeline: &str,
    ) -> Option<(std::sync::Arc<super::ReferenceFile>, Option<Profile>)> {
        let dir = &dir;
        let file = std::sync::Arc::new(super::ReferenceFile::new(super::PipelineReferences::path(
            dir, pipeline,
        )));
        let stored = file.load();
        if self.reference.is_none() {
            self.reference = stored.features;
        }
        self.store = Some(std::sync::Arc::clone(&file));
        Some((file, stored.predictions))
    }
}
