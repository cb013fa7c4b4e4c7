//! Where a pipeline keeps both its drift references, the input features'
//! and the predictions', so a restart keeps both: one file per pipeline,
//! or the run store shared by every replica (the first to learn a
//! reference saves it; the others and every restart load it).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::Profile;
use crate::store::RunStore;

/// A stored reference, if it is usable.
fn parse(body: &str, from: &str) -> Option<Profile> {
    let profile = serde_json::from_str::<Profile>(body)
        .map_err(|e| e.to_string())
        .and_then(|p| p.validate().map(|()| p).map_err(|e| e.to_string()));
    match profile {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::warn!(error.message = %e, from = from, "stored drift reference unusable; learning it");
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
    backing: Backing,
    lock: Mutex<()>,
}

/// Where a pipeline's references live.
#[derive(Debug)]
enum Backing {
    /// `{dir}/{pipeline}.json`.
    File(PathBuf),
    /// A durable run store, shared by every replica.
    Store { store: RunStore, pipeline: String },
}

impl ReferenceFile {
    pub(crate) fn new(path: PathBuf) -> Self {
        Self {
            backing: Backing::File(path),
            lock: Mutex::new(()),
        }
    }

    /// The references of `pipeline` in a durable run store.
    pub(crate) fn in_store(store: RunStore, pipeline: &str) -> Self {
        Self {
            backing: Backing::Store {
                store,
                pipeline: pipeline.to_owned(),
            },
            lock: Mutex::new(()),
        }
    }

    /// Where they are, for log lines.
    pub(crate) fn place(&self) -> String {
        match &self.backing {
            Backing::File(path) => path.display().to_string(),
            Backing::Store { store, pipeline } => {
                let status = store.status();
                format!(
                    "{} run store {} ({pipeline})",
                    status.backend, status.target
                )
            }
        }
    }

    /// The saved `part`, read from the run store (the drift thread calls it
    /// when it starts, off the async runtime). `None` for a file (read when
    /// the pipeline is built) and when nothing usable is saved.
    pub(crate) fn fetch(&self, part: Part) -> Option<Profile> {
        let Backing::Store { store, pipeline } = &self.backing else {
            return None;
        };
        match store.load_reference_blocking(pipeline, part.key()) {
            Ok(Some(body)) => parse(&body, &self.place()),
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
        let (store, pipeline) = match &self.backing {
            Backing::File(path) => {
                return self
                    .save(path, part, profile)
                    .map(|()| None)
                    .map_err(|e| e.to_string())
            }
            Backing::Store { store, pipeline } => (store, pipeline),
        };
        let body = serde_json::to_string(&profile).map_err(|e| e.to_string())?;
        match store.save_reference_blocking(pipeline, part.key(), body.clone()) {
            Ok(Some(saved)) if saved != body => Ok(parse(&saved, &self.place())),
            Ok(_) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    /// What the file holds; nothing if it does not exist (or the references
    /// live in a run store), and nothing (with a warning) if it cannot be
    /// used, so both references are learned again.
    pub(crate) fn load(&self) -> PipelineReferences {
        match &self.backing {
            Backing::File(path) => read_or_default(path),
            Backing::Store { .. } => PipelineReferences::default(),
        }
    }

    /// Saves `profile` as `part` in the file at `path`, keeping the other
    /// part as the file has it.
    fn save(&self, path: &Path, part: Part, profile: Profile) -> std::io::Result<()> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut references = read_or_default(path);
        match part {
            Part::Features => references.features = Some(profile),
            Part::Predictions => references.predictions = Some(profile),
        }
        references.write(path)
    }
}

/// What the file at `path` holds; nothing if it does not exist, and
/// nothing (with a warning) if it cannot be used.
fn read_or_default(path: &Path) -> PipelineReferences {
    if !path.exists() {
        return PipelineReferences::default();
    }
    PipelineReferences::read(path).unwrap_or_else(|e| {
        tracing::warn!(error.message = %e, "drift references unreadable; learning them again");
        PipelineReferences::default()
    })
}
