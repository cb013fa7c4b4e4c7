//! Batch runs: reading JSON inputs as a stream (one per line, or a JSON
//! array), and the summary of a batch (runs, failures, duration quantiles,
//! which model won each parallel stage). Run the inputs with
//! [`Pipeline::run_batch`](crate::Pipeline::run_batch).
//!
//! Inputs are parsed on a thread of their own and handed over through a
//! bounded channel, so a file of any size is read at the pace the runs
//! consume it, in bounded memory.

use std::collections::BTreeMap;
use std::fmt;
use std::io::BufRead;
use std::time::Duration;

use serde::de::{DeserializeSeed, SeqAccess, Visitor};

use crate::input::{FieldError, InputError};
use crate::pipeline::{RunReport, StageKind};

/// Inputs parsed ahead of the runs that consume them.
const READ_AHEAD: usize = 256;

/// One input of a batch: where it was (1-based line of a JSON Lines file,
/// or element of a JSON array) and the decoded value or why it is invalid.
#[derive(Debug)]
pub struct Item<In> {
    /// Line number (JSON Lines) or element number (JSON array), from 1.
    pub position: u64,
    /// The decoded input, or why the line is not one.
    pub input: Result<In, InputError>,
}

/// Why a batch's input could not be read at all (as opposed to one bad
/// line, which is an [`Item`] with an error).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The file or stream failed.
    #[error("cannot read the input: {0}")]
    Io(#[from] std::io::Error),
    /// A JSON array input is malformed, so no later element can be found.
    #[error("malformed JSON array at element {position}: {message}")]
    Array {
        /// The element where reading stopped, from 1.
        position: u64,
        /// What is wrong.
        message: String,
    },
}

/// Reads JSON inputs from `reader` on a thread of its own: a JSON array if
/// the first non-blank character is `[`, otherwise JSON Lines (one object
/// per line; blank lines are skipped but counted). Each value goes through
/// `decode`, whose [`FieldError`] names the bad field. The receiver yields
/// items in order, then at most one [`ReadError`] if reading failed.
pub fn read_json<In, R, D>(
    reader: R,
    decode: D,
) -> tokio::sync::mpsc::Receiver<Result<Item<In>, ReadError>>
where
    In: Send + 'static,
    R: BufRead + Send + 'static,
    D: Fn(serde_json::Value) -> Result<In, FieldError> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD);
    std::thread::Builder::new()
        .name("pipelens-batch-reader".into())
        .spawn(move || {
            if let Err(e) = read_into(reader, &decode, &tx) {
                let _ = tx.blocking_send(Err(e));
            }
        })
        .expect("spawn the batch reader thread");
    rx
}

type Sender<In> = tokio::sync::mpsc::Sender<Result<Item<In>, ReadError>>;

/// The receiver was dropped: stop reading quietly.
struct Closed;

fn read_into<In, R: BufRead>(
    mut reader: R,
    decode: &dyn Fn(serde_json::Value) -> Result<In, FieldError>,
    tx: &Sender<In>,
) -> Result<(), ReadError> {
    // Decided on the first buffer (64 KiB from a file): a JSON array whose
    // `[` comes after more blank space than that is read as JSON Lines, and
    // its first line is reported as malformed.
    let buffer = reader.fill_buf()?;
    if buffer.is_empty() {
        return Ok(());
    }
    let starts_with_bracket = buffer
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'[');
    if starts_with_bracket {
        read_array(reader, decode, tx)
    } else {
        read_lines(reader, decode, tx)
    }
}

fn read_lines<In, R: BufRead>(
    reader: R,
    decode: &dyn Fn(serde_json::Value) -> Result<In, FieldError>,
    tx: &Sender<In>,
) -> Result<(), ReadError> {
    for (i, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let input = serde_json::from_str::<serde_json::Value>(&line)
            .map_err(|e| InputError::Malformed(e.to_string()))
            .and_then(|value| Ok(decode(value)?));
        let item = Item {
            position: i as u64 + 1,
            input,
        };
        if tx.blocking_send(Ok(item)).is_err() {
            return Ok(());
        }
    }
    Ok(())
}

fn read_array<In, R: BufRead>(
    reader: R,
    decode: &dyn Fn(serde_json::Value) -> Result<In, FieldError>,
    tx: &Sender<In>,
) -> Result<(), ReadError> {
    let mut position = 0;
    let mut deserializer = serde_json::Deserializer::from_reader(reader);
    let seed = Elements {
        decode,
        tx,
        position: &mut position,
    };
    match seed.deserialize(&mut deserializer) {
        Ok(Ok(())) | Ok(Err(Closed)) => Ok(()),
        Err(e) if e.is_io() => Err(ReadError::Io(e.into())),
        Err(e) => Err(ReadError::Array {
            position: position + 1,
            message: e.to_string(),
        }),
    }
}

/// Walks a JSON array element by element, sending each one on as it is
/// parsed, so the array is never held whole.
struct Elements<'a, In> {
    decode: &'a dyn Fn(serde_json::Value) -> Result<In, FieldError>,
    tx: &'a Sender<In>,
    position: &'a mut u64,
}

impl<'de, In> DeserializeSeed<'de> for Elements<'_, In> {
    type Value = Result<(), Closed>;

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de, In> Visitor<'de> for Elements<'_, In> {
    type Value = Result<(), Closed>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON array of inputs")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while let Some(value) = seq.next_element::<serde_json::Value>()? {
            *self.position += 1;
            let item = Item {
                position: *self.position,
                input: (self.decode)(value).map_err(InputError::from),
            };
            if self.tx.blocking_send(Ok(item)).is_err() {
                return Ok(Err(Closed));
            }
        }
        Ok(Ok(()))
    }
}

/// Durations in a fixed log-scale histogram: 16 buckets per doubling from
/// 1 µs to about 5 days, so quantiles are within 4.4% whatever the batch's
/// length, in 1 KiB of memory.
#[derive(Debug, Clone)]
struct Durations {
    counts: Vec<u64>,
    total: u64,
}

const PER_DOUBLING: f64 = 16.0;
const BUCKETS: usize = 16 * 39;

impl Default for Durations {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            total: 0,
        }
    }
}

impl Durations {
    fn record(&mut self, d: Duration) {
        let us = d.as_secs_f64() * 1e6;
        let bucket = if us <= 1.0 {
            0
        } else {
            ((us.log2() * PER_DOUBLING).ceil() as usize).min(BUCKETS - 1)
        };
        self.counts[bucket] += 1;
        self.total += 1;
    }

    /// The `q` quantile (0..=1): the upper bound of its bucket.
    fn quantile(&self, q: f64) -> Option<Duration> {
        if self.total == 0 {
            return None;
        }
        let rank = ((self.total as f64 * q).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (bucket, n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let us = (bucket as f64 / PER_DOUBLING).exp2();
                return Some(Duration::from_secs_f64(us / 1e6));
            }
        }
        None
    }
}

/// What a batch did, accumulated run by run in constant memory.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Inputs seen: runs plus invalid ones.
    pub inputs: u64,
    /// Inputs that were invalid and never ran.
    pub invalid: u64,
    /// Runs that failed (a stage with no surviving model).
    pub failed: u64,
    durations: Durations,
    /// Per parallel stage, per model: how often it was selected.
    champions: BTreeMap<String, BTreeMap<String, u64>>,
}

impl Summary {
    /// Records one input that could not be decoded.
    pub fn record_invalid(&mut self) {
        self.inputs += 1;
        self.invalid += 1;
    }

    /// Records one run's result.
    pub fn record_run<Out, E>(&mut self, result: &Result<RunReport<Out>, E>) {
        self.inputs += 1;
        match result {
            Ok(report) => {
                self.durations.record(report.duration);
                for stage in &report.stages {
                    if stage.kind != StageKind::Parallel {
                        continue;
                    }
                    if let Some(model) = &stage.selected_model {
                        *self
                            .champions
                            .entry(stage.stage.clone())
                            .or_default()
                            .entry(model.clone())
                            .or_default() += 1;
                    }
                }
            }
            Err(_) => self.failed += 1,
        }
    }

    /// Inputs that did not produce a result: invalid ones and failed runs.
    pub fn failures(&self) -> u64 {
        self.invalid + self.failed
    }

    /// Failures as a share of all inputs (0 for an empty batch).
    pub fn failure_ratio(&self) -> f64 {
        if self.inputs == 0 {
            0.0
        } else {
            self.failures() as f64 / self.inputs as f64
        }
    }

    /// The `q` quantile of successful runs' durations (within 4.4%).
    pub fn duration_quantile(&self, q: f64) -> Option<Duration> {
        self.durations.quantile(q)
    }

    /// Per parallel stage, each model's share of the runs it won.
    pub fn champion_shares(&self) -> BTreeMap<&str, Vec<(&str, f64)>> {
        self.champions
            .iter()
            .map(|(stage, models)| {
                let total: u64 = models.values().sum();
                let shares = models
                    .iter()
                    .map(|(m, n)| (m.as_str(), *n as f64 / total.max(1) as f64))
                    .collect();
                (stage.as_str(), shares)
            })
            .collect()
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ok = self.inputs - self.failures();
        writeln!(
            f,
            "{} inputs: {} succeeded, {} failed ({} invalid, {} failed runs), failure ratio {:.4}",
            self.inputs,
            ok,
            self.failures(),
            self.invalid,
            self.failed,
            self.failure_ratio()
        )?;
        if let (Some(p50), Some(p95)) = (self.duration_quantile(0.5), self.duration_quantile(0.95))
        {
            writeln!(
                f,
                "run duration: p50 {:.3} ms, p95 {:.3} ms",
                p50.as_secs_f64() * 1e3,
                p95.as_secs_f64() * 1e3
            )?;
        }
        for (stage, shares) in self.champion_shares() {
            let shares: Vec<String> = shares
                .iter()
                .map(|(m, s)| format!("{m} {:.1}%", s * 100.0))
                .collect();
            writeln!(f, "champions of `{stage}`: {}", shares.join(", "))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(value: serde_json::Value) -> Result<u32, FieldError> {
        let n = value
            .get("n")
            .ok_or_else(|| FieldError::new("n", "missing"))?;
        n.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| FieldError::new("n", "expected a small number"))
    }

    async fn read(text: &'static str) -> Vec<Result<(u64, Result<u32, String>), String>> {
        let mut rx = read_json(std::io::Cursor::new(text), decode);
        let mut out = Vec::new();
        while let Some(item) = rx.recv().await {
            out.push(
                item.map(|i| (i.position, i.input.map_err(|e| e.to_string())))
                    .map_err(|e| e.to_string()),
            );
        }
        out
    }

    #[tokio::test]
    async fn json_lines_keep_their_line_numbers_and_bad_lines_do_not_stop_the_rest() {
        let items = read("{\"n\": 1}\n\nnot json\n{\"n\": \"x\"}\n{\"n\": 4}\n").await;
        assert_eq!(items.len(), 4);
        assert_eq!(items[0].as_ref().unwrap(), &(1, Ok(1)));
        let (line, bad) = items[1].as_ref().unwrap();
        assert_eq!(*line, 3);
        assert!(
            bad.as_ref().unwrap_err().contains("malformed JSON"),
            "{bad:?}"
        );
        let (line, bad) = items[2].as_ref().unwrap();
        assert_eq!(*line, 4);
        assert!(bad.as_ref().unwrap_err().contains("`n`"), "{bad:?}");
        assert_eq!(items[3].as_ref().unwrap(), &(5, Ok(4)));
    }

    #[tokio::test]
    async fn a_json_array_is_read_element_by_element() {
        let items = read("  [ {\"n\": 7}, {\"m\": 1},\n {\"n\": 9} ]").await;
        let got: Vec<_> = items.into_iter().map(Result::unwrap).collect();
        assert_eq!(got[0], (1, Ok(7)));
        assert_eq!(got[1].0, 2);
        assert!(got[1].1.is_err());
        assert_eq!(got[2], (3, Ok(9)));
    }

    #[tokio::test]
    async fn a_broken_array_ends_with_an_error_naming_the_element() {
        let items = read("[{\"n\": 1}, {\"n\": 2} {\"n\": 3}]").await;
        assert_eq!(items.len(), 3, "{items:?}");
        let last = items[2].as_ref().unwrap_err();
        assert!(last.contains("element 3"), "{last}");
    }

    #[test]
    fn quantiles_are_within_the_bucket_precision() {
        let mut d = Durations::default();
        for us in 1..=1000u64 {
            d.record(Duration::from_micros(us));
        }
        let p50 = d.quantile(0.5).unwrap().as_secs_f64() * 1e6;
        let p95 = d.quantile(0.95).unwrap().as_secs_f64() * 1e6;
        assert!((500.0..=500.0 * 1.045).contains(&p50), "{p50}");
        assert!((950.0..=950.0 * 1.045).contains(&p95), "{p95}");
        assert_eq!(Durations::default().quantile(0.5), None);
    }

    #[test]
    fn failure_ratio_counts_invalid_inputs_and_failed_runs() {
        let mut s = Summary::default();
        assert_eq!(s.failure_ratio(), 0.0);
        s.record_invalid();
        s.record_run::<(), &str>(&Err("boom"));
        for _ in 0..2 {
            s.record_run::<(), &str>(&Ok(RunReport {
                pipeline: "p".into(),
                run_id: "1".repeat(32),
                trace_id: None,
                duration: Duration::from_millis(2),
                stages: vec![],
                output: (),
            }));
        }
        assert_eq!(s.inputs, 4);
        assert_eq!(s.failures(), 2);
        assert!((s.failure_ratio() - 0.5).abs() < 1e-12);
    }
}
