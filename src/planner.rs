//! The demo pipeline: the ceiling layout planner. Three light-placement
//! candidates compete in a parallel `lighting` stage (best confidence wins),
//! then the sequential `fixtures` stage places air-supply diffusers and smoke
//! detectors on what is left.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::metrics::Meter;

use crate::ceiling::{
    AirSupply, DenseLights, Layout, PerimeterLights, Room, SmokeDetectors, SparseLights,
};
use crate::drift::{DriftMonitor, Feature};
use crate::faults::{Faults, Faulty};
use crate::pipeline::{BuildError, Pipeline, Stage};

/// The pipeline's name: the `pipeline` label and the URL segment.
pub const PIPELINE_NAME: &str = "ceiling-layout";
/// The parallel light-placement stage.
pub const STAGE_LIGHTING: &str = "lighting";
/// The sequential air-supply then smoke-detector stage.
pub const STAGE_FIXTURES: &str = "fixtures";
/// How long one model may take before its execution counts as a timeout.
pub const MODEL_TIMEOUT: Duration = Duration::from_secs(2);

/// Builds the ceiling layout pipeline, recording into `meter` (or the global
/// meter when `None`), with every model wrapped in the fault knobs.
pub fn pipeline(
    meter: Option<Meter>,
    faults: &Arc<Faults>,
) -> Result<Pipeline<Layout>, BuildError> {
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
        );
    if let Some(meter) = meter {
        builder = builder.meter(meter);
    }
    builder.build()
}

/// The features whose drift is tracked, in the order of [`features`].
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

/// A drift monitor over [`drift_features`]: the first 200 rooms are the
/// reference, the last 200 the live window.
pub fn drift_monitor(meter: &Meter) -> DriftMonitor {
    DriftMonitor::new(meter, drift_features(), 200, 200)
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
