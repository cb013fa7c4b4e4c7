//! The featuriser of `models/sentiment/features.json`, written from its
//! description (the Python side, which the reference runtimes use, is
//! `scripts/models/sentiment_features.py`): 1.0 for each vocabulary term —
//! a word or two adjacent words — that the text holds.

use std::collections::{HashMap, HashSet};
use std::path::Path;

/// The reference model's featuriser.
pub struct Features {
    column: HashMap<String, usize>,
}

impl Features {
    /// Reads `models/sentiment/features.json`.
    pub fn load() -> Self {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/sentiment/features.json");
        let spec: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let column = spec["vocabulary"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_str().unwrap().to_owned(), i))
            .collect();
        Self { column }
    }

    /// How many terms (columns) there are.
    pub fn width(&self) -> usize {
        self.column.len()
    }

    /// The feature row of `text`.
    pub fn row(&self, text: &str) -> Vec<f32> {
        let words: Vec<String> = text
            .split(|c: char| !(c.is_alphanumeric() || c == '\''))
            .map(|w| w.trim_matches('\'').to_lowercase())
            .filter(|w| !w.is_empty())
            .collect();
        let mut terms: HashSet<String> = words.iter().cloned().collect();
        terms.extend(words.windows(2).map(|p| format!("{} {}", p[0], p[1])));
        let mut row = vec![0.0; self.column.len()];
        for term in terms {
            if let Some(&c) = self.column.get(&term) {
                row[c] = 1.0;
            }
        }
        row
    }
}
