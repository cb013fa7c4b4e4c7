//! Smoke-detector placement with NFPA 72-style spacing rules, taking one cell
//! as 1 m.
//!
//! # Rules
//!
//! - Coverage: every free cell within [`REACH`] = 6.4 cells (0.7 × the 9.1 m
//!   listed spacing) of a detector.
//! - Spacing: detectors no farther than [`MAX_SPACING`] = 9.1 cells from their
//!   nearest neighbour.
//! - Walls: no detector on the edge columns when the room is at least 3 cells
//!   wide, nor on the edge rows when it is at least 3 cells long.
//! - Air supply: no detector within 0.9 m (3 ft) of a diffuser, that is at a
//!   Chebyshev distance of at least 2 cells from every diffuser (never in the
//!   8 cells around one).
//! - Never on an obstacle, a light or another fixture.
//!
//! # Placement
//!
//! A centred regular grid at most [`SPACING`] = 9 cells apart, each detector
//! moved to the nearest allowed cell at most 3 cells away per axis when its
//! own cell breaks a rule, then a repair pass adds a detector next to any
//! free cell still out of reach. Existing detectors are replaced; lights and
//! diffusers are kept.
//!
//! # Confidence
//!
//! ```text
//! coverage   = share of free cells within REACH of a detector
//! compliance = mean over detectors of min(1, MAX_SPACING / nearest-neighbour
//!              distance) (1 for a single detector)
//! confidence = coverage × compliance
//! ```
//!
//! The placement rules hold by construction, so compliance measures the
//! spacing rule, which shifting around obstacles and fixtures can break.
//!
//! When the wall and diffuser rules leave no cell at all (small rooms full of
//! lights and diffusers), detectors go on any vacant cell instead — a room
//! without a detector is worse than one with a misplaced detector — and
//! compliance is halved ([`RULE_BREACH_FACTOR`]) so the low confidence shows.

use super::coverage::{lattice, nearest_neighbour_distances, place_covering};
use super::room::{Fixture, Grid, Layout, Occupant};
use pipelens::{Model, ModelError, Prediction};

/// Grid spacing of the initial placement, in cells (the 9.1 m listed spacing
/// rounded down).
const SPACING: usize = 9;

/// Largest allowed distance between neighbouring detectors, in cells.
const MAX_SPACING: f64 = 9.1;

/// How far a detector covers, in cells: 0.7 × the listed spacing.
const REACH: f64 = 6.4;

/// Compliance factor when detectors had to break the wall or diffuser rules.
const RULE_BREACH_FACTOR: f64 = 0.5;

/// How far a grid detector may move, per axis, off a cell that breaks a rule.
const SHIFT: i64 = 3;

/// Places smoke detectors by NFPA 72-style rules: every free cell within 6.4
/// cells of a detector, detectors at most 9.1 cells apart, off the edge
/// rows and columns, at least 2 cells (Chebyshev) from air-supply diffusers,
/// and never on obstacles or other fixtures. Model name `smoke_detector`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SmokeDetectors;

/// Which cells may take a detector.
fn allowed_cells(grid: &Grid) -> Vec<bool> {
    let (width, length) = (grid.width(), grid.length());
    let inner = |v: usize, len: usize| len < 3 || (v >= 1 && v + 2 <= len);
    let mut allowed: Vec<bool> = (0..grid.area())
        .map(|i| {
            let (x, y) = grid.coords(i);
            grid.is_vacant(i) && inner(x as usize, width) && inner(y as usize, length)
        })
        .collect();
    for i in 0..grid.area() {
        if grid.occupant(i) != Occupant::Fixture(Fixture::AirSupply) {
            continue;
        }
        let (x, y) = grid.coords(i);
        for dy in -1..=1 {
            for dx in -1..=1 {
                if let Some(slot) = grid
                    .index_at(x + dx, y + dy)
                    .and_then(|j| allowed.get_mut(j))
                {
                    *slot = false;
                }
            }
        }
    }
    allowed
}

impl Model<Layout, Layout> for SmokeDetectors {
    fn name(&self) -> &str {
        "smoke_detector"
    }

    fn version(&self) -> &str {
        "1.0.0"
    }

    fn run(&self, input: &Layout) -> Result<Prediction<Layout>, ModelError> {
        let grid = Grid::for_placement(input, Fixture::SmokeDetector)?;
        let allowed = allowed_cells(&grid);
        let xs = lattice(grid.width(), SPACING);
        let nominal: Vec<(i64, i64)> = lattice(grid.length(), SPACING)
            .into_iter()
            .flat_map(|y| xs.iter().map(move |&x| (x as i64, y as i64)))
            .collect();
        let mut breach = 1.0;
        let mut attempt = grid.clone();
        let mut covering = place_covering(
            &mut attempt,
            Fixture::SmokeDetector,
            &nominal,
            SHIFT,
            REACH,
            |g, i| g.is_vacant(i) && allowed.get(i).copied().unwrap_or(false),
        );
        if covering.fixtures.is_empty() {
            breach = RULE_BREACH_FACTOR;
            attempt = grid.clone();
            covering = place_covering(
                &mut attempt,
                Fixture::SmokeDetector,
                &nominal,
                SHIFT,
                REACH,
                |g, i| g.is_vacant(i),
            );
        }
        if covering.fixtures.is_empty() {
            return Err(ModelError::Computation(
                "no vacant cell for a smoke detector".to_owned(),
            ));
        }
        let grid = attempt;
        let coverage = covering.map.stats(&grid).share();
        let compliance = if covering.fixtures.len() < 2 {
            1.0
        } else {
            let distances =
                nearest_neighbour_distances(&grid, &covering.fixtures, 2.0 * MAX_SPACING);
            let sum: f64 = distances.iter().map(|&d| (MAX_SPACING / d).min(1.0)).sum();
            sum / distances.len() as f64
        };
        let confidence = (coverage * compliance * breach).clamp(0.0, 1.0);
        let mut layout = input.clone();
        layout.smoke_detectors = covering.fixtures.iter().map(|&i| grid.cell(i)).collect();
        let count = layout.smoke_detectors.len() as u64;
        Ok(Prediction::new(layout, confidence).with_component("smoke_detector", count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::ceiling::lights::tests::{
        assert_occupancy, layout, room_mix, scatter, unreached, Lcg,
    };
    use crate::demo::ceiling::room::{Cell, Room};
    use crate::demo::ceiling::{AirSupply, DenseLights, PerimeterLights, SparseLights};

    fn cells(list: &[(u32, u32)]) -> Vec<Cell> {
        list.iter().map(|&(x, y)| Cell::new(x, y)).collect()
    }

    /// Checks every placement rule and returns the number of free cells out
    /// of reach, by brute force.
    fn check_rules(layout: &Layout) -> usize {
        assert_occupancy(layout);
        let (width, length) = (layout.room.width(), layout.room.length());
        for d in &layout.smoke_detectors {
            if width >= 3 {
                assert!(d.x >= 1 && d.x + 2 <= width, "{d:?} on an edge column");
            }
            if length >= 3 {
                assert!(d.y >= 1 && d.y + 2 <= length, "{d:?} on an edge row");
            }
            for a in &layout.air_supply {
                let chebyshev = d.x.abs_diff(a.x).max(d.y.abs_diff(a.y));
                assert!(chebyshev >= 2, "{d:?} next to diffuser {a:?}");
            }
        }
        unreached(layout, &layout.smoke_detectors, REACH)
    }

    #[test]
    fn name_and_version() {
        assert_eq!(SmokeDetectors.name(), "smoke_detector");
        assert_eq!(SmokeDetectors.version(), "1.0.0");
    }

    #[test]
    fn three_by_three_room_gets_the_centre_or_nothing() {
        let p = SmokeDetectors.run(&layout(3, 3, &[])).expect("smoke");
        assert_eq!(p.output.smoke_detectors, cells(&[(1, 1)]));
        assert_eq!(p.confidence, 1.0);
        assert_eq!(p.components[0].kind, "smoke_detector");
        assert_eq!(p.components[0].count, 1);

        // A diffuser next to the centre rules out the only inner cell: the
        // detector breaks the rule rather than leaving the room unprotected,
        // and says so with half the confidence.
        let mut input = layout(3, 3, &[]);
        input.air_supply = cells(&[(1, 0)]);
        let p = SmokeDetectors.run(&input).expect("relaxed placement");
        assert_eq!(p.output.smoke_detectors.len(), 1);
        assert!(p.confidence <= RULE_BREACH_FACTOR, "{}", p.confidence);

        // A room whose every cell is taken has nowhere for a detector.
        let mut input = layout(1, 2, &[]);
        input.lights = cells(&[(0, 0)]);
        input.air_supply = cells(&[(0, 1)]);
        let err = SmokeDetectors.run(&input).expect_err("no vacant cell");
        assert_eq!(err.error_type(), "computation");
    }

    #[test]
    fn twelve_by_eight_room_needs_two_detectors() {
        let p = SmokeDetectors.run(&layout(12, 8, &[])).expect("smoke");
        assert_eq!(p.output.smoke_detectors, cells(&[(3, 4), (9, 4)]));
        assert_eq!(p.confidence, 1.0);
        assert_eq!(check_rules(&p.output), 0);
    }

    #[test]
    fn stretched_spacing_lowers_compliance_exactly() {
        // 18 × 1: grid x ∈ {4, 13}; with 12 and 13 blocked the second moves
        // to 14, 10 cells from the first. Every free cell is still reached,
        // so confidence = 9.1 / 10.
        let p = SmokeDetectors
            .run(&layout(18, 1, &[(12, 0), (13, 0)]))
            .expect("smoke");
        assert_eq!(p.output.smoke_detectors, cells(&[(4, 0), (14, 0)]));
        assert!((p.confidence - 0.91).abs() < 1e-12, "{}", p.confidence);
    }

    #[test]
    fn detectors_keep_clear_of_diffusers_and_walls() {
        // 12 × 8 with a diffuser on the first grid cell: that detector moves
        // to the nearest cell 2 away from it.
        let mut input = layout(12, 8, &[]);
        input.air_supply = cells(&[(3, 4)]);
        let p = SmokeDetectors.run(&input).expect("smoke");
        assert_eq!(check_rules(&p.output), 0);
        assert!(!p.output.smoke_detectors.contains(&Cell::new(3, 4)));
        assert_eq!(p.output.air_supply, input.air_supply);
    }

    #[test]
    fn narrow_rooms_may_use_edge_cells() {
        let p = SmokeDetectors.run(&layout(2, 30, &[])).expect("smoke");
        assert_eq!(check_rules(&p.output), 0);
        assert!(p.output.smoke_detectors.iter().all(|d| d.x <= 1));
        let p = SmokeDetectors.run(&layout(1, 1, &[])).expect("smoke");
        assert_eq!(p.output.smoke_detectors, cells(&[(0, 0)]));
    }

    #[test]
    fn spacing_rules_hold_after_the_full_pipeline() {
        let lights: [&dyn Model<Layout, Layout>; 3] =
            [&DenseLights, &SparseLights, &PerimeterLights];
        for (n, (_, room)) in room_mix(60).into_iter().enumerate() {
            let lit = lights[n % 3]
                .run(&Layout::empty(room))
                .expect("lights")
                .output;
            let aired = AirSupply.run(&lit).expect("air").output;
            let p = SmokeDetectors.run(&aired).expect("smoke");
            assert!((0.0..=1.0).contains(&p.confidence));
            let missed = check_rules(&p.output);
            let free = p.output.room.free_cells();
            assert!(p.confidence <= 1.0 - missed as f64 / free as f64 + 1e-12);
            assert_eq!(p.output.lights, aired.lights);
            assert_eq!(p.output.air_supply, aired.air_supply);
        }
    }

    #[test]
    fn runs_are_deterministic_and_confidence_in_range() {
        let mut rng = Lcg(5);
        for _ in 0..30 {
            let (w, l) = (rng.range(1, 24), rng.range(1, 24));
            let obstacles = scatter(&mut rng, w, l, (w * l / 3) as usize);
            let input = Layout::empty(Room::new(w, l, obstacles).expect("valid"));
            if let Ok(a) = SmokeDetectors.run(&input) {
                assert!((0.0..=1.0).contains(&a.confidence));
                assert_eq!(SmokeDetectors.run(&input).expect("again"), a);
                check_rules(&a.output);
            }
        }
    }

    #[test]
    fn large_cluttered_room_completes() {
        let mut rng = Lcg(13);
        let obstacles = scatter(&mut rng, 256, 256, 4096);
        let room = Room::new(256, 256, obstacles).expect("valid");
        let lit = SparseLights
            .run(&Layout::empty(room))
            .expect("lights")
            .output;
        let aired = AirSupply.run(&lit).expect("air").output;
        let p = SmokeDetectors.run(&aired).expect("smoke");
        assert_eq!(check_rules(&p.output), 0);
    }
}
