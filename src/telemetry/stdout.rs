//! Log lines for stdout, written in batches by a thread of their own.
//!
//! Writing each line to stdout with its own `write(2)` cost ~10% of the
//! service's CPU under load (`perf`, the fraud pipeline of `cargo bench
//! --bench service_load -- --suite peer`): a system call per line, and a
//! wake-up of whatever reads the pipe (a container runtime). And when the
//! reader falls behind the pipe fills and that `write` blocks the request
//! that logged. Here a line is appended to a bounded buffer under a short
//! lock; a writer thread takes the whole buffer every [`FLUSH_EVERY`] (or
//! sooner once [`HIGH_WATER`] bytes wait) and writes it at once. Past
//! [`CAPACITY`] bytes waiting (stdout blocked), lines are dropped and
//! counted, never waited for. Lines are whole and in order; what waits is
//! written when the writer is flushed (at telemetry shutdown) or dropped.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How long a line waits at most before it is written.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_millis(20);
/// Bytes waiting that wake the writer before its next tick.
pub(crate) const HIGH_WATER: usize = 64 * 1024;
/// Bytes that may wait at most; lines past it are dropped and counted.
pub(crate) const CAPACITY: usize = 4 * 1024 * 1024;

/// The buffer the request path appends to and the writer thread empties.
struct Shared {
    state: Mutex<State>,
    /// Signalled when `HIGH_WATER` is crossed, a flush is asked for, or the
    /// writer is closed.
    wake: Condvar,
    /// Signalled when the writer has written what it took.
    written: Condvar,
    dropped: AtomicU64,
}

#[derive(Default)]
struct State {
    waiting: Vec<u8>,
    /// Flushes asked for and flushes done: a flush waits until `done`
    /// reaches the `asked` it saw.
    asked: u64,
    done: u64,
    closed: bool,
}

/// Stdout (or any writer) behind a batching thread; the layers write
/// through a [`SharedLines`] of it.
pub(crate) struct BatchedLines {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for BatchedLines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchedLines")
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl BatchedLines {
    /// Lines for stdout.
    pub(crate) fn stdout() -> io::Result<Self> {
        Self::new(io::stdout())
    }

    /// Lines for `out`, written by a thread named `pipelens-stdout`.
    pub(crate) fn new<O: Write + Send + 'static>(mut out: O) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            written: Condvar::new(),
            dropped: AtomicU64::new(0),
        });
        let writer = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("pipelens-stdout".into())
            .spawn(move || {
                let mut spare = Vec::new();
                loop {
                    let (asked, closed) = {
                        let mut state = writer.lock();
                        if state.waiting.is_empty() && state.asked == state.done && !state.closed {
                            state = writer
                                .wake
                                .wait_timeout(state, FLUSH_EVERY)
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .0;
                        }
                        std::mem::swap(&mut state.waiting, &mut spare);
                        (state.asked, state.closed)
                    };
                    if !spare.is_empty() {
                        // Nowhere to report a failed write to stdout.
                        let _ = out.write_all(&spare);
                        let _ = out.flush();
                        spare.clear();
                        if spare.capacity() > HIGH_WATER * 4 {
                            spare.shrink_to(HIGH_WATER);
                        }
                    }
                    let finished = {
                        let mut state = writer.lock();
                        state.done = state.done.max(asked);
                        closed && state.waiting.is_empty()
                    };
                    writer.written.notify_all();
                    if finished {
                        return;
                    }
                }
            })?;
        Ok(Self {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Lines dropped so far because [`CAPACITY`] bytes were waiting.
    pub(crate) fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Waits until every line appended before this call has been written.
    pub(crate) fn flush(&self) {
        let mut state = self.shared.lock();
        if state.closed {
            return;
        }
        state.asked += 1;
        let ticket = state.asked;
        self.shared.wake.notify_one();
        while state.done < ticket && !state.closed {
            state = self
                .shared
                .written
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

impl Drop for BatchedLines {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Appends one whole line (or drops and counts it).
    fn append(&self, line: &[u8]) {
        let mut state = self.lock();
        let before = state.waiting.len();
        if before + line.len() > CAPACITY || state.closed {
            drop(state);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        state.waiting.extend_from_slice(line);
        let crossed = before < HIGH_WATER && state.waiting.len() >= HIGH_WATER;
        drop(state);
        if crossed {
            self.wake.notify_one();
        }
    }
}

/// What a layer writes one line through.
pub(crate) struct Line<'a>(&'a Shared);

impl Write for Line<'_> {
    /// Takes the whole of `buf`: the layers write each line with one
    /// `write_all`, so a line is never split.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A shared [`BatchedLines`]: the layer writes through one clone, the
/// telemetry handle flushes it at shutdown through another.
#[derive(Debug, Clone)]
pub(crate) struct SharedLines(pub(crate) Arc<BatchedLines>);

impl<'a> MakeWriter<'a> for SharedLines {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        Line(&self.0.shared)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A writer whose output the test reads, optionally blocked.
    #[derive(Clone, Default)]
    struct Sink {
        out: Arc<Mutex<Vec<u8>>>,
        blocked: Arc<Mutex<()>>,
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let _held = self.blocked.lock().unwrap();
            self.out.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn line(writer: &BatchedLines, text: &str) {
        Line(&writer.shared).write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn lines_from_many_threads_come_out_whole_and_in_order() {
        let sink = Sink::default();
        let writer = Arc::new(BatchedLines::new(sink.clone()).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let writer = Arc::clone(&writer);
                std::thread::spawn(move || {
                    for i in 0..5000 {
                        line(&writer, &format!("{{\"thread\":{t},\"i\":{i}}}\n"));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        writer.flush();
        let text = String::from_utf8(sink.out.lock().unwrap().clone()).unwrap();
        let mut next = [0u64; 4];
        for l in text.lines() {
            let v: serde_json::Value = serde_json::from_str(l).expect(l);
            let t = v["thread"].as_u64().unwrap() as usize;
            assert_eq!(v["i"].as_u64().unwrap(), next[t], "{l}");
            next[t] += 1;
        }
        assert_eq!(next, [5000; 4]);
        assert_eq!(writer.dropped(), 0);
    }

    #[test]
    fn a_line_is_written_within_the_flush_interval_without_asking() {
        let sink = Sink::default();
        let writer = BatchedLines::new(sink.clone()).unwrap();
        line(&writer, "one\n");
        let deadline = Instant::now() + Duration::from_secs(5);
        while sink.out.lock().unwrap().is_empty() {
            assert!(Instant::now() < deadline, "the line was never written");
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(&*sink.out.lock().unwrap(), b"one\n");
    }

    #[test]
    fn a_blocked_stdout_drops_and_counts_lines_instead_of_waiting() {
        let sink = Sink::default();
        let blocked = sink.blocked.lock().unwrap();
        let writer = BatchedLines::new(sink.clone()).unwrap();
        // The writer thread takes the first line and blocks writing it.
        line(&writer, "first\n");
        std::thread::sleep(FLUSH_EVERY * 3);
        let text = "x".repeat(1023) + "\n";
        let started = Instant::now();
        let lines = CAPACITY / text.len() + 100;
        for _ in 0..lines {
            line(&writer, &text);
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "appending waited for stdout"
        );
        assert_eq!(writer.dropped(), 100);
        drop(blocked);
        writer.flush();
        let written = sink.out.lock().unwrap().len();
        assert_eq!(written, "first\n".len() + (lines - 100) * text.len());
    }

    #[test]
    fn dropping_the_writer_writes_what_waits() {
        let sink = Sink::default();
        let writer = BatchedLines::new(sink.clone()).unwrap();
        for i in 0..100 {
            line(&writer, &format!("{i}\n"));
        }
        drop(writer);
        let text = String::from_utf8(sink.out.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 100);
    }
}
