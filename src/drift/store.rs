//! Where a pipeline keeps both its drift references, the input features'
//! and the predictions', so a restart keeps both: one file per pipeline,
//! or the run store shared by every replica (the first to learn a
//! reference saves it; the others and every restart load it).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::Profile;
use crate::store::RunStore;

/// A stored reference, if it is usable.
fn parse(body: &str, from: &Path) -> Option<Profile> {
    let profile = serde_json::from_str::<Profile>(body)
        .map_err(|e| e.to_string())
        .and_then(|p| p.validate().map(|()| p).map_err(|e| e.to_string()));
    match profile {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::warn!(error.message = %e, from = %from.display(), "stored drift reference unusable; learning it");
            None
        }
    }
}

/// The content of `{dir}/{pipeline}.json`: the reference of the input
/// features and the reference of the predictions (selected confidence and
/// selected candidate per parallel stage), each absent until learned.
/// `pipelens profile --pipeline NAME` writes the features part.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineReferences {
    /// The input features' reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Profile>,
    /// The predictions' reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predictions: Option<Profile>,
}

impl PipelineReferences {
    /// The file of `pipeline` in `dir`.
    pub fn path(dir: &Path, pipeline: &str) -> PathBuf {
        dir.join(format!("{pipeline}.json"))
    }

    /// Reads a references file; each part present is checked.
    pub fn read(path: &Path) -> Result<Self, super::ProfileError> {
        let whole = |reason: String| super::ProfileError {
            feature: ".".to_owned(),
            reason: format!("{}: {reason}", path.display()),
        };
        let text = std::fs::read(path).map_err(|e| whole(e.to_string()))?;
        let references: Self = serde_json::from_slice(&text).map_err(|e| whole(e.to_string()))?;
        for profile in [&references.features, &references.predictions]
            .into_iter()
            .flatten()
        {
            profile.validate()?;
        }
        Ok(references)
    }

    /// Writes the file atomically (a temporary file renamed over `path`).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(tmp, path)
    }
}

/// Which part of a [`PipelineReferences`] a monitor keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    Features,
    Predictions,
}

impl Part {
    /// Its key in a run store.
    fn key(self) -> &'static str {
        match self {
            Part::Features => "features",
            Part::Predictions => "predictions",
        }
    }
}

/// A pipeline's references, shared by its two monitors: each saves its
/// part once learned, keeping the other's.
#[derive(Debug)]
pub(crate) struct ReferenceFile {
    path: PathBuf,
    lock: Mutex<()>,
    /// With a durable run store, the references live there instead.
    shared: Option<(RunStore, String)>,
}

impl ReferenceFile {
    pub(crate) fn new(path: PathBuf) -> Self {
        Self {
            path,
            lock: Mutex::new(()),
            shared: None,
        }
    }

    /// The references of `pipeline` in a durable run store.
    pub(crate) fn in_store(store: RunStore, pipeline: &str) -> Self {
        let target = store.status();
        Self {
            path: PathBuf::from(format!("{}:{} ({pipeline})", target.backend, target.target)),
            lock: Mutex::new(()),
            shared: Some((store, pipeline.to_owned())),
        }
    }

    /// Where they are, for log lines.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Whether they live in a run store, whose calls must be made off the
    /// async runtime (the drift thread makes them).
    pub(crate) fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// The saved `part`, read from the run store (the drift thread calls it
    /// when it starts). `None` when nothing usable is saved.
    pub(crate) fn fetch(&self, part: Part) -> Option<Profile> {
        let (store, pipeline) = self.shared.as_ref()?;
        match store.load_reference_blocking(pipeline, part.key()) {
            Ok(Some(body)) => parse(&body, &self.path),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error.message = %e, pipeline.name = pipeline.as_str(), "cannot read the drift reference from the run store; learning it");
                None
            }
        }
    }

    /// Saves a learned `profile` as `part`. In a run store, an earlier
    /// replica's reference wins: it is returned, to be used instead.
    pub(crate) fn save_part(
        &self,
        part: Part,
        profile: Profile,
    ) -> Result<Option<Profile>, String> {
        let Some((store, pipeline)) = &self.shared else {
            return self
                .save(part, profile)
                .map(|()| None)
                .map_err(|e| e.to_string());
        };
        let body = serde_json::to_string(&profile).map_err(|e| e.to_string())?;
        match store.save_reference_blocking(pipeline, part.key(), body.clone()) {
            Ok(Some(saved)) if saved != body => Ok(parse(&saved, &self.path)),
            Ok(_) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    /// What the file holds; nothing if it does not exist, and nothing (with
    /// a warning) if it cannot be used, so both references are learned
    /// again.
    pub(crate) fn load(&self) -> PipelineReferences {
        if !self.path.exists() {
            return PipelineReferences::default();
        }
        PipelineReferences::read(&self.path).unwrap_or_else(|e| {
            tracing::warn!(error.message = %e, "drift references unreadable; learning them again");
            PipelineReferences::default()
        })
    }

    /// Saves `profile` as `part`, keeping the other part as the file has it.
    pub(crate) fn save(&self, part: Part, profile: Profile) -> std::io::Result<()> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut references = self.load();
        match part {
            Part::Features => references.features = Some(profile),
            Part::Predictions => references.predictions = Some(profile),
        }
        references.write(&self.path)
    }
}
