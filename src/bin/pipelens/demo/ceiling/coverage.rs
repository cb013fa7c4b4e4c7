//! Geometry shared by the placement models: coverage disks stamped per
//! fixture, centred lattices, the search for a nearby vacant cell, and
//! nearest-neighbour spacing.
//!
//! Everything here costs `O(fixtures × r²)` or `O(cells)`, never
//! `O(cells × fixtures)`.

use super::room::{Fixture, Grid};

/// The cell offsets within a Euclidean radius of a fixture (in cells), centre
/// included.
#[derive(Debug, Clone)]
pub(crate) struct Disk {
    offsets: Vec<(i64, i64)>,
}

impl Disk {
    /// All offsets `(dx, dy)` with `dx² + dy² <= radius²`.
    pub(crate) fn new(radius: f64) -> Self {
        let reach = radius.max(0.0).floor() as i64;
        let limit = radius * radius + 1e-9;
        let mut offsets = Vec::new();
        for dy in -reach..=reach {
            for dx in -reach..=reach {
                if ((dx * dx + dy * dy) as f64) <= limit {
                    offsets.push((dx, dy));
                }
            }
        }
        Self { offsets }
    }

    /// Number of cells in the whole disk, including any part beyond the walls.
    pub(crate) fn area(&self) -> usize {
        self.offsets.len()
    }
}

/// How many fixtures reach each cell of a grid.
#[derive(Debug, Clone)]
pub(crate) struct CoverageMap {
    counts: Vec<u16>,
}

/// Coverage totals over the free cells of a grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CoverageStats {
    /// Free cells in the grid.
    pub(crate) free: usize,
    /// Free cells reached by at least one fixture.
    pub(crate) covered: usize,
}

impl CoverageStats {
    /// Share of free cells reached, in `[0, 1]`.
    pub(crate) fn share(&self) -> f64 {
        if self.free == 0 {
            0.0
        } else {
            self.covered as f64 / self.free as f64
        }
    }
}

impl CoverageMap {
    /// A map of `grid` with nothing covered.
    pub(crate) fn new(grid: &Grid) -> Self {
        Self {
            counts: vec![0; grid.area()],
        }
    }

    /// Adds the disk around cell `centre`, clipped to the grid; returns how
    /// many cells of the disk are inside the room (obstacles included).
    pub(crate) fn stamp(&mut self, grid: &Grid, centre: usize, disk: &Disk) -> usize {
        let (cx, cy) = grid.coords(centre);
        let mut in_room = 0;
        for &(dx, dy) in &disk.offsets {
            if let Some(count) = grid
                .index_at(cx + dx, cy + dy)
                .and_then(|i| self.counts.get_mut(i))
            {
                *count = count.saturating_add(1);
                in_room += 1;
            }
        }
        in_room
    }

    /// How many fixtures reach cell `i`.
    pub(crate) fn count(&self, i: usize) -> u16 {
        self.counts.get(i).copied().unwrap_or(0)
    }

    /// Totals over the free cells of `grid`.
    pub(crate) fn stats(&self, grid: &Grid) -> CoverageStats {
        let covered = self
            .counts
            .iter()
            .enumerate()
            .filter(|&(i, &count)| count > 0 && grid.is_free(i))
            .count();
        CoverageStats {
            free: grid.free(),
            covered,
        }
    }
}

/// Positions in `0..len` of a regular lattice at most `spacing` apart:
/// `ceil(len / spacing)` points (none for an empty span), point `i` at the
/// middle of the `i`-th of that many equal slices of the span, so the margins
/// at both ends are half the step.
pub(crate) fn lattice(len: usize, spacing: usize) -> Vec<usize> {
    let n = len.div_ceil(spacing.max(1));
    (0..n).map(|i| (2 * i + 1) * len / (2 * n)).collect()
}

/// The cell nearest to `(x, y)` (Euclidean, ties broken by row then column)
/// for which `accept` holds, looking at most `max_shift` cells away along each
/// axis and at most `max_d2` away squared.
pub(crate) fn nearest(
    grid: &Grid,
    (x, y): (i64, i64),
    max_shift: i64,
    max_d2: i64,
    accept: impl Fn(usize) -> bool,
) -> Option<usize> {
    let mut best: Option<(i64, usize)> = None;
    for dy in -max_shift..=max_shift {
        for dx in -max_shift..=max_shift {
            let d2 = dx * dx + dy * dy;
            if d2 > max_d2 {
                continue;
            }
            let Some(i) = grid.index_at(x + dx, y + dy) else {
                continue;
            };
            if best.is_some_and(|b| b <= (d2, i)) || !accept(i) {
                continue;
            }
            best = Some((d2, i));
        }
    }
    best.map(|(_, i)| i)
}

/// Fixtures placed to cover a room, with their coverage.
#[derive(Debug, Clone)]
pub(crate) struct Covering {
    /// Cell indices of the placed fixtures, in placement order.
    pub(crate) fixtures: Vec<usize>,
    /// How many fixtures reach each cell.
    pub(crate) map: CoverageMap,
}

/// Places fixtures of `kind` so that every free cell is within `reach` of
/// one, where possible, on cells for which `eligible` holds.
///
/// First each `nominal` position gets a fixture on the nearest eligible cell
/// at most `shift` cells away along each axis (or none). Then a repair pass
/// scans the grid row by row and gives each free cell still out of reach a
/// fixture on the eligible cell nearest to it within `reach`; cells with no
/// such candidate stay uncovered (a summed-area table of the eligible cells
/// skips hopeless searches). Deterministic; costs `O(cells + fixtures ×
/// reach²)` plus one search per uncovered cell that has an eligible cell
/// within `reach` along each axis.
pub(crate) fn place_covering(
    grid: &mut Grid,
    kind: Fixture,
    nominal: &[(i64, i64)],
    shift: i64,
    reach: f64,
    eligible: impl Fn(&Grid, usize) -> bool,
) -> Covering {
    let disk = Disk::new(reach);
    let mut map = CoverageMap::new(grid);
    let mut fixtures = Vec::new();
    let mut put = |grid: &mut Grid, map: &mut CoverageMap, i: usize| {
        if grid.place(i, kind) {
            map.stamp(grid, i, &disk);
            fixtures.push(i);
        }
    };
    for &target in nominal {
        if let Some(i) = nearest(grid, target, shift, 2 * shift * shift, |i| {
            eligible(grid, i)
        }) {
            put(grid, &mut map, i);
        }
    }
    let max_shift = reach.max(0.0).floor() as i64;
    let max_d2 = (reach * reach + 1e-9).floor() as i64;
    let candidates = SquareCounts::new(grid, |i| eligible(grid, i));
    for cell in 0..grid.area() {
        if !grid.is_free(cell) || map.count(cell) > 0 {
            continue;
        }
        if candidates.around(grid.coords(cell), max_shift) == 0 {
            continue;
        }
        if let Some(i) = nearest(grid, grid.coords(cell), max_shift, max_d2, |i| {
            eligible(grid, i)
        }) {
            put(grid, &mut map, i);
        }
    }
    Covering { fixtures, map }
}

/// Summed-area table of the cells matching a predicate, answering "how many
/// in this square" in `O(1)`.
#[derive(Debug, Clone)]
struct SquareCounts {
    width: i64,
    length: i64,
    sums: Vec<u32>,
}

impl SquareCounts {
    fn new(grid: &Grid, matches: impl Fn(usize) -> bool) -> Self {
        let (w, l) = (grid.width(), grid.length());
        let mut sums = vec![0u32; (w + 1) * (l + 1)];
        for y in 0..l {
            let mut row = 0;
            for x in 0..w {
                row += u32::from(matches(y * w + x));
                sums[(y + 1) * (w + 1) + x + 1] = sums[y * (w + 1) + x + 1] + row;
            }
        }
        Self {
            width: w as i64,
            length: l as i64,
            sums,
        }
    }

    /// Matching cells at most `half` cells from `(x, y)` along each axis.
    fn around(&self, (x, y): (i64, i64), half: i64) -> u32 {
        let x0 = (x - half).clamp(0, self.width);
        let x1 = (x + half + 1).clamp(0, self.width);
        let y0 = (y - half).clamp(0, self.length);
        let y1 = (y + half + 1).clamp(0, self.length);
        let at = |x: i64, y: i64| {
            self.sums
                .get((y * (self.width + 1) + x) as usize)
                .copied()
                .unwrap_or(0)
        };
        (at(x1, y1) + at(x0, y0)).saturating_sub(at(x0, y1) + at(x1, y0))
    }
}

/// Mean and population standard deviation of `values` (both 0 when empty).
pub(crate) fn mean_and_deviation(values: &[f64]) -> (f64, f64) {
    if values.is_empty() {
        return (0.0, 0.0);
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let variance = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    (mean, variance.sqrt())
}

/// For each fixture, the distance to its nearest other fixture, capped at
/// `cap` (so `cap` also stands for "no other fixture within `cap`").
///
/// Buckets the fixtures into `cap`-sized squares, so only the 3×3 buckets
/// around a fixture are searched: `O(n)` for evenly spread fixtures.
pub(crate) fn nearest_neighbour_distances(grid: &Grid, fixtures: &[usize], cap: f64) -> Vec<f64> {
    let size = (cap.ceil() as usize).max(1);
    let bx = grid.width().div_ceil(size).max(1);
    let by = grid.length().div_ceil(size).max(1);
    let mut buckets: Vec<Vec<usize>> = vec![Vec::new(); bx * by];
    let bucket_of = |i: usize| {
        let (x, y) = grid.coords(i);
        (x as usize / size, y as usize / size)
    };
    for &f in fixtures {
        let (x, y) = bucket_of(f);
        if let Some(bucket) = buckets.get_mut(y * bx + x) {
            bucket.push(f);
        }
    }
    fixtures
        .iter()
        .map(|&f| {
            let (fx, fy) = grid.coords(f);
            let (bxf, byf) = bucket_of(f);
            let mut best = cap * cap;
            for ny in byf.saturating_sub(1)..=(byf + 1).min(by - 1) {
                for nx in bxf.saturating_sub(1)..=(bxf + 1).min(bx - 1) {
                    for &other in buckets.get(ny * bx + nx).into_iter().flatten() {
                        if other == f {
                            continue;
                        }
                        let (ox, oy) = grid.coords(other);
                        let d2 = ((ox - fx) * (ox - fx) + (oy - fy) * (oy - fy)) as f64;
                        best = best.min(d2);
                    }
                }
            }
            best.sqrt()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::ceiling::room::{Fixture, Layout, Room};

    fn grid(width: u32, length: u32) -> Grid {
        let room = Room::new(width, length, Vec::new()).expect("valid room");
        Grid::for_placement(&Layout::empty(room), Fixture::Light).expect("grid")
    }

    #[test]
    fn disk_areas_match_lattice_point_counts() {
        assert_eq!(Disk::new(0.0).area(), 1);
        assert_eq!(Disk::new(1.0).area(), 5);
        assert_eq!(Disk::new(1.5).area(), 9);
        assert_eq!(Disk::new(2.0).area(), 13);
        assert_eq!(Disk::new(6.4).area(), 129);
    }

    #[test]
    fn lattice_is_centred_and_covers_the_span() {
        assert_eq!(lattice(6, 3), vec![1, 4]);
        assert_eq!(lattice(7, 3), vec![1, 3, 5]);
        assert_eq!(lattice(4, 5), vec![2]);
        assert_eq!(lattice(1, 9), vec![0]);
        assert_eq!(lattice(12, 9), vec![3, 9]);
        assert_eq!(lattice(256, 6).len(), 43);
        assert!(lattice(0, 3).is_empty());
    }

    #[test]
    fn stamping_clips_at_the_walls() {
        let g = grid(3, 3);
        let mut map = CoverageMap::new(&g);
        assert_eq!(map.stamp(&g, 0, &Disk::new(1.0)), 3);
        assert_eq!(map.stats(&g).covered, 3);
        assert_eq!(map.stamp(&g, 4, &Disk::new(1.5)), 9);
        assert_eq!(map.count(0), 2);
        assert_eq!(map.stats(&g).share(), 1.0);
    }

    #[test]
    fn nearest_prefers_distance_then_row_then_column() {
        let g = grid(5, 5);
        assert_eq!(nearest(&g, (2, 2), 1, 2, |_| true), Some(12));
        assert_eq!(nearest(&g, (2, 2), 1, 2, |i| i != 12), Some(7));
        assert_eq!(nearest(&g, (2, 2), 1, 2, |i| i == 18), Some(18));
        assert_eq!(nearest(&g, (2, 2), 1, 1, |i| i == 18), None);
        assert_eq!(nearest(&g, (2, 2), 1, 2, |i| i == 0), None);
    }

    #[test]
    fn covering_repairs_cells_the_lattice_missed() {
        let mut g = grid(9, 1);
        // One nominal fixture at x = 0 with reach 2 covers x = 0..=2; the
        // repair pass puts one on x = 3 (covering 1..=5) and on x = 6.
        let c = place_covering(&mut g, Fixture::AirSupply, &[(0, 0)], 0, 2.0, |g, i| {
            g.is_vacant(i)
        });
        assert_eq!(c.fixtures, vec![0, 3, 6]);
        assert_eq!(c.map.stats(&g).share(), 1.0);
    }

    #[test]
    fn square_counts_match_brute_force() {
        let g = grid(7, 5);
        let matches = |i: usize| i % 3 == 0;
        let counts = SquareCounts::new(&g, matches);
        for y in -2..7 {
            for x in -2..9 {
                for half in 0..4 {
                    let mut expected = 0;
                    for cy in (y - half)..=(y + half) {
                        for cx in (x - half)..=(x + half) {
                            expected += u32::from(g.index_at(cx, cy).is_some_and(matches));
                        }
                    }
                    assert_eq!(counts.around((x, y), half), expected, "{x} {y} {half}");
                }
            }
        }
    }

    #[test]
    fn mean_and_deviation_of_small_samples() {
        assert_eq!(mean_and_deviation(&[]), (0.0, 0.0));
        assert_eq!(mean_and_deviation(&[2.0, 4.0]), (3.0, 1.0));
    }

    #[test]
    fn nearest_neighbour_distances_are_capped() {
        let g = grid(20, 1);
        let d = nearest_neighbour_distances(&g, &[0, 3, 19], 6.0);
        assert_eq!(d, vec![3.0, 3.0, 6.0]);
        assert_eq!(nearest_neighbour_distances(&g, &[5], 6.0), vec![6.0]);
    }
}
