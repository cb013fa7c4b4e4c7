//! The ceiling layout planner: the demo models of pipelens.
//!
//! A [`Room`] is a grid of 1 m cells, some of them obstacles. A [`Layout`]
//! (the room plus the fixtures placed so far) flows through three stages:
//!
//! 1. lights, in parallel: [`DenseLights`], [`SparseLights`] and
//!    [`PerimeterLights`] each propose a placement scored by the same light
//!    quality formula, and the best one for the room wins;
//! 2. [`AirSupply`]: diffusers so every free cell gets air;
//! 3. [`SmokeDetectors`]: detectors by NFPA 72-style spacing rules.
//!
//! Every model implements [`Model<Layout, Layout>`](pipelens::Model), is pure
//! and deterministic computation, and reports a confidence in `[0, 1]` computed
//! from its placement (each module documents its formula) and the number of
//! fixtures it placed. A cell holds at most one fixture and never an obstacle.
//! Placement stamps a coverage disk per fixture, so a model costs
//! `O(cells + fixtures × radius²)`.

mod air_supply;
mod coverage;
mod lights;
mod room;
mod smoke;

pub use air_supply::AirSupply;
pub use lights::{DenseLights, PerimeterLights, SparseLights};
pub use room::{Cell, Layout, Room};
pub use smoke::SmokeDetectors;
