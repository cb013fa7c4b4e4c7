//! The binary's embedded default: runs kept in a SQLite file under
//! `PIPELENS_DATA_DIR`, so a restart keeps them and their ground truth; a
//! file that is not a database, or a schema newer than the binary, stops
//! start-up naming it; retention and the size bound delete what is past
//! them.

#[allow(dead_code, unreachable_pub)]
#[path = "../src/bin/pipelens/demo/mod.rs"]
mod demo;
mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use hyper::StatusCode;
use pipelens::store::{
    Backend as _, Claim, ModelAnswer, RunRecord, RunStore, StageRecord, StoreConfig,
};
use pipelens::Answer;
use support::replica::Replica;

const BIN: &str = env!("CARGO_BIN_EXE_pipelens");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_runs_and_their_feedback() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("state");
    let env = [("PIPELENS_DATA_DIR", data.to_str().unwrap())];
    let mut service = Replica::start(dir.path(), "service", &env).await;
    let judged_before = service.run("a wonderful film").await;
    let pending = service.run("a tedious film").await;
    let reply = service.feedback(&judged_before, "positive").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    service.stop().await;
    assert!(
        data.join("pipelens.db").exists(),
        "the default file is data/pipelens.db"
    );

    service.spawn().await;
    let reply = service.feedback(&pending, "negative").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let models = reply.json()["models"].as_array().unwrap().len();
    assert!(
        models >= 3,
        "every candidate's answer was kept: {}",
        reply.body
    );
    let reply = service.feedback(&judged_before, "positive").await;
    assert_eq!(
        reply.status,
        StatusCode::CONFLICT,
        "judged before the restart: {}",
        reply.body
    );
    let logs = service.logs();
    assert!(logs.contains(r#""run_store.backend":"sqlite""#), "{logs}");
}

fn start_up_error(env: &[(&str, &str)]) -> String {
    let out = Command::new(BIN)
        .args(["serve", "--addr", "127.0.0.1:0"])
        .env("OTEL_TRACES_EXPORTER", "none")
        .env("OTEL_LOGS_EXPORTER", "none")
        .env_remove("PIPELENS_RUN_STORE")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(!out.status.success(), "started anyway");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_file_that_is_not_a_database_stops_start_up_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("runs.db");
    std::fs::write(
        &file,
        "this is a text file, not a SQLite database, at all.\n".repeat(100),
    )
    .unwrap();
    let target = format!("sqlite:{}", file.display());
    let stderr = start_up_error(&[("PIPELENS_RUN_STORE", &target)]);
    assert!(stderr.contains(&file.display().to_string()), "{stderr}");
    assert!(stderr.contains("PIPELENS_RUN_STORE"), "{stderr}");
    assert!(stderr.contains("not a database"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let stderr = start_up_error(&[("PIPELENS_RUN_STORE", "redis://cache:6379")]);
    assert!(
        stderr.contains("PIPELENS_RUN_STORE=redis://cache:6379"),
        "{stderr}"
    );
    let stderr = start_up_error(&[("PIPELENS_FEEDBACK_RETENTION", "a while")]);
    assert!(
        stderr.contains("PIPELENS_FEEDBACK_RETENTION=a while"),
        "{stderr}"
    );
    let stderr = start_up_error(&[("PIPELENS_RUN_STORE", "postgres://app:hunter2@/db")]);
    assert!(stderr.contains("PIPELENS_RUN_STORE"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "the password leaked: {stderr}");
}

#[tokio::test]
async fn a_newer_schema_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("runs.db");
    drop(open(&file, StoreConfig::sqlite(&file)).await);
    let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", file.display()))
        .await
        .unwrap();
    sqlx::query("INSERT INTO pipelens_schema (version) VALUES (99)")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let e = RunStore::open(&StoreConfig::sqlite(&file), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("schema version 99"), "{e}");
    assert!(e.contains(&file.display().to_string()), "{e}");
}

async fn open(file: &Path, config: StoreConfig) -> RunStore {
    let _ = file;
    RunStore::open(&config, None).await.unwrap()
}

fn run(id: u128, at: SystemTime) -> RunRecord {
    RunRecord {
        pipeline: "p".to_owned(),
        run_id: id,
        at,
        stages: vec![StageRecord {
            stage: "s".to_owned(),
            selected: Some("m".to_owned()),
            answers: vec![ModelAnswer {
                model: "m".to_owned(),
                answer: Some(Answer::Value(f64::from(id as u32))),
            }],
        }],
    }
}

#[tokio::test]
async fn retention_and_the_size_bound_delete_what_is_past_them() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("runs.db");
    let config = StoreConfig {
        retention: Duration::from_secs(3600),
        max_runs_per_pipeline: 5,
        // Sweeps only when asked.
        sweep_interval: Duration::from_secs(3600),
        ..StoreConfig::sqlite(&file)
    };
    let store = open(&file, config).await;
    let now = SystemTime::now();
    // Two runs past retention, then eight fresh ones, oldest first.
    store.record(run(1, now - Duration::from_secs(7200)));
    store.record(run(2, now - Duration::from_secs(3700)));
    for id in 10..18u128 {
        store.record(run(id, now - Duration::from_secs(100 - id as u64)));
    }
    store.flush().await;
    // Expired runs are unknown to feedback before they are deleted.
    assert_eq!(store.claim("p", 1, "s").await.unwrap(), Claim::Unknown);
    assert_eq!(store.expire_now().await.unwrap(), 2 + 3);
    assert_eq!(store.expire_now().await.unwrap(), 0);
    for id in 10..13 {
        assert_eq!(
            store.claim("p", id, "s").await.unwrap(),
            Claim::Unknown,
            "{id}"
        );
    }
    for id in 13..18 {
        let Claim::Claimed(stage) = store.claim("p", id, "s").await.unwrap() else {
            panic!("run {id} is one of the newest five")
        };
        assert_eq!(stage.answers[0].answer, Some(Answer::Value(id as f64)));
    }

    // The backend alone agrees: nothing is left past an hour or beyond
    // five, and a tighter bound deletes the oldest.
    let backend = pipelens::store::sqlite::Sqlite::open(&file).await.unwrap();
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    assert_eq!(backend.expire(hour_ago, 5, 1000).await.unwrap(), 0);
    assert_eq!(backend.expire(hour_ago, 2, 1000).await.unwrap(), 3);
}

#[tokio::test]
async fn a_database_of_an_older_version_is_migrated_keeping_its_runs() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("runs.db");
    // A database as the first version of the schema left it, with a run.
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&file)
        .create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE pipelens_schema (version INTEGER NOT NULL);
         INSERT INTO pipelens_schema (version) VALUES (1);
         CREATE TABLE pipelens_runs (
             pipeline TEXT NOT NULL, run_id TEXT NOT NULL, stage TEXT NOT NULL,
             at_ms INTEGER NOT NULL, selected TEXT, answers TEXT NOT NULL,
             judged_at_ms INTEGER, PRIMARY KEY (pipeline, run_id, stage));
         CREATE INDEX pipelens_runs_by_time ON pipelens_runs (at_ms);
         CREATE INDEX pipelens_runs_by_pipeline_time ON pipelens_runs (pipeline, at_ms);",
    )
    .execute(&pool)
    .await
    .unwrap();
    let now_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    sqlx::query(
        "INSERT INTO pipelens_runs (pipeline, run_id, stage, at_ms, selected, answers) \
         VALUES ('p', ?, 's', ?, 'm', '[{\"model\":\"m\",\"answer\":\"yes\"}]')",
    )
    .bind(format!("{:032x}", 42u128))
    .bind(now_ms)
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;

    let store = open(&file, StoreConfig::sqlite(&file)).await;
    let Claim::Claimed(stage) = store.claim("p", 42, "s").await.unwrap() else {
        panic!("the run made before the upgrade is still there")
    };
    assert_eq!(stage.answers[0].answer, Some(Answer::Label("yes".into())));
    let backend = pipelens::store::sqlite::Sqlite::open(&file).await.unwrap();
    assert_eq!(
        backend.save_reference("p", "features", "{}").await.unwrap(),
        Some("{}".to_owned()),
        "version 2's references table exists"
    );
    let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", file.display()))
        .await
        .unwrap();
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM pipelens_schema ORDER BY version")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(versions, [1, 2]);
}

#[tokio::test]
async fn shadow_answers_join_their_stored_run_until_it_is_judged() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("runs.db");
    let store = open(&file, StoreConfig::sqlite(&file)).await;
    support::late_answers::join_until_judged(&store, 0xfeed).await;
}
