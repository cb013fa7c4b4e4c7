//! The room grid, its validation, the [`Layout`] that flows through the
//! planner, and the occupancy grid the models place fixtures on.
//!
//! Terms used throughout the planner:
//! - a *free* cell is any cell that is not an obstacle: it needs light, air and
//!   smoke detection, whether or not a fixture sits on it;
//! - a *vacant* cell is a free cell without a fixture: only vacant cells can
//!   take a new fixture.

use serde::{Deserialize, Serialize};

use pipelens::ModelError;

/// Largest accepted room side, in cells (one cell is about 1 m).
pub const MAX_SIDE: u32 = 256;

/// Largest accepted number of obstacle cells in a room.
pub const MAX_OBSTACLES: usize = 4096;

/// One cell of the room grid: `x` runs along the width, `y` along the length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cell {
    /// Column, `0..width`.
    pub x: u32,
    /// Row, `0..length`.
    pub y: u32,
}

impl Cell {
    /// The cell at column `x`, row `y`.
    pub const fn new(x: u32, y: u32) -> Self {
        Self { x, y }
    }
}

/// Why a room description was rejected.
///
/// [`RoomError::field`] names the offending input field as a JSON path
/// (`width`, `obstacles[3].x`), so an API can point at it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RoomError {
    /// The width is 0 or above [`MAX_SIDE`].
    #[error("width must be between 1 and {max}, got {0}", max = MAX_SIDE)]
    Width(u32),
    /// The length is 0 or above [`MAX_SIDE`].
    #[error("length must be between 1 and {max}, got {0}", max = MAX_SIDE)]
    Length(u32),
    /// More than [`MAX_OBSTACLES`] obstacles.
    #[error("obstacles must have at most {max} entries, got {0}", max = MAX_OBSTACLES)]
    TooManyObstacles(usize),
    /// An obstacle's `x` is not less than the width.
    #[error("obstacles[{index}].x must be less than the width {width}, got {x}")]
    ObstacleX {
        /// Position of the obstacle in the list.
        index: usize,
        /// The rejected value.
        x: u32,
        /// The room width.
        width: u32,
    },
    /// An obstacle's `y` is not less than the length.
    #[error("obstacles[{index}].y must be less than the length {length}, got {y}")]
    ObstacleY {
        /// Position of the obstacle in the list.
        index: usize,
        /// The rejected value.
        y: u32,
        /// The room length.
        length: u32,
    },
    /// The same obstacle cell is listed twice.
    #[error("obstacles[{index}] repeats obstacles[{first}] at ({x}, {y})")]
    DuplicateObstacle {
        /// Position of the repeated entry in the list.
        index: usize,
        /// Position of the first entry for the same cell.
        first: usize,
        /// Column of the cell.
        x: u32,
        /// Row of the cell.
        y: u32,
    },
}

impl RoomError {
    /// The offending input field as a JSON path, such as `obstacles[3].x`.
    pub fn field(&self) -> String {
        match self {
            Self::Width(_) => "width".to_owned(),
            Self::Length(_) => "length".to_owned(),
            Self::TooManyObstacles(_) => "obstacles".to_owned(),
            Self::ObstacleX { index, .. } => format!("obstacles[{index}].x"),
            Self::ObstacleY { index, .. } => format!("obstacles[{index}].y"),
            Self::DuplicateObstacle { index, .. } => format!("obstacles[{index}]"),
        }
    }
}

/// A validated rectangular room: `width × length` cells, some of them
/// obstacles (columns, shafts, ducts) that take no fixture and need no light,
/// air or detection.
///
/// Only [`Room::new`] (and deserialization, which goes through it) builds a
/// room, so every `Room` is valid: sides in `1..=MAX_SIDE`, at most
/// [`MAX_OBSTACLES`] obstacles, each inside the grid and listed once.
/// Duplicate obstacles are rejected rather than merged, because a repeated
/// cell usually means a bug in whatever generated the list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RoomSpec")]
pub struct Room {
    width: u32,
    length: u32,
    obstacles: Vec<Cell>,
}

/// The unvalidated wire form of a [`Room`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoomSpec {
    width: u32,
    length: u32,
    #[serde(default)]
    obstacles: Vec<Cell>,
}

impl TryFrom<RoomSpec> for Room {
    type Error = RoomError;

    fn try_from(spec: RoomSpec) -> Result<Self, Self::Error> {
        Room::new(spec.width, spec.length, spec.obstacles)
    }
}

impl Room {
    /// A room of `width × length` cells with the given obstacle cells, or the
    /// first validation error, naming the offending field.
    pub fn new(width: u32, length: u32, obstacles: Vec<Cell>) -> Result<Self, RoomError> {
        if !(1..=MAX_SIDE).contains(&width) {
            return Err(RoomError::Width(width));
        }
        if !(1..=MAX_SIDE).contains(&length) {
            return Err(RoomError::Length(length));
        }
        if obstacles.len() > MAX_OBSTACLES {
            return Err(RoomError::TooManyObstacles(obstacles.len()));
        }
        let mut first_seen: Vec<Option<usize>> = vec![None; width as usize * length as usize];
        for (index, cell) in obstacles.iter().enumerate() {
            if cell.x >= width {
                return Err(RoomError::ObstacleX {
                    index,
                    x: cell.x,
                    width,
                });
            }
            if cell.y >= length {
                return Err(RoomError::ObstacleY {
                    index,
                    y: cell.y,
                    length,
                });
            }
            let slot = cell.y as usize * width as usize + cell.x as usize;
            if let Some(seen) = first_seen.get_mut(slot) {
                if let Some(first) = *seen {
                    return Err(RoomError::DuplicateObstacle {
                        index,
                        first,
                        x: cell.x,
                        y: cell.y,
                    });
                }
                *seen = Some(index);
            }
        }
        Ok(Self {
            width,
            length,
            obstacles,
        })
    }

    /// Number of columns.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Number of rows.
    pub fn length(&self) -> u32 {
        self.length
    }

    /// The obstacle cells, in the order given.
    pub fn obstacles(&self) -> &[Cell] {
        &self.obstacles
    }

    /// Number of free (non-obstacle) cells.
    #[cfg(test)]
    pub fn free_cells(&self) -> usize {
        self.width as usize * self.length as usize - self.obstacles.len()
    }
}

/// The ceiling layout: a room and the fixtures placed on it so far. It is the
/// state that flows through the planner pipeline, each model adding its kind
/// of fixture.
///
/// A cell holds at most one fixture and never an obstacle. Each model replaces
/// the fixtures of its own kind and keeps (and avoids) the others, so after
/// changing an earlier stage's fixtures the later stages should run again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Layout {
    /// The room the fixtures are placed in.
    pub room: Room,
    /// Light fixtures.
    pub lights: Vec<Cell>,
    /// Air-supply diffusers.
    pub air_supply: Vec<Cell>,
    /// Smoke detectors.
    pub smoke_detectors: Vec<Cell>,
}

impl Layout {
    /// A layout of `room` with no fixtures yet: the planner's starting point.
    pub fn empty(room: Room) -> Self {
        Self {
            room,
            lights: Vec::new(),
            air_supply: Vec::new(),
            smoke_detectors: Vec::new(),
        }
    }
}

/// A kind of ceiling fixture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fixture {
    /// A light.
    Light,
    /// An air-supply diffuser.
    AirSupply,
    /// A smoke detector.
    SmokeDetector,
}

impl Fixture {
    /// The layout field that holds this kind of fixture.
    fn field(self) -> &'static str {
        match self {
            Self::Light => "lights",
            Self::AirSupply => "air_supply",
            Self::SmokeDetector => "smoke_detectors",
        }
    }
}

/// What occupies a grid cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Occupant {
    /// A free cell without a fixture.
    Vacant,
    /// An obstacle.
    Obstacle,
    /// A free cell holding a fixture.
    Fixture(Fixture),
}

/// The room as a dense occupancy grid, indexed `y * width + x`.
#[derive(Debug, Clone)]
pub(crate) struct Grid {
    width: usize,
    length: usize,
    cells: Vec<Occupant>,
    free: usize,
}

impl Grid {
    /// The grid a model placing `placing` works on: the room's obstacles and
    /// every fixture of the other kinds; fixtures of kind `placing` are
    /// dropped, as the model replaces them.
    ///
    /// Fails with [`ModelError::InvalidInput`] when a kept fixture lies outside
    /// the room, on an obstacle or on another fixture, or when the room has no
    /// free cell at all.
    pub(crate) fn for_placement(layout: &Layout, placing: Fixture) -> Result<Self, ModelError> {
        let room = &layout.room;
        let width = room.width as usize;
        let length = room.length as usize;
        let mut grid = Self {
            width,
            length,
            cells: vec![Occupant::Vacant; width * length],
            free: width * length,
        };
        for obstacle in &room.obstacles {
            if let Some(i) = grid.index_of(*obstacle) {
                if grid.cells[i] == Occupant::Vacant {
                    grid.cells[i] = Occupant::Obstacle;
                    grid.free -= 1;
                }
            }
        }
        if grid.free == 0 {
            return Err(ModelError::InvalidInput(
                "the room has no free cell: every cell is an obstacle".to_owned(),
            ));
        }
        let kept = [
            (Fixture::Light, &layout.lights),
            (Fixture::AirSupply, &layout.air_supply),
            (Fixture::SmokeDetector, &layout.smoke_detectors),
        ];
        for (kind, cells) in kept {
            if kind == placing {
                continue;
            }
            for (n, cell) in cells.iter().enumerate() {
                let field = kind.field();
                let Some(i) = grid.index_of(*cell) else {
                    return Err(ModelError::InvalidInput(format!(
                        "{field}[{n}] at ({}, {}) is outside the room",
                        cell.x, cell.y
                    )));
                };
                match grid.cells[i] {
                    Occupant::Vacant => grid.cells[i] = Occupant::Fixture(kind),
                    Occupant::Obstacle => {
                        return Err(ModelError::InvalidInput(format!(
                            "{field}[{n}] at ({}, {}) is on an obstacle",
                            cell.x, cell.y
                        )))
                    }
                    Occupant::Fixture(_) => {
                        return Err(ModelError::InvalidInput(format!(
                            "{field}[{n}] at ({}, {}) is on another fixture",
                            cell.x, cell.y
                        )))
                    }
                }
            }
        }
        Ok(grid)
    }

    /// Number of columns.
    pub(crate) fn width(&self) -> usize {
        self.width
    }

    /// Number of rows.
    pub(crate) fn length(&self) -> usize {
        self.length
    }

    /// Number of cells.
    pub(crate) fn area(&self) -> usize {
        self.cells.len()
    }

    /// Number of free (non-obstacle) cells; never 0.
    pub(crate) fn free(&self) -> usize {
        self.free
    }

    /// Index of `cell`, or `None` outside the grid.
    pub(crate) fn index_of(&self, cell: Cell) -> Option<usize> {
        let (x, y) = (cell.x as usize, cell.y as usize);
        (x < self.width && y < self.length).then_some(y * self.width + x)
    }

    /// Index of the cell at signed coordinates, or `None` outside the grid.
    pub(crate) fn index_at(&self, x: i64, y: i64) -> Option<usize> {
        let (x, y) = (usize::try_from(x).ok()?, usize::try_from(y).ok()?);
        (x < self.width && y < self.length).then_some(y * self.width + x)
    }

    /// Coordinates of cell `i`.
    pub(crate) fn coords(&self, i: usize) -> (i64, i64) {
        ((i % self.width) as i64, (i / self.width) as i64)
    }

    /// The [`Cell`] at index `i`.
    pub(crate) fn cell(&self, i: usize) -> Cell {
        Cell::new((i % self.width) as u32, (i / self.width) as u32)
    }

    /// What occupies cell `i` (an obstacle outside the grid).
    pub(crate) fn occupant(&self, i: usize) -> Occupant {
        self.cells.get(i).copied().unwrap_or(Occupant::Obstacle)
    }

    /// Whether cell `i` is free (not an obstacle).
    pub(crate) fn is_free(&self, i: usize) -> bool {
        self.occupant(i) != Occupant::Obstacle
    }

    /// Whether cell `i` can take a new fixture.
    pub(crate) fn is_vacant(&self, i: usize) -> bool {
        self.occupant(i) == Occupant::Vacant
    }

    /// Puts a fixture of `kind` on cell `i` if it is vacant; reports whether
    /// it did.
    pub(crate) fn place(&mut self, i: usize, kind: Fixture) -> bool {
        match self.cells.get_mut(i) {
            Some(slot @ Occupant::Vacant) => {
                *slot = Occupant::Fixture(kind);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cells(list: &[(u32, u32)]) -> Vec<Cell> {
        list.iter().map(|&(x, y)| Cell::new(x, y)).collect()
    }

    #[test]
    fn valid_room_keeps_its_fields() {
        let room = Room::new(12, 8, cells(&[(3, 4), (0, 0)])).expect("valid room");
        assert_eq!(room.width(), 12);
        assert_eq!(room.length(), 8);
        assert_eq!(room.obstacles(), &cells(&[(3, 4), (0, 0)])[..]);
        assert_eq!(room.free_cells(), 94);
        assert!(Room::new(MAX_SIDE, 1, Vec::new()).is_ok());
    }

    #[test]
    fn validation_errors_name_the_field() {
        let cases = [
            (
                Room::new(0, 5, Vec::new()),
                "width",
                "width must be between 1 and 256, got 0",
            ),
            (
                Room::new(257, 5, Vec::new()),
                "width",
                "width must be between 1 and 256, got 257",
            ),
            (
                Room::new(5, 0, Vec::new()),
                "length",
                "length must be between 1 and 256, got 0",
            ),
            (
                Room::new(5, 4, cells(&[(1, 1), (2, 2), (0, 3), (5, 0)])),
                "obstacles[3].x",
                "obstacles[3].x must be less than the width 5, got 5",
            ),
            (
                Room::new(5, 4, cells(&[(1, 4)])),
                "obstacles[0].y",
                "obstacles[0].y must be less than the length 4, got 4",
            ),
            (
                Room::new(5, 4, cells(&[(1, 1), (2, 2), (1, 1)])),
                "obstacles[2]",
                "obstacles[2] repeats obstacles[0] at (1, 1)",
            ),
        ];
        for (result, field, message) in cases {
            let err = result.expect_err(message);
            assert_eq!(err.field(), field);
            assert_eq!(err.to_string(), message);
        }
    }

    #[test]
    fn deserializing_validates_the_room() {
        use serde::de::value::{Error, MapDeserializer};
        let fields = |width: u32| vec![("width", width), ("length", 5)].into_iter();
        let room =
            Room::deserialize(MapDeserializer::<_, Error>::new(fields(4))).expect("valid room");
        assert_eq!(room, Room::new(4, 5, Vec::new()).expect("valid room"));
        let err =
            Room::deserialize(MapDeserializer::<_, Error>::new(fields(0))).expect_err("width 0");
        assert_eq!(err.to_string(), "width must be between 1 and 256, got 0");
    }

    #[test]
    fn too_many_obstacles_is_rejected_before_checking_cells() {
        let many = vec![Cell::new(999, 999); MAX_OBSTACLES + 1];
        let err = Room::new(256, 256, many).expect_err("too many");
        assert_eq!(err.field(), "obstacles");
        assert_eq!(
            err.to_string(),
            "obstacles must have at most 4096 entries, got 4097"
        );
    }

    #[test]
    fn grid_rejects_bad_kept_fixtures_and_drops_replaced_ones() {
        let room = Room::new(4, 4, cells(&[(1, 1)])).expect("valid room");
        let mut layout = Layout::empty(room);
        layout.lights = cells(&[(1, 1)]);
        let err = Grid::for_placement(&layout, Fixture::AirSupply).expect_err("on obstacle");
        assert_eq!(err.error_type(), "invalid_input");
        assert!(err.to_string().contains("lights[0]"), "{err}");
        assert!(Grid::for_placement(&layout, Fixture::Light).is_ok());

        layout.lights = cells(&[(0, 0)]);
        layout.air_supply = cells(&[(4, 0)]);
        let err = Grid::for_placement(&layout, Fixture::SmokeDetector).expect_err("outside");
        assert!(err.to_string().contains("air_supply[0]"), "{err}");

        layout.air_supply = cells(&[(0, 0)]);
        let err = Grid::for_placement(&layout, Fixture::SmokeDetector).expect_err("stacked");
        assert!(err.to_string().contains("another fixture"), "{err}");
    }

    #[test]
    fn fully_blocked_room_is_invalid_input() {
        let room = Room::new(2, 1, cells(&[(0, 0), (1, 0)])).expect("valid room");
        let err = Grid::for_placement(&Layout::empty(room), Fixture::Light).expect_err("blocked");
        assert_eq!(err.error_type(), "invalid_input");
    }
}
