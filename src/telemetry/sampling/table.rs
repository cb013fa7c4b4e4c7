//! The traces tail sampling holds while their local root runs, and the
//! recent decisions that late spans and log records follow. Sharded by
//! trace id so concurrent runs rarely share a lock.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use opentelemetry::trace::TraceId;
use opentelemetry::InstrumentationScope;
use opentelemetry_sdk::logs::SdkLogRecord;
use opentelemetry_sdk::trace::SpanData;

use super::super::exemplars::Offered;

const SHARDS: usize = 16;
/// Decisions remembered per shard, for spans and records that arrive after
/// their root (a timed-out model left running on the blocking pool).
const DECIDED_PER_SHARD: usize = 2048;
/// Spans room is made for when a trace is first held.
const SPANS_HINT: usize = 16;
/// Exemplars held per trace.
const EXEMPLARS_PER_TRACE: usize = 16;

/// What one held trace has so far.
#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) since: Instant,
    pub(crate) spans: Vec<SpanData>,
    pub(crate) logs: Vec<(SdkLogRecord, InstrumentationScope)>,
    pub(crate) exemplars: Vec<Offered>,
    pub(crate) error: bool,
    pub(crate) parent_sampled: bool,
}

impl Held {
    /// An empty entry, first seen `now`.
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            since: now,
            // A run of the demo is 9 spans: no regrowth (and no copy of
            // every span held so far) for typical traces.
            spans: Vec::with_capacity(SPANS_HINT),
            logs: Vec::new(),
            exemplars: Vec::new(),
            error: false,
            parent_sampled: false,
        }
    }

    /// Spans and log records held.
    pub(crate) fn items(&self) -> usize {
        self.spans.len() + self.logs.len()
    }

    /// Adds what `other` holds (a part that arrived while this one was
    /// being decided).
    pub(crate) fn merge(&mut self, other: Held) {
        self.spans.extend(other.spans);
        self.logs.extend(other.logs);
        self.exemplars.extend(other.exemplars);
        self.error |= other.error;
        self.parent_sampled |= other.parent_sampled;
    }

    pub(crate) fn add_exemplar(&mut self, offered: Offered) {
        if self.exemplars.len() < EXEMPLARS_PER_TRACE {
            self.exemplars.push(offered);
        }
    }
}

/// One shard: held traces and remembered decisions.
/// A map keyed by trace id. Trace ids come from callers, so the hash is
/// seeded per process (foldhash), not the identity; it is several times
/// cheaper than the standard SipHash on a 16-byte key.
type ByTrace<V> = HashMap<TraceId, V, foldhash::fast::RandomState>;

#[derive(Debug)]
pub(crate) struct Shard {
    pub(crate) held: ByTrace<Held>,
    /// Local roots started and not ended, per trace: a second one is a
    /// fragment of the first (an in-process endpoint the run called).
    open: ByTrace<u32>,
    decided: ByTrace<bool>,
    order: VecDeque<TraceId>,
    last_sweep: Instant,
}

impl Shard {
    /// A local root of `trace` starts; whether another one of the same
    /// trace is open, which makes this one a fragment of it. At most
    /// `max_open` traces are tracked (past that, roots stand alone).
    pub(crate) fn root_started(&mut self, trace: TraceId, max_open: usize) -> bool {
        if let Some(n) = self.open.get_mut(&trace) {
            *n += 1;
            return true;
        }
        if self.open.len() < max_open {
            self.open.insert(trace, 1);
        }
        false
    }

    /// A local root of `trace` ended; whether another one is still open,
    /// which makes this one a fragment to hold with the trace.
    pub(crate) fn root_ended(&mut self, trace: TraceId) -> bool {
        match self.open.get_mut(&trace) {
            Some(n) if *n > 1 => {
                *n -= 1;
                true
            }
            Some(_) => {
                self.open.remove(&trace);
                false
            }
            None => false,
        }
    }

    /// The remembered decision of `trace` (true: kept).
    pub(crate) fn decided(&self, trace: TraceId) -> Option<bool> {
        self.decided.get(&trace).copied()
    }

    /// Remembers that `trace` was kept or dropped, forgetting the oldest.
    pub(crate) fn remember(&mut self, trace: TraceId, keep: bool) {
        if self.decided.insert(trace, keep).is_none() {
            self.order.push_back(trace);
            if self.order.len() > DECIDED_PER_SHARD {
                if let Some(old) = self.order.pop_front() {
                    self.decided.remove(&old);
                }
            }
        }
    }

    /// Removes and returns the traces held since before `deadline`, at most
    /// once a second.
    pub(crate) fn expired(&mut self, now: Instant, deadline: Instant) -> Vec<(TraceId, Held)> {
        if now.duration_since(self.last_sweep).as_secs() < 1 {
            return Vec::new();
        }
        self.last_sweep = now;
        let old: Vec<TraceId> = self
            .held
            .iter()
            .filter(|(_, h)| h.since < deadline)
            .map(|(t, _)| *t)
            .collect();
        old.into_iter()
            .filter_map(|t| self.held.remove(&t).map(|h| (t, h)))
            .collect()
    }
}

/// All shards and the count of held traces.
#[derive(Debug)]
pub(crate) struct Table {
    shards: Vec<Mutex<Shard>>,
    held: AtomicUsize,
    max_traces: usize,
}

/// What happened to an item offered to the table.
pub(crate) enum Placed<T> {
    /// Held with its trace; `created` when it is the trace's first item.
    Held {
        /// Whether the trace's entry was made for this item.
        created: bool,
    },
    /// Its trace was decided already: export it if true.
    Decided(bool, T),
    /// Too many traces are held: decide this one now.
    Full(T),
}

impl Table {
    pub(crate) fn new(max_traces: usize) -> Self {
        let now = Instant::now();
        Self {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        held: ByTrace::default(),
                        open: ByTrace::default(),
                        decided: ByTrace::default(),
                        order: VecDeque::new(),
                        last_sweep: now,
                    })
                })
                .collect(),
            held: AtomicUsize::new(0),
            max_traces: max_traces.max(1),
        }
    }

    /// The shard of `trace`, locked.
    pub(crate) fn shard(&self, trace: TraceId) -> MutexGuard<'_, Shard> {
        let b = trace.to_bytes();
        self.shards[usize::from(b[15]) % SHARDS]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every shard index, for sweeps at shutdown.
    pub(crate) fn lock_index(&self, i: usize) -> MutexGuard<'_, Shard> {
        self.shards[i]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) const SHARDS: usize = SHARDS;

    /// How many traces with open local roots each shard tracks: as many
    /// as may be held, four times over (roots of traces decided early
    /// stay open until they end).
    pub(crate) fn max_open(&self) -> usize {
        (self.max_traces * 4).div_ceil(Self::SHARDS).max(1)
    }

    /// Traces held now.
    pub(crate) fn held_count(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Puts `item` with its trace in `shard` via `add`, creating the entry if
    /// there is room.
    pub(crate) fn place<T>(
        &self,
        shard: &mut Shard,
        trace: TraceId,
        item: T,
        add: impl FnOnce(&mut Held, T),
    ) -> Placed<T> {
        if let Some(keep) = shard.decided(trace) {
            return Placed::Decided(keep, item);
        }
        if let Some(h) = shard.held.get_mut(&trace) {
            add(h, item);
            return Placed::Held { created: false };
        }
        if self.held.fetch_add(1, Ordering::AcqRel) >= self.max_traces {
            self.held.fetch_sub(1, Ordering::AcqRel);
            return Placed::Full(item);
        }
        let mut h = Held::new(Instant::now());
        add(&mut h, item);
        shard.held.insert(trace, h);
        Placed::Held { created: true }
    }

    /// Takes `trace` out of `shard`, if held.
    pub(crate) fn take(&self, shard: &mut Shard, trace: TraceId) -> Option<Held> {
        let h = shard.held.remove(&trace)?;
        self.held.fetch_sub(1, Ordering::AcqRel);
        Some(h)
    }

    /// Accounts for entries removed by [`Shard::expired`] or at shutdown.
    pub(crate) fn released(&self, n: usize) {
        self.held.fetch_sub(n, Ordering::AcqRel);
    }
}
