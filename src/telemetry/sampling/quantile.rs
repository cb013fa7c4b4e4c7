//! The adaptive slow threshold: each root's (pipeline's, route's) recent
//! quantile of durations, from a bounded window of its last runs.

use std::collections::HashMap;

/// How many recent durations each root keeps.
const WINDOW: usize = 1024;
/// How many new durations between two recomputations of the quantile.
const RECOMPUTE_EVERY: u32 = 64;
/// A root needs this many runs before any of them counts as slow: with
/// fewer, `p99` would be the maximum of a handful.
pub(crate) const WARM_UP: usize = 200;
/// At most this many roots get a window of their own; the rest share one.
const MAX_KEYS: usize = 128;

/// A ring of one root's recent durations (seconds) and its last quantile.
#[derive(Debug)]
struct Window {
    samples: Vec<f64>,
    next: usize,
    since_recompute: u32,
    threshold: Option<f64>,
}

impl Window {
    fn new() -> Self {
        Self {
            samples: Vec::with_capacity(WINDOW),
            next: 0,
            since_recompute: 0,
            threshold: None,
        }
    }

    fn push(&mut self, seconds: f64, quantile: f64) {
        if self.samples.len() < WINDOW {
            self.samples.push(seconds);
        } else {
            self.samples[self.next] = seconds;
        }
        self.next = (self.next + 1) % WINDOW;
        self.since_recompute += 1;
        if self.samples.len() >= WARM_UP
            && (self.threshold.is_none() || self.since_recompute >= RECOMPUTE_EVERY)
        {
            self.since_recompute = 0;
            let mut scratch = self.samples.clone();
            let rank =
                ((scratch.len() as f64 * quantile).ceil() as usize).clamp(1, scratch.len()) - 1;
            let (_, q, _) = scratch.select_nth_unstable_by(rank, f64::total_cmp);
            self.threshold = Some(*q);
        }
    }
}

/// Every root's window, bounded in keys and in samples per key.
#[derive(Debug)]
pub(crate) struct Quantiles {
    quantile: f64,
    windows: HashMap<String, Window>,
    shared: Window,
}

impl Quantiles {
    /// Estimates `quantile` (0.99 for `p99`) per root.
    pub(crate) fn new(quantile: f64) -> Self {
        Self {
            quantile,
            windows: HashMap::new(),
            shared: Window::new(),
        }
    }

    /// Whether `seconds` is slower than `key`'s quantile so far (never
    /// before [`WARM_UP`] runs), then adds it to the window.
    pub(crate) fn observe(&mut self, key: &str, seconds: f64) -> bool {
        let window = if let Some(w) = self.windows.get_mut(key) {
            w
        } else if self.windows.len() < MAX_KEYS {
            self.windows
                .entry(key.to_owned())
                .or_insert_with(Window::new)
        } else {
            &mut self.shared
        };
        let slow = window.threshold.is_some_and(|t| seconds > t);
        window.push(seconds, self.quantile);
        slow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn about_one_percent_is_slow_after_warm_up_and_keys_are_separate() {
        let mut q = Quantiles::new(0.99);
        let mut slow = 0;
        for i in 0..10_000u32 {
            // 1..=100 ms, evenly spread.
            let seconds = f64::from(i % 100 + 1) / 1000.0;
            if q.observe("fast", seconds) {
                slow += 1;
            }
        }
        assert!((50..=150).contains(&slow), "{slow} of 10000 counted slow");
        // A second root with ten times the durations has a threshold of its
        // own: its ordinary runs are not slow by the first one's measure.
        let mut other_slow = 0;
        for i in 0..WARM_UP as u32 * 2 {
            if q.observe("slow-pipeline", f64::from(i % 100 + 1) / 100.0) && i < WARM_UP as u32 {
                other_slow += 1;
            }
        }
        assert_eq!(other_slow, 0, "nothing is slow before the warm-up");
        assert!(q.observe("fast", 0.5), "far past the fast root's p99");
        assert!(!q.observe("slow-pipeline", 0.5), "ordinary for this root");
    }

    #[test]
    fn keys_past_the_bound_share_one_window() {
        let mut q = Quantiles::new(0.5);
        for k in 0..MAX_KEYS + 50 {
            q.observe(&format!("k{k}"), 0.001);
        }
        assert_eq!(q.windows.len(), MAX_KEYS);
        assert_eq!(q.shared.samples.len(), 50);
    }
}
