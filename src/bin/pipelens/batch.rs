//! `pipelens run`: a batch of rooms through the pipeline (or one shard of
//! it), one JSON result per line, a progress bar on a terminal, and a
//! summary at the end.

use std::io::{BufRead, BufReader, IsTerminal as _, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use futures_util::StreamExt as _;
use pipelens::batch::{self, Item, Summary};
use pipelens::input::InputError;
use pipelens::{Pipeline, RunError, RunReport};
use serde::Serialize;
use serde_json::json;

/// What `pipelens run` was asked to do.
pub(crate) struct BatchArgs {
    pub(crate) input: PathBuf,
    pub(crate) output: Option<PathBuf>,
    pub(crate) concurrency: usize,
    pub(crate) fail_fast: bool,
    pub(crate) max_failure_ratio: f64,
    pub(crate) shard: Shard,
}

/// The Kubernetes Indexed Job variable naming a pod's shard.
pub(crate) const JOB_COMPLETION_INDEX: &str = "JOB_COMPLETION_INDEX";

/// One of `count` shards of a batch: the inputs whose line (or array
/// element) number is `index` modulo `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shard {
    pub(crate) index: u64,
    pub(crate) count: u64,
}

impl Shard {
    /// The whole batch.
    pub(crate) const WHOLE: Self = Self { index: 0, count: 1 };

    /// Whether the input at `position` (from 1) is this shard's.
    pub(crate) fn takes(self, position: u64) -> bool {
        position % self.count == self.index
    }

    /// The shard to run: `--shard INDEX/COUNT`, else `--shards COUNT` with
    /// the index from `JOB_COMPLETION_INDEX` (`job_index`), else the whole
    /// batch. Errors name the flag or the variable at fault.
    pub(crate) fn resolve(
        shard: Option<Self>,
        shards: Option<u64>,
        job_index: Option<&str>,
    ) -> Result<Self, String> {
        match (shard, shards) {
            (Some(shard), _) => Ok(shard),
            (None, None) => Ok(Self::WHOLE),
            (None, Some(count)) => {
                let Some(index) = job_index else {
                    return Err(format!(
                        "--shards {count} needs {JOB_COMPLETION_INDEX} (a Kubernetes Indexed Job \
                         sets it); elsewhere use --shard INDEX/{count}"
                    ));
                };
                match index.trim().parse::<u64>() {
                    Ok(index) if index < count => Ok(Self { index, count }),
                    _ => Err(format!(
                        "{JOB_COMPLETION_INDEX} {index:?} with --shards {count}: expected a \
                         whole number from 0 to {}",
                        count - 1
                    )),
                }
            }
        }
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// Parses `--shard INDEX/COUNT`: COUNT at least 1, INDEX below it.
pub(crate) fn parse_shard(value: &str) -> Result<Shard, String> {
    let expected = || {
        format!(
            "expected INDEX/COUNT with COUNT at least 1 and INDEX from 0 to COUNT-1, got {value:?}"
        )
    };
    let (index, count) = value.split_once('/').ok_or_else(expected)?;
    let index: u64 = index.trim().parse().map_err(|_| expected())?;
    let count: u64 = count.trim().parse().map_err(|_| expected())?;
    if count == 0 || index >= count {
        return Err(expected());
    }
    Ok(Shard { index, count })
}

/// How a batch ended.
pub(crate) struct Ended {
    pub(crate) summary: Summary,
    /// The failure ratio stayed at or under `--max-failure-ratio` and no
    /// `--fail-fast` stop happened.
    pub(crate) passed: bool,
}

/// Counts the bytes read, for the progress bar's share and ETA.
struct Counting<R> {
    inner: R,
    read: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// The `--input` of a command: a file, or stdin for `-`.
pub(crate) struct Input {
    /// Its contents, buffered.
    pub(crate) reader: Box<dyn BufRead + Send>,
    /// Its size in bytes, when it is a file.
    pub(crate) total: Option<u64>,
    /// Bytes read from it so far.
    pub(crate) read: Arc<AtomicU64>,
}

/// Opens `--input` (`-` for stdin), counting the bytes read; an error
/// names the flag and the file.
pub(crate) fn open_input(input: &Path) -> anyhow::Result<Input> {
    let read = Arc::new(AtomicU64::new(0));
    let (reader, total): (Box<dyn BufRead + Send>, Option<u64>) = if input == Path::new("-") {
        let stdin = Counting {
            inner: std::io::stdin(),
            read: Arc::clone(&read),
        };
        (Box::new(BufReader::new(stdin)), None)
    } else {
        let file = std::fs::File::open(input)
            .with_context(|| format!("cannot read --input {}", input.display()))?;
        let total = file.metadata().ok().map(|m| m.len());
        let file = Counting {
            inner: file,
            read: Arc::clone(&read),
        };
        (Box::new(BufReader::with_capacity(64 * 1024, file)), total)
    };
    Ok(Input {
        reader,
        total,
        read,
    })
}

/// Runs every input of `args.input` through `pipeline`, decoding each JSON
/// value with `decode`.
pub(crate) async fn run<In, Out>(
    pipeline: &Pipeline<In, Out>,
    decode: impl Fn(serde_json::Value) -> Result<In, pipelens::input::FieldError> + Send + 'static,
    args: &BatchArgs,
) -> anyhow::Result<Ended>
where
    In: Send + Sync + 'static,
    Out: Serialize + Send + Sync + 'static,
{
    let Input {
        reader,
        total,
        read,
    } = open_input(&args.input)?;
    let mut out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot write --output {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    // A bar only for a person watching: stderr is a terminal and the
    // results are not going to a pipe.
    let show_bar = std::io::stderr().is_terminal()
        && (args.output.is_some() || std::io::stdout().is_terminal());
    let bar = Progress::new(show_bar, total, read);

    let shard = args.shard;
    // Another shard's inputs are skipped, not counted; a read error stops
    // every shard alike.
    let items = tokio_stream_of(batch::read_json(reader, decode)).filter(move |item| {
        std::future::ready(item.as_ref().map_or(true, |i| shard.takes(i.position)))
    });
    // Invalid inputs pass through as results; valid ones run, in order,
    // at most `concurrency` at once.
    let results = items
        .map(|item| async move {
            match item {
                Ok(Item {
                    position,
                    input: Ok(input),
                }) => Ok((position, Outcome::Ran(pipeline.run_root(input).await))),
                Ok(Item {
                    position,
                    input: Err(e),
                }) => Ok((position, Outcome::Invalid(e))),
                Err(e) => Err(e),
            }
        })
        .buffered(args.concurrency.max(1));
    futures_util::pin_mut!(results);

    let mut summary = Summary::default();
    let mut stopped = false;
    while let Some(result) = results.next().await {
        let (position, outcome) = result.context("--input")?;
        let line = match &outcome {
            Outcome::Ran(result) => {
                summary.record_run(result);
                result_line(position, result)
            }
            Outcome::Invalid(e) => {
                summary.record_invalid();
                invalid_line(position, e)
            }
        };
        if args.output.is_none() && show_bar {
            // Results share the terminal with the bar: the bar steps aside
            // while a whole line is written and flushed, then comes back.
            bar.suspend(|| -> std::io::Result<()> {
                serde_json::to_writer(&mut out, &line)?;
                out.write_all(b"\n")?;
                out.flush()
            })?;
        } else {
            serde_json::to_writer(&mut out, &line)?;
            out.write_all(b"\n")?;
        }
        bar.update(&summary);
        if args.fail_fast && summary.failures() > 0 {
            stopped = true;
            break;
        }
    }
    out.flush()?;
    bar.finish();
    Ok(Ended {
        passed: !stopped && summary.failure_ratio() <= args.max_failure_ratio,
        summary,
    })
}

/// One input's result before it is written.
enum Outcome<Out> {
    Ran(Result<RunReport<Out>, RunError>),
    Invalid(InputError),
}

fn result_line<Out: Serialize>(
    position: u64,
    result: &Result<RunReport<Out>, RunError>,
) -> serde_json::Value {
    match result {
        Ok(report) => json!({ "line": position, "report": report }),
        Err(e) => json!({
            "line": position,
            "error": {
                "code": "pipeline_failed",
                "stage": e.stage(),
                "message": e.to_string(),
                "trace_id": e.trace_id(),
            }
        }),
    }
}

fn invalid_line(position: u64, e: &InputError) -> serde_json::Value {
    let (code, field) = match e {
        InputError::Field(f) => ("invalid_field", Some(f.field.as_str())),
        _ => ("malformed_json", None),
    };
    json!({
        "line": position,
        "error": { "code": code, "field": field, "message": e.to_string() }
    })
}

/// The receiver as a stream (tokio-stream is not a dependency).
fn tokio_stream_of<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// A one-line progress bar on stderr (indicatif), redrawn at most ten times
/// a second: the share of the input read with its ETA (for a file), inputs
/// done and failed, and the rate. Hidden — nothing written at all — unless
/// the caller says someone watches.
struct Progress {
    bar: indicatif::ProgressBar,
    read: Arc<AtomicU64>,
    started: Instant,
}

impl Progress {
    fn new(enabled: bool, total_bytes: Option<u64>, read: Arc<AtomicU64>) -> Self {
        let target = if enabled {
            indicatif::ProgressDrawTarget::stderr_with_hz(10)
        } else {
            indicatif::ProgressDrawTarget::hidden()
        };
        let (bar, template) = match total_bytes.filter(|t| *t > 0) {
            Some(total) => (
                indicatif::ProgressBar::with_draw_target(Some(total), target),
                "[{bar:20}] {percent:>3}% {msg}, ETA {eta_precise}",
            ),
            None => (
                indicatif::ProgressBar::with_draw_target(None, target),
                "{msg}",
            ),
        };
        // The template is a constant: it parses.
        if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("#-"));
        }
        Self {
            bar,
            read,
            started: Instant::now(),
        }
    }

    fn update(&self, summary: &Summary) {
        let elapsed = self.started.elapsed().as_secs_f64();
        let rate = summary.inputs as f64 / elapsed.max(1e-9);
        self.bar.set_position(self.read.load(Ordering::Relaxed));
        self.bar.set_message(format!(
            "{} done, {} failed, {:.0}/s",
            summary.inputs,
            summary.failures(),
            rate
        ));
    }

    /// Hides the bar while `write` runs, then draws it again.
    fn suspend<R>(&self, write: impl FnOnce() -> R) -> R {
        self.bar.suspend(write)
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_split_every_position_exactly_once() {
        let shards: Vec<Shard> = (0..4).map(|index| Shard { index, count: 4 }).collect();
        for position in 1..=1000 {
            let owners = shards.iter().filter(|s| s.takes(position)).count();
            assert_eq!(owners, 1, "line {position}");
        }
        assert!((1..=10).all(|p| Shard::WHOLE.takes(p)));
    }

    #[test]
    fn shard_flags_parse_and_bad_values_are_named() {
        assert_eq!(parse_shard("1/4"), Ok(Shard { index: 1, count: 4 }));
        assert_eq!(parse_shard("0/1"), Ok(Shard::WHOLE));
        for bad in ["4/4", "1/0", "1", "-1/4", "a/b", "1/4/2", ""] {
            let err = parse_shard(bad).unwrap_err();
            assert!(err.contains("INDEX/COUNT"), "{bad}: {err}");
        }
        let resolve = Shard::resolve;
        assert_eq!(resolve(None, None, Some("3")), Ok(Shard::WHOLE));
        assert_eq!(
            resolve(None, Some(4), Some("3")),
            Ok(Shard { index: 3, count: 4 })
        );
        let flag = Shard { index: 1, count: 2 };
        assert_eq!(resolve(Some(flag), None, Some("0")), Ok(flag));
        let missing = resolve(None, Some(4), None).unwrap_err();
        assert!(
            missing.contains("--shards 4") && missing.contains(JOB_COMPLETION_INDEX),
            "{missing}"
        );
        for bad in ["4", "x", "-1", ""] {
            let err = resolve(None, Some(4), Some(bad)).unwrap_err();
            assert!(
                err.contains(JOB_COMPLETION_INDEX) && err.contains("--shards 4"),
                "{err}"
            );
        }
    }
}
