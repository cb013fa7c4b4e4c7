//! Light placement: three competing strategies for the planner's parallel
//! stage, scored by the same light-quality formula so the best one for the
//! room wins.
//!
//! # Confidence
//!
//! Each light lights the cells within its radius (Euclidean, in cells; nothing
//! blocks light). With `n(c)` the number of lights reaching free cell `c`:
//!
//! ```text
//! coverage   = |{free c : n(c) >= 1}| / |free cells|
//! light_use  = Σ_free min(n(c), 2) / Σ_lights (emitted + FIXTURE_OVERHEAD)
//! confidence = coverage × light_use
//! ```
//!
//! `light_use` is the share of the light budget that lands usefully. A cell lit
//! by one or two lights uses them (an overlap band between neighbours is
//! expected); a third light on a cell is over-lighting and wasted, and so is
//! light falling on obstacles or, for ceiling fixtures, beyond the walls.
//! `emitted` is the whole disk for ceiling fixtures (dense and sparse grids)
//! and only the part inside the room for the wall-mounted perimeter lights,
//! which face into the room. [`FIXTURE_OVERHEAD`] charges every fixture a
//! fixed cost of 4 cells of light, so fewer larger fixtures pay off in large
//! rooms. Both factors are in `[0, 1]`, and so is their product.
//!
//! Across rooms the winner changes: the dense grid suits small and mid-size
//! rooms, the sparse grid large open halls, and the perimeter ring corridors
//! and other narrow rooms.

use super::coverage::{lattice, nearest, CoverageMap, Disk};
use super::room::{Fixture, Grid, Layout};
use pipelens::{Model, ModelError, Prediction};

/// Fixed cost of one fixture, in cells of light (see the module docs).
const FIXTURE_OVERHEAD: f64 = 4.0;

/// Lights per cell beyond which extra light counts as over-lighting.
const USEFUL_OVERLAP: u16 = 2;

/// Where a strategy puts its lights before obstacles are taken into account.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// A centred regular grid of ceiling fixtures.
    Grid,
    /// Wall-mounted fixtures along the walls, facing into the room.
    WallRing,
}

/// A light-placement strategy.
#[derive(Debug, Clone, Copy)]
struct Strategy {
    shape: Shape,
    /// Illumination radius of one light, in cells.
    radius: f64,
    /// Target distance between neighbouring lights, in cells.
    spacing: usize,
    /// How far (per axis) a light may move off its nominal cell when that
    /// cell is not vacant; lights with no vacant cell that close are skipped.
    shift: i64,
}

/// Dense grid: small fixtures (radius 2) every 3 cells.
const DENSE: Strategy = Strategy {
    shape: Shape::Grid,
    radius: 2.0,
    spacing: 3,
    shift: 1,
};

/// Sparse grid: large fixtures (radius 4.3) every 6 cells, the widest spacing
/// that still covers every cell between four of them.
const SPARSE: Strategy = Strategy {
    shape: Shape::Grid,
    radius: 4.3,
    spacing: 6,
    shift: 2,
};

/// Perimeter ring: wall-mounted fixtures (radius 2) every 4 cells along the
/// walls, corners included.
const PERIMETER: Strategy = Strategy {
    shape: Shape::WallRing,
    radius: 2.0,
    spacing: 4,
    shift: 1,
};

/// A light placement and its score.
#[derive(Debug, Clone)]
struct Placement {
    layout: Layout,
    coverage: f64,
    light_use: f64,
}

impl Placement {
    fn confidence(&self) -> f64 {
        (self.coverage * self.light_use).clamp(0.0, 1.0)
    }
}

impl Strategy {
    /// Nominal light cells for a `width × length` room, in a fixed order.
    fn nominal(&self, width: usize, length: usize) -> Vec<(i64, i64)> {
        match self.shape {
            Shape::Grid => {
                let xs = lattice(width, self.spacing);
                lattice(length, self.spacing)
                    .into_iter()
                    .flat_map(|y| xs.iter().map(move |&x| (x as i64, y as i64)))
                    .collect()
            }
            Shape::WallRing => wall_ring(width, length, self.spacing),
        }
    }

    /// Replaces the lights of `input` by this strategy's and scores them.
    fn place(&self, input: &Layout) -> Result<Placement, ModelError> {
        let mut grid = Grid::for_placement(input, Fixture::Light)?;
        let disk = Disk::new(self.radius);
        let mut map = CoverageMap::new(&grid);
        let mut lights = Vec::new();
        let mut emitted = 0usize;
        let max_d2 = 2 * self.shift * self.shift;
        for target in self.nominal(grid.width(), grid.length()) {
            let Some(i) = nearest(&grid, target, self.shift, max_d2, |i| grid.is_vacant(i)) else {
                continue;
            };
            if !grid.place(i, Fixture::Light) {
                continue;
            }
            let in_room = map.stamp(&grid, i, &disk);
            emitted += match self.shape {
                Shape::Grid => disk.area(),
                Shape::WallRing => in_room,
            };
            lights.push(grid.cell(i));
        }
        if lights.is_empty() {
            return Err(ModelError::Computation(
                "no vacant cell near any light position".to_owned(),
            ));
        }
        let stats = map.stats(&grid);
        let useful: u64 = (0..grid.area())
            .filter(|&i| grid.is_free(i))
            .map(|i| u64::from(map.count(i).min(USEFUL_OVERLAP)))
            .sum();
        let budget = emitted as f64 + lights.len() as f64 * FIXTURE_OVERHEAD;
        let mut layout = input.clone();
        layout.lights = lights;
        Ok(Placement {
            layout,
            coverage: stats.share(),
            light_use: useful as f64 / budget,
        })
    }

    fn run(&self, input: &Layout) -> Result<Prediction<Layout>, ModelError> {
        let placement = self.place(input)?;
        let confidence = placement.confidence();
        let count = placement.layout.lights.len() as u64;
        Ok(Prediction::new(placement.layout, confidence).with_component("light", count))
    }
}

/// Cells along the walls of a `width × length` room, about `spacing` apart:
/// every corner, then evenly spaced cells along each wall. A room at most 2
/// cells across gets a single line along one wall instead of two.
fn wall_ring(width: usize, length: usize, spacing: usize) -> Vec<(i64, i64)> {
    let far = |len: usize| if len <= 2 { 0 } else { len - 1 };
    let (x1, y1) = (far(width), far(length));
    match (x1, y1) {
        (0, 0) => vec![(0, 0)],
        (0, _) => lattice(length, spacing)
            .into_iter()
            .map(|y| (0, y as i64))
            .collect(),
        (_, 0) => lattice(width, spacing)
            .into_iter()
            .map(|x| (x as i64, 0))
            .collect(),
        _ => {
            let corners = [(0, 0), (x1, 0), (x1, y1), (0, y1)];
            let mut cells = Vec::new();
            for (k, &(ax, ay)) in corners.iter().enumerate() {
                let (bx, by) = corners[(k + 1) % 4];
                let len = ax.abs_diff(bx) + ay.abs_diff(by);
                let steps = len.div_ceil(spacing.max(1)).max(1);
                let along = |a: usize, b: usize, j: usize| {
                    let (a, b) = (a as i64, b as i64);
                    a + (b - a) * j as i64 / steps as i64
                };
                for j in 0..steps {
                    cells.push((along(ax, bx, j), along(ay, by, j)));
                }
            }
            cells
        }
    }
}

/// Lights on a dense regular grid: small fixtures (radius 2 cells) every 3
/// cells. Usually best in small and mid-size rooms. Model name `light_dense`.
#[derive(Debug, Clone, Copy, Default)]
pub struct DenseLights;

/// Lights on a sparse regular grid: large fixtures (radius 4.3 cells) every 6
/// cells. Usually best in large open halls. Model name `light_sparse`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SparseLights;

/// Wall-mounted lights along the walls (radius 2 cells, every 4 cells).
/// Usually best in corridors and other narrow rooms. Model name
/// `light_perimeter`.
#[derive(Debug, Clone, Copy, Default)]
pub struct PerimeterLights;

impl Model<Layout, Layout> for DenseLights {
    fn name(&self) -> &str {
        "light_dense"
    }

    fn version(&self) -> &str {
        "1.0.0"
    }

    fn run(&self, input: &Layout) -> Result<Prediction<Layout>, ModelError> {
        DENSE.run(input)
    }
}

impl Model<Layout, Layout> for SparseLights {
    fn name(&self) -> &str {
        "light_sparse"
    }

    fn version(&self) -> &str {
        "1.0.0"
    }

    fn run(&self, input: &Layout) -> Result<Prediction<Layout>, ModelError> {
        SPARSE.run(input)
    }
}

impl Model<Layout, Layout> for PerimeterLights {
    fn name(&self) -> &str {
        "light_perimeter"
    }

    fn version(&self) -> &str {
        "1.0.0"
    }

    fn run(&self, input: &Layout) -> Result<Prediction<Layout>, ModelError> {
        PERIMETER.run(input)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::demo::ceiling::room::{Cell, Room, MAX_OBSTACLES};
    use std::collections::HashSet;

    /// A deterministic 64-bit LCG (Knuth's MMIX constants).
    pub(crate) struct Lcg(pub(crate) u64);

    impl Lcg {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            self.0 >> 33
        }

        /// Uniform-ish in `lo..=hi`.
        pub(crate) fn range(&mut self, lo: u32, hi: u32) -> u32 {
            lo + (self.next() % u64::from(hi - lo + 1)) as u32
        }
    }

    /// `count` distinct random obstacle cells in a `width × length` room.
    pub(crate) fn scatter(rng: &mut Lcg, width: u32, length: u32, count: usize) -> Vec<Cell> {
        let count = count.min(MAX_OBSTACLES).min((width * length) as usize);
        let mut seen = HashSet::new();
        let mut cells = Vec::with_capacity(count);
        while cells.len() < count {
            let cell = Cell::new(rng.range(0, width - 1), rng.range(0, length - 1));
            if seen.insert(cell) {
                cells.push(cell);
            }
        }
        cells
    }

    /// A realistic mix of rooms: small offices, large halls, corridors (both
    /// orientations) and cluttered rooms (10–35 % obstacles), in equal parts.
    pub(crate) fn room_mix(count: usize) -> Vec<(&'static str, Room)> {
        let mut rng = Lcg(42);
        (0..count)
            .map(|n| {
                let (kind, width, length, clutter) = match n % 4 {
                    0 => ("office", rng.range(4, 10), rng.range(4, 10), 0),
                    1 => ("hall", rng.range(30, 120), rng.range(30, 120), 0),
                    2 => {
                        let (narrow, long) = (rng.range(2, 4), rng.range(20, 80));
                        if rng.next() % 2 == 0 {
                            ("corridor", narrow, long, 0)
                        } else {
                            ("corridor", long, narrow, 0)
                        }
                    }
                    _ => (
                        "cluttered",
                        rng.range(6, 40),
                        rng.range(6, 40),
                        rng.range(10, 35),
                    ),
                };
                let obstacles = scatter(
                    &mut rng,
                    width,
                    length,
                    (width * length * clutter / 100) as usize,
                );
                let room = Room::new(width, length, obstacles).expect("generated rooms are valid");
                (kind, room)
            })
            .collect()
    }

    /// An empty layout of a `width × length` room with these obstacles.
    pub(crate) fn layout(width: u32, length: u32, obstacles: &[(u32, u32)]) -> Layout {
        let obstacles = obstacles.iter().map(|&(x, y)| Cell::new(x, y)).collect();
        Layout::empty(Room::new(width, length, obstacles).expect("valid room"))
    }

    fn models() -> [Box<dyn Model<Layout, Layout>>; 3] {
        [
            Box::new(DenseLights),
            Box::new(SparseLights),
            Box::new(PerimeterLights),
        ]
    }

    fn assert_close(actual: f64, expected: f64) {
        assert!(
            (actual - expected).abs() < 1e-12,
            "expected {expected}, got {actual}"
        );
    }

    /// Asserts that no light is on an obstacle, outside the room, on another
    /// light or on another fixture.
    /// Free cells of `layout` farther than `reach` from every one of
    /// `fixtures`, by brute force (the reference for the stamped coverage).
    pub(crate) fn unreached(layout: &Layout, fixtures: &[Cell], reach: f64) -> usize {
        let obstacles = layout.room.obstacles();
        let mut missed = 0;
        for y in 0..layout.room.length() {
            for x in 0..layout.room.width() {
                if obstacles.contains(&Cell::new(x, y)) {
                    continue;
                }
                let reached = fixtures.iter().any(|d| {
                    let (dx, dy) = (f64::from(d.x) - f64::from(x), f64::from(d.y) - f64::from(y));
                    dx * dx + dy * dy <= reach * reach
                });
                missed += usize::from(!reached);
            }
        }
        missed
    }

    pub(crate) fn assert_occupancy(layout: &Layout) {
        let obstacles: HashSet<Cell> = layout.room.obstacles().iter().copied().collect();
        let mut taken = HashSet::new();
        for cell in layout
            .lights
            .iter()
            .chain(&layout.air_supply)
            .chain(&layout.smoke_detectors)
        {
            assert!(cell.x < layout.room.width() && cell.y < layout.room.length());
            assert!(!obstacles.contains(cell), "fixture on obstacle {cell:?}");
            assert!(taken.insert(*cell), "two fixtures on {cell:?}");
        }
    }

    #[test]
    fn names_and_versions() {
        let names: Vec<_> = models().iter().map(|m| m.name().to_owned()).collect();
        assert_eq!(names, ["light_dense", "light_sparse", "light_perimeter"]);
        assert!(models().iter().all(|m| m.version() == "1.0.0"));
    }

    #[test]
    fn three_by_three_room_scores_match_hand_computation() {
        let layout = layout(3, 3, &[]);
        // Dense: one light at the centre lights all 9 cells once; its disk
        // has 13 cells: 9 / (13 + 4).
        let dense = DenseLights.run(&layout).expect("dense");
        assert_eq!(dense.output.lights, vec![Cell::new(1, 1)]);
        assert_close(dense.confidence, 9.0 / 17.0);
        assert_eq!(dense.components[0].kind, "light");
        assert_eq!(dense.components[0].count, 1);
        // Sparse: the same single light with a 61-cell disk: 9 / (61 + 4).
        let sparse = SparseLights.run(&layout).expect("sparse");
        assert_eq!(sparse.output.lights, vec![Cell::new(1, 1)]);
        assert_close(sparse.confidence, 9.0 / 65.0);
        // Perimeter: four corner lights, each emitting into 6 room cells;
        // every cell is lit at least twice: 9 × 2 / (4 × (6 + 4)).
        let perimeter = PerimeterLights.run(&layout).expect("perimeter");
        let corners = [(0, 0), (2, 0), (2, 2), (0, 2)].map(|(x, y)| Cell::new(x, y));
        assert_eq!(perimeter.output.lights, corners);
        assert_close(perimeter.confidence, 18.0 / 40.0);
    }

    #[test]
    fn obstacles_shift_lights_and_lower_coverage() {
        // The centre is blocked: the dense light moves to (1, 0), the first
        // of its four nearest vacant cells, and reaches every free cell but
        // (0, 2) and (2, 2).
        let layout = layout(3, 3, &[(1, 1)]);
        let p = DENSE.place(&layout).expect("dense");
        assert_eq!(p.layout.lights, vec![Cell::new(1, 0)]);
        assert_close(p.coverage, 6.0 / 8.0);
        assert_close(p.light_use, 6.0 / 17.0);
    }

    #[test]
    fn lights_replace_lights_and_avoid_other_fixtures() {
        let mut layout = layout(6, 6, &[(0, 0)]);
        layout.lights = vec![Cell::new(5, 5)];
        layout.air_supply = vec![Cell::new(1, 1)];
        let out = DenseLights.run(&layout).expect("dense").output;
        assert!(!out.lights.contains(&Cell::new(5, 5)));
        assert!(!out.lights.contains(&Cell::new(1, 1)));
        assert_eq!(out.air_supply, layout.air_supply);
        assert_occupancy(&out);
    }

    #[test]
    fn no_light_on_obstacle_or_other_fixture_across_the_mix() {
        for (_, r) in room_mix(80) {
            let layout = Layout::empty(r);
            for model in models() {
                let p = model.run(&layout).expect("placement");
                assert!(!p.output.lights.is_empty());
                assert_occupancy(&p.output);
                assert!((0.0..=1.0).contains(&p.confidence), "{}", p.confidence);
            }
        }
    }

    #[test]
    fn confidence_is_in_unit_range_for_odd_rooms() {
        let mut rng = Lcg(7);
        let mut rooms = vec![layout(1, 1, &[]), layout(1, 256, &[]), layout(256, 2, &[])];
        for _ in 0..40 {
            let (w, l) = (rng.range(1, 12), rng.range(1, 12));
            let obstacles = scatter(&mut rng, w, l, (w * l / 2) as usize);
            if obstacles.len() < (w * l) as usize {
                rooms.push(Layout::empty(Room::new(w, l, obstacles).expect("valid")));
            }
        }
        for layout in rooms {
            for model in models() {
                if let Ok(p) = model.run(&layout) {
                    assert!((0.0..=1.0).contains(&p.confidence), "{}", p.confidence);
                    assert_occupancy(&p.output);
                }
            }
        }
    }

    #[test]
    fn blocked_rooms_fail_with_typed_errors() {
        let full = layout(2, 1, &[(0, 0), (1, 0)]);
        for model in models() {
            let err = model.run(&full).expect_err("no free cell");
            assert_eq!(err.error_type(), "invalid_input");
        }
        // The only free cell holds an air diffuser: nowhere to put a light.
        let mut taken = layout(2, 1, &[(0, 0)]);
        taken.air_supply = vec![Cell::new(1, 0)];
        for model in models() {
            let err = model.run(&taken).expect_err("no vacant cell");
            assert_eq!(err.error_type(), "computation");
        }
    }

    #[test]
    fn runs_are_deterministic() {
        for (_, r) in room_mix(12) {
            let layout = Layout::empty(r);
            for model in models() {
                let a = model.run(&layout).expect("first");
                let b = model.run(&layout).expect("second");
                assert_eq!(a, b);
            }
        }
    }

    #[test]
    fn each_strategy_wins_a_fair_share_of_a_realistic_room_mix() {
        let rooms = room_mix(400);
        let mut wins = [0usize; 3];
        let mut by_kind: Vec<(&str, [usize; 3])> = Vec::new();
        for (kind, r) in &rooms {
            let layout = Layout::empty(r.clone());
            let scores: Vec<f64> = models()
                .iter()
                .map(|m| m.run(&layout).map_or(-1.0, |p| p.confidence))
                .collect();
            let best = (0..3).fold(0, |b, i| if scores[i] > scores[b] { i } else { b });
            wins[best] += 1;
            match by_kind.iter_mut().find(|(k, _)| k == kind) {
                Some((_, counts)) => counts[best] += 1,
                None => {
                    let mut counts = [0; 3];
                    counts[best] = 1;
                    by_kind.push((kind, counts));
                }
            }
        }
        let shares = wins.map(|w| w as f64 / rooms.len() as f64);
        println!("light winner shares (dense, sparse, perimeter): {shares:?}");
        println!("wins by room kind (dense, sparse, perimeter): {by_kind:?}");
        assert!(shares.iter().all(|&s| s >= 0.10), "{shares:?}");
    }

    #[test]
    fn winners_follow_room_shape() {
        let winner = |layout: &Layout| {
            models()
                .iter()
                .map(|m| (m.name().to_owned(), m.run(layout).expect("run").confidence))
                .fold(
                    (String::new(), -1.0),
                    |best, x| if x.1 > best.1 { x } else { best },
                )
                .0
        };
        assert_eq!(winner(&layout(9, 9, &[])), "light_dense");
        assert_eq!(winner(&layout(120, 90, &[])), "light_sparse");
        assert_eq!(winner(&layout(3, 60, &[])), "light_perimeter");
    }

    #[test]
    fn large_cluttered_room_completes() {
        let mut rng = Lcg(99);
        let obstacles = scatter(&mut rng, 256, 256, 4096);
        let layout = Layout::empty(Room::new(256, 256, obstacles).expect("valid"));
        for model in models() {
            let p = model.run(&layout).expect("placement");
            assert!(p.confidence > 0.0);
            assert_occupancy(&p.output);
        }
    }
}
