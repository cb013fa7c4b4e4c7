//! One file per pipeline holding both its drift references: the input
//! features' and the predictions', so a restart keeps both.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::Profile;

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

/// A pipeline's references file, shared by its two monitors: each saves
/// its part once learned, keeping the other's.
#[derive(Debug)]
pub(crate) struct ReferenceFile {
    path: PathBuf,
    lock: Mutex<()>,
}

impl ReferenceFile {
    pub(crate) fn new(path: PathBuf) -> Self {
        Self {
            path,
            lock: Mutex::new(()),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
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
