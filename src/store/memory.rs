//! The memory backend: runs kept in the process, bounded in number and
//! age, sharded so concurrent runs rarely wait on each other. Lost on
//! restart and not shared by replicas: the library's default, and the
//! right store for one process whose truth arrives within the hour.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use futures_util::future::{self, BoxFuture};

use super::{Backend, Claim, LateAnswer, RunRecord, StageRecord, StoreError};

const SHARDS: usize = 16;

struct Entry {
    pipeline: String,
    at: SystemTime,
    /// By judged stage, with whether it has had its truth.
    stages: Vec<(StageRecord, bool)>,
}

#[derive(Default)]
struct Shard {
    runs: HashMap<u128, Entry>,
    /// Run ids in the order they were stored (so oldest first).
    order: VecDeque<u128>,
}

/// Runs in the process: at most `capacity` (the oldest go first), none
/// older than `retention`.
pub struct Memory {
    shards: [Mutex<Shard>; SHARDS],
    per_shard: usize,
    retention: Duration,
}

impl Memory {
    /// Keeps at most `capacity` runs, each for at most `retention`.
    pub fn new(capacity: usize, retention: Duration) -> Self {
        Self {
            shards: std::array::from_fn(|_| Mutex::new(Shard::default())),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            retention,
        }
    }

    fn shard(&self, id: u128) -> MutexGuard<'_, Shard> {
        // Ids are random: their low bits spread evenly.
        let shard = &self.shards[(id as usize) % SHARDS];
        shard.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores one run (what [`Backend::write`] does for each).
    pub fn insert(&self, run: &RunRecord) {
        let now = SystemTime::now();
        let mut shard = self.shard(run.run_id);
        shard.evict(now, self.retention, self.per_shard.saturating_sub(1));
        if shard.runs.contains_key(&run.run_id) {
            return;
        }
        shard.runs.insert(
            run.run_id,
            Entry {
                pipeline: run.pipeline.clone(),
                at: run.at,
                stages: run.stages.iter().map(|s| (s.clone(), false)).collect(),
            },
        );
        shard.order.push_back(run.run_id);
    }

    /// Adds a late answer to its stored stage, unless judged already.
    pub fn add_answer(&self, late: &LateAnswer) {
        let mut shard = self.shard(late.run_id);
        let Some(entry) = shard.runs.get_mut(&late.run_id) else {
            return;
        };
        if entry.pipeline != late.pipeline {
            return;
        }
        if let Some((record, false)) = entry.stages.iter_mut().find(|(s, _)| s.stage == late.stage)
        {
            record.answers.push(late.answer.clone());
        }
    }

    fn take(&self, pipeline: &str, run_id: u128, stage: &str, not_before: SystemTime) -> Claim {
        let mut shard = self.shard(run_id);
        shard.evict(SystemTime::now(), self.retention, self.per_shard);
        let Some(entry) = shard.runs.get_mut(&run_id) else {
            return Claim::Unknown;
        };
        if entry.pipeline != pipeline || entry.at < not_before {
            return Claim::Unknown;
        }
        match entry.stages.iter_mut().find(|(s, _)| s.stage == stage) {
            None => Claim::Unknown,
            Some((_, true)) => Claim::AlreadyClaimed,
            Some((record, judged)) => {
                *judged = true;
                Claim::Claimed(StageRecord {
                    stage: record.stage.clone(),
                    selected: record.selected.take(),
                    answers: std::mem::take(&mut record.answers),
                })
            }
        }
    }

    /// Runs kept now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).runs.len())
            .sum()
    }

    /// Whether no run is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Shard {
    /// Drops runs older than `retention`, then the oldest until at most
    /// `keep` are left.
    fn evict(&mut self, now: SystemTime, retention: Duration, keep: usize) {
        while let Some(&oldest) = self.order.front() {
            let expired = self
                .runs
                .get(&oldest)
                .is_none_or(|e| now.duration_since(e.at).unwrap_or_default() > retention);
            if !expired && self.runs.len() <= keep {
                break;
            }
            self.order.pop_front();
            self.runs.remove(&oldest);
        }
    }
}

impl Backend for Memory {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn durable(&self) -> bool {
        false
    }

    fn write<'a>(&'a self, runs: &'a [RunRecord]) -> BoxFuture<'a, Result<(), StoreError>> {
        for run in runs {
            self.insert(run);
        }
        Box::pin(future::ready(Ok(())))
    }

    fn add_answers<'a>(&'a self, late: &'a [LateAnswer]) -> BoxFuture<'a, Result<(), StoreError>> {
        for answer in late {
            self.add_answer(answer);
        }
        Box::pin(future::ready(Ok(())))
    }

    fn claim<'a>(
        &'a self,
        pipeline: &'a str,
        run_id: u128,
        stage: &'a str,
        not_before: SystemTime,
    ) -> BoxFuture<'a, Result<Claim, StoreError>> {
        Box::pin(future::ready(Ok(
            self.take(pipeline, run_id, stage, not_before)
        )))
    }

    fn expire(
        &self,
        before: SystemTime,
        _max_per_pipeline: u64,
        _limit: u32,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        let now = SystemTime::now();
        let retention = now.duration_since(before).unwrap_or_default();
        let mut gone = 0;
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            let held = shard.runs.len();
            shard.evict(now, retention, self.per_shard);
            gone += (held - shard.runs.len()) as u64;
        }
        Box::pin(future::ready(Ok(gone)))
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(future::ready(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::answer::Answer;
    use crate::store::ModelAnswer;

    fn run(id: u128, pipeline: &str, at: SystemTime) -> RunRecord {
        RunRecord {
            pipeline: pipeline.to_owned(),
            run_id: id,
            at,
            stages: vec![StageRecord {
                stage: "classify".to_owned(),
                selected: Some("a".to_owned()),
                answers: vec![ModelAnswer {
                    model: "a".to_owned(),
                    answer: Some(Answer::Label("x".to_owned())),
                }],
            }],
        }
    }

    #[test]
    fn a_stage_is_claimed_once_and_only_by_its_pipeline() {
        let m = Memory::new(100, Duration::from_secs(60));
        let now = SystemTime::now();
        let epoch = SystemTime::UNIX_EPOCH;
        m.insert(&run(7, "p", now));
        assert_eq!(m.take("q", 7, "classify", epoch), Claim::Unknown);
        assert_eq!(m.take("p", 7, "other", epoch), Claim::Unknown);
        assert_eq!(m.take("p", 8, "classify", epoch), Claim::Unknown);
        let Claim::Claimed(stage) = m.take("p", 7, "classify", epoch) else {
            panic!("not claimed")
        };
        assert_eq!(stage.selected.as_deref(), Some("a"));
        assert_eq!(m.take("p", 7, "classify", epoch), Claim::AlreadyClaimed);
    }

    #[test]
    fn late_answers_join_a_stage_until_it_is_judged() {
        let m = Memory::new(100, Duration::from_secs(60));
        m.insert(&run(7, "p", SystemTime::now()));
        let late = |model: &str| LateAnswer {
            pipeline: "p".to_owned(),
            run_id: 7,
            stage: "classify".to_owned(),
            answer: ModelAnswer {
                model: model.to_owned(),
                answer: Some(Answer::Label("y".to_owned())),
            },
        };
        m.add_answer(&late("shadow"));
        m.add_answer(&LateAnswer {
            pipeline: "q".to_owned(),
            ..late("other-pipeline")
        });
        let Claim::Claimed(stage) = m.take("p", 7, "classify", SystemTime::UNIX_EPOCH) else {
            panic!("not claimed")
        };
        let models: Vec<&str> = stage.answers.iter().map(|a| a.model.as_str()).collect();
        assert_eq!(models, ["a", "shadow"]);
        // After the truth: nothing to add to.
        m.add_answer(&late("too-late"));
        assert_eq!(
            m.take("p", 7, "classify", SystemTime::UNIX_EPOCH),
            Claim::AlreadyClaimed
        );
    }

    #[test]
    fn old_and_excess_runs_go_first() {
        let m = Memory::new(SHARDS, Duration::from_secs(60));
        let now = SystemTime::now();
        m.insert(&run(1, "p", now - Duration::from_secs(120)));
        m.insert(&run(1 + SHARDS as u128, "p", now));
        // The expired run went when the newer one came into its shard.
        assert_eq!(m.len(), 1);
        for i in 0..10u128 {
            m.insert(&run(2 + i * SHARDS as u128, "p", now));
        }
        assert_eq!(m.len(), 2, "one run per shard");
        assert_eq!(
            m.take("p", 1, "classify", SystemTime::UNIX_EPOCH),
            Claim::Unknown
        );
    }
}
