//! The drift thread: samples in through a bounded queue, PSI out as gauges.

use std::time::{Duration, Instant};

use opentelemetry::metrics::{Counter, Gauge, Meter};
use opentelemetry::KeyValue;

use super::spec::{Category, Extract};
use super::{DriftSpec, DriftWindow, Feature, Part, Profile, ReferenceFile};
use crate::names;

/// Samples waiting for the drift thread; beyond, they are dropped and
/// counted.
const SAMPLE_QUEUE: usize = 1024;
/// How often the drift thread drains its queue: 1024 samples per 10 ms
/// is room for 100k runs a second per pipeline.
const DRAIN_EVERY: Duration = Duration::from_millis(10);

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
        Self::start(meter, pipeline, spec, gauge, labels, Part::Features)
    }

    /// Starts the thread that folds samples of `spec`'s features in and
    /// records each one's PSI on `gauge` with its `labels`.
    fn start(
        meter: &Meter,
        pipeline: &str,
        spec: DriftSpec<In>,
        gauge: Gauge<f64>,
        labels: Vec<Vec<KeyValue>>,
        part: Part,
    ) -> Self {
        let stored = match (&spec.reference, &spec.persist_to) {
            (Some(profile), _) => match profile.validate() {
                Ok(()) => Some(profile.clone()),
                Err(e) => {
                    tracing::warn!(error.message = %e, "drift reference unusable; learning it instead");
                    None
                }
            },
            (None, Some(path)) if path.exists() => match Profile::read(path) {
                Ok(profile) => Some(profile),
                Err(e) => {
                    tracing::warn!(error.message = %e, "drift reference unreadable; learning it again");
                    None
                }
            },
            _ => None,
        };
        let persist = match (&stored, spec.store, spec.persist_to) {
            (Some(_), ..) => None,
            (None, Some(file), _) => Some(Persist::Store(file, part)),
            (None, None, Some(path)) => Some(Persist::File(path)),
            (None, None, None) => None,
        };
        let (categorical, category_names): (Vec<Category<In>>, Vec<&'static str>) = spec
            .categorical
            .into_iter()
            .map(|(name, f)| (f, name))
            .unzip();
        if let Some(profile) = &stored {
            warn_about_kinds(profile, &spec.features, &category_names);
        }
        let window = match &stored {
            Some(profile) => {
                DriftWindow::from_profile(spec.features.clone(), profile, spec.window_size)
            }
            None => DriftWindow::new(spec.features.clone(), spec.reference_size, spec.window_size),
        }
        .categorical(&category_names);
        let (features, window_size) = (spec.features, spec.window_size);
        let adopt = move |profile: &Profile| {
            warn_about_kinds(profile, &features, &category_names);
            DriftWindow::from_profile(features.clone(), profile, window_size)
                .categorical(&category_names)
        };
        let (samples, queue) = std::sync::mpsc::sync_channel(SAMPLE_QUEUE);
        let every = spec.publish_every.max(Duration::from_millis(1));
        std::thread::Builder::new()
            .name("pipelens-drift".into())
            .spawn(move || {
                let mut window = window;
                let mut persist = persist;
                // References in a run store are read here, off the async
                // runtime: until they arrive, samples wait in the queue.
                if let Some(Persist::Store(file, part)) = &persist {
                    if let Some(profile) = file.fetch(*part) {
                        tracing::info!(path = %file.place(), "drift reference read from the run store");
                        window = adopt(&profile);
                        persist = None;
                    }
                }
                fold(window, &queue, every, &gauge, &labels, persist, &adopt)
            })
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
    reference: Option<Profile>,
    store: Option<std::sync::Arc<ReferenceFile>>,
) -> DriftMonitor<()> {
    let mut features = Vec::new();
    let mut labels = Vec::new();
    for (stage, candidates) in stages {
        // Feature names name the window's bins in a saved reference (one
        // name per feature); the gauge's labels are the stage and signal.
        // Leaked once per pipeline build.
        let name = |signal: &str| -> &'static str {
            Box::leak(format!("{stage}.{signal}").into_boxed_str())
        };
        features.push(Feature {
            name: name(names::SIGNAL_CONFIDENCE),
            edges: (1..10).map(|i| f64::from(i) / 10.0).collect(),
        });
        features.push(Feature {
            name: name(names::SIGNAL_SELECTED_MODEL),
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
    let mut spec = DriftSpec::new(features, |_: &()| Vec::new())
        .reference_size(reference_size)
        .window_size(window_size)
        .publish_every(every);
    if let Some(profile) = reference {
        spec = spec.reference(profile);
    }
    spec.store = store;
    DriftMonitor::start(meter, pipeline, spec, gauge, labels, Part::Predictions)
}

/// Where a learned reference is saved.
enum Persist {
    /// A profile file of its own ([`DriftSpec::persist_to`]).
    File(std::path::PathBuf),
    /// Its part of the pipeline's references file
    /// ([`DriftSpec::references_in`]).
    Store(std::sync::Arc<ReferenceFile>, Part),
}

impl Persist {
    /// Saves `profile`; returns the reference to use instead when another
    /// replica saved one first.
    fn save(&self, profile: Profile) -> Result<Option<Profile>, String> {
        match self {
            Self::File(path) => profile
                .write(path)
                .map(|()| None)
                .map_err(|e| e.to_string()),
            Self::Store(file, part) => file.save_part(*part, profile),
        }
    }

    fn place(&self) -> String {
        match self {
            Self::File(path) => path.display().to_string(),
            Self::Store(file, _) => file.place(),
        }
    }
}

/// Warns about each watched feature the profile holds with the other kind
/// (numeric against categorical): it is compared with nothing, so its PSI
/// reads 0.
fn warn_about_kinds(profile: &Profile, numeric: &[Feature], categorical: &[&'static str]) {
    let kinds = numeric
        .iter()
        .map(|f| (f.name, false))
        .chain(categorical.iter().map(|name| (*name, true)));
    for (name, is_categorical) in kinds {
        let stored = profile.features.iter().find(|p| p.name == name);
        if stored.is_some_and(|p| p.categories.is_some() != is_categorical) {
            tracing::warn!(
                feature = name,
                "drift reference holds this feature with another kind (numeric or categorical); its drift reads 0"
            );
        }
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
    mut persist: Option<Persist>,
    adopt: &dyn Fn(&Profile) -> DriftWindow,
) {
    use std::sync::mpsc::TryRecvError;
    let publish = |window: &DriftWindow| {
        if let Some(values) = window.psi() {
            for (v, l) in values.iter().zip(labels) {
                gauge.record(*v, l);
            }
        }
    };
    let mut next = Instant::now() + every;
    loop {
        // Drain what is queued, then sleep: the thread never waits inside
        // the channel, so a sample sent from the request path never pays a
        // thread wake-up (which cost a futex call and a context switch per
        // run, the largest item of the service's profile).
        loop {
            match queue.try_recv() {
                Ok(Message::Sample(values, categories)) => {
                    let had = window.has_reference();
                    window.record_with(&values, &categories);
                    if !had && window.has_reference() {
                        if let (Some(to), Some(profile)) = (persist.take(), window.profile()) {
                            if let Some(earlier) = save(&to, profile) {
                                window = adopt(&earlier);
                            }
                        }
                    }
                }
                Ok(Message::Flush(reply)) => {
                    publish(&window);
                    let _ = reply.send((window.psi(), window.seen()));
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    publish(&window);
                    return;
                }
            }
        }
        if Instant::now() >= next {
            publish(&window);
            next = Instant::now() + every;
        }
        std::thread::sleep(DRAIN_EVERY.min(next.saturating_duration_since(Instant::now())));
    }
}

/// Saves the learned reference `profile` where `to` says, saying how it
/// went; returns another replica's reference, saved first, to use instead.
fn save(to: &Persist, profile: Profile) -> Option<Profile> {
    let path = to.place();
    match to.save(profile) {
        Ok(None) => {
            tracing::info!(path = %path, "drift reference learned and saved");
            None
        }
        Ok(Some(earlier)) => {
            tracing::info!(path = %path, "drift reference learned, but another replica saved one first: using it");
            Some(earlier)
        }
        Err(e) => {
            tracing::warn!(path = %path, error.message = %e, "cannot save the drift reference");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::one_feature;
    use super::*;

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
