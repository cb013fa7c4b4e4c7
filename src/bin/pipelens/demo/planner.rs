//! The demo pipeline: the ceiling layout planner. Three light-placement
//! candidates compete in a parallel `lighting` stage (best confidence wins),
//! then the sequential `fixtures` stage places air-supply diffusers and smoke
//! detectors on what is left. Built, served and watched for drift through
//! pipelens' public API only, like any user's pipeline.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::metrics::Meter;
use pipelens::faults::{Faults, Faulty};
use pipelens::input::{self, FieldError};
use pipelens::server::Served;
use pipelens::{BuildError, DriftSpec, Feature, Pipeline, Stage};
use serde::Deserialize;

use super::ceiling::{
    AirSupply, Cell, DenseLights, Layout, PerimeterLights, Room, SmokeDetectors, SparseLights,
};

/// The pipeline's name: the `pipeline` label and the URL segment.
pub const PIPELINE_NAME: &str = "ceiling-layout";
/// The parallel light-placement stage.
pub const STAGE_LIGHTING: &str = "lighting";
/// The sequential air-supply then smoke-detector stage.
pub const STAGE_FIXTURES: &str = "fixtures";
/// How long one model may take before its execution counts as a timeout.
pub const MODEL_TIMEOUT: Duration = Duration::from_secs(2);
/// How many first rooms form the drift reference, and how many latest ones
/// the live window.
pub const DRIFT_WINDOW: usize = 200;

/// Builds the ceiling layout pipeline, recording into `meter` (or the global
/// meter when `None`), with every model wrapped in the fault knobs. The
/// first `drift_reference` rooms are the drift reference.
pub fn pipeline(
    meter: Option<Meter>,
    faults: &Arc<Faults>,
    drift_reference: usize,
) -> Result<Pipeline<Layout, Layout>, BuildError> {
    pipeline_with_reference(meter, faults, drift_reference, References::Learn)
}

/// Where the drift references of the ceiling pipeline come from.
pub enum References {
    /// Learned from the first rooms on each start.
    Learn,
    /// A profile already read (`--drift-reference FILE` that exists).
    Stored(pipelens::drift::Profile),
    /// Learned and saved to this profile file (`--drift-reference FILE`).
    SaveTo(std::path::PathBuf),
    /// Kept, features and predictions, in `{dir}/ceiling-layout.json`
    /// (`--drift-reference-dir DIR`).
    Dir(std::path::PathBuf),
    /// Kept in the service's durable run store, shared by every replica
    /// (the default when the store is SQLite or Postgres).
    Store(pipelens::store::RunStore),
}

/// Like [`pipeline`], with the drift references `references` says.
pub fn pipeline_with_reference(
    meter: Option<Meter>,
    faults: &Arc<Faults>,
    drift_reference: usize,
    references: References,
) -> Result<Pipeline<Layout, Layout>, BuildError> {
    let drift = drift_spec()
        .reference_size(drift_reference)
        .window_size(drift_reference);
    let (drift, store) = match references {
        References::Learn => (drift, None),
        References::Stored(profile) => (drift.reference(profile), None),
        References::SaveTo(path) => (drift.persist_to(path), None),
        References::Dir(dir) => (drift.references_in(dir), None),
        References::Store(store) => (drift, Some(store)),
    };
    let mut builder = Pipeline::builder(PIPELINE_NAME)
        .stage(
            Stage::parallel(STAGE_LIGHTING)
                .model(Faulty::new(DenseLights, Arc::clone(faults)))
                .model(Faulty::new(SparseLights, Arc::clone(faults)))
                .model(Faulty::new(PerimeterLights, Arc::clone(faults)))
                .timeout(MODEL_TIMEOUT),
        )
        .stage(
            Stage::sequential(STAGE_FIXTURES)
                .model(Faulty::new(AirSupply, Arc::clone(faults)))
                .model(Faulty::new(SmokeDetectors, Arc::clone(faults)))
                .timeout(MODEL_TIMEOUT),
        )
        .drift(drift);
    if let Some(store) = store {
        builder = builder.run_store(store);
    }
    if let Some(meter) = meter {
        builder = builder.meter(meter);
    }
    builder.build()
}

/// The pipeline as served: rooms arrive as [`RoomRequest`] JSON and are
/// checked (sizes, obstacles inside the grid and not repeated) before a run.
pub fn served(pipeline: Pipeline<Layout, Layout>) -> Served<Layout, Layout> {
    Served::from_request(pipeline, |request: RoomRequest| {
        request.into_room().map(Layout::empty)
    })
}

/// The body of `POST /v1/pipelines/ceiling-layout/runs`, in grid cells.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomRequest {
    width: u32,
    length: u32,
    #[serde(default)]
    obstacles: Vec<CellRequest>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CellRequest {
    x: u32,
    y: u32,
}

impl RoomRequest {
    /// The room, or the field that makes it impossible.
    pub fn into_room(self) -> Result<Room, FieldError> {
        let obstacles = self
            .obstacles
            .into_iter()
            .map(|c| Cell::new(c.x, c.y))
            .collect();
        Room::new(self.width, self.length, obstacles)
            .map_err(|e| FieldError::new(e.field(), e.to_string()))
    }
}

/// Parses and checks a room from JSON, naming the offending field on error.
#[cfg(test)]
pub fn parse_room(body: &[u8]) -> Result<Room, pipelens::input::InputError> {
    let request: RoomRequest = input::decode_json(body)?;
    Ok(request.into_room()?)
}

/// Checks a room given as parsed JSON, naming the offending field on error.
pub fn room_from_value(value: serde_json::Value) -> Result<Room, FieldError> {
    let request: RoomRequest = input::from_value(value)?;
    request.into_room()
}

/// The drift features of a run's input: the numeric [`drift_features`]
/// read by [`features`], and the categorical [`ROOM_SHAPE`] read by
/// [`shape`].
pub fn drift_spec() -> DriftSpec<Layout> {
    DriftSpec::new(drift_features(), |layout: &Layout| {
        features(&layout.room).to_vec()
    })
    .categorical(ROOM_SHAPE, |layout: &Layout| shape(&layout.room).to_owned())
}

/// The categorical drift feature: the room's shape.
pub const ROOM_SHAPE: &str = "room_shape";

/// The room's shape from the ratio of its long side to its short side:
/// `square` up to 1.5, `oblong` up to 4, `corridor` beyond.
pub fn shape(room: &Room) -> &'static str {
    let (w, l) = (f64::from(room.width()), f64::from(room.length()));
    let ratio = w.max(l) / w.min(l);
    if ratio <= 1.5 {
        "square"
    } else if ratio <= 4.0 {
        "oblong"
    } else {
        "corridor"
    }
}

/// The numeric features whose drift is tracked, in the order of [`features`].
pub fn drift_features() -> Vec<Feature> {
    let sides = vec![4.0, 8.0, 12.0, 16.0, 24.0, 32.0, 48.0, 64.0, 96.0, 128.0];
    vec![
        Feature {
            name: "room_width",
            edges: sides.clone(),
        },
        Feature {
            name: "room_length",
            edges: sides,
        },
        Feature {
            name: "obstacle_density",
            edges: vec![0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4],
        },
    ]
}

/// The feature values of a room, in the order of [`drift_features`].
pub fn features(room: &Room) -> [f64; 3] {
    let cells = f64::from(room.width()) * f64::from(room.length());
    [
        f64::from(room.width()),
        f64::from(room.length()),
        room.obstacles().len() as f64 / cells,
    ]
}
