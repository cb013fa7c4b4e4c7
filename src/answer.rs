//! The vocabulary of ground truth: what a candidate answered, and what the
//! truth says, in the same terms. Shared by the judges and the run store.

use serde::{Deserialize, Serialize};

/// What a candidate answered, in the terms ground truth is given in; also
/// the ground truth itself. In JSON a label is a string and a value a number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Answer {
    /// A class, such as `positive` (classification).
    Label(String),
    /// A number, such as a price or a count (regression).
    Value(f64),
}

impl Answer {
    /// `label` or `value`: the JSON field ground truth of this kind is sent in.
    pub fn kind(&self) -> &'static str {
        match self {
            Answer::Label(_) => "label",
            Answer::Value(_) => "value",
        }
    }
}
