//! How long a sync model's executions take lately, for
//! [`Execution::Auto`](super::Execution::Auto): an exponentially weighted
//! moving average, updated lock-free after every execution.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Executions whose recent average is below this run inline under
/// `Execution::Auto`: a blocking-pool hop costs 10–30 µs of cross-thread
/// wake-ups, so a model this fast is cheaper to run in place, and tokio's
/// guidance is to keep a task's time between awaits about this short.
pub const INLINE_BELOW: Duration = Duration::from_micros(100);

/// Weight of the newest execution in the average, as a right shift:
/// 1/8, so about the last ten executions count.
const SHIFT: u32 = 3;

/// Not measured yet: the first execution is offloaded.
const UNKNOWN: u64 = u64::MAX;

/// A model's recent execution time.
#[derive(Debug)]
pub(crate) struct Pace {
    average_ns: AtomicU64,
}

impl Default for Pace {
    fn default() -> Self {
        Self {
            average_ns: AtomicU64::new(UNKNOWN),
        }
    }
}

impl Pace {
    /// Whether the model's recent executions were fast enough to run inline.
    pub(crate) fn is_fast(&self) -> bool {
        self.average_ns.load(Ordering::Relaxed) < INLINE_BELOW.as_nanos() as u64
    }

    /// Folds one execution's duration into the average. Concurrent updates
    /// may lose one another's sample, which only delays the average by an
    /// execution.
    pub(crate) fn observe(&self, took: Duration) {
        let sample = u64::try_from(took.as_nanos()).unwrap_or(UNKNOWN - 1);
        let old = self.average_ns.load(Ordering::Relaxed);
        let new = if old == UNKNOWN {
            sample
        } else {
            // old + (sample - old) / 8, in signed arithmetic.
            let delta = (i128::from(sample) - i128::from(old)) >> SHIFT;
            u64::try_from(i128::from(old) + delta).unwrap_or(UNKNOWN - 1)
        };
        self.average_ns.store(new, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_until_measured_then_follows_the_recent_executions() {
        let pace = Pace::default();
        assert!(!pace.is_fast(), "an unmeasured model is offloaded");
        pace.observe(Duration::from_micros(8));
        assert!(pace.is_fast());
        assert_eq!(pace.average_ns.load(Ordering::Relaxed), 8_000);
        // One 1 ms execution: 8 µs + (1000 - 8) / 8 µs = 132 µs, no longer
        // fast; it takes a few fast executions to come back under 100 µs.
        pace.observe(Duration::from_millis(1));
        assert_eq!(pace.average_ns.load(Ordering::Relaxed), 132_000);
        assert!(!pace.is_fast());
        pace.observe(Duration::from_micros(8));
        assert_eq!(pace.average_ns.load(Ordering::Relaxed), 116_500);
        pace.observe(Duration::from_micros(8));
        pace.observe(Duration::from_micros(8));
        assert!(pace.is_fast(), "{:?}", pace.average_ns);
    }

    #[test]
    fn a_model_that_turns_slow_goes_back_to_the_blocking_pool() {
        let pace = Pace::default();
        for _ in 0..20 {
            pace.observe(Duration::from_micros(5));
        }
        assert!(pace.is_fast());
        pace.observe(Duration::from_millis(2));
        assert!(!pace.is_fast(), "one slow execution is enough");
    }
}
