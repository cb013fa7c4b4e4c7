//! [`RunStore`]: a backend made safe for the request path. Runs go through
//! a bounded queue to a writer task that stores them in batches; feedback
//! first lets the writer catch up, then claims in the backend; a task in
//! the background deletes expired runs and notices when a store that was
//! down answers again.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use futures_util::FutureExt as _;
use opentelemetry::metrics::{BoundCounter, Meter};
use opentelemetry::KeyValue;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use super::memory::Memory;
use super::{Backend, Claim, LateAnswer, RunRecord, StoreConfig, StoreError, StoreTarget};

/// Longest a backend call may take before the store counts as down.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest feedback waits for this process's queued runs to be written.
const FLUSH_WAIT: Duration = Duration::from_secs(2);
/// Rows deleted per expiry statement.
const EXPIRE_BATCH: u32 = 1000;
/// At most one WARN line per kind of loss in this long.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The run store of a process, shared by its pipelines (clone it freely):
/// records runs without ever waiting, claims feedback atomically.
#[derive(Clone)]
pub struct RunStore {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RunStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunStore")
            .field("backend", &self.shared.worker.backend.name())
            .field("target", &self.shared.worker.target)
            .finish_non_exhaustive()
    }
}

struct Shared {
    worker: Arc<Worker>,
    /// Durable stores only: the writer's queue.
    queue: Option<mpsc::Sender<Msg>>,
}

enum Msg {
    Run(RunRecord),
    Late(LateAnswer),
    /// Write what came before now, then answer.
    Flush(oneshot::Sender<()>),
}

struct Worker {
    backend: Arc<dyn Backend>,
    /// Where a durable store's calls run (for callers off the runtime).
    runtime: Option<tokio::runtime::Handle>,
    target: String,
    retention: Duration,
    max_per_pipeline: u64,
    batch: usize,
    flush_interval: Duration,
    up: AtomicBool,
    /// Runs accepted and not written (or failed) yet.
    pending: AtomicU64,
    counts: Option<Counts>,
    dropped_warned: Mutex<Option<Instant>>,
    failed_warned: Mutex<Option<Instant>>,
}

/// `pipelens_run_store_writes_total{outcome}`.
struct Counts {
    written: BoundCounter<u64>,
    dropped: BoundCounter<u64>,
    failed: BoundCounter<u64>,
}

/// What a store is and whether it answers, as `GET /v1/pipelines` shows
/// it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoreStatus {
    /// `memory`, `sqlite`, `postgres`.
    pub backend: &'static str,
    /// The file or URL (without its password).
    pub target: String,
    /// Whether the last call to the backend succeeded.
    pub up: bool,
    /// Runs waiting to be written.
    pub queued: u64,
    /// How long a run waits for its truth, in seconds.
    pub retention_s: u64,
}

impl RunStore {
    /// A store in the process: at most `capacity` runs, each for at most
    /// `retention`. No metrics (each pipeline without a store gets one).
    pub fn memory(capacity: usize, retention: Duration) -> Self {
        let backend = Arc::new(Memory::new(capacity, retention));
        let config = StoreConfig {
            retention,
            ..StoreConfig::memory()
        };
        Self::assemble(backend, "memory".to_owned(), &config, None, None, None)
    }

    /// Opens the store `config` names (creating a SQLite file and its
    /// directory if missing, running the schema's migrations), counting on
    /// `meter` (or the global meter `pipelens`). Call it inside a Tokio
    /// runtime: a durable store's writer runs there.
    pub async fn open(config: &StoreConfig, meter: Option<&Meter>) -> Result<Self, StoreError> {
        let backend: Arc<dyn Backend> = match &config.target {
            StoreTarget::Memory => Arc::new(Memory::new(
                usize::try_from(config.max_runs_per_pipeline).unwrap_or(usize::MAX),
                config.retention,
            )),
            #[cfg(feature = "sqlite")]
            StoreTarget::Sqlite(path) => Arc::new(super::sqlite::Sqlite::open(path).await?),
            #[cfg(feature = "postgres")]
            StoreTarget::Postgres(url) => Arc::new(
                super::postgres::Postgres::open(url, config.password_file.as_deref()).await?,
            ),
            #[allow(unreachable_patterns)]
            other => {
                return Err(StoreError::Config {
                    variable: super::config::RUN_STORE_VAR.to_owned(),
                    value: other.display(),
                    reason: format!("this build has no `{}` cargo feature", other.backend()),
                })
            }
        };
        Self::with_backend(backend, config.target.display(), config, meter)
    }

    /// Wraps a backend of your own (see [`Backend`]) with the batching
    /// queue, the metrics and the expiry task that `config` sets. Call it
    /// inside a Tokio runtime when the backend is durable.
    pub fn new(
        backend: impl Backend,
        target: impl Into<String>,
        config: &StoreConfig,
        meter: Option<&Meter>,
    ) -> Result<Self, StoreError> {
        Self::with_backend(Arc::new(backend), target.into(), config, meter)
    }

    fn with_backend(
        backend: Arc<dyn Backend>,
        target: String,
        config: &StoreConfig,
        meter: Option<&Meter>,
    ) -> Result<Self, StoreError> {
        let runtime = if backend.durable() {
            Some(tokio::runtime::Handle::try_current().map_err(|_| StoreError::NoRuntime)?)
        } else {
            None
        };
        let global;
        let meter = match meter {
            Some(m) => m,
            None => {
                global = opentelemetry::global::meter("pipelens");
                &global
            }
        };
        let Some(runtime) = runtime else {
            let store = Self::assemble(backend, target, config, Some(meter), None, None);
            store.gauges(meter);
            return Ok(store);
        };
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let store = Self::assemble(
            backend,
            target,
            config,
            Some(meter),
            Some(tx),
            Some(runtime.clone()),
        );
        store.gauges(meter);
        runtime.spawn(write_loop(Arc::clone(&store.shared.worker), rx));
        runtime.spawn(maintain(
            Arc::downgrade(&store.shared),
            config.sweep_interval,
        ));
        Ok(store)
    }

    fn assemble(
        backend: Arc<dyn Backend>,
        target: String,
        config: &StoreConfig,
        meter: Option<&Meter>,
        queue: Option<mpsc::Sender<Msg>>,
        runtime: Option<tokio::runtime::Handle>,
    ) -> Self {
        let counts = meter.map(|meter| {
            let counter = meter
                .u64_counter("pipelens.run_store.writes")
                .with_unit("{run}")
                .with_description(
                    "Judged runs the run store wrote, dropped (queue full) or failed to write",
                )
                .build();
            // Every outcome from the start at 0, so the first loss is an
            // increase Prometheus sees.
            let bind = |o: &'static str| {
                let bound = counter.bind(&[KeyValue::new("outcome", o)]);
                bound.add(0);
                bound
            };
            Counts {
                written: bind("written"),
                dropped: bind("dropped"),
                failed: bind("failed"),
            }
        });
        Self {
            shared: Arc::new(Shared {
                worker: Arc::new(Worker {
                    target,
                    retention: config.retention,
                    max_per_pipeline: config.max_runs_per_pipeline,
                    batch: config.batch.max(1),
                    flush_interval: config.flush_interval,
                    up: AtomicBool::new(true),
                    pending: AtomicU64::new(0),
                    counts,
                    dropped_warned: Mutex::new(None),
                    failed_warned: Mutex::new(None),
                    backend,
                    runtime,
                }),
                queue,
            }),
        }
    }

    fn gauges(&self, meter: &Meter) {
        let weak: Weak<Worker> = Arc::downgrade(&self.shared.worker);
        let _depth = meter
            .u64_observable_gauge("pipelens.run_store.queue_depth")
            .with_unit("{run}")
            .with_description("Judged runs waiting to be written to the run store")
            .with_callback(move |o| {
                if let Some(w) = weak.upgrade() {
                    o.observe(w.pending.load(Ordering::Relaxed), &[]);
                }
            })
            .build();
        let weak: Weak<Worker> = Arc::downgrade(&self.shared.worker);
        let _up = meter
            .u64_observable_gauge("pipelens.run_store.up")
            .with_description("1 while the run store answers, 0 while it does not")
            .with_callback(move |o| {
                if let Some(w) = weak.upgrade() {
                    o.observe(
                        u64::from(w.up.load(Ordering::Relaxed)),
                        &[KeyValue::new("backend", w.backend.name())],
                    );
                }
            })
            .build();
    }

    /// Remembers a run until its truth arrives. Never waits: a durable
    /// store queues it (a full queue drops it, counted and logged).
    pub fn record(&self, run: RunRecord) {
        self.submit(
            Msg::Run(run),
            "run store queue full: judged runs dropped; their feedback will be answered as unknown",
        );
    }

    /// Adds a shadow's answer to its run, stored before (call it after
    /// [`RunStore::record`] of that run). Never waits, like `record`; it is
    /// counted among the writes.
    pub fn add_answer(&self, late: LateAnswer) {
        self.submit(
            Msg::Late(late),
            "run store queue full: shadow answers dropped; they will not be judged",
        );
    }

    /// Writes `msg` at once to a store that is not durable, else queues it
    /// for the writer; a full queue drops it with `dropped_warning`.
    fn submit(&self, msg: Msg, dropped_warning: &str) {
        let worker = &self.shared.worker;
        let Some(queue) = &self.shared.queue else {
            let written = match &msg {
                Msg::Run(run) => worker.backend.write(std::slice::from_ref(run)),
                Msg::Late(late) => worker.backend.add_answers(std::slice::from_ref(late)),
                Msg::Flush(_) => return,
            }
            .now_or_never();
            match written {
                Some(Ok(())) => worker.count(|c| &c.written, 1),
                _ => worker.count(|c| &c.failed, 1),
            }
            return;
        };
        worker.pending.fetch_add(1, Ordering::Relaxed);
        if queue.try_send(msg).is_err() {
            worker.pending.fetch_sub(1, Ordering::Relaxed);
            worker.count(|c| &c.dropped, 1);
            worker.warn_once(&worker.dropped_warned, dropped_warning, None);
        }
    }

    /// Waits (at most 2 s) until the runs this process queued so far are
    /// written (not at all while the store is down).
    pub async fn flush(&self) {
        let Some(queue) = &self.shared.queue else {
            return;
        };
        let worker = &self.shared.worker;
        // Nothing queued, or a store that is down: nothing to wait for.
        if worker.pending.load(Ordering::Acquire) == 0 || !worker.up.load(Ordering::Relaxed) {
            return;
        }
        let (tx, rx) = oneshot::channel();
        let _ = tokio::time::timeout(FLUSH_WAIT, async {
            if queue.send(Msg::Flush(tx)).await.is_ok() {
                let _ = rx.await;
            }
        })
        .await;
    }

    /// Claims `stage` of run `run_id` of `pipeline` for its truth, once.
    /// Runs this process queued are written first; a run another replica
    /// made a moment ago is looked for twice.
    pub async fn claim(
        &self,
        pipeline: &str,
        run_id: u128,
        stage: &str,
    ) -> Result<Claim, StoreError> {
        self.flush().await;
        let worker = &self.shared.worker;
        let first = worker.claim(pipeline, run_id, stage).await?;
        if first != Claim::Unknown || self.shared.queue.is_none() {
            return Ok(first);
        }
        // Another replica's writer may hold it for a few milliseconds more.
        tokio::time::sleep(worker.flush_interval * 4 + Duration::from_millis(20)).await;
        worker.claim(pipeline, run_id, stage).await
    }

    /// What the store is and whether it answers.
    pub fn status(&self) -> StoreStatus {
        let w = &self.shared.worker;
        StoreStatus {
            backend: w.backend.name(),
            target: w.target.clone(),
            up: w.up.load(Ordering::Relaxed),
            queued: w.pending.load(Ordering::Relaxed),
            retention_s: w.retention.as_secs(),
        }
    }

    /// Whether the runs outlive the process (SQLite, Postgres): then the
    /// pipelines given this store keep their drift references in it too.
    pub fn is_durable(&self) -> bool {
        self.shared.worker.runtime.is_some()
    }

    /// The drift reference `part` of `pipeline`, waiting for the store (at
    /// most 5 s). For threads off the async runtime, such as the drift
    /// thread: never call it from async code.
    pub(crate) fn load_reference_blocking(
        &self,
        pipeline: &str,
        part: &'static str,
    ) -> Result<Option<String>, StoreError> {
        let pipeline = pipeline.to_owned();
        self.blocking(move |w| {
            Box::pin(async move { w.timed(w.backend.load_reference(&pipeline, part)).await })
        })
    }

    /// Saves a learned drift reference unless another replica saved one
    /// first; returns the one saved now. Blocking, like
    /// [`RunStore::load_reference_blocking`].
    pub(crate) fn save_reference_blocking(
        &self,
        pipeline: &str,
        part: &'static str,
        body: String,
    ) -> Result<Option<String>, StoreError> {
        let pipeline = pipeline.to_owned();
        self.blocking(move |w| {
            Box::pin(async move {
                w.timed(w.backend.save_reference(&pipeline, part, &body))
                    .await
            })
        })
    }

    /// Runs `call` on the store's runtime and waits for it from this
    /// (non-async) thread.
    fn blocking<T: Send + 'static>(
        &self,
        call: impl FnOnce(Arc<Worker>) -> futures_util::future::BoxFuture<'static, Result<T, StoreError>>
            + Send
            + 'static,
    ) -> Result<T, StoreError> {
        let worker = Arc::clone(&self.shared.worker);
        let Some(runtime) = worker.runtime.clone() else {
            return Err(StoreError::NoRuntime);
        };
        let (tx, rx) = std::sync::mpsc::channel();
        runtime.spawn(async move {
            let _ = tx.send(call(worker).await);
        });
        rx.recv_timeout(CALL_TIMEOUT + Duration::from_secs(1))
            .unwrap_or_else(|_| {
                Err(StoreError::Unavailable {
                    backend: self.shared.worker.backend.name(),
                    message: "no answer".to_owned(),
                })
            })
    }

    /// How long a run waits for its truth.
    pub fn retention(&self) -> Duration {
        self.shared.worker.retention
    }

    /// Deletes expired runs now (the store also does it every
    /// `sweep_interval`); returns how many went.
    pub async fn expire_now(&self) -> Result<u64, StoreError> {
        self.shared.worker.sweep().await
    }
}

impl Worker {
    fn count(&self, which: impl Fn(&Counts) -> &BoundCounter<u64>, n: u64) {
        if let Some(c) = &self.counts {
            which(c).add(n);
        }
    }

    /// Logs `message` at WARN unless it was logged in the last 10 s.
    fn warn_once(&self, gate: &Mutex<Option<Instant>>, message: &str, error: Option<&str>) {
        {
            let mut last = gate.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < WARN_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        tracing::warn!(
            run_store.backend = self.backend.name(),
            run_store.target = self.target.as_str(),
            error.message = error.unwrap_or(""),
            "{message}"
        );
    }

    fn mark(&self, up: bool) {
        let was = self.up.swap(up, Ordering::Relaxed);
        if up && !was {
            tracing::info!(
                run_store.backend = self.backend.name(),
                run_store.target = self.target.as_str(),
                "run store answers again"
            );
        }
    }

    async fn timed<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let result = match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable {
                backend: self.backend.name(),
                message: format!("no answer in {CALL_TIMEOUT:?}"),
            }),
        };
        self.mark(result.is_ok());
        result
    }

    async fn claim(&self, pipeline: &str, run_id: u128, stage: &str) -> Result<Claim, StoreError> {
        let not_before = SystemTime::now()
            .checked_sub(self.retention)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        self.timed(self.backend.claim(pipeline, run_id, stage, not_before))
            .await
    }

    async fn write(&self, batch: &[RunRecord]) {
        self.outcome(batch.len(), self.backend.write(batch)).await;
    }

    async fn add_answers(&self, late: &[LateAnswer]) {
        self.outcome(late.len(), self.backend.add_answers(late))
            .await;
    }

    /// Counts a batch of `n` writes by how `call` went.
    async fn outcome(
        &self,
        n: usize,
        call: impl std::future::Future<Output = Result<(), StoreError>>,
    ) {
        let n = n as u64;
        match self.timed(call).await {
            Ok(()) => self.count(|c| &c.written, n),
            Err(e) => {
                self.count(|c| &c.failed, n);
                self.warn_once(
                    &self.failed_warned,
                    "run store write failed: judged runs lost; their feedback will be answered as unknown",
                    Some(&e.to_string()),
                );
            }
        }
        self.pending.fetch_sub(n, Ordering::Release);
    }

    async fn sweep(&self) -> Result<u64, StoreError> {
        let before = SystemTime::now()
            .checked_sub(self.retention)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut gone = 0;
        // Small statements, so the database never holds a long lock; a
        // bounded number per sweep, so a huge backlog spreads over sweeps.
        for _ in 0..100 {
            let n = self
                .timed(
                    self.backend
                        .expire(before, self.max_per_pipeline, EXPIRE_BATCH),
                )
                .await?;
            gone += n;
            if n < u64::from(EXPIRE_BATCH) {
                break;
            }
            tokio::task::yield_now().await;
        }
        if gone > 0 {
            tracing::debug!(
                run_store.backend = self.backend.name(),
                runs = gone,
                "expired runs deleted"
            );
        }
        Ok(gone)
    }
}

/// Writes queued runs in batches: at most `batch` runs, waiting at most
/// `flush_interval` after the first; a flush request writes at once.
async fn write_loop(worker: Arc<Worker>, mut rx: mpsc::Receiver<Msg>) {
    let mut batch = Vec::with_capacity(worker.batch);
    let mut late = Vec::new();
    let mut flushes = Vec::new();
    let take =
        |msg: Msg, batch: &mut Vec<RunRecord>, late: &mut Vec<_>, flushes: &mut Vec<_>| match msg {
            Msg::Run(run) => batch.push(run),
            Msg::Late(answer) => late.push(answer),
            Msg::Flush(done) => flushes.push(done),
        };
    while let Some(first) = rx.recv().await {
        take(first, &mut batch, &mut late, &mut flushes);
        let deadline = tokio::time::Instant::now() + worker.flush_interval;
        while flushes.is_empty() && batch.len() + late.len() < worker.batch {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(msg)) => take(msg, &mut batch, &mut late, &mut flushes),
                Ok(None) | Err(_) => break,
            }
        }
        // Runs first: a late answer goes to a run queued before it.
        if !batch.is_empty() {
            worker.write(&batch).await;
            batch.clear();
        }
        if !late.is_empty() {
            worker.add_answers(&late).await;
            late.clear();
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

/// Deletes expired runs every `sweep_interval`, and while the store is
/// down asks it every second whether it is back.
async fn maintain(shared: Weak<Shared>, sweep_interval: Duration) {
    let mut last_sweep = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(1).min(sweep_interval)).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let worker = Arc::clone(&shared.worker);
        drop(shared);
        if !worker.up.load(Ordering::Relaxed) {
            let _ = worker.timed(worker.backend.ping()).await;
        }
        if last_sweep.elapsed() >= sweep_interval {
            last_sweep = Instant::now();
            if let Err(e) = worker.sweep().await {
                tracing::debug!(error.message = %e, "run store expiry failed; retried next sweep");
            }
        }
    }
}
