//! Air-supply placement: ceiling diffusers so every free cell gets air.
//!
//! # Placement
//!
//! Diffusers start on a centred regular grid at most [`SPACING`] cells apart
//! (about one per 36 cells of floor), each moved to the nearest vacant cell at
//! most 2 cells away along each axis when its own cell holds an obstacle or a
//! fixture (lights included). A repair pass then adds a diffuser next to any
//! free cell still farther than [`REACH`] from every diffuser. Existing
//! diffusers are replaced; lights and smoke detectors are kept and avoided.
//!
//! # Confidence
//!
//! ```text
//! coverage   = share of free cells within REACH of a diffuser
//! regularity = max(0, 1 − σ/μ) of each diffuser's distance to its nearest
//!              neighbour (capped at 2 × SPACING; 1 for a single diffuser)
//! confidence = coverage × regularity
//! ```
//!
//! An even grid scores a regularity of 1; diffusers shifted around obstacles
//! or bunched by the repair pass lower it.

use super::coverage::{lattice, mean_and_deviation, nearest_neighbour_distances, place_covering};
use super::room::{Fixture, Grid, Layout};
use pipelens::{Model, ModelError, Prediction};

/// Largest distance between neighbouring diffusers on the initial grid, in
/// cells: one diffuser per `SPACING²` = 36 cells.
const SPACING: usize = 6;

/// How far a diffuser's air reaches, in cells (Euclidean). Covers every cell
/// of a grid `SPACING` apart: `(3, 3)` is 4.24 cells from the nearest one.
const REACH: f64 = 4.5;

/// How far a grid diffuser may move, per axis, off a cell that is not vacant.
const SHIFT: i64 = 2;

/// Places air-supply diffusers on free cells without a light or another
/// fixture, so every free cell is within 4.5 cells of a diffuser, about one
/// diffuser per 36 cells. Model name `air_supply`.
#[derive(Debug, Clone, Copy, Default)]
pub struct AirSupply;

impl Model<Layout, Layout> for AirSupply {
    fn name(&self) -> &str {
        "air_supply"
    }

    fn version(&self) -> &str {
        "1.0.0"
    }

    fn run(&self, input: &Layout) -> Result<Prediction<Layout>, ModelError> {
        let mut grid = Grid::for_placement(input, Fixture::AirSupply)?;
        let xs = lattice(grid.width(), SPACING);
        let nominal: Vec<(i64, i64)> = lattice(grid.length(), SPACING)
            .into_iter()
            .flat_map(|y| xs.iter().map(move |&x| (x as i64, y as i64)))
            .collect();
        let covering = place_covering(
            &mut grid,
            Fixture::AirSupply,
            &nominal,
            SHIFT,
            REACH,
            Grid::is_vacant,
        );
        if covering.fixtures.is_empty() {
            return Err(ModelError::Computation(
                "no vacant cell for an air-supply diffuser".to_owned(),
            ));
        }
        let coverage = covering.map.stats(&grid).share();
        let regularity = if covering.fixtures.len() < 2 {
            1.0
        } else {
            let cap = 2.0 * SPACING as f64;
            let distances = nearest_neighbour_distances(&grid, &covering.fixtures, cap);
            let (mean, deviation) = mean_and_deviation(&distances);
            if mean > 0.0 {
                (1.0 - deviation / mean).max(0.0)
            } else {
                0.0
            }
        };
        let confidence = (coverage * regularity).clamp(0.0, 1.0);
        let mut layout = input.clone();
        layout.air_supply = covering.fixtures.iter().map(|&i| grid.cell(i)).collect();
        let count = layout.air_supply.len() as u64;
        Ok(Prediction::new(layout, confidence).with_component("air_supply", count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::ceiling::lights::tests::{assert_occupancy, layout, room_mix, scatter, Lcg};
    use crate::demo::ceiling::room::{Cell, Room};
    use crate::demo::ceiling::DenseLights;

    /// Free cells farther than `REACH` from every diffuser, by brute force.
    fn unreached(layout: &Layout) -> usize {
        crate::demo::ceiling::lights::tests::unreached(layout, &layout.air_supply, REACH)
    }

    #[test]
    fn name_and_version() {
        assert_eq!(AirSupply.name(), "air_supply");
        assert_eq!(AirSupply.version(), "1.0.0");
    }

    #[test]
    fn three_by_three_room_gets_one_central_diffuser() {
        let p = AirSupply.run(&layout(3, 3, &[])).expect("air");
        assert_eq!(p.output.air_supply, vec![Cell::new(1, 1)]);
        assert_eq!(p.confidence, 1.0);
        assert_eq!(p.components[0].kind, "air_supply");
        assert_eq!(p.components[0].count, 1);
    }

    #[test]
    fn diffuser_moves_off_a_light() {
        let mut input = layout(3, 3, &[]);
        input.lights = vec![Cell::new(1, 1)];
        let p = AirSupply.run(&input).expect("air");
        assert_eq!(p.output.air_supply, vec![Cell::new(1, 0)]);
        assert_eq!(p.output.lights, input.lights);
        assert_eq!(p.confidence, 1.0);
    }

    #[test]
    fn even_grid_in_an_open_room_scores_one() {
        // 12 × 12: diffusers at x, y ∈ {3, 9}, all 6 apart.
        let p = AirSupply.run(&layout(12, 12, &[])).expect("air");
        let expected: Vec<Cell> = [(3, 3), (9, 3), (3, 9), (9, 9)]
            .iter()
            .map(|&(x, y)| Cell::new(x, y))
            .collect();
        assert_eq!(p.output.air_supply, expected);
        assert_eq!(p.confidence, 1.0);
    }

    #[test]
    fn shifted_diffusers_lower_regularity_exactly() {
        // 12 × 1 with grid cell x = 9 blocked: that diffuser moves to x = 8
        // (nearest vacant, lower index first). Both nearest-neighbour
        // distances are 5: still regular.
        let p = AirSupply.run(&layout(12, 1, &[(9, 0)])).expect("air");
        assert_eq!(p.output.air_supply, vec![Cell::new(3, 0), Cell::new(8, 0)]);
        assert_eq!(p.confidence, 1.0);
        // 13 × 1: grid x ∈ {2, 6, 10}; with 8..=10 blocked the last moves to
        // 11. Distances 4, 4, 5: mean 13/3, σ = √(2/9); every free cell is
        // reached, so confidence = 1 − σ / mean.
        let p = AirSupply
            .run(&layout(13, 1, &[(8, 0), (9, 0), (10, 0)]))
            .expect("air");
        let expected: Vec<Cell> = [2, 6, 11].iter().map(|&x| Cell::new(x, 0)).collect();
        assert_eq!(p.output.air_supply, expected);
        let regularity = 1.0 - (2.0f64 / 9.0).sqrt() / (13.0 / 3.0);
        assert!(
            (p.confidence - regularity).abs() < 1e-12,
            "{}",
            p.confidence
        );
    }

    #[test]
    fn every_free_cell_is_reached_in_open_and_cluttered_rooms() {
        for (_, room) in room_mix(60) {
            let lit = DenseLights
                .run(&Layout::empty(room))
                .expect("lights")
                .output;
            let p = AirSupply.run(&lit).expect("air");
            assert_occupancy(&p.output);
            assert!((0.0..=1.0).contains(&p.confidence));
            let missed = unreached(&p.output);
            let free = p.output.room.free_cells();
            assert!(missed * 100 <= free, "{missed} of {free} missed");
            let coverage = 1.0 - missed as f64 / free as f64;
            assert!(p.confidence <= coverage + 1e-12);
            assert_eq!(p.output.lights, lit.lights);
        }
    }

    #[test]
    fn about_one_diffuser_per_36_cells_in_a_hall() {
        let p = AirSupply.run(&layout(60, 60, &[])).expect("air");
        assert_eq!(p.output.air_supply.len(), 100);
        assert_eq!(p.confidence, 1.0);
    }

    #[test]
    fn no_room_for_a_diffuser_is_a_computation_error() {
        let mut input = layout(1, 1, &[]);
        input.lights = vec![Cell::new(0, 0)];
        let err = AirSupply.run(&input).expect_err("full");
        assert_eq!(err.error_type(), "computation");
        let err = AirSupply
            .run(&layout(1, 1, &[(0, 0)]))
            .expect_err("no free cell");
        assert_eq!(err.error_type(), "invalid_input");
    }

    #[test]
    fn runs_are_deterministic_and_confidence_in_range() {
        let mut rng = Lcg(3);
        for _ in 0..30 {
            let (w, l) = (rng.range(1, 20), rng.range(1, 20));
            let obstacles = scatter(&mut rng, w, l, (w * l / 3) as usize);
            let input = Layout::empty(Room::new(w, l, obstacles).expect("valid"));
            if let Ok(a) = AirSupply.run(&input) {
                assert!((0.0..=1.0).contains(&a.confidence));
                assert_eq!(AirSupply.run(&input).expect("again"), a);
            }
        }
    }

    #[test]
    fn large_cluttered_room_completes() {
        let mut rng = Lcg(11);
        let obstacles = scatter(&mut rng, 256, 256, 4096);
        let room = Room::new(256, 256, obstacles).expect("valid");
        let lit = DenseLights
            .run(&Layout::empty(room))
            .expect("lights")
            .output;
        let p = AirSupply.run(&lit).expect("air");
        assert_occupancy(&p.output);
        assert_eq!(unreached(&p.output), 0);
    }
}
