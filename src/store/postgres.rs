//! The Postgres backend (cargo feature `postgres`): one database shared by
//! every replica, so a run made on one is judged by feedback that reaches
//! another, after any restart. Claims are a single conditional `UPDATE`, so
//! of two truths for one run posted to two replicas at once exactly one
//! wins.

use std::path::Path;
use std::str::FromStr as _;
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Row as _};

use super::config::{redact, split_password, PASSWORD_FILE_VAR};
use super::sql::{self, SCHEMA_VERSION};
use super::{run_id_hex, unix_ms, Backend, Claim, LateAnswer, RunRecord, StoreError};

const NAME: &str = "postgres";
/// Taken while migrating, so replicas starting together migrate one at a
/// time.
const MIGRATION_LOCK: i64 = 0x7069_7065_6c65_6e73; // "pipelens"

/// Each version's statements; `MIGRATIONS[v - 1]` takes the schema to `v`.
const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE pipelens_runs (
    pipeline     TEXT   NOT NULL,
    run_id       TEXT   NOT NULL,
    stage        TEXT   NOT NULL,
    at_ms        BIGINT NOT NULL,
    selected     TEXT,
    answers      TEXT   NOT NULL,
    judged_at_ms BIGINT,
    PRIMARY KEY (pipeline, run_id, stage)
);
CREATE INDEX pipelens_runs_by_time ON pipelens_runs (at_ms);
CREATE INDEX pipelens_runs_by_pipeline_time ON pipelens_runs (pipeline, at_ms);
",
    "
CREATE TABLE pipelens_drift_references (
    pipeline    TEXT    NOT NULL,
    part        TEXT    NOT NULL,
    body        TEXT    NOT NULL,
    saved_at_ms BIGINT  NOT NULL,
    PRIMARY KEY (pipeline, part)
);
",
];

/// Runs in a Postgres database.
pub struct Postgres {
    pool: PgPool,
    /// Kept out of every error message.
    password: Option<String>,
}

impl Postgres {
    /// Connects to `url` (`postgres://user[:password]@host[:port]/db`; the
    /// password may come from `password_file` instead) and brings the
    /// schema up to date. Errors never show the password.
    pub async fn open(url: &str, password_file: Option<&Path>) -> Result<Self, StoreError> {
        let target = redact(url);
        let open_error = |message: String| StoreError::Open {
            target: target.clone(),
            message,
        };
        let mut options = PgConnectOptions::from_str(url).map_err(|_| StoreError::Config {
            variable: super::config::RUN_STORE_VAR.to_owned(),
            value: target.clone(),
            reason: "not a valid postgres URL".to_owned(),
        })?;
        let mut password = split_password(url)
            .map(|(_, _, password, _)| password)
            .filter(|p| !p.is_empty())
            .map(str::to_owned);
        if password.is_none() {
            if let Some(file) = password_file {
                let read = std::fs::read_to_string(file).map_err(|e| StoreError::Config {
                    variable: PASSWORD_FILE_VAR.to_owned(),
                    value: file.display().to_string(),
                    reason: e.to_string(),
                })?;
                let read = read.trim_end_matches(['\n', '\r']).to_owned();
                options = options.password(&read);
                password = Some(read);
            }
        }
        options = options.application_name("pipelens");
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(2))
            .connect_with(options)
            .await
            .map_err(|e| open_error(sql::scrub(&e.to_string(), password.as_deref())))?;
        let store = Self { pool, password };
        store.migrate(&target).await?;
        Ok(store)
    }

    async fn migrate(&self, target: &str) -> Result<(), StoreError> {
        let open_error = |e: sqlx::Error| StoreError::Open {
            target: target.to_owned(),
            message: sql::scrub(&e.to_string(), self.password.as_deref()),
        };
        let mut tx = self.pool.begin().await.map_err(open_error)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(open_error)?;
        sqlx::raw_sql("CREATE TABLE IF NOT EXISTS pipelens_schema (version INTEGER NOT NULL)")
            .execute(&mut *tx)
            .await
            .map_err(open_error)?;
        let found: Option<i32> = sqlx::query_scalar("SELECT MAX(version) FROM pipelens_schema")
            .fetch_one(&mut *tx)
            .await
            .map_err(open_error)?;
        let found = sql::check_version(target, found.map(i64::from))?;
        for (i, migration) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            sqlx::raw_sql(*migration)
                .execute(&mut *tx)
                .await
                .map_err(open_error)?;
            sqlx::query("INSERT INTO pipelens_schema (version) VALUES ($1)")
                .bind(i as i32 + 1)
                .execute(&mut *tx)
                .await
                .map_err(open_error)?;
        }
        tx.commit().await.map_err(open_error)?;
        debug_assert_eq!(MIGRATIONS.len() as i64, SCHEMA_VERSION);
        Ok(())
    }

    fn failed(&self) -> impl Fn(sqlx::Error) -> StoreError + '_ {
        sql::unavailable(NAME, self.password.as_deref())
    }
}

impl Backend for Postgres {
    fn name(&self) -> &'static str {
        NAME
    }

    fn write<'a>(&'a self, runs: &'a [RunRecord]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let rows: usize = runs.iter().map(|r| r.stages.len()).sum();
            let mut pipeline = Vec::with_capacity(rows);
            let mut run_id = Vec::with_capacity(rows);
            let mut stage = Vec::with_capacity(rows);
            let mut at = Vec::with_capacity(rows);
            let mut selected = Vec::with_capacity(rows);
            let mut answers = Vec::with_capacity(rows);
            for run in runs {
                let id = run_id_hex(run.run_id);
                for s in &run.stages {
                    pipeline.push(run.pipeline.clone());
                    run_id.push(id.clone());
                    stage.push(s.stage.clone());
                    at.push(unix_ms(run.at));
                    selected.push(s.selected.clone());
                    answers.push(sql::encode_answers(&s.answers));
                }
            }
            // One statement, one round trip, for the whole batch.
            sqlx::query(
                "INSERT INTO pipelens_runs (pipeline, run_id, stage, at_ms, selected, answers) \
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[]) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(pipeline)
            .bind(run_id)
            .bind(stage)
            .bind(at)
            .bind(selected)
            .bind(answers)
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(self.failed())
        })
    }

    fn add_answers<'a>(&'a self, late: &'a [LateAnswer]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let groups = sql::group_late(late);
            let mut pipeline = Vec::with_capacity(groups.len());
            let mut run_id = Vec::with_capacity(groups.len());
            let mut stage = Vec::with_capacity(groups.len());
            let mut answers = Vec::with_capacity(groups.len());
            for (p, r, s, a) in groups {
                pipeline.push(p.to_owned());
                run_id.push(r);
                stage.push(s.to_owned());
                answers.push(a);
            }
            // One statement for the batch; one row per stored stage (an
            // UPDATE applies one joined row per target row).
            sqlx::query(
                "UPDATE pipelens_runs r SET answers = (r.answers::jsonb || u.late::jsonb)::text \
                 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[]) \
                   AS u(pipeline, run_id, stage, late) \
                 WHERE r.pipeline = u.pipeline AND r.run_id = u.run_id AND r.stage = u.stage \
                 AND r.judged_at_ms IS NULL",
            )
            .bind(pipeline)
            .bind(run_id)
            .bind(stage)
            .bind(answers)
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(self.failed())
        })
    }

    fn claim<'a>(
        &'a self,
        pipeline: &'a str,
        run_id: u128,
        stage: &'a str,
        not_before: SystemTime,
    ) -> BoxFuture<'a, Result<Claim, StoreError>> {
        Box::pin(async move {
            let failed = self.failed();
            let id = run_id_hex(run_id);
            let claimed = sqlx::query(
                "UPDATE pipelens_runs SET judged_at_ms = $1 \
                 WHERE pipeline = $2 AND run_id = $3 AND stage = $4 \
                 AND judged_at_ms IS NULL AND at_ms >= $5 \
                 RETURNING selected, answers",
            )
            .bind(unix_ms(SystemTime::now()))
            .bind(pipeline)
            .bind(&id)
            .bind(stage)
            .bind(unix_ms(not_before))
            .fetch_optional(&self.pool)
            .await
            .map_err(&failed)?;
            if let Some(row) = claimed {
                let selected: Option<String> = row.try_get("selected").map_err(&failed)?;
                let answers: String = row.try_get("answers").map_err(&failed)?;
                return sql::decode_stage(NAME, stage, selected, &answers).map(Claim::Claimed);
            }
            let judged: Option<Option<i64>> = sqlx::query_scalar(
                "SELECT judged_at_ms FROM pipelens_runs \
                 WHERE pipeline = $1 AND run_id = $2 AND stage = $3",
            )
            .bind(pipeline)
            .bind(&id)
            .bind(stage)
            .fetch_optional(&self.pool)
            .await
            .map_err(&failed)?;
            Ok(match judged {
                Some(Some(_)) => Claim::AlreadyClaimed,
                _ => Claim::Unknown,
            })
        })
    }

    fn expire(
        &self,
        before: SystemTime,
        max_per_pipeline: u64,
        limit: u32,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            let failed = self.failed();
            let mut gone = sqlx::query(
                "DELETE FROM pipelens_runs WHERE ctid = ANY(ARRAY( \
                 SELECT ctid FROM pipelens_runs WHERE at_ms < $1 LIMIT $2))",
            )
            .bind(unix_ms(before))
            .bind(i64::from(limit))
            .execute(&self.pool)
            .await
            .map_err(&failed)?
            .rows_affected();
            if gone >= u64::from(limit) {
                return Ok(gone);
            }
            let pipelines: Vec<String> =
                sqlx::query_scalar("SELECT DISTINCT pipeline FROM pipelens_runs")
                    .fetch_all(&self.pool)
                    .await
                    .map_err(&failed)?;
            for pipeline in pipelines {
                let cutoff: Option<i64> = sqlx::query_scalar(
                    "SELECT at_ms FROM pipelens_runs WHERE pipeline = $1 \
                     ORDER BY at_ms DESC LIMIT 1 OFFSET $2",
                )
                .bind(&pipeline)
                .bind(i64::try_from(max_per_pipeline).unwrap_or(i64::MAX))
                .fetch_optional(&self.pool)
                .await
                .map_err(&failed)?;
                let Some(cutoff) = cutoff else { continue };
                let room = u64::from(limit).saturating_sub(gone);
                if room == 0 {
                    break;
                }
                gone += sqlx::query(
                    "DELETE FROM pipelens_runs WHERE ctid = ANY(ARRAY( \
                     SELECT ctid FROM pipelens_runs WHERE pipeline = $1 AND at_ms <= $2 \
                     ORDER BY at_ms LIMIT $3))",
                )
                .bind(&pipeline)
                .bind(cutoff)
                .bind(i64::try_from(room).unwrap_or(i64::MAX))
                .execute(&self.pool)
                .await
                .map_err(&failed)?
                .rows_affected();
            }
            Ok(gone)
        })
    }

    fn load_reference<'a>(
        &'a self,
        pipeline: &'a str,
        part: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        Box::pin(async move {
            sqlx::query_scalar(
                "SELECT body FROM pipelens_drift_references WHERE pipeline = $1 AND part = $2",
            )
            .bind(pipeline)
            .bind(part)
            .fetch_optional(&self.pool)
            .await
            .map_err(self.failed())
        })
    }

    fn save_reference<'a>(
        &'a self,
        pipeline: &'a str,
        part: &'a str,
        body: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO pipelens_drift_references (pipeline, part, body, saved_at_ms) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            )
            .bind(pipeline)
            .bind(part)
            .bind(body)
            .bind(unix_ms(SystemTime::now()))
            .execute(&self.pool)
            .await
            .map_err(self.failed())?;
            // Ours, or the one another replica saved first.
            self.load_reference(pipeline, part).await
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            sqlx::query("SELECT 1")
                .execute(&self.pool)
                .await
                .map(|_| ())
                .map_err(self.failed())
        })
    }
}
