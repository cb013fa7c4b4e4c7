//! The SQLite backend (cargo feature `sqlite`): runs in one file, kept
//! across restarts with nothing to install. The binary's embedded default.
//! Several processes may share a file on one machine (WAL mode); replicas
//! on several machines need [`super::postgres`].

use std::path::Path;
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row as _, SqlitePool};

use super::sql::{self, SCHEMA_VERSION};
use super::{run_id_hex, unix_ms, Backend, Claim, LateAnswer, RunRecord, StoreError};

const NAME: &str = "sqlite";
/// Rows per `INSERT` (six parameters each, far below SQLite's limit).
const ROWS_PER_INSERT: usize = 128;

/// Each version's statements; `MIGRATIONS[v - 1]` takes the schema to `v`.
const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE pipelens_runs (
    pipeline     TEXT    NOT NULL,
    run_id       TEXT    NOT NULL,
    stage        TEXT    NOT NULL,
    at_ms        INTEGER NOT NULL,
    selected     TEXT,
    answers      TEXT    NOT NULL,
    judged_at_ms INTEGER,
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
    saved_at_ms INTEGER NOT NULL,
    PRIMARY KEY (pipeline, part)
);
",
];

/// Runs in a SQLite file.
pub struct Sqlite {
    pool: SqlitePool,
}

impl Sqlite {
    /// Opens (or creates, with its directory) the file at `path` and brings
    /// its schema up to date. A file that is not a SQLite database, or one
    /// written by a newer pipelens, is an error naming the file.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let target = format!("sqlite:{}", path.display());
        let open_error = |message: String| StoreError::Open {
            target: target.clone(),
            message,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| open_error(format!("cannot create {}: {e}", dir.display())))?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            // Run ids are random, so each stored run dirties a page of the
            // key index of its own, and WAL writes whole pages: 1 KiB pages
            // write a quarter of what the default 4 KiB do (profiled and
            // measured: the store's CPU per run fell from ~30 to ~5 µs).
            // Applies to a new file; an existing one keeps its page size.
            .page_size(1024);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
            .map_err(|e| open_error(e.to_string()))?;
        migrate(&pool, &target).await?;
        Ok(Self { pool })
    }
}

async fn migrate(pool: &SqlitePool, target: &str) -> Result<(), StoreError> {
    let open_error = |e: sqlx::Error| StoreError::Open {
        target: target.to_owned(),
        message: e.to_string(),
    };
    let mut conn = pool.acquire().await.map_err(open_error)?;
    // IMMEDIATE: two processes starting on one file migrate one at a time.
    sqlx::raw_sql("BEGIN IMMEDIATE")
        .execute(&mut *conn)
        .await
        .map_err(open_error)?;
    let result = async {
        sqlx::raw_sql("CREATE TABLE IF NOT EXISTS pipelens_schema (version INTEGER NOT NULL)")
            .execute(&mut *conn)
            .await
            .map_err(open_error)?;
        let found: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM pipelens_schema")
            .fetch_one(&mut *conn)
            .await
            .map_err(open_error)?;
        let found = sql::check_version(target, found)?;
        for (i, migration) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            sqlx::raw_sql(*migration)
                .execute(&mut *conn)
                .await
                .map_err(open_error)?;
            sqlx::query("INSERT INTO pipelens_schema (version) VALUES (?)")
                .bind(i as i64 + 1)
                .execute(&mut *conn)
                .await
                .map_err(open_error)?;
        }
        Ok::<_, StoreError>(())
    }
    .await;
    let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    sqlx::raw_sql(end)
        .execute(&mut *conn)
        .await
        .map_err(open_error)?;
    debug_assert_eq!(MIGRATIONS.len() as i64, SCHEMA_VERSION);
    result
}

impl Backend for Sqlite {
    fn name(&self) -> &'static str {
        NAME
    }

    fn write<'a>(&'a self, runs: &'a [RunRecord]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let failed = sql::unavailable(NAME, None);
            let rows: Vec<(&RunRecord, &super::StageRecord)> = runs
                .iter()
                .flat_map(|run| run.stages.iter().map(move |stage| (run, stage)))
                .collect();
            let mut tx = self.pool.begin().await.map_err(&failed)?;
            // Many rows per statement: each statement is a round trip to
            // the connection's worker thread, which costs more than a row.
            for chunk in rows.chunks(ROWS_PER_INSERT) {
                let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                    "INSERT INTO pipelens_runs (pipeline, run_id, stage, at_ms, selected, answers) ",
                );
                insert.push_values(chunk, |mut row, (run, stage)| {
                    row.push_bind(run.pipeline.as_str())
                        .push_bind(run_id_hex(run.run_id))
                        .push_bind(stage.stage.as_str())
                        .push_bind(unix_ms(run.at))
                        .push_bind(stage.selected.as_deref())
                        .push_bind(sql::encode_answers(&stage.answers));
                });
                insert.push(" ON CONFLICT DO NOTHING");
                insert
                    .build()
                    .persistent(false)
                    .execute(&mut *tx)
                    .await
                    .map_err(&failed)?;
            }
            tx.commit().await.map_err(&failed)
        })
    }

    fn add_answers<'a>(&'a self, late: &'a [LateAnswer]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let failed = sql::unavailable(NAME, None);
            let mut tx = self.pool.begin().await.map_err(&failed)?;
            for (pipeline, run_id, stage, answers) in sql::group_late(late) {
                // Appends each element of the array to the stored one.
                sqlx::query(
                    "UPDATE pipelens_runs SET answers = (\
                       SELECT json_group_array(json(value)) FROM (\
                         SELECT value FROM json_each(pipelens_runs.answers) \
                         UNION ALL SELECT value FROM json_each(?))) \
                     WHERE pipeline = ? AND run_id = ? AND stage = ? AND judged_at_ms IS NULL",
                )
                .bind(answers)
                .bind(pipeline)
                .bind(run_id)
                .bind(stage)
                .execute(&mut *tx)
                .await
                .map_err(&failed)?;
            }
            tx.commit().await.map_err(&failed)
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
            let failed = sql::unavailable(NAME, None);
            let id = run_id_hex(run_id);
            let claimed = sqlx::query(
                "UPDATE pipelens_runs SET judged_at_ms = ? \
                 WHERE pipeline = ? AND run_id = ? AND stage = ? \
                 AND judged_at_ms IS NULL AND at_ms >= ? \
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
                 WHERE pipeline = ? AND run_id = ? AND stage = ?",
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
            let failed = sql::unavailable(NAME, None);
            let gone = sqlx::query(
                "DELETE FROM pipelens_runs WHERE rowid IN \
                 (SELECT rowid FROM pipelens_runs WHERE at_ms < ? LIMIT ?)",
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
            let mut gone = gone;
            for pipeline in pipelines {
                let cutoff: Option<i64> = sqlx::query_scalar(
                    "SELECT at_ms FROM pipelens_runs WHERE pipeline = ? \
                     ORDER BY at_ms DESC LIMIT 1 OFFSET ?",
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
                    "DELETE FROM pipelens_runs WHERE rowid IN \
                     (SELECT rowid FROM pipelens_runs WHERE pipeline = ? AND at_ms <= ? \
                      ORDER BY at_ms LIMIT ?)",
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
                "SELECT body FROM pipelens_drift_references WHERE pipeline = ? AND part = ?",
            )
            .bind(pipeline)
            .bind(part)
            .fetch_optional(&self.pool)
            .await
            .map_err(sql::unavailable(NAME, None))
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
                 VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            )
            .bind(pipeline)
            .bind(part)
            .bind(body)
            .bind(unix_ms(SystemTime::now()))
            .execute(&self.pool)
            .await
            .map_err(sql::unavailable(NAME, None))?;
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
                .map_err(sql::unavailable(NAME, None))
        })
    }
}
